//! `MemoryStore`: a KV version 2 store in memory, with the semantics the engine
//! relies on (versions, check-and-set, a soft-deleted latest version, the
//! lost-answer rule, custom metadata merged) and faults a test can inject: a call
//! that fails, an answer lost after the write was applied, a store that is down.
//!
//! For tests of the protocol and for benchmarks of the engine alone; a run of
//! `rekey` always uses Vault or OpenBao.

use super::{Entry, SecretStore, StoreError};
use crate::secret::Secret;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// A store operation, for injecting faults and counting calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StoreOp {
    Read,
    ReadVersion,
    Write,
    SetMetadata,
    DeleteAll,
    List,
    Preflight,
}

/// What an injected fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fails with `StoreError::Unavailable` (transient: the engine retries).
    Unavailable,
    /// Fails with `StoreError::Unauthorized` (fatal).
    Unauthorized,
    /// Applies the write, then fails with `Unavailable` as if the answer was lost.
    LoseAnswer,
    /// Never answers and changes nothing: the caller is stuck there (a test then
    /// drops the run, as a crash would, and resumes).
    Hang,
    /// Applies the write, then never answers (a crash right after the change).
    HangAfter,
}

struct Injected {
    op: StoreOp,
    /// Only paths starting with this (relative to the mount), when set.
    prefix: Option<String>,
    fault: Fault,
    /// How many more calls it hits.
    times: u32,
}

#[derive(Clone, Default)]
struct Version {
    value: Option<Secret>,
    fields: BTreeMap<String, String>,
    deleted: bool,
}

#[derive(Default)]
struct PathState {
    versions: Vec<Version>,
    custom: BTreeMap<String, String>,
}

#[derive(Default)]
struct State {
    paths: BTreeMap<String, PathState>,
    faults: Vec<Injected>,
    down: bool,
    calls: BTreeMap<StoreOp, u64>,
}

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    hung: tokio::sync::Notify,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next `times` calls of `op` (on paths under `prefix`, when given) fail
    /// with `fault`.
    pub fn inject(&self, op: StoreOp, prefix: Option<&str>, fault: Fault, times: u32) {
        self.state().faults.push(Injected {
            op,
            prefix: prefix.map(str::to_owned),
            fault,
            times,
        });
    }

    /// Removes every injected fault (and brings the store back up).
    pub fn clear_faults(&self) {
        let mut state = self.state();
        state.faults.clear();
        state.down = false;
    }

    /// Every call fails as unreachable while `down` (a Vault that stopped answering).
    pub fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    /// Returns once a call is stuck on a `Hang` or `HangAfter` fault.
    pub async fn hung(&self) {
        self.hung.notified().await
    }

    /// Stuck for good, as `Hang` asks (after applying, for `HangAfter`).
    async fn hang(&self) -> ! {
        self.hung.notify_one();
        std::future::pending::<()>().await;
        unreachable!("a pending future never completes")
    }

    /// How many calls of `op` were made (faulted ones included).
    pub fn calls(&self, op: StoreOp) -> u64 {
        self.state().calls.get(&op).copied().unwrap_or(0)
    }

    /// Writes `value` and `fields` as a new version without check-and-set (how a
    /// test seeds what an operator wrote by hand).
    pub fn seed(&self, path: &str, value: &str, fields: &[(&str, &str)]) -> u64 {
        let mut state = self.state();
        let entry = state.paths.entry(path.to_owned()).or_default();
        entry.versions.push(Version {
            value: Some(Secret::new(value.to_owned())),
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            deleted: false,
        });
        entry.versions.len() as u64
    }

    /// The paths holding at least one version, sorted.
    pub fn paths(&self) -> Vec<String> {
        self.state()
            .paths
            .iter()
            .filter(|(_, p)| !p.versions.is_empty())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Counts the call and returns the fault it hits, if any.
    fn enter(&self, op: StoreOp, path: &str) -> Result<Option<Fault>, StoreError> {
        let mut state = self.state();
        *state.calls.entry(op).or_default() += 1;
        if state.down {
            return Err(StoreError::Unavailable(
                "the store is unreachable (down in this test)".into(),
            ));
        }
        let hit = state.faults.iter_mut().find(|f| {
            f.op == op && f.times > 0 && f.prefix.as_deref().is_none_or(|p| path.starts_with(p))
        });
        let Some(hit) = hit else { return Ok(None) };
        hit.times -= 1;
        match hit.fault {
            Fault::Unavailable => Err(StoreError::Unavailable(format!(
                "`{path}`: unavailable (injected)"
            ))),
            Fault::Unauthorized => Err(StoreError::Unauthorized(format!(
                "`{path}`: permission denied (injected)"
            ))),
            other => Ok(Some(other)),
        }
    }

    fn entry(state: &State, path: &str) -> Entry {
        let Some(p) = state.paths.get(path).filter(|p| !p.versions.is_empty()) else {
            return Entry::default();
        };
        let latest = p.versions.last().cloned().unwrap_or_default();
        Entry {
            version: p.versions.len() as u64,
            value: if latest.deleted { None } else { latest.value },
            fields: if latest.deleted {
                BTreeMap::new()
            } else {
                latest.fields
            },
            custom_metadata: p.custom.clone(),
        }
    }
}

#[async_trait::async_trait]
impl SecretStore for MemoryStore {
    async fn read(&self, path: &str) -> Result<Entry, StoreError> {
        if self.enter(StoreOp::Read, path)?.is_some() {
            self.hang().await
        }
        Ok(MemoryStore::entry(&self.state(), path))
    }

