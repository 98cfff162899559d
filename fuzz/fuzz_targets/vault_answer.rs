//! Vault / OpenBao answers as `store/vault.rs` reads them (`store::answer`): a KV
//! version 2 read, a metadata read, the mount check, health and token lookup.
//!
//! Oracle beyond "no panic": the entry's value never shows in its `Debug`, and the
//! message for an entry rekey refuses never quotes the value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rekey::store::answer::{self, Unread};

fuzz_target!(|body: &[u8]| {
    let value = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer("/data/data/value")?.as_str().map(str::to_owned))
        .filter(|v| v.len() >= 4);
    match answer::read_answer(body) {
        Ok(entry) => {
            // The other fields and the custom metadata are not secret and show; the
            // value must not, even where it equals one of them.
            if let Some(value) = &value {
                assert!(!format!("{:?}", entry.value).contains(value.as_str()));
            }
        }
        Err(Unread::BadEntry(bad)) => {
            if let (Some(message), Some(value)) = (bad.message("secret/app", 3), &value) {
                let key_is_value = matches!(&bad, answer::BadEntry::NotAString { key, .. } if key.contains(value.as_str()));
                assert!(
                    key_is_value || !message.contains(value.as_str()),
                    "{message}"
                );
            }
        }
        Err(Unread::Unreadable) => {}
    }
    let _ = answer::metadata_answer(body);
    let _ = answer::mount_answer(body);
    let _ = answer::health_version(body);
    let _ = answer::identity_answer(body);
});
