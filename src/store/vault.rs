//! [`VaultStore`]: the KV version 2 engine of Vault or OpenBao, through vaultrs 0.8.
//!
//! vaultrs does the KV calls and the AppRole login. Four calls go around it, through
//! the same HTTP client (same TLS settings, timeout and token): the health check
//! (vaultrs's `sys::health` cannot parse OpenBao's answer), the token check (its
//! answer holds the token, so rekey reads only the status and wipes the body), the
//! mount check (vaultrs has no call for `sys/internal/ui/mounts`, the one mount
//! endpoint a non-root token may read) and the metadata merge (vaultrs has no `PATCH`).
//!
//! Invariant: no message built here contains a secret value or a token. Errors are
//! classified from status codes and transport causes; the text and bodies vaultrs
//! errors carry are never formatted (their `Debug` holds response bodies, and with
//! `RUST_BACKTRACE=1` a backtrace too).
//!
//! Invariant: a `VaultStore` touches no path before it has seen that its mount is
//! KV version 2. On a KV version 1 mount the same requests would succeed and mean
//! something else (a "write" to `secret/data/app` would create a key named
//! `data/app`).

use super::{Entry, Metadata, SecretStore, StoreError, answer};
use crate::secret::Secret;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::OnceCell;
use tracing::debug;
use vaultrs::api::kv2::requests::{ReadSecretRequest, SetSecretRequest, SetSecretRequestOptions};
use vaultrs::client::{Client, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

/// Longest wait for one request, connection included: long enough for a loaded
/// server, short enough that a black-holed address becomes a retryable error
/// instead of a hung rotation.
/// How long one Vault request may take. Vault answers in milliseconds; a request
/// that takes longer is stuck (a hung server, a dead proxy), and the engine's
/// retries and circuit breaker take it from there.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times `read` re-reads an entry that changes between its data and
/// metadata reads (see `read`).
const READ_ATTEMPTS: usize = 3;

/// What the `address` setter of vaultrs's settings builder is given before the real
/// address replaces it: the setter panics on a malformed URL, so rekey parses the
/// configured address itself.
const PLACEHOLDER_ADDRESS: &str = "http://127.0.0.1:8200";

/// Where the store is and how to log in. Built from the playbook's `vault` section
/// with the secrets taken from the environment.
#[derive(Clone, Debug)]
pub struct VaultConfig {
    /// `https://vault.example.com:8200` (`http://` only on loopback, hopefully).
    pub address: String,
    /// The KV version 2 mount, e.g. `secret` (OpenBao and Vault dev servers mount one
    /// there).
    pub mount: String,
    /// Vault Enterprise / OpenBao namespace, sent with every request.
    pub namespace: Option<String>,
    /// A PEM file of CA certificates to trust in addition to the system's. TLS
    /// verification is always on; this is the only way to widen it.
    pub ca_file: Option<PathBuf>,
    pub auth: VaultLogin,
}

/// How the store gets its token.
#[derive(Clone, Debug)]
pub enum VaultLogin {
    /// A token given as is.
    Token(Secret),
    /// AppRole login at `auth/<mount>` when connecting; the returned client token is
    /// used from then on.
    AppRole {
        mount: String,
        role_id: String,
        secret_id: Secret,
    },
}

/// A KV version 2 mount of a Vault or OpenBao server.
pub struct VaultStore {
    /// Holds the token (vaultrs keeps it in two plain `String`s: settings and
    /// middleware). Its `Debug` would print it, which is why `VaultStore` has its own.
    client: VaultClient,
    /// The address as messages show it, without a trailing `/`.
    address: String,
    mount: String,
    namespace: Option<String>,
    /// Set once the mount was seen to be KV version 2 (see the module invariant).
    mount_checked: OnceCell<()>,
}

impl fmt::Debug for VaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultStore")
            .field("address", &self.address)
            .field("mount", &self.mount)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl VaultStore {
    /// Builds the client and, for AppRole, logs in. A token is not checked here (no
    /// request is made): `preflight` does that.
    pub async fn connect(config: &VaultConfig) -> Result<VaultStore, StoreError> {
        let address = config.address.trim().trim_end_matches('/').to_owned();
        let parsed = crate::net::parse_endpoint(&address).map_err(|why| {
            StoreError::Invalid(format!(
                "`{address}` is not a Vault address rekey may send a token to: {why}"
            ))
        })?;
        let is_https = parsed.scheme() == "https";
        let mount = config.mount.trim_matches('/').to_owned();
        if let Some(why) = path_problem(&mount) {
            return Err(StoreError::Invalid(format!(
                "`{}` is not a KV mount path ({why}): name the KV version 2 mount, e.g. `secret`",
                config.mount
            )));
        }
        // vaultrs puts the namespace and the token into headers with
        // `HeaderValue::from_str(..).unwrap()`: anything but visible ASCII would panic
        // inside it, so refuse such values here (a token read from a file with its
        // trailing newline is the usual case).
        if let Some(namespace) = &config.namespace
            && !is_header_safe(namespace)
        {
            return Err(StoreError::Invalid(format!(
                "the namespace `{}` holds characters a header cannot carry: check `vault.namespace`",
                namespace.escape_debug()
            )));
        }
        let token = match &config.auth {
            VaultLogin::Token(token) if !is_header_safe(token.expose()) => {
                return Err(StoreError::Invalid(
                    "the Vault token is empty or holds spaces, a newline or other characters a token cannot hold: set the variable to the token alone".into(),
                ));
            }
            VaultLogin::Token(token) => token.expose(),
            VaultLogin::AppRole { .. } => "",
        };
        let mut ca_certs = Vec::new();
        if let Some(ca_file) = &config.ca_file {
            if !is_https {
                return Err(StoreError::Invalid(format!(
                    "a CA file is set but `{address}` is plain http, so it would not be used: write the address with `https://`"
                )));
            }
            ca_certs.push(check_ca_file(ca_file).await?);
        }

        // Every setting is given explicitly: the builder's defaults read VAULT_ADDR,
        // VAULT_TOKEN, VAULT_CACERT, VAULT_CAPATH, VAULT_SKIP_VERIFY and
        // VAULT_CLIENT_CERT, and rekey's configuration must not change behind its back
        // (VAULT_SKIP_VERIFY=true would turn TLS verification off).
        let mut settings = VaultClientSettingsBuilder::default()
            .address(PLACEHOLDER_ADDRESS)
            .token(token)
            .ca_certs(ca_certs)
            .identity(None)
            .verify(true)
            .timeout(Some(REQUEST_TIMEOUT))
            .namespace(config.namespace.clone())
            .build()
            .map_err(|e| {
                StoreError::Invalid(format!(
                    "cannot configure the Vault client for `{address}`: {e}"
                ))
            })?;
        settings.address = address.parse().map_err(|_| {
            StoreError::Invalid(format!("`{address}` is not a valid URL: write it as `https://host:port`, e.g. `https://vault.example.com:8200`"))
        })?;
        let mut client = VaultClient::new(settings).map_err(|e| match e {
            ClientError::FileReadError { path, .. } | ClientError::ParseCertificateError { path, .. } => {
                StoreError::Invalid(format!("cannot use `{path}` as CA file: it must be readable PEM certificates; check `vault.ca_file`"))
            }
            // The remaining failure is reqwest refusing its configuration: a local
            // problem (e.g. the TLS backend), not the server's.
            _ => StoreError::Invalid(format!("cannot build an HTTP client for `{address}`: {e}")),
        })?;
        // vaultrs's HTTP client follows redirects anywhere, with the token header
        // (reqwest keeps custom headers across origins): the same client with the
        // same-origin redirect policy replaces it.
        client.http.http =
            same_origin_client(is_https, &client.settings.ca_certs).map_err(|e| {
                StoreError::Invalid(format!("cannot build an HTTP client for `{address}`: {e}"))
            })?;

        let mut store = VaultStore {
            client,
            address,
            mount,
            namespace: config.namespace.clone(),
            mount_checked: OnceCell::new(),
        };
        if let VaultLogin::AppRole {
            mount: auth_mount,
            role_id,
            secret_id,
        } = &config.auth
        {
            store
                .log_in_with_approle(auth_mount, role_id, secret_id)
                .await?;
        }
        Ok(store)
    }

    /// Exchanges the role-id and secret-id for a client token and uses it from now on.
    async fn log_in_with_approle(
        &mut self,
        auth_mount: &str,
        role_id: &str,
        secret_id: &Secret,
    ) -> Result<(), StoreError> {
        let auth_mount = auth_mount.trim_matches('/');
        if let Some(why) = path_problem(auth_mount) {
            return Err(StoreError::Invalid(format!(
                "`{auth_mount}` is not an auth mount path ({why}): name the AppRole mount, e.g. `approle`"
            )));
        }
        let call = Call {
            store: self,
            action: Action::LogIn,
            target: format!("auth/{auth_mount}"),
            policy: None,
        };
        let auth =
            vaultrs::auth::approle::login(&self.client, auth_mount, role_id, secret_id.expose())
                .await
                .map_err(|e| call.fail(&e))?;
        // Straight into a `Secret`, so the only other copies are the two vaultrs keeps.
        let token = Secret::new(auth.client_token);
        if !is_header_safe(token.expose()) {
            return Err(call.unreadable());
        }
        self.client.set_token(token.expose());
        debug!(address = %self.address, mount = auth_mount, policies = ?auth.policies, "Logged in with AppRole.");
        Ok(())
    }

    /// Describes a call on `path` for error messages, checking the path first.
    fn call(&self, action: Action, path: &str) -> Result<Call<'_>, StoreError> {
        let target = if path.is_empty() {
            self.mount.clone()
        } else {
            format!("{}/{path}", self.mount)
        };
        if let (false, Some(why)) = (
            path.is_empty() && action == Action::List,
            path_problem(path),
        ) {
            return Err(StoreError::Invalid(format!(
                "`{target}` is not a usable KV path ({why}): rekey expects paths like `app/db`, relative to the mount `{}`",
                self.mount
            )));
        }
        let policy = action.capability().map(|capability| {
            (
                capability,
                format!("{}/{}/{path}", self.mount, action.api_kind()),
            )
        });
        Ok(Call {
            store: self,
            action,
            target,
            policy,
        })
    }

    /// Makes sure the mount is KV version 2 before the first request that uses it.
    /// A failure is not remembered: the next call checks again.
    async fn ensure_kv2(&self) -> Result<(), StoreError> {
        self.mount_checked
            .get_or_try_init(|| self.check_mount())
            .await
            .map(|_| ())
    }

    /// [`Self::ensure_kv2`] on behalf of `call`, whose path the message names first.
    async fn ensure_kv2_for(&self, call: &Call<'_>) -> Result<(), StoreError> {
        self.ensure_kv2().await.map_err(|error| {
            let before = format!("cannot {} `{}`: ", call.action.verb(), call.target);
            match error {
                StoreError::Unauthorized(m) => StoreError::Unauthorized(before + &m),
                StoreError::Unavailable(m) => StoreError::Unavailable(before + &m),
                StoreError::Invalid(m) => StoreError::Invalid(before + &m),
                other @ StoreError::CasConflict { .. } => other,
            }
        })
    }

    async fn check_mount(&self) -> Result<(), StoreError> {
        let call = Call {
            store: self,
            action: Action::CheckMount,
            target: self.mount.clone(),
            policy: Some(("any of read, list, create", format!("{}/*", self.mount))),
        };
        let answer = self
            .raw(
                Verb::Get,
                &format!("sys/internal/ui/mounts/{}", self.mount),
                None,
                true,
            )
            .await
            .map_err(|t| call.fail_with(Failure::Transport(t)))?;
        if answer.status != 200 {
            return Err(call.fail_with(Failure::Status {
                code: answer.status,
            }));
        }
        let info = answer::mount_answer(&answer.body).ok_or_else(|| call.unreadable())?;
        let found = info.path.as_str();
        if found != self.mount {
            return Err(StoreError::Invalid(format!(
                "`{}` is not a mount but a folder of the mount `{found}`: set the mount to `{found}` and write paths relative to it",
                self.mount
            )));
        }
        let version = info.version.as_str();
        if info.kind != "kv" || version != "2" {
            let what = if info.kind == "kv" {
                format!("KV version {version}")
            } else {
                format!("a `{}` engine", info.kind)
            };
            return Err(StoreError::Invalid(format!(
                "`{}` on {} is {what}, not KV version 2: point rekey at a KV version 2 mount (or upgrade this one with `bao kv enable-versioning {}`)",
                self.mount, self.address, self.mount
            )));
        }
        debug!(address = %self.address, mount = %self.mount, "The mount is KV version 2.");
        Ok(())
    }

    /// One request outside vaultrs, through its HTTP client. The body comes back in a
    /// buffer that is wiped when dropped (lookup-self answers hold the token).
    async fn raw(
        &self,
        verb: Verb,
        api_path: &str,
        json: Option<&Value>,
        authenticated: bool,
    ) -> Result<RawAnswer, Transport> {
        let http = &self.client.http.http;
        let url = format!("{}/v1/{api_path}", self.address);
        let mut request = match verb {
            Verb::Get => http.get(&url),
            Verb::Patch => http
                .patch(&url)
                .header("Content-Type", "application/merge-patch+json"),
            Verb::Post => http.post(&url).header("Content-Type", "application/json"),
        };
        request = request.header("X-Vault-Request", "true");
        if authenticated {
            request = request.header("X-Vault-Token", self.client.settings.token.as_str());
            if let Some(namespace) = &self.namespace {
                request = request.header("X-Vault-Namespace", namespace.as_str());
            }
        }
        if let Some(json) = json {
            request = request.body(json.to_string());
        }
        let response = request.send().await.map_err(|e| Transport::of(&e))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| Transport::of(&e))?;
        Ok(RawAnswer {
            status,
            body: Zeroizing::new(body.to_vec()),
        })
    }

    async fn check_health(&self) -> Result<(), StoreError> {
        let call = Call {
            store: self,
            action: Action::CheckHealth,
            target: "sys/health".into(),
            policy: None,
        };
        let answer = self
            .raw(Verb::Get, "sys/health", None, false)
            .await
            .map_err(|t| call.fail_with(Failure::Transport(t)))?;
        let address = &self.address;
        match answer.status {
            // Active; unsealed standby; performance standby. Standbys forward requests.
            200 | 429 | 473 => {
                let version = answer::health_version(&answer.body);
                debug!(address = %address, version = version.as_deref().unwrap_or("?"), "Vault is up and unsealed.");
                Ok(())
            }
            503 => Err(StoreError::Unavailable(format!(
                "{address} is sealed: unseal it (`bao operator unseal`), then retry"
            ))),
            501 => Err(StoreError::Invalid(format!(
                "{address} is not initialized: initialize and unseal it, or check `vault.address`"
            ))),
            472 => Err(StoreError::Invalid(format!(
                "{address} is a disaster-recovery secondary and serves no secrets: point `vault.address` at the primary cluster"
            ))),
            code => Err(call.fail_with(Failure::Status { code })),
        }
    }

    /// Who the token belongs to, for the audit trail: its entity id and display
    /// name from `lookup-self`, or `None` when Vault does not say. Only those two
    /// fields are read from the answer (which also holds the token); the buffer is
    /// wiped on drop.
    pub async fn identity(&self) -> Option<(Option<String>, Option<String>)> {
        let answer = self
            .raw(Verb::Get, "auth/token/lookup-self", None, true)
            .await
            .ok()?;
        if answer.status != 200 {
            return None;
        }
        answer::identity_answer(&answer.body)
    }

    async fn check_token(&self) -> Result<(), StoreError> {
        let call = Call {
            store: self,
            action: Action::CheckToken,
            target: "auth/token/lookup-self".into(),
            policy: None,
        };
        let answer = self
            .raw(Verb::Get, "auth/token/lookup-self", None, true)
            .await
            .map_err(|t| call.fail_with(Failure::Transport(t)))?;
        // The answer holds the token itself; it is only counted as a yes and wiped.
        match answer.status {
            200 => Ok(()),
            code => Err(call.fail_with(Failure::Status { code })),
        }
    }
}