    async fn read_version(&self, path: &str, version: u64) -> Result<Option<Secret>, StoreError> {
        if self.enter(StoreOp::ReadVersion, path)?.is_some() {
            self.hang().await
        }
        if version == 0 {
            return Ok(None);
        }
        let state = self.state();
        Ok(state
            .paths
            .get(path)
            .and_then(|p| p.versions.get(version as usize - 1))
            .filter(|v| !v.deleted)
            .and_then(|v| v.value.clone()))
    }

    async fn write_cas(
        &self,
        path: &str,
        value: &Secret,
        fields: &BTreeMap<String, String>,
        cas: u64,
    ) -> Result<u64, StoreError> {
        let fault = self.enter(StoreOp::Write, path)?;
        if fault == Some(Fault::Hang) {
            self.hang().await
        }
        if fields.contains_key("value") {
            return Err(StoreError::Invalid(format!(
                "the fields to write to `{path}` include `value`"
            )));
        }
        let written = {
            let mut state = self.state();
            let current = MemoryStore::entry(&state, path);
            if current.version != cas {
                // The lost-answer rule: version `cas + 1` holding exactly this entry
                // is an earlier attempt of this write.
                let same = state
                    .paths
                    .get(path)
                    .and_then(|p| p.versions.get(cas as usize))
                    .is_some_and(|v| {
                        !v.deleted && v.value.as_ref() == Some(value) && &v.fields == fields
                    });
                Err(same)
            } else {
                let p = state.paths.entry(path.to_owned()).or_default();
                p.versions.push(Version {
                    value: Some(value.clone()),
                    fields: fields.clone(),
                    deleted: false,
                });
                Ok(p.versions.len() as u64)
            }
        };
        let version = match written {
            Ok(version) => version,
            Err(true) => return Ok(cas + 1),
            Err(false) => {
                return Err(StoreError::CasConflict {
                    path: format!("secret/{path}"),
                    expected: cas,
                });
            }
        };
        match fault {
            Some(Fault::LoseAnswer) => Err(StoreError::Unavailable(format!(
                "`{path}`: the answer was lost (injected; version {version} was written)"
            ))),
            Some(Fault::HangAfter) => self.hang().await,
            _ => Ok(version),
        }
    }

    async fn set_metadata(
        &self,
        path: &str,
        custom: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let fault = self.enter(StoreOp::SetMetadata, path)?;
        if fault == Some(Fault::Hang) {
            self.hang().await
        }
        self.state()
            .paths
            .entry(path.to_owned())
            .or_default()
            .custom
            .extend(custom.iter().map(|(k, v)| (k.clone(), v.clone())));
        match fault {
            Some(Fault::LoseAnswer) => Err(StoreError::Unavailable(format!(
                "`{path}`: the answer was lost (injected)"
            ))),
            Some(Fault::HangAfter) => self.hang().await,
            _ => Ok(()),
        }
    }

    async fn delete_all(&self, path: &str) -> Result<(), StoreError> {
        let fault = self.enter(StoreOp::DeleteAll, path)?;
        if fault == Some(Fault::Hang) {
            self.hang().await
        }
        self.state().paths.remove(path);
        match fault {
            Some(Fault::LoseAnswer) => Err(StoreError::Unavailable(format!(
                "`{path}`: the answer was lost (injected)"
            ))),
            Some(Fault::HangAfter) => self.hang().await,
            _ => Ok(()),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        if self.enter(StoreOp::List, prefix)?.is_some() {
            self.hang().await
        }
        let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
        let base = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let state = self.state();
        let mut keys: Vec<String> = state
            .paths
            .iter()
            .filter(|(_, p)| !p.versions.is_empty())
            .filter_map(|(k, _)| k.strip_prefix(&base))
            .map(|rest| match rest.split_once('/') {
                Some((folder, _)) => format!("{folder}/"),
                None => rest.to_owned(),
            })
            .collect();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn preflight(&self) -> Result<(), StoreError> {
        if self.enter(StoreOp::Preflight, "")?.is_some() {
            self.hang().await
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Secret {
        Secret::new(v.to_owned())
    }

    #[tokio::test]
    async fn check_and_set_and_the_lost_answer_rule() {
        let store = MemoryStore::new();
        let none = BTreeMap::new();
        assert_eq!(store.write_cas("a", &s("1"), &none, 0).await.unwrap(), 1);
        assert!(matches!(
            store.write_cas("a", &s("2"), &none, 0).await,
            Err(StoreError::CasConflict { .. })
        ));
        store.inject(StoreOp::Write, None, Fault::LoseAnswer, 1);
        assert!(store.write_cas("a", &s("2"), &none, 1).await.is_err());
        // The retry of the same write is that write, not a conflict.
        assert_eq!(store.write_cas("a", &s("2"), &none, 1).await.unwrap(), 2);
        assert!(matches!(
            store.write_cas("a", &s("3"), &none, 1).await,
            Err(StoreError::CasConflict { .. })
        ));
        assert_eq!(store.read("a").await.unwrap().version, 2);
        assert_eq!(
            store
                .read_version("a", 1)
                .await
                .unwrap()
                .map(|v| v.expose().to_owned()),
            Some("1".to_owned())
        );
        store.delete_all("a").await.unwrap();
        assert_eq!(store.read("a").await.unwrap(), Entry::default());
    }

    #[tokio::test]
    async fn lists_folders_and_keys() {
        let store = MemoryStore::new();
        store.seed("app/db", "x", &[]);
        store.seed("app/one/two", "x", &[]);
        store.seed("top", "x", &[]);
        assert_eq!(store.list("app").await.unwrap(), ["db", "one/"]);
        assert_eq!(store.list("").await.unwrap(), ["app/", "top"]);
        store.set_down(true);
        assert!(store.read("top").await.is_err());
    }
}
