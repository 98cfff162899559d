//! The Vault/OpenBao side of `rekey discover`: a bounded walk of a KV v2 mount
//! (depth, entry count), paged (`list_page`: OpenBao pages on the server) and
//! rate-limited, that maps each entry by its custom metadata first and reads
//! its data only when the metadata does not say enough. Values are looked at
//! in place (`shapes`) and dropped with the entry; nothing keeps or prints one.

use super::shapes::{self, Shape};
use crate::store::SecretStore;
use std::collections::BTreeMap;
use std::num::NonZeroU32;

/// Keys listed per request.
const PAGE: usize = 100;

/// How far the walk may go.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub max_entries: usize,
    pub max_depth: usize,
    /// Requests per second.
    pub rate: u32,
}

/// One entry found, as far as it was understood.
#[derive(Clone, Debug, Default)]
pub struct Found {
    /// Path inside the mount.
    pub path: String,
    /// rekey's own custom metadata (`rekey_credential`, `rekey_provider`,
    /// `rekey_playbook`) and the documented convention (`provider`, `tied_to`,
    /// `account`), as found.
    pub metadata: BTreeMap<String, String>,
    /// The shape of the data, when it was read.
    pub shape: Option<Shape>,
    /// The non-secret fields rekey writes beside a value (`key_id`, `account`).
    pub key_id: Option<String>,
    pub account: Option<String>,
    /// Field names of the data (never values), for comments.
    pub fields: Vec<String>,
    /// Whether the data was read (the metadata did not say enough).
    pub read_data: bool,
    /// Why it could not be read, when it could not.
    pub problem: Option<String>,
}

/// What the walk did, for the draft's header and stderr.
#[derive(Debug, Default)]
pub struct Walk {
    pub found: Vec<Found>,
    pub requests: u64,
    /// Folders not entered (too deep) and whether the entry limit stopped it.
    pub too_deep: Vec<String>,
    pub truncated: bool,
}

/// The metadata keys discovery reads.
pub const REKEY_KEYS: [&str; 3] = ["rekey_credential", "rekey_provider", "rekey_playbook"];
pub const CONVENTION_KEYS: [&str; 3] = ["provider", "tied_to", "account"];

/// Walks `prefix` (inside the mount) breadth first within `bounds`. Never
/// enters the staging prefix rekey keeps in-flight values under.
pub async fn walk(
    store: &dyn SecretStore,
    prefix: &str,
    staging_prefix: &str,
    bounds: Bounds,
) -> Walk {
    let rate = NonZeroU32::new(bounds.rate.max(1)).unwrap_or(NonZeroU32::MIN);
    let limiter = governor::RateLimiter::direct(governor::Quota::per_second(rate));
    let mut walk = Walk::default();
    let start = prefix.trim_matches('/').to_owned();
    let mut folders: std::collections::VecDeque<(String, usize)> =
        std::collections::VecDeque::from([(start, 0)]);
    let staging = staging_prefix.trim_matches('/');
    'walk: while let Some((folder, depth)) = folders.pop_front() {
        let mut after: Option<String> = None;
        loop {
            limiter.until_ready().await;
            walk.requests += 1;
            let page = match store.list_page(&folder, after.as_deref(), PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    walk.found.push(Found {
                        path: format!("{folder}/"),
                        problem: Some(e.to_string()),
                        ..Found::default()
                    });
                    break;
                }
            };
            let full = page.len() == PAGE;
            after = page.last().cloned();
            for key in page {
                let path = if folder.is_empty() {
                    key.clone()
                } else {
                    format!("{folder}/{key}")
                };
                if let Some(sub) = key.strip_suffix('/') {
                    let sub_path = path.trim_end_matches('/').to_owned();
                    if sub_path == staging || sub_path.starts_with(&format!("{staging}/")) {
                        continue;
                    }
                    if depth + 1 > bounds.max_depth {
                        walk.too_deep.push(sub_path);
                    } else if !sub.is_empty() {
                        folders.push_back((sub_path, depth + 1));
                    }
                    continue;
                }
                if walk.found.len() >= bounds.max_entries {
                    walk.truncated = true;
                    break 'walk;
                }
                let found = inspect(store, &limiter, &mut walk.requests, &path).await;
                walk.found.push(found);
            }
            if !full {
                break;
            }
        }
    }
    walk
}

type Limiter = governor::DefaultDirectRateLimiter;

/// Maps one entry: metadata first; the data only when needed.
async fn inspect(
    store: &dyn SecretStore,
    limiter: &Limiter,
    requests: &mut u64,
    path: &str,
) -> Found {
    let mut found = Found {
        path: path.to_owned(),
        ..Found::default()
    };
    limiter.until_ready().await;
    *requests += 1;
    match store.metadata(path).await {
        Ok(meta) => {
            found.metadata = meta
                .custom_metadata
                .into_iter()
                .filter(|(k, _)| {
                    REKEY_KEYS.contains(&k.as_str()) || CONVENTION_KEYS.contains(&k.as_str())
                })
                .collect();
            if meta.current_deleted {
                found.problem = Some("its current version is deleted".into());
                return found;
            }
        }
        Err(e) => {
            found.problem = Some(e.to_string());
            return found;
        }
    }
    // The convention can say everything (a type and an account): then the data
    // is not read. rekey's own metadata names the credential and its instance;
    // the data is read for the account and key id rekey writes beside the
    // value. Everything else needs the data's shape.
    if found.metadata.contains_key("provider") && found.metadata.contains_key("account") {
        return found;
    }
    limiter.until_ready().await;
    *requests += 1;
    match store.read(path).await {
        Ok(entry) => {
            found.read_data = true;
            found.key_id = entry.fields.get("key_id").cloned();
            found.account = entry.fields.get("account").cloned();
            found.fields = entry.fields.keys().cloned().collect();
            if entry.value.is_some() {
                found.fields.insert(0, "value".into());
            }
            // The value first (it is what consumers use), then the other fields.
            let mut shape = entry
                .value
                .as_ref()
                .and_then(|v| shapes::of_value("value", v.expose()));
            if shape.is_none() {
                shape = entry
                    .fields
                    .iter()
                    .find_map(|(k, v)| shapes::of_value(k, v));
            }
            if let Some(s) = &shape {
                if found.key_id.is_none() {
                    found.key_id = s.key_id.clone();
                }
                if found.account.is_none() {
                    found.account = s.account.clone();
                }
            }
            found.shape = shape;
        }
        Err(e) => found.problem = Some(e.to_string()),
    }
    found
}
