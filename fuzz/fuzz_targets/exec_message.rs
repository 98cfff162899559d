//! A line an exec plugin writes on stdout, read as rekey reads it
//! (`provider/exec/mod.rs`): a `FromPlugin` message, then the `result` of a
//! response as each operation's result type, and an `error` as a provider error.
//!
//! Oracle beyond "no panic": an error description never quotes a value from the
//! line (it may be a secret): no string of the line, and no long number, appears
//! in it unless it is one of rekey's own words.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rekey::provider::exec::protocol::{self, Created, FromPlugin, Listed, Verified};
use serde_json::Value;

/// Every phrase a description may hold: serde's phrases, and rekey's field and type
/// names in the forms serde writes them. A string of the line found in a
/// description is a quoted value unless it is part of these.
fn vocabulary() -> &'static str {
    static WORDS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    WORDS.get_or_init(|| {
        let fields = [
            "type",
            "protocol_version",
            "name",
            "id",
            "result",
            "error",
            "kind",
            "message",
            "retry_after_ms",
            "key_id",
            "secret",
            "keys",
            "active",
            "created_at",
            "tag",
            "valid",
        ];
        let mut words = String::from(
            "not JSON; unreadable; invalid type; invalid value; invalid length; unknown variant; \
             unknown field; expected a string; expected a boolean; expected u64; expected u32; \
             expected struct Created; expected struct Listed; expected struct ListedKey; \
             expected struct Verified; expected struct WireError; expected enum ErrorKind; \
             expected internally tagged enum FromPlugin; expected a sequence; expected option; \
             expected unit; expected variant identifier; expected field identifier; ",
        );
        for f in fields {
            words.push_str(&format!("missing field `{f}`; duplicate field `{f}`; "));
        }
        words
    })
}

fn leaves(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(a) => a.iter().for_each(|x| leaves(x, out)),
        Value::Object(m) => m.values().for_each(|x| leaves(x, out)),
        _ => {}
    }
}

fn check(description: &str, line: &[u8]) {
    // serde reads the line's first JSON value before it sees what follows.
    let Some(Ok(value)) = serde_json::Deserializer::from_slice(line)
        .into_iter::<Value>()
        .next()
    else {
        assert!(!description.contains('"'), "{description}");
        return;
    };
    let mut found = Vec::new();
    leaves(&value, &mut found);
    for leaf in found {
        // A string made only of rekey's words (`"type, "`) may match a description
        // without being quoted by it; any other word counts.
        let own_words = leaf
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .filter(|w| !w.is_empty())
            .all(|w| {
                vocabulary()
                    .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                    .any(|v| v == w)
            });
        if leaf.len() >= 4 && !own_words && !vocabulary().contains(leaf.as_str()) {
            assert!(
                !description.contains(&leaf),
                "the description quotes {leaf:?}: {description}"
            );
        }
    }
}

fn as_result<T: serde::de::DeserializeOwned>(v: &Value, line: &[u8]) {
    if let Err(e) = serde_json::from_value::<T>(v.clone()) {
        check(&protocol::describe_error(&e), line);
    }
}

fuzz_target!(|line: &[u8]| {
    match serde_json::from_slice::<FromPlugin>(line) {
        Err(e) => check(&protocol::describe_error(&e), line),
        Ok(FromPlugin::Response { result, error, .. }) => {
            if let Some(v) = result {
                as_result::<Created>(&v, line);
                as_result::<Listed>(&v, line);
                as_result::<Verified>(&v, line);
            }
            if let Some(e) = error {
                // What the engine gets: the message cut to 500 characters, the delay.
                let _: String = e.message.chars().take(500).collect();
                let _ = e.retry_after_ms.map(std::time::Duration::from_millis);
            }
        }
        Ok(_) => {}
    }
});
