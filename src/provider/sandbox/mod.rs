//! `sandbox`: a simulated API-key service, in process, with its state in a file so
//! it survives a crash of rekey. It is a simulation for demos, engine tests and
//! benchmarks; it never touches a real system. It keeps SHA-256 digests of the keys
//! it issued (like a real service would keep hashes), never the keys themselves.
//!
//! Failure injection: `settings.failure_rate: { create: 0.1, ... }` (transient
//! failures), `credential settings.fail: verify` (one operation always fails for
//! that credential, to rehearse rollback), `settings.latency: 20ms`,
//! `settings.server_rate: 200` (a server-side token bucket answering 429 with
//! Retry-After), `settings.outage: { after: 10s, for: 30s }` (429 to everything for
//! a while, like a provider's block). `state_file: memory` keeps the state in the
//! process (for benchmarks; a crash loses it).
//!
//! Admin credential (optional): with `settings.admin_sha256` set, every request
//! must carry the admin credential whose `value` (or `password`) has that SHA-256,
//! as a real service authenticates the rotator; a wrong one is refused (fatal).

use super::{Issued, KeyInfo, LastUse, Provider, ProviderError, Target};
use crate::catalog::Kind;
use crate::secret::Secret;
use async_trait::async_trait;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    accounts: BTreeMap<String, Account>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    keys: Vec<Key>,
    /// Single-kind sandboxes (`sandbox_password`): digest of the current password.
    #[serde(default)]
    password_sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Key {
    id: String,
    secret_sha256: String,
    active: bool,
    created_at: u64,
    tag: String,
    /// When a request last presented this key (verify), active or not: what a
    /// real service's "last used" records.
    #[serde(default)]
    last_used: Option<u64>,
}

pub struct Sandbox {
    kind: Kind,
    state_file: PathBuf,
    quota: usize,
    latency: Duration,
    failure_rate: BTreeMap<String, f64>,
    state: Mutex<()>,
    /// `state_file: memory`: the state lives here instead of in a file.
    memory: Option<Mutex<State>>,
    /// 429 to every request between these two instants.
    outage: Option<(std::time::Instant, std::time::Instant)>,
    /// Server-side limit (requests per second), as a real API enforces: beyond
    /// it the sandbox answers "429" with a Retry-After.
    server_rate: Option<f64>,
    bucket: Mutex<(f64, std::time::Instant)>,
    /// Rate-limited answers given, for tests and benchmarks.
    pub rejected: std::sync::atomic::AtomicU64,
    /// SHA-256 (hex) the admin credential must have, when the sandbox asks for one.
    admin_sha256: Option<String>,
    admin: Option<crate::provider::admin::Admin>,
}