#[async_trait::async_trait]
impl SecretStore for VaultStore {
    #[tracing::instrument(level = "debug", skip_all, fields(path = %path))]
    async fn read(&self, path: &str) -> Result<Entry, StoreError> {
        let call = self.call(Action::Read, path)?;
        self.ensure_kv2_for(&call).await?;
        // A soft-deleted or destroyed latest version answers 404 without its version
        // number; the metadata has it. If a new version lands between the two reads,
        // the metadata's current version is live again: read once more rather than
        // report a version whose value rekey did not see (a write naming it would
        // overwrite that value unseen).
        for _ in 0..READ_ATTEMPTS {
            let request = ReadSecretRequest::builder()
                .mount(&self.mount)
                .path(path)
                .build()
                .expect("mount and path are set");
            let error = match vaultrs::api::exec_with_result(&self.client, request).await {
                Ok(answer) => {
                    let version = answer.metadata.version;
                    let entry = answer::entry_from_data(
                        answer.data,
                        version,
                        answer.metadata.custom_metadata,
                    )
                    .map_err(|bad| call.bad_entry(&bad, version))?;
                    debug!(path = %call.target, version = entry.version, "Read entry.");
                    return Ok(entry);
                }
                Err(e) => e,
            };
            if is_absent(&error) {
                return Ok(Entry::default());
            }
            if !is_deleted_version(&error) {
                return Err(call.fail(&error));
            }
            let metadata = match vaultrs::kv2::read_metadata(&self.client, &self.mount, path).await
            {
                Ok(metadata) => metadata,
                // Deleted with its metadata in between: absent now.
                Err(e) if is_absent(&e) => return Ok(Entry::default()),
                Err(e) => {
                    let metadata_call = Call {
                        policy: Some(("read", format!("{}/metadata/{path}", self.mount))),
                        target: call.target.clone(),
                        ..call
                    };
                    return Err(metadata_call.fail(&e));
                }
            };
            if let Some(entry) = answer::deleted_latest(metadata) {
                debug!(path = %call.target, version = entry.version, "The latest version is deleted.");
                return Ok(entry);
            }
        }
        Err(StoreError::Unavailable(format!(
            "`{}` kept changing while rekey read it ({READ_ATTEMPTS} attempts): something else is writing it; find out what, then retry",
            call.target
        )))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(path = %path))]
    async fn metadata(&self, path: &str) -> Result<Metadata, StoreError> {
        let call = self.call(Action::ReadMetadata, path)?;
        self.ensure_kv2_for(&call).await?;
        let metadata = match vaultrs::kv2::read_metadata(&self.client, &self.mount, path).await {
            Ok(m) => m,
            Err(e) if is_absent(&e) => return Ok(Metadata::default()),
            Err(e) => return Err(call.fail(&e)),
        };
        let current = metadata.versions.get(&metadata.current_version.to_string());
        Ok(Metadata {
            current_version: metadata.current_version,
            current_created: current.and_then(|v| rfc3339_seconds(&v.created_time)),
            current_deleted: current.is_some_and(|v| v.destroyed || !v.deletion_time.is_empty()),
            custom_metadata: metadata
                .custom_metadata
                .unwrap_or_default()
                .into_iter()
                .collect(),
        })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(prefix = %prefix))]
    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        #[derive(Deserialize)]
        struct Answer {
            data: Keys,
        }
        #[derive(Deserialize)]
        struct Keys {
            #[serde(default)]
            keys: Vec<String>,
        }
        let prefix = prefix.trim_matches('/');
        let call = self.call(Action::List, prefix)?;
        self.ensure_kv2_for(&call).await?;
        // OpenBao pages a LIST with `after` and `limit`; Vault ignores both and
        // answers every key, which is cut here to the same page.
        let query = {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("list", "true");
            query.append_pair("limit", &limit.to_string());
            if let Some(a) = after {
                query.append_pair("after", a);
            }
            query.finish()
        };
        let folder = if prefix.is_empty() {
            String::new()
        } else {
            format!("/{prefix}")
        };
        let api_path = format!("{}/metadata{folder}?{query}", self.mount);
        let answer = self
            .raw(Verb::Get, &api_path, None, true)
            .await
            .map_err(|t| call.fail_with(Failure::Transport(t)))?;
        match answer.status {
            200 => {}
            404 => return Ok(Vec::new()),
            code => return Err(call.fail_with(Failure::Status { code })),
        }
        let mut keys = serde_json::from_slice::<Answer>(&answer.body)
            .map_err(|_| call.unreadable())?
            .data
            .keys;
        keys.sort();
        keys.retain(|k| after.is_none_or(|a| k.as_str() > a));
        keys.truncate(limit);
        Ok(keys)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(path = %path, version))]
    async fn read_version(&self, path: &str, version: u64) -> Result<Option<Secret>, StoreError> {
        let call = self.call(Action::ReadVersion, path)?;
        // Vault reads `?version=0` as "the latest": asking for version 0 must not
        // return the newest value (a rollback would then "restore" the new value).
        if version == 0 {
            return Ok(None);
        }
        self.ensure_kv2_for(&call).await?;
        let request = ReadSecretRequest::builder()
            .mount(&self.mount)
            .path(path)
            .version(Some(version))
            .build()
            .expect("mount, path and version are set");
        match vaultrs::api::exec_with_result(&self.client, request).await {
            Ok(answer) if answer.metadata.version == version => {
                Ok(answer::entry_from_data(answer.data, version, None)
                    .map_err(|bad| call.bad_entry(&bad, version))?
                    .value)
            }
            Ok(_) => Err(call.unreadable()),
            Err(e) if is_absent(&e) || is_deleted_version(&e) => Ok(None),
            Err(e) => Err(call.fail(&e)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(path = %path, cas))]
    async fn write_cas(
        &self,
        path: &str,
        value: &Secret,
        fields: &BTreeMap<String, String>,
        cas: u64,
    ) -> Result<u64, StoreError> {
        let call = self.call(Action::Write, path)?;
        if fields.contains_key("value") {
            return Err(StoreError::Invalid(format!(
                "the fields to write to `{}` include `value`, which is where the secret goes: rename that field",
                call.target
            )));
        }
        // vaultrs sends the check-and-set version as a u32.
        let Ok(cas32) = u32::try_from(cas) else {
            return Err(StoreError::Invalid(format!(
                "version {cas} of `{}` is beyond what rekey can name in a check-and-set write",
                call.target
            )));
        };
        self.ensure_kv2_for(&call).await?;
        let mut data = Map::with_capacity(fields.len() + 1);
        data.insert("value".into(), Value::String(value.expose().to_owned()));
        for (key, field) in fields {
            data.insert(key.clone(), Value::String(field.clone()));
        }
        let request = SetSecretRequest::builder()
            .mount(&self.mount)
            .path(path)
            .data(Value::Object(data))
            .options(SetSecretRequestOptions { cas: cas32 })
            .build()
            .expect("mount, path and data are set");
        match vaultrs::api::exec_with_result(&self.client, request).await {
            Ok(written) => {
                debug!(path = %call.target, version = written.version, "Wrote a new version.");
                Ok(written.version)
            }
            Err(ClientError::APIError { code: 400, errors })
                if errors.iter().any(|e| e.contains("check-and-set")) =>
            {
                // An earlier attempt of this very write may have been applied though
                // its answer was lost (a timeout, then a retry): then the version
                // after `cas` holds exactly this entry, and it is not a conflict.
                match self.read(path).await {
                    Ok(e)
                        if e.version == cas + 1
                            && e.value.as_ref() == Some(value)
                            && &e.fields == fields =>
                    {
                        debug!(path = %call.target, version = e.version, "The write was already applied.");
                        Ok(e.version)
                    }
                    _ => Err(StoreError::CasConflict {
                        path: call.target,
                        expected: cas,
                    }),
                }
            }
            Err(e) => Err(call.fail(&e)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(path = %path))]
    async fn set_metadata(
        &self,
        path: &str,
        custom: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let call = self.call(Action::SetMetadata, path)?;
        if custom.is_empty() {
            return Ok(());
        }
        self.ensure_kv2_for(&call).await?;
        // PATCH merges into the existing custom metadata (POST would replace it all
        // and drop the keys others put there).
        let patch = serde_json::json!({ "custom_metadata": custom });
        let answer = self
            .raw(
                Verb::Patch,
                &format!("{}/metadata/{path}", self.mount),
                Some(&patch),
                true,
            )
            .await
            .map_err(|t| call.fail_with(Failure::Transport(t)))?;
        match answer.status {
            200 | 204 => {}
            // PATCH needs existing metadata; POST creates it, and there is nothing to
            // merge with.
            404 => {
                let custom: HashMap<String, String> =
                    custom.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                let mut request = vaultrs::api::kv2::requests::SetSecretMetadataRequest::builder();
                request.custom_metadata(custom);
                vaultrs::kv2::set_metadata(&self.client, &self.mount, path, Some(&mut request))
                    .await
                    .map_err(|e| call.fail(&e))?;
            }
            code => return Err(call.fail_with(Failure::Status { code })),
        }
        debug!(path = %call.target, keys = custom.len(), "Set custom metadata.");
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(path = %path))]
    async fn delete_all(&self, path: &str) -> Result<(), StoreError> {
        let call = self.call(Action::DeleteAll, path)?;
        self.ensure_kv2_for(&call).await?;
        match vaultrs::kv2::delete_metadata(&self.client, &self.mount, path).await {
            Ok(()) => {
                debug!(path = %call.target, "Deleted every version and the metadata.");
                Ok(())
            }
            Err(e) if is_absent(&e) => Ok(()),
            Err(e) => Err(call.fail(&e)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(prefix = %prefix))]
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        // `app/` and `app` name the same folder.
        let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
        let call = self.call(Action::List, prefix)?;
        self.ensure_kv2_for(&call).await?;
        match vaultrs::kv2::list(&self.client, &self.mount, prefix).await {
            Ok(mut keys) => {
                keys.sort();
                Ok(keys)
            }
            Err(e) if is_absent(&e) => Ok(Vec::new()),
            Err(e) => Err(call.fail(&e)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(address = %self.address, mount = %self.mount))]
    async fn check_access(&self, paths: &[String], staging_prefix: &str) -> Result<(), StoreError> {
        // What the token may do on each API path (`sys/capabilities-self`, any token
        // may ask about itself). A probe path under the staging prefix stands for
        // every staging entry a run writes and deletes.
        let staging = staging_prefix.trim_matches('/');
        let probe = format!("{staging}/rekey-access-check");
        let mut wanted: Vec<(String, &[&str])> = vec![
            (
                format!("{}/data/{probe}", self.mount),
                &["create", "update", "read"],
            ),
            (format!("{}/metadata/{probe}", self.mount), &["delete"]),
        ];
        for path in paths {
            wanted.push((format!("{}/data/{path}", self.mount), &["read", "update"]));
        }
        let mut missing = Vec::new();
        for chunk in wanted.chunks(200) {
            let body =
                serde_json::json!({ "paths": chunk.iter().map(|(p, _)| p).collect::<Vec<_>>() });
            let call = Call {
                store: self,
                action: Action::CheckToken,
                target: "sys/capabilities-self".into(),
                policy: None,
            };
            let answer = self
                .raw(Verb::Post, "sys/capabilities-self", Some(&body), true)
                .await
                .map_err(|t| call.fail_with(Failure::Transport(t)))?;
            if answer.status != 200 {
                return Err(call.fail_with(Failure::Status {
                    code: answer.status,
                }));
            }
            let granted: Value =
                serde_json::from_slice(&answer.body).map_err(|_| call.unreadable())?;
            // OpenBao and Vault answer at the top level and under `data`.
            let granted = granted
                .get("data")
                .filter(|d| d.is_object())
                .unwrap_or(&granted);
            for (path, needs) in chunk {
                let has: Vec<&str> = granted
                    .get(path)
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if has.contains(&"root") {
                    continue;
                }
                let lacking: Vec<&str> =
                    needs.iter().copied().filter(|n| !has.contains(n)).collect();
                if !lacking.is_empty() {
                    missing.push(format!("{} on `{path}`", lacking.join("+")));
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let shown = missing.len().min(5);
        Err(StoreError::Unauthorized(format!(
            "the Vault token at {} may not do what the run needs: it lacks {}{}; give its policy those capabilities (or run with another token), then run again: nothing was changed",
            self.address,
            missing[..shown].join(", "),
            if missing.len() > shown {
                format!(" and {} more", missing.len() - shown)
            } else {
                String::new()
            }
        )))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(address = %self.address, mount = %self.mount))]
    async fn preflight(&self) -> Result<(), StoreError> {
        // In this order so each failure is explained by the first thing that is wrong:
        // an unreachable server is not a bad token, and a bad token is not a bad mount.
        self.check_health().await?;
        self.check_token().await?;
        self.ensure_kv2().await
    }
}

/// Seconds since the Unix epoch of an RFC 3339 time as Vault writes it
/// (`2026-11-28T09:12:44.123456789Z`).
fn rfc3339_seconds(text: &str) -> Option<u64> {
    humantime::parse_rfc3339_weak(text.trim().trim_end_matches('Z'))
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// A 404 with an empty error list: nothing at that path (or no such version).
/// A missing mount is also a 404, but with a "no handler for route" error: that one
/// must not read as "absent", or a typo in the mount would look like a fresh path.
fn is_absent(error: &ClientError) -> bool {
    matches!(error, ClientError::APIError { code: 404, errors } if errors.is_empty())
}

/// A 404 whose body is not an error list: KV v2's answer for a version that is
/// soft-deleted or destroyed (the body holds its metadata, and `data: null`).
fn is_deleted_version(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError { code: 404, .. }
        }
    )
}

/// Visible ASCII only: what a token or namespace header can carry.
fn is_header_safe(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic())
}

/// Why `path` cannot be a KV path (or mount), if it cannot: emptiness, empty or dot
/// segments, and the characters Vault paths and policies treat specially. The same
/// rules as the playbook's, applied strictly (paths reach the store normalised).
fn path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("it is empty");
    }
    for segment in path.split('/') {
        if segment.is_empty() {
            return Some("it has a leading, trailing or double `/`");
        }
        if segment == "." || segment == ".." {
            return Some("it has a `.` or `..` segment");
        }
        if segment.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '*' | '+' | '#' | '?' | '%')
        }) {
            return Some("it holds a space, a control character or one of `*+#?%`");
        }
    }
    None
}

