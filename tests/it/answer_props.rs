//! Property tests of every reader of input an attacker or a tired operator
//! controls, other than the playbook (loader_props.rs) and the audit trail
//! (audit.rs): provider definition files, exec plugin messages, Vault answers,
//! provider HTTP answers and their rate-limit headers, AWS XML answers. The same
//! readers are fuzzed by `fuzz/` (see fuzz/README.md); these cases run in the
//! suite, in a few seconds each, from the committed seed corpus `fuzz/corpus/`
//! mutated, and from arbitrary bytes. No panic, no hang; where a reader builds an
//! error message, the message never quotes a value from the input.

use crate::loader_props::{Mutation, apply};
use proptest::prelude::*;
use rekey::catalog::Catalog;
use rekey::catalog::http::RateLimitDef;
use rekey::provider::aws_iam::client;
use rekey::provider::exec::protocol::{self, Created, FromPlugin, Listed, Verified};
use rekey::provider::http;
use rekey::store::answer;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use std::time::Duration;

/// The driver's cap on any delay a provider asks for.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// The committed seeds of one fuzz target.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = crate::support::repo_root().join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Tokens that matter to JSON, XML, HTTP headers and YAML, for insertions.
fn tokens() -> impl Strategy<Value = &'static [u8]> {
    prop::sample::select(vec![
        &b"\""[..],
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"null",
        b"true",
        b"1e999",
        b"18446744073709551616",
        b"-1",
        b"\\u0000",
        b"<",
        b">",
        b"</",
        b"<![CDATA[",
        b"&amp;",
        b"<!DOCTYPE x [<!ENTITY a \"aaaa\">]>",
        b"\n",
        b"\n\n",
        b"; rel=\"next\"",
        b"retry-after: 1e300\n",
        b"x-ratelimit-reset: 99999999999999999999\n",
        b"${X}",
        b"{{ secret }}",
        b"{% for x in y %}",
        b"&a ",
        b"*a",
        b"\xff",
    ])
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        (any::<usize>(), tokens()).prop_map(|(i, t)| Mutation::Insert(i, t.to_vec())),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::DropLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

/// A seed of `target` (chosen by `pick`) with `mutations` applied.
fn mutated(target: &str, pick: usize, mutations: &[Mutation]) -> Vec<u8> {
    let seeds = corpus(target);
    let mut bytes = seeds[pick % seeds.len()].clone();
    for m in mutations {
        bytes = apply(bytes, m);
    }
    bytes
}

/// Every string and number of a JSON text, for leak checks.
fn leaves(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(a) => a.iter().for_each(|x| leaves(x, out)),
        Value::Object(m) => m.values().for_each(|x| leaves(x, out)),
        _ => {}
    }
}

/// An exec line read as rekey reads it; the descriptions of its errors.
fn exec_descriptions(line: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    match serde_json::from_slice::<FromPlugin>(line) {
        Err(e) => out.push(protocol::describe_error(&e)),
        Ok(FromPlugin::Response {
            result: Some(v), ..
        }) => {
            for e in [
                serde_json::from_value::<Created>(v.clone()).err(),
                serde_json::from_value::<Listed>(v.clone()).err(),
                serde_json::from_value::<Verified>(v).err(),
            ]
            .into_iter()
            .flatten()
            {
                out.push(protocol::describe_error(&e));
            }
        }
        Ok(_) => {}
    }
    out
}

/// A header map with `name: value` for each pair whose value is a valid header.
fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        if let Ok(v) = HeaderValue::from_str(value) {
            map.append(*name, v);
        }
    }
    map
}

fn limit(format: &str) -> RateLimitDef {
    serde_json::from_value(json!({
        "remaining": "x-ratelimit-remaining",
        "reset": { "header": "x-ratelimit-reset", "format": format },
    }))
    .unwrap()
}

/// Found by fuzzing (fuzz target `retry_after`, input `5e122`, within 6,400
/// inputs): a rate-limit header with a delay beyond what a `Duration` holds, or an
/// epoch beyond what a `SystemTime` holds, panicked the driver
/// (`Duration::from_secs_f64`, `SystemTime + Duration`) instead of waiting the
/// driver's longest pause.
#[test]
fn rate_limit_headers_of_any_size_give_at_most_the_longest_wait() {
    for value in ["1e20", "1e300", "18446744073709551616", "9.3e18", "1.8e19"] {
        for format in ["seconds", "epoch"] {
            let rl = limit(format);
            let h = headers(&[("retry-after", value)]);
            assert_eq!(
                http::retry_after(&h, &rl),
                Some(MAX_WAIT),
                "Retry-After: {value}"
            );
            let h = headers(&[("x-ratelimit-reset", value), ("x-ratelimit-remaining", "0")]);
            let wait = http::retry_after(&h, &rl).unwrap();
            assert!(wait <= MAX_WAIT, "{format} {value}: {wait:?}");
            let hint = http::rate_hint(&h, &rl).unwrap();
            assert!(hint.reset_in <= MAX_WAIT, "{format} {value}: {hint:?}");
        }
    }
}

