//! A provider's HTTP answer (headers, then a blank line, then the body) as the
//! declarative driver (`provider/http/mod.rs`) reads it with each shipped
//! definition: rate-limit headers, Retry-After, the Link header's next page, the
//! body's items, key ids, states, dates and tags through the definition's JSON
//! pointers, next-page URIs and cursors.
//!
//! Oracles beyond "no panic": no delay above the driver's one-hour cap, and no
//! next page outside the base URL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rekey::catalog::Catalog;
use rekey::catalog::http::{Definition, Paginate};
use rekey::catalog::template;
use rekey::provider::http;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const MAX_WAIT: Duration = Duration::from_secs(3600);

fn definitions() -> &'static [Arc<Definition>] {
    static DEFS: OnceLock<Vec<Arc<Definition>>> = OnceLock::new();
    DEFS.get_or_init(|| {
        Catalog::builtin()
            .expect("the shipped catalog loads")
            .types
            .values()
            .filter_map(|t| t.http_definition().expect("shipped definitions are valid"))
            .collect()
    })
}

fn headers(text: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in text.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    map
}

fuzz_target!(|bytes: &[u8]| {
    let (head, body) = match bytes.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&bytes[..i], &bytes[i + 2..]),
        None => (bytes, &[][..]),
    };
    let headers = headers(head);
    // The driver reads a body it cannot parse as null.
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let base = url::Url::parse("https://api.example.com/v1").unwrap();
    if let Some(next) = http::link_next(&headers)
        && let Ok(u) = template::confine_next(&base, &next)
    {
        assert!(u.as_str().starts_with("https://api.example.com/v1"), "{u}");
    }
    for def in definitions() {
        let rl = &def.http.rate_limit;
        if let Some(wait) = http::retry_after(&headers, rl) {
            assert!(wait <= MAX_WAIT, "{wait:?}");
        }
        if let Some(hint) = http::rate_hint(&headers, rl) {
            assert!(hint.reset_in <= MAX_WAIT, "{hint:?}");
        }
        for op in ["lookup", "list"] {
            let Some(call) = def.http.call(op) else {
                continue;
            };
            let items = match body.pointer(call.items.as_deref().unwrap_or("")) {
                Some(Value::Array(a)) => a.clone(),
                Some(v @ Value::Object(_)) => vec![v.clone()],
                _ => Vec::new(),
            };
            for item in &items {
                for (pointer, _) in &call.filter {
                    let _ = item.pointer(pointer).map(http::text);
                }
                for pointer in call.bind.values() {
                    let _ = item.pointer(pointer);
                }
                if op == "list" {
                    let _ = http::key_of(call, item);
                }
            }
            match call.paginate.as_ref().and_then(|p| p.mode().ok()) {
                Some(Paginate::NextUri { pointer }) => {
                    if let Some(n) = body.pointer(&pointer).map(http::text)
                        && let Ok(u) = template::confine_next(&base, &n)
                    {
                        assert!(u.as_str().starts_with("https://api.example.com/v1"), "{u}");
                    }
                }
                Some(Paginate::Cursor { pointer, .. }) => {
                    let _ = body.pointer(&pointer).map(http::text);
                }
                _ => {}
            }
        }
    }
});