/// Reads the CA file once to fail early with a clear message (vaultrs reads it again
/// when building the client) and returns the path as vaultrs wants it.
/// The HTTP client vaultrs would build for these settings (timeout, the system's
/// roots plus `ca_files`, verification on), with [`crate::net::redirect_policy`].
fn same_origin_client(is_https: bool, ca_files: &[String]) -> Result<reqwest::Client, String> {
    // Idle connections kept for reuse: enough for any run's concurrency, not one
    // per request of a burst (each holds its buffers).
    let mut builder = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(64)
        .redirect(crate::net::redirect_policy());
    if is_https {
        for path in ca_files {
            let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|_| format!("{path} holds no readable PEM certificate"))?;
            builder = builder.tls_certs_merge(certs);
        }
    } else {
        // As vaultrs does for http:// (reqwest issue 2988): no root store to load.
        builder = builder.tls_certs_only(Vec::new());
    }
    builder.build().map_err(|e| e.to_string())
}

async fn check_ca_file(path: &std::path::Path) -> Result<String, StoreError> {
    let shown = path.display();
    let bytes = tokio::fs::read(path).await.map_err(|e| {
        StoreError::Invalid(format!(
            "cannot read the CA file `{shown}`: {e}; check `vault.ca_file`"
        ))
    })?;
    if !bytes
        .windows(27)
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(StoreError::Invalid(format!(
            "the CA file `{shown}` holds no PEM certificate: give the CA certificate(s) that signed the server's certificate"
        )));
    }
    path.to_str().map(str::to_owned).ok_or_else(|| {
        StoreError::Invalid(format!(
            "the CA file path `{shown}` is not UTF-8: move the file to a UTF-8 path"
        ))
    })
}