/// Found while writing the fuzz target `exec_message`: see
/// `exec::a_result_of_the_wrong_shape_is_refused_without_quoting_the_value`.
#[test]
fn exec_error_descriptions_never_quote_the_value_they_met() {
    let canary = "CANARY-s3cr3t";
    for line in [
        json!({"type": "response", "id": 1, "result": {"valid": canary}}),
        json!({"type": "response", "id": 1, "result": {"key_id": "k", "secret": ["x"], "extra": canary}}),
        json!({"type": "response", "id": 1, "result": {"keys": canary}}),
        json!({"type": "response", "id": 1, "result": {"keys": [{"id": 7, "active": canary}]}}),
        json!({"type": "response", "id": canary}),
        json!({"type": "hello", "protocol_version": canary}),
        json!({"type": "response", "id": 1, "error": {"kind": "fatal", "retry_after_ms": canary}}),
        // Found by fuzzing: a value holding serde's own `, expected ` separator.
        json!(format!("x, expected {canary}")),
        json!({"type": "response", "id": 1, "result": {"valid": format!("{canary}, expected a boolean, expected {canary}")}}),
    ] {
        let descriptions = exec_descriptions(line.to_string().as_bytes());
        assert!(!descriptions.is_empty(), "{line}");
        for d in descriptions {
            assert!(!d.contains(canary), "{d}");
            assert!(
                d.contains("expected") || d.starts_with("missing field"),
                "still says what was wrong: {d}"
            );
        }
    }
}

/// Noticed while writing the `aws_answer` target: the `Code` of an AWS error
/// document went into messages and the journal whatever its text; only a short
/// word is a code now.
#[test]
fn an_aws_error_code_is_a_short_word_or_nothing() {
    let doc = |code: &str| {
        format!(
            "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code></Error></ErrorResponse>"
        )
    };
    assert_eq!(
        client::error_code(&doc("Throttling")).as_deref(),
        Some("Throttling")
    );
    assert_eq!(
        client::error_code(&doc(" AccessDenied \n")).as_deref(),
        Some("AccessDenied")
    );
    assert_eq!(client::error_code(&doc("the secret is hunter2")), None);
    assert_eq!(client::error_code(&doc(&"A".repeat(65))), None);
    assert_eq!(client::error_code(&doc("")), None);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn provider_files_never_panic_the_catalog(pick in any::<usize>(), mutations in prop::collection::vec(mutation(), 1..6)) {
        let bytes = mutated("provider_file", pick, &mutations);
        let Ok(text) = std::str::from_utf8(&bytes) else { return Ok(()) };
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("name:"))
            .map(|n| n.trim())
            .filter(|n| !n.is_empty() && !n.contains('/'))
            .unwrap_or("x");
        let path = format!("mutated/{name}.yaml");
        if let Ok(catalog) = Catalog::parse(&[(path.as_str(), text)]) {
            for t in catalog.types.values() {
                let _ = t.http_definition();
            }
        }
    }

    #[test]
    fn exec_lines_never_panic_and_errors_never_quote_them(pick in any::<usize>(), mutations in prop::collection::vec(mutation(), 0..6)) {
        let line = mutated("exec_message", pick, &mutations);
        let descriptions = exec_descriptions(&line);
        if let Ok(v) = serde_json::from_slice::<Value>(&line) {
            let mut found = Vec::new();
            leaves(&v, &mut found);
            for d in &descriptions {
                for leaf in found.iter().filter(|l| l.len() >= 6 && l.chars().any(|c| c.is_ascii_digit())) {
                    prop_assert!(!d.contains(leaf.as_str()), "{} quotes {}", d, leaf);
                }
            }
        }
    }

    #[test]
    fn vault_answers_never_panic_and_never_show_the_value(pick in any::<usize>(), mutations in prop::collection::vec(mutation(), 0..6)) {
        let body = mutated("vault_answer", pick, &mutations);
        match answer::read_answer(&body) {
            Ok(entry) => {
                if let Some(v) = entry.value.as_ref().map(|s| s.expose().to_owned()).filter(|v| v.len() >= 4) {
                    let shown = format!("{:?}", entry.value);
                    prop_assert!(!shown.contains(&v));
                }
            }
            Err(answer::Unread::BadEntry(bad)) => {
                let _ = bad.message("secret/app", 1);
            }
            Err(answer::Unread::Unreadable) => {}
        }
        let _ = answer::metadata_answer(&body);
        let _ = answer::mount_answer(&body);
        let _ = answer::health_version(&body);
        let _ = answer::identity_answer(&body);
    }

    #[test]
    fn vault_answers_of_arbitrary_bytes_are_unreadable_not_a_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = answer::read_answer(&body);
        let _ = answer::metadata_answer(&body);
        let _ = answer::mount_answer(&body);
    }

    #[test]
    fn rate_limit_headers_never_panic_and_stay_under_the_cap(value in prop_oneof![
        "[0-9.eE+-]{1,30}",
        any::<f64>().prop_map(|f| f.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "(Mon|Sun), [0-9]{2} (Jan|Dec) [0-9]{4,5} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT",
        "\\PC{0,40}",
    ]) {
        for format in ["seconds", "epoch"] {
            let rl = limit(format);
            for name in ["retry-after", "x-ratelimit-reset"] {
                let h = headers(&[(name, value.as_str()), ("x-ratelimit-remaining", "0")]);
                if let Some(w) = http::retry_after(&h, &rl) {
                    prop_assert!(w <= MAX_WAIT);
                }
                if let Some(hint) = http::rate_hint(&h, &rl) {
                    prop_assert!(hint.reset_in <= MAX_WAIT);
                }
            }
        }
        let _ = http::epoch(&Value::String(value));
    }

    #[test]
    fn link_headers_never_lead_outside_the_base_url(value in "\\PC{0,80}", target in "[a-z:/.?=%-]{0,40}") {
        let base = url::Url::parse("https://api.example.com/v1").unwrap();
        for link in [value.clone(), format!("<{target}>; rel=\"next\""), format!("<{value}>; rel=next, <x>; rel=last")] {
            let h = headers(&[("link", link.as_str())]);
            if let Some(next) = http::link_next(&h)
                && let Ok(u) = rekey::catalog::template::confine_next(&base, &next)
            {
                prop_assert!(u.as_str().starts_with("https://api.example.com/v1"), "{}", u);
            }
        }
    }

    #[test]
    fn aws_answers_never_panic(pick in any::<usize>(), mutations in prop::collection::vec(mutation(), 0..6)) {
        let bytes = mutated("aws_answer", pick, &mutations);
        let body = String::from_utf8_lossy(&bytes);
        let _ = client::access_keys_page(&body);
        let _ = client::user_tags(&body);
        let _ = client::created_key(&body);
        let _ = client::caller_is_user(&body, "deploy-bot");
        if let Some(code) = client::error_code(&body) {
            prop_assert!(code.len() <= 64);
        }
    }
}