fn digest(secret: &Secret) -> String {
    hex::encode(Sha256::digest(secret.expose().as_bytes()))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Sandbox {
    /// A dual-kind sandbox (API keys) or a single-kind one (passwords changed in place).
    pub fn from_settings(
        kind: Kind,
        settings: &IndexMap<String, serde_json::Value>,
    ) -> Result<Sandbox, ProviderError> {
        let text = |k: &str| settings.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let state_file =
            PathBuf::from(text("state_file").unwrap_or_else(|| "target/sandbox/state.json".into()));
        let latency = match text("latency") {
            Some(l) => crate::doc::rate::parse_duration(&l).map_err(ProviderError::Fatal)?,
            None => Duration::from_millis(5),
        };
        let failure_rate = match settings.get("failure_rate") {
            Some(serde_json::Value::Object(m)) => m
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                .collect(),
            _ => BTreeMap::new(),
        };
        let quota = settings.get("quota").and_then(|v| v.as_u64()).unwrap_or(2) as usize;
        let server_rate = settings
            .get("server_rate")
            .and_then(|v| v.as_f64().or_else(|| v.as_str()?.parse().ok()))
            .filter(|r| *r > 0.0);
        let capacity = server_rate.map(|r| r.max(1.0)).unwrap_or(0.0);
        let outage = match settings.get("outage") {
            Some(serde_json::Value::Object(m)) => {
                let field = |k: &str| -> Result<Duration, ProviderError> {
                    let text = m.get(k).and_then(|v| v.as_str()).ok_or_else(|| {
                        ProviderError::Fatal(format!(
                            "sandbox: `outage` needs `{k}` as a duration, e.g. {{ after: 10s, for: 30s }}"
                        ))
                    })?;
                    crate::doc::rate::parse_duration(text).map_err(ProviderError::Fatal)
                };
                let start = std::time::Instant::now() + field("after")?;
                Some((start, start + field("for")?))
            }
            Some(_) => {
                return Err(ProviderError::Fatal(
                    "sandbox: `outage` must be a map, e.g. { after: 10s, for: 30s }".into(),
                ));
            }
            None => None,
        };
        let memory = (state_file.as_os_str() == "memory").then(|| Mutex::new(State::default()));
        Ok(Sandbox {
            kind,
            memory,
            outage,
            state_file,
            quota,
            latency,
            failure_rate,
            state: Mutex::new(()),
            server_rate,
            bucket: Mutex::new((capacity, std::time::Instant::now())),
            rejected: std::sync::atomic::AtomicU64::new(0),
            admin_sha256: text("admin_sha256").map(|h| h.to_ascii_lowercase()),
            admin: None,
        })
    }

    /// The admin credential the playbook gave (see the module documentation).
    pub fn with_admin(mut self, admin: Option<crate::provider::admin::Admin>) -> Sandbox {
        self.admin = admin;
        self
    }

    fn load(&self) -> Result<State, ProviderError> {
        match std::fs::read(&self.state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ProviderError::Fatal(format!(
                    "sandbox state {} is corrupt: {e}",
                    self.state_file.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(ProviderError::Transient(format!(
                "cannot read sandbox state {}: {e}",
                self.state_file.display()
            ))),
        }
    }

    /// An exclusive lock on `<state_file>.lock`, held while the state is read,
    /// changed and written: several rekey processes (the runners of one zone)
    /// share one state file as they would share one real service.
    fn lock_file(&self) -> Result<std::fs::File, ProviderError> {
        let mut name = self.state_file.clone().into_os_string();
        name.push(".lock");
        let fail = |e: std::io::Error| {
            ProviderError::Transient(format!(
                "cannot lock sandbox state {}: {e}",
                self.state_file.display()
            ))
        };
        if let Some(dir) = self.state_file.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(name)
            .map_err(fail)?;
        file.lock().map_err(fail)?;
        Ok(file)
    }

    /// Writes the state durably and atomically: a crash leaves the old or the new file.
    fn save(&self, state: &State) -> Result<(), ProviderError> {
        use std::io::Write;
        let fail = |e: std::io::Error| {
            ProviderError::Transient(format!(
                "cannot write sandbox state {}: {e}",
                self.state_file.display()
            ))
        };
        if let Some(dir) = self.state_file.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let tmp = self.state_file.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(fail)?;
        f.write_all(&serde_json::to_vec_pretty(state).unwrap_or_default())
            .map_err(fail)?;
        f.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, &self.state_file).map_err(fail)
    }

    /// The server's token bucket: one token per request, refilled at `server_rate`.
    fn admit(&self) -> Result<(), ProviderError> {
        if let Some((start, end)) = self.outage {
            let now = std::time::Instant::now();
            if start <= now && now < end {
                self.rejected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(ProviderError::RateLimited {
                    retry_after: Some(Duration::from_secs(1)),
                    message: "sandbox: 429 Too Many Requests (blocked)".into(),
                });
            }
        }
        let Some(rate) = self.server_rate else {
            return Ok(());
        };
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let capacity = rate.max(1.0);
        bucket.0 = (bucket.0 + now.duration_since(bucket.1).as_secs_f64() * rate).min(capacity);
        bucket.1 = now;
        if bucket.0 >= 1.0 {
            bucket.0 -= 1.0;
            return Ok(());
        }
        self.rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let wait = Duration::from_secs_f64((1.0 - bucket.0) / rate);
        Err(ProviderError::RateLimited {
            retry_after: Some(wait),
            message: "sandbox: 429 Too Many Requests".into(),
        })
    }

    /// Simulated network: server rate limit, latency, injected failures.
    async fn call(&self, op: &str, target: Target<'_>) -> Result<(), ProviderError> {
        self.admit()?;
        if let Some(expected) = &self.admin_sha256 {
            let given = match &self.admin {
                Some(a) => a.require(&["value", "password"])?,
                None => {
                    return Err(ProviderError::Fatal(
                        "sandbox: this sandbox requires an admin credential (settings.admin_sha256); add `admin:` to the provider instance".into(),
                    ));
                }
            };
            if &digest(given) != expected {
                return Err(ProviderError::Fatal(
                    "sandbox: 401 the admin credential was refused".into(),
                ));
            }
        }
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if target.settings.get("fail").and_then(|v| v.as_str()) == Some(op) {
            return Err(ProviderError::Fatal(format!(
                "sandbox: injected failure of `{op}` for {}",
                target.credential
            )));
        }
        if let Some(p) = self.failure_rate.get(op)
            && rand::random::<f64>() < *p
        {
            return Err(ProviderError::Transient(format!(
                "sandbox: injected transient failure of `{op}`"
            )));
        }
        Ok(())
    }

    fn with_account<T>(
        &self,
        target: Target<'_>,
        f: impl FnOnce(&mut Account) -> Result<(T, bool), ProviderError>,
    ) -> Result<T, ProviderError> {
        let account = target
            .account
            .ok_or_else(|| ProviderError::Fatal("sandbox credentials need an account".into()))?;
        if let Some(memory) = &self.memory {
            let mut state = memory.lock().unwrap_or_else(|e| e.into_inner());
            return f(state.accounts.entry(account.to_owned()).or_default()).map(|(v, _)| v);
        }
        let _guard = self
            .state
            .lock()
            .map_err(|_| ProviderError::Fatal("sandbox state lock poisoned".into()))?;
        let _file_lock = self.lock_file()?;
        let mut state = self.load()?;
        let (value, changed) = f(state.accounts.entry(account.to_owned()).or_default())?;
        if changed {
            self.save(&state)?;
        }
        Ok(value)
    }
}

#[async_trait]
impl Provider for Sandbox {
    async fn preflight(&self, target: Target<'_>) -> Result<(), ProviderError> {
        self.call("preflight", target).await?;
        let quota = self.quota;
        self.with_account(target, |a| {
            let inactive = a.keys.iter().filter(|k| !k.active).count();
            if a.keys.len() >= quota && inactive == 0 {
                return Err(ProviderError::Fatal(format!(
                    "quota full: {} active keys of {quota}; delete one by hand",
                    a.keys.len()
                )));
            }
            Ok(((), false))
        })
    }

    async fn list(&self, target: Target<'_>) -> Result<Vec<KeyInfo>, ProviderError> {
        self.call("list", target).await?;
        self.with_account(target, |a| {
            let keys = a
                .keys
                .iter()
                .map(|k| KeyInfo {
                    id: k.id.clone(),
                    active: k.active,
                    created_at: Some(k.created_at),
                    tag: Some(k.tag.clone()),
                })
                .collect();
            Ok((keys, false))
        })
    }

    async fn create(&self, target: Target<'_>, tag: &str) -> Result<Issued, ProviderError> {
        self.call("create", target).await?;
        let quota = self.quota;
        self.with_account(target, |a| {
            if a.keys.len() >= quota {
                return Err(ProviderError::Fatal(format!(
                    "LimitExceeded: the account already holds {quota} keys"
                )));
            }
            let secret = Secret::generate(
                40,
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            );
            let id = format!("sbx-{}", hex::encode(rand::random::<[u8; 6]>()));
            a.keys.push(Key {
                id: id.clone(),
                secret_sha256: digest(&secret),
                active: true,
                created_at: now(),
                tag: tag.to_owned(),
                last_used: None,
            });
            Ok((Issued::new(id, secret), true))
        })
    }

    async fn change(&self, target: Target<'_>, new: &Secret) -> Result<(), ProviderError> {
        if self.kind != Kind::Single {
            return Err(ProviderError::Fatal(
                "this sandbox issues keys; it does not change values in place".into(),
            ));
        }
        self.call("change", target).await?;
        let d = digest(new);
        self.with_account(target, |a| {
            a.password_sha256 = Some(d);
            Ok(((), true))
        })
    }

    async fn verify(
        &self,
        target: Target<'_>,
        key_id: Option<&str>,
        secret: &Secret,
    ) -> Result<bool, ProviderError> {
        self.call("verify", target).await?;
        let d = digest(secret);
        let single = self.kind == Kind::Single;
        self.with_account(target, |a| {
            if single {
                return Ok((a.password_sha256.as_deref() == Some(d.as_str()), false));
            }
            // The key presented is used, whether it is accepted or not.
            let Some(k) = a.keys.iter_mut().find(|k| Some(k.id.as_str()) == key_id) else {
                return Ok((false, false));
            };
            k.last_used = Some(now());
            Ok((k.active && k.secret_sha256 == d, true))
        })
    }

    fn lists_accounts(&self) -> bool {
        true
    }

    /// The accounts the sandbox holds keys or a password for.
    async fn list_accounts(&self) -> Result<Vec<String>, ProviderError> {
        self.admit()?;
        if let Some(memory) = &self.memory {
            let state = memory.lock().unwrap_or_else(|e| e.into_inner());
            return Ok(state.accounts.keys().cloned().collect());
        }
        let _guard = self
            .state
            .lock()
            .map_err(|_| ProviderError::Fatal("sandbox state lock poisoned".into()))?;
        let _file_lock = self.lock_file()?;
        Ok(self.load()?.accounts.keys().cloned().collect())
    }

    async fn last_used(&self, target: Target<'_>, key_id: &str) -> Result<LastUse, ProviderError> {
        self.call("last_used", target).await?;
        self.with_account(target, |a| {
            let used = match a.keys.iter().find(|k| k.id == key_id) {
                Some(k) => k.last_used.map_or(LastUse::Never, LastUse::At),
                None => LastUse::Gone,
            };
            Ok((used, false))
        })
    }

    async fn deactivate(&self, target: Target<'_>, key_id: &str) -> Result<(), ProviderError> {
        self.call("deactivate", target).await?;
        self.with_account(target, |a| {
            match a.keys.iter_mut().find(|k| k.id == key_id) {
                Some(k) => {
                    k.active = false;
                    Ok(((), true))
                }
                None => Ok(((), false)),
            }
        })
    }

    async fn revoke(&self, target: Target<'_>, key_id: &str) -> Result<(), ProviderError> {
        self.call("revoke", target).await?;
        self.with_account(target, |a| {
            let before = a.keys.len();
            a.keys.retain(|k| k.id != key_id);
            Ok(((), a.keys.len() != before))
        })
    }
}