#[derive(Clone, Copy)]
enum Verb {
    Get,
    Patch,
    Post,
}

struct RawAnswer {
    status: u16,
    body: Zeroizing<Vec<u8>>,
}

/// What rekey was doing; the words of its error messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Read,
    ReadVersion,
    Write,
    SetMetadata,
    ReadMetadata,
    DeleteAll,
    List,
    LogIn,
    CheckHealth,
    CheckToken,
    CheckMount,
}

impl Action {
    /// Completes "cannot …".
    fn verb(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::ReadVersion => "read an older version of",
            Action::Write => "write",
            Action::SetMetadata => "set custom metadata on",
            Action::ReadMetadata => "read the metadata of",
            Action::DeleteAll => "delete every version of",
            Action::List => "list",
            Action::LogIn => "log in with AppRole at",
            Action::CheckHealth => "check the health at",
            Action::CheckToken => "check the token at",
            Action::CheckMount => "inspect the mount",
        }
    }

    /// The capability a policy must grant for KV actions.
    fn capability(self) -> Option<&'static str> {
        match self {
            Action::Read | Action::ReadVersion | Action::ReadMetadata => Some("read"),
            Action::Write => Some("create and update"),
            Action::SetMetadata => Some("patch (and create for a new path)"),
            Action::DeleteAll => Some("delete"),
            Action::List => Some("list"),
            Action::LogIn | Action::CheckHealth | Action::CheckToken | Action::CheckMount => None,
        }
    }

    /// The part of the API path after the mount, which policies name.
    fn api_kind(self) -> &'static str {
        match self {
            Action::Read | Action::ReadVersion | Action::Write => "data",
            _ => "metadata",
        }
    }
}