#[test]
fn the_seed_corpus_reads_as_the_real_answers_it_was_captured_from() {
    // The OpenBao answers: a KV read with its value, the deleted latest version.
    let dir = crate::support::repo_root().join("fuzz/corpus");
    let read = std::fs::read(dir.join("vault_answer/kv2-read.json")).unwrap();
    let entry = answer::read_answer(&read).unwrap();
    assert_eq!(entry.version, 2);
    assert_eq!(entry.fields.get("key_id").map(String::as_str), Some("k-2"));
    let deleted = std::fs::read(dir.join("vault_answer/kv2-metadata-deleted.json")).unwrap();
    assert_eq!(
        answer::metadata_answer(&deleted)
            .unwrap()
            .map(|e| e.version),
        Some(2)
    );
    let mount = std::fs::read(dir.join("vault_answer/mount-kv2.json")).unwrap();
    let mount = answer::mount_answer(&mount).unwrap();
    assert_eq!(
        (
            mount.path.as_str(),
            mount.kind.as_str(),
            mount.version.as_str()
        ),
        ("secret", "kv", "2")
    );
    let number = std::fs::read(dir.join("vault_answer/kv2-read-number-field.json")).unwrap();
    assert!(matches!(
        answer::read_answer(&number),
        Err(answer::Unread::BadEntry(answer::BadEntry::NotAString {
            kind: "a number",
            ..
        }))
    ));
    // moto's answers.
    let page =
        std::fs::read_to_string(dir.join("aws_answer/list-access-keys-truncated.xml")).unwrap();
    let page = client::access_keys_page(&page).unwrap();
    assert_eq!(page.keys.len(), 2);
    assert_eq!(page.next_marker.as_deref(), Some("page-2"));
    let quota = std::fs::read_to_string(dir.join("aws_answer/error-limit-exceeded.xml")).unwrap();
    assert_eq!(client::error_code(&quota).as_deref(), Some("LimitExceeded"));
}
