//! One header value as every rate-limit reader takes it: `Retry-After` (seconds or
//! an HTTP date) and a reset header in both formats (seconds from now, epoch
//! seconds), through `provider::http::retry_after` and `rate_hint`; `epoch()` on
//! the same text as a JSON string.
//!
//! Oracle beyond "no panic": no delay above the driver's one-hour cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rekey::catalog::http::RateLimitDef;
use rekey::provider::http;
use reqwest::header::{HeaderMap, HeaderValue};
use std::time::Duration;

const MAX_WAIT: Duration = Duration::from_secs(3600);

fn limit(format: &str) -> RateLimitDef {
    serde_json::from_value(serde_json::json!({
        "remaining": "x-ratelimit-remaining",
        "reset": { "header": "x-ratelimit-reset", "format": format },
    }))
    .unwrap()
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(bytes) else {
        return;
    };
    for format in ["seconds", "epoch"] {
        let rl = limit(format);
        for name in ["retry-after", "x-ratelimit-reset"] {
            let mut headers = HeaderMap::new();
            headers.insert(name, value.clone());
            headers.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
            if let Some(wait) = http::retry_after(&headers, &rl) {
                assert!(wait <= MAX_WAIT, "{wait:?}");
            }
            if let Some(hint) = http::rate_hint(&headers, &rl) {
                assert!(hint.reset_in <= MAX_WAIT, "{hint:?}");
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = http::epoch(&serde_json::Value::String(text.to_owned()));
    }
});