/// One call as error messages describe it.
struct Call<'s> {
    store: &'s VaultStore,
    action: Action,
    /// What the operator would call it: `secret/app/db`, `auth/approle`.
    target: String,
    /// The capability and the API path a policy must grant, for 403 advice.
    policy: Option<(&'static str, String)>,
}

impl Call<'_> {
    fn fail(&self, error: &ClientError) -> StoreError {
        self.fail_with(Failure::of(error))
    }

    fn unreadable(&self) -> StoreError {
        self.fail_with(Failure::Unreadable)
    }

    /// A version's data that rekey cannot carry across a rotation.
    fn bad_entry(&self, bad: &answer::BadEntry, version: u64) -> StoreError {
        match bad.message(&self.target, version) {
            Some(message) => StoreError::Invalid(message),
            None => self.unreadable(),
        }
    }

    fn fail_with(&self, failure: Failure) -> StoreError {
        let VaultStore { address, mount, .. } = self.store;
        let (verb, target) = (self.action.verb(), &self.target);
        match failure {
            // OpenBao answers a wrong secret-id with 400, not 403.
            Failure::Status { code }
                if code == 401 || code == 403 || (code == 400 && self.action == Action::LogIn) =>
            {
                let advice = match (&self.policy, self.action) {
                    (_, Action::LogIn) => "the role-id or secret-id is wrong, or the secret-id expired or was used up; issue a new secret-id".to_owned(),
                    (_, Action::CheckToken) => "the token is wrong, expired or revoked (or lacks the `default` policy, which allows this lookup); log in again".to_owned(),
                    (_, Action::CheckMount) => format!("the token is wrong, expired or revoked, there is no mount `{mount}`, or the token's policy grants nothing under `{mount}/`; check `vault.mount` and the policy"),
                    (Some((capability, api_path)), _) => {
                        format!("the token is wrong, expired or revoked, or its policy does not grant `{capability}` on `{api_path}`; log in again or extend the policy")
                    }
                    (None, _) => "the token is wrong, expired or revoked; log in again".to_owned(),
                };
                StoreError::Unauthorized(format!(
                    "{address} refused to {verb} `{target}` (HTTP {code}): {advice}"
                ))
            }
            Failure::Status { code } if code == 429 || code == 412 || code >= 500 => {
                let hint = match code {
                    503 => ", sealed or in maintenance",
                    429 => ", rate limited",
                    _ => "",
                };
                StoreError::Unavailable(format!(
                    "{address} could not {verb} `{target}` now (HTTP {code}{hint}): retry later; if it persists, check the server (`bao status`)"
                ))
            }
            Failure::Status { code: 404 } if self.action == Action::LogIn => {
                StoreError::Invalid(format!(
                    "{address} has no AppRole auth at `{target}` (HTTP 404): check `vault.auth.mount`"
                ))
            }
            Failure::Status { code } if (300..400).contains(&code) => StoreError::Invalid(format!(
                "{address} answered the request to {verb} `{target}` with a redirect (HTTP {code}) to another address; rekey does not send the token there: set `vault.address` to the server that answers (a standby redirects to the active node)"
            )),
            Failure::Status { code } => StoreError::Invalid(format!(
                "{address} rejected the request to {verb} `{target}` (HTTP {code}): check that `{mount}` is a KV version 2 mount and that the path is right (`rekey plan` checks the mount)"
            )),
            Failure::Transport(Transport::Tls(detail)) => StoreError::Invalid(format!(
                "cannot {verb} `{target}`: TLS verification of {address} failed ({detail}); set `vault.ca_file` to the CA that signed the server's certificate (rekey never skips verification)"
            )),
            Failure::Transport(Transport::Unreachable(detail)) => StoreError::Unavailable(format!(
                "cannot reach {address} to {verb} `{target}` ({detail}): check the address and that the server is up, then retry"
            )),
            Failure::Transport(Transport::TimedOut) => StoreError::Unavailable(format!(
                "{address} did not answer within {} s to {verb} `{target}`: check that the server is up, unsealed and not overloaded, then retry",
                REQUEST_TIMEOUT.as_secs()
            )),
            Failure::Unreadable => StoreError::Invalid(format!(
                "{address} answered the request to {verb} `{target}` with something rekey cannot read: check that it is a Vault or OpenBao server and that `{mount}` is a KV version 2 mount"
            )),
        }
    }
}

