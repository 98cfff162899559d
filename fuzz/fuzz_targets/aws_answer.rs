//! AWS Query API answers as `provider/aws_iam` reads them (`aws_iam::client`):
//! ListAccessKeys pages, ListUserTags, CreateAccessKey, GetCallerIdentity, error
//! documents' codes and IAM timestamps. The client reads bodies as lossy UTF-8.
//!
//! Oracles beyond "no panic": an error code is a short word (never text a body
//! could smuggle into a message), and a created key's `Debug` hides its secret.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rekey::provider::aws_iam::client;

fuzz_target!(|bytes: &[u8]| {
    let body = String::from_utf8_lossy(bytes);
    if let Ok(page) = client::access_keys_page(&body) {
        for key in &page.keys {
            assert!(!key.id.is_empty() || body.contains("<AccessKeyId"));
        }
    }
    let _ = client::user_tags(&body);
    if let Some((id, secret)) = client::created_key(&body) {
        let shown = format!("{id} {secret:?}");
        if secret.expose().len() >= 4 {
            assert!(!shown.contains(secret.expose()) || id.contains(secret.expose()));
        }
    }
    let _ = client::caller_is_user(&body, "deploy-bot");
    if let Some(code) = client::error_code(&body) {
        assert!(
            code.len() <= 64
                && code
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "{code}"
        );
    }
    let _ = client::parse_timestamp(&body);
});