/// A failed call reduced to what decides the error: never the text of the error.
enum Failure {
    /// The server answered with this status.
    Status { code: u16 },
    /// No answer came.
    Transport(Transport),
    /// An answer came that rekey cannot read.
    Unreadable,
}

impl Failure {
    fn of(error: &ClientError) -> Failure {
        use rustify::errors::ClientError as Rest;
        match error {
            ClientError::APIError { code, .. }
            | ClientError::RestClientError {
                source: Rest::ServerResponseError { code, .. },
            } => Failure::Status { code: *code },
            ClientError::RestClientError {
                source: Rest::RequestError { source, .. },
            } => Failure::Transport(Transport::of(source.as_ref())),
            _ => Failure::Unreadable,
        }
    }
}

/// Why no answer came.
enum Transport {
    /// The server's certificate was not trusted: a configuration problem, not worth
    /// retrying.
    Tls(String),
    /// Connection refused, reset, name not resolved: worth retrying.
    Unreachable(String),
    /// Connected (or tried to) and no answer came within `REQUEST_TIMEOUT`: a hung
    /// or overloaded server; worth retrying.
    TimedOut,
}

impl Transport {
    /// Classifies by walking the cause chain. The innermost cause names what happened
    /// ("Connection refused (os error 111)", "invalid peer certificate: UnknownIssuer")
    /// and carries no request content, so it may be shown; the outer layers only add
    /// "error sending request".
    fn of(error: &(dyn std::error::Error + 'static)) -> Transport {
        let mut innermost = error;
        let mut tls = false;
        let mut cause = Some(error);
        while let Some(e) = cause {
            // rustls errors arrive wrapped in io::Error (kind InvalidData); the type
            // itself cannot be named without depending on rustls, so its text is read.
            let text = e.to_string();
            tls |= text.contains("certificate") || text.contains("InvalidCertificate");
            innermost = e;
            cause = e.source();
        }
        let detail = innermost.to_string();
        if tls {
            Transport::Tls(detail)
        } else if detail.contains("timed out") {
            Transport::TimedOut
        } else {
            Transport::Unreachable(detail)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_would_change_the_request_are_refused() {
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/../b",
            "./a",
            "a b",
            "a?version=1",
            "a#b",
            "a%2Fb",
            "a*",
            "a\nb",
        ] {
            assert!(path_problem(bad).is_some(), "{bad:?}");
        }
        for good in ["a", "app/db", "rekey/staging/run-1/x.y_z-w", "ünïcode/ok"] {
            assert_eq!(path_problem(good), None, "{good:?}");
        }
    }

    #[test]
    fn only_visible_ascii_goes_into_headers() {
        assert!(is_header_safe("hvs.CAESIabc-_.="));
        assert!(!is_header_safe("root\n"));
        assert!(!is_header_safe("a b"));
        assert!(!is_header_safe(""));
    }
}
