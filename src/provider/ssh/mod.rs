//! `ssh`: an account's SSH key on a set of hosts. Dual kind: a new ed25519 key pair
//! is generated here (its OpenSSH private key is the secret, its SHA-256
//! fingerprint the key id, its comment the rekey tag), its public key appended to
//! the account's authorized_keys on every host, verified by logging in with it on
//! every host, and the old key's line removed at retirement.
//!
//! rekey edits the files as the admin: it logs in with the admin key (the admin
//! credential's `private_key` field, or `value`) as the admin user (the credential's
//! `username` field, or the `admin_user` setting) and runs a small POSIX shell
//! script (`remote.sh`) that reads the file, or replaces it through a temporary
//! file in the same directory and a rename, keeping its owner and mode and
//! refusing if the file changed since it was read. The edit itself happens here:
//! other lines are kept byte for byte.
//!
//! Host keys are pinned: `host_key_fingerprints` (SHA256:... as `ssh-keygen -l`
//! prints them) and/or a `known_hosts` file; any other server key fails the
//! connection. rekey never accepts an unknown host key.

mod client;

use super::admin::Admin;
use super::settings::text;
use super::{Issued, KeyInfo, Provider, ProviderError, SessionsEnded, Target};
use crate::secret::Secret;
use async_trait::async_trait;
use client::{HostAddr, HostKeyPolicy, Login, Session};
use indexmap::IndexMap;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Reads or replaces one authorized_keys file; see the script's comments.
const REMOTE_SCRIPT: &str = include_str!("remote.sh");

/// Ends an account's sshd sessions on a host; see the script's comments.
const END_SESSIONS_SCRIPT: &str = include_str!("end_sessions.sh");

/// Exit codes of the remote scripts.
mod status {
    pub const MISSING_FILE: u32 = 3;
    pub const NO_ACCOUNT: u32 = 64;
    pub const CHANGED: u32 = 65;
    pub const WRITE_FAILED: u32 = 66;
    pub const NOT_ROOT: u32 = 67;
    pub const NO_PGREP: u32 = 68;
    pub const ROOT_ACCOUNT: u32 = 69;
}

/// What a human runs on each host to end the account's sessions.
fn pkill_by_hand(account: &str) -> String {
    format!(
        "pkill -KILL -u {} -x 'sshd|sshd-session'",
        shell_quote(account)
    )
}

pub struct SshProvider {
    instance: String,
    hosts: Vec<HostAddr>,
    port: u16,
    policy: Arc<HostKeyPolicy>,
    timeout: Duration,
    admin_user: String,
    admin_key: Arc<PrivateKey>,
    admin_origin: String,
    authorized_keys: String,
}

/// A list setting: a YAML list of strings, or one string (comma or space separated,
/// as `${VAR}` interpolation gives).
fn list(settings: &IndexMap<String, serde_json::Value>, key: &str) -> Result<Vec<String>, String> {
    match settings.get(key) {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::String(s)) => Ok(s
            .split([',', ' '])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s.trim().to_owned()),
                other => Err(format!("`{key}` entries must be strings, not {other}")),
            })
            .collect(),
        Some(other) => Err(format!("`{key}` must be a list of strings, not {other}")),
    }
}

fn port_setting(settings: &IndexMap<String, serde_json::Value>) -> Result<u16, String> {
    match settings.get("port") {
        None => Ok(22),
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("`port` {n} is not a TCP port")),
        Some(serde_json::Value::String(s)) => s
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("`port` `{s}` is not a TCP port")),
        Some(other) => Err(format!("`port` must be a number, not {other}")),
    }
}

/// A POSIX portable user name: what the remote script may safely be given.
fn valid_account(account: &str) -> bool {
    !account.is_empty()
        && !account.starts_with('-')
        && account
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Quotes `s` for a POSIX shell command line.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The key of each line of a file (`None` for blank, comment and unparsable
/// lines, which rekey keeps untouched).
fn line_keys(content: &str) -> Vec<Option<PublicKey>> {
    content
        .split_inclusive('\n')
        .map(|l| {
            let trimmed = l.trim();
            (!trimmed.is_empty() && !trimmed.starts_with('#'))
                .then(|| {
                    trimmed
                        .parse::<russh::keys::ssh_key::authorized_keys::Entry>()
                        .ok()
                })
                .flatten()
                .map(|e| e.public_key().clone())
        })
        .collect()
}

/// `content` with `line` appended (after a newline if the last line lacked one).
fn with_line_added(content: &str, line: &str) -> String {
    let mut out = String::with_capacity(content.len() + line.len() + 2);
    out.push_str(content);
    if !content.is_empty() && !content.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(line);
    out.push('\n');
    out
}

/// `content` without the lines holding key `key_id`; every other byte kept.
fn without_key(content: &str, key_id: &str) -> Option<String> {
    let mut changed = false;
    let mut out = String::with_capacity(content.len());
    for piece in content.split_inclusive('\n') {
        if line_keys(piece)
            .pop()
            .flatten()
            .is_some_and(|k| fingerprint(&k) == key_id)
        {
            changed = true;
            continue;
        }
        out.push_str(piece);
    }
    changed.then_some(out)
}

/// An authorized_keys file as read: its content and the digest the write checks.
struct KeysFile {
    content: String,
    /// SHA-256 of the bytes read, or `none` when the file did not exist.
    digest: String,
}

impl SshProvider {
    /// Reads the instance's settings and admin credential; connects to nothing.
    pub fn from_settings(
        instance: &str,
        settings: &IndexMap<String, serde_json::Value>,
        admin: Option<Admin>,
    ) -> Result<SshProvider, ProviderError> {
        let fatal = |m: String| ProviderError::Fatal(format!("ssh instance `{instance}`: {m}"));
        let port = port_setting(settings).map_err(fatal)?;
        let hosts = list(settings, "hosts")
            .map_err(fatal)?
            .iter()
            .map(|h| HostAddr::parse(h, port))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fatal(format!("`hosts`: {e}")))?;
        let fingerprints = list(settings, "host_key_fingerprints").map_err(fatal)?;
        if let Some(bad) = fingerprints.iter().find(|f| !f.starts_with("SHA256:")) {
            return Err(fatal(format!(
                "`host_key_fingerprints`: `{bad}` is not a SHA256:... fingerprint (`ssh-keygen -l -f <host key>.pub` prints it)"
            )));
        }
        let known_hosts = text(settings, "known_hosts").map(PathBuf::from);
        if fingerprints.is_empty() && known_hosts.is_none() {
            return Err(fatal(
                "pin the hosts' keys with `known_hosts` (a known_hosts file) or `host_key_fingerprints` (SHA256:...); rekey never accepts an unknown host key".into(),
            ));
        }
        let timeout = super::settings::duration_or(settings, "timeout", Duration::from_secs(10))
            .map_err(fatal)?;
        let authorized_keys = text(settings, "authorized_keys")
            .unwrap_or("%h/.ssh/authorized_keys")
            .to_owned();
        check_path_template(&authorized_keys).map_err(fatal)?;
        let admin = admin.ok_or_else(|| {
            fatal("needs an admin credential (`admin: { vault_path: ... }` with fields private_key and username)".into())
        })?;
        let pem = admin.require(&["private_key", "value"])?;
        let admin_key = PrivateKey::from_openssh(pem.expose()).map_err(|_| {
            fatal(format!(
                "the admin credential from {} is not an OpenSSH private key (-----BEGIN OPENSSH PRIVATE KEY-----)",
                admin.origin
            ))
        })?;
        if admin_key.is_encrypted() {
            return Err(fatal(format!(
                "the admin key from {} is encrypted; store it without a passphrase (Vault protects it)",
                admin.origin
            )));
        }
        let admin_user = admin
            .get("username")
            .map(|u| u.expose().to_owned())
            .or_else(|| text(settings, "admin_user").map(str::to_owned))
            .unwrap_or_else(|| "root".to_owned());
        Ok(SshProvider {
            instance: instance.to_owned(),
            hosts,
            port,
            policy: Arc::new(HostKeyPolicy {
                fingerprints,
                known_hosts,
            }),
            timeout,
            admin_user,
            admin_key: Arc::new(admin_key),
            admin_origin: admin.origin,
            authorized_keys,
        })
    }

    /// The hosts a credential's key lives on: its own `hosts`, else the instance's.
    fn hosts(&self, target: Target<'_>) -> Result<Vec<HostAddr>, ProviderError> {
        let own = list(target.settings, "hosts").map_err(ProviderError::Fatal)?;
        let hosts = if own.is_empty() {
            self.hosts.clone()
        } else {
            own.iter()
                .map(|h| HostAddr::parse(h, self.port))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    ProviderError::Fatal(format!(
                        "credential `{}`: `hosts`: {e}",
                        target.credential
                    ))
                })?
        };
        if hosts.is_empty() {
            return Err(ProviderError::Fatal(format!(
                "credential `{}` has no hosts: set `hosts` on it or on the instance `{}`",
                target.credential, self.instance
            )));
        }
        Ok(hosts)
    }

    fn account<'a>(&self, target: Target<'a>) -> Result<&'a str, ProviderError> {
        let account = target.account.unwrap_or_default();
        if !valid_account(account) {
            return Err(ProviderError::Fatal(format!(
                "credential `{}`: `{account}` is not a valid account name (letters, digits, . _ -)",
                target.credential
            )));
        }
        Ok(account)
    }

    /// The file to edit, with %u expanded here (%h is the account's home, found on
    /// the host by the script).
    fn path(&self, target: Target<'_>, account: &str) -> Result<String, ProviderError> {
        let template = text(target.settings, "authorized_keys").unwrap_or(&self.authorized_keys);
        check_path_template(template).map_err(ProviderError::Fatal)?;
        Ok(template.replace("%u", account))
    }

    async fn admin_session(&self, addr: &HostAddr) -> Result<Session, ProviderError> {
        match client::login(
            addr,
            &self.policy,
            self.timeout,
            &self.admin_user,
            &self.admin_key,
        )
        .await?
        {
            Login::Accepted(s) => Ok(s),
            Login::Refused => Err(ProviderError::Fatal(format!(
                "{addr}: the admin login as `{}` was refused; check that the admin key from {} is in that user's authorized_keys (and `admin_user` / the `username` field)",
                self.admin_user, self.admin_origin
            ))),
        }
    }

    fn command(&self, op: &str, account: &str, path: &str, extra: &[&str]) -> String {
        let mut cmd = format!("sh -c {} rekey-ssh {op}", shell_quote(REMOTE_SCRIPT));
        for arg in [account, path].iter().chain(extra) {
            cmd.push(' ');
            cmd.push_str(&shell_quote(arg));
        }
        cmd
    }

    fn script_error(
        &self,
        addr: &HostAddr,
        account: &str,
        path: &str,
        r: &client::Exec,
    ) -> ProviderError {
        let stderr = String::from_utf8_lossy(&r.stderr);
        let stderr = stderr.trim();
        match r.status {
            status::NO_ACCOUNT => ProviderError::Fatal(format!(
                "{addr}: there is no account `{account}`; check the credential's account"
            )),
            status::CHANGED => ProviderError::Transient(format!(
                "{addr}: {path} changed while rekey edited it; retrying"
            )),
            status::WRITE_FAILED => ProviderError::Fatal(format!(
                "{addr}: {path} could not be written as `{}`{}{stderr}; the admin user must be able to write the account's authorized_keys and its directory",
                self.admin_user,
                if stderr.is_empty() { "" } else { ": " },
            )),
            other => ProviderError::Fatal(format!(
                "{addr}: reading {path} as `{}` failed (exit {other}{}{stderr}); the admin user must be able to read the account's authorized_keys",
                self.admin_user,
                if stderr.is_empty() { "" } else { ": " },
            )),
        }
    }

    async fn read(
        &self,
        session: &Session,
        addr: &HostAddr,
        account: &str,
        path: &str,
    ) -> Result<KeysFile, ProviderError> {
        let r = session
            .exec(&self.command("read", account, path, &[]), b"")
            .await?;
        match r.status {
            0 => {
                let digest = hex::encode(Sha256::digest(&r.stdout));
                let content = String::from_utf8(r.stdout).map_err(|_| {
                    ProviderError::Fatal(format!("{addr}: {path} is not UTF-8 text"))
                })?;
                Ok(KeysFile { content, digest })
            }
            status::MISSING_FILE => Ok(KeysFile {
                content: String::new(),
                digest: "none".into(),
            }),
            _ => Err(self.script_error(addr, account, path, &r)),
        }
    }

    async fn write(
        &self,
        session: &Session,
        addr: &HostAddr,
        account: &str,
        path: &str,
        read: &KeysFile,
        content: &str,
    ) -> Result<(), ProviderError> {
        let r = session
            .exec(
                &self.command("write", account, path, &[&read.digest]),
                content.as_bytes(),
            )
            .await?;
        if r.status == 0 {
            Ok(())
        } else {
            Err(self.script_error(addr, account, path, &r))
        }
    }

    /// Reads the file on `addr`, lets `edit` change it, writes it back if it did.
    async fn edit(
        &self,
        addr: &HostAddr,
        account: &str,
        path: &str,
        edit: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ProviderError> {
        let session = self.admin_session(addr).await?;
        let result = async {
            let file = self.read(&session, addr, account, path).await?;
            match edit(&file.content) {
                Some(new) => self.write(&session, addr, account, path, &file, &new).await,
                None => Ok(()),
            }
        }
        .await;
        session.close().await;
        result
    }

    /// Removes key `key_id` from every host; tries them all, returns the first error.
    async fn remove_everywhere(
        &self,
        hosts: &[HostAddr],
        account: &str,
        path: &str,
        key_id: &str,
    ) -> Result<(), ProviderError> {
        let mut first = None;
        for addr in hosts {
            if let Err(e) = self
                .edit(addr, account, path, |c| without_key(c, key_id))
                .await
            {
                tracing::warn!(host = %addr, key_id, "Could not remove the key: {e}");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Tokens an authorized_keys template may use: %u (account), %h (its home).
fn check_path_template(template: &str) -> Result<(), String> {
    if template.contains(['\n', '\0']) {
        return Err("`authorized_keys` must be one line".into());
    }
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c == '%' && !matches!(chars.next(), Some('u' | 'h')) {
            return Err(format!(
                "`authorized_keys` `{template}`: only %u (the account) and %h (its home) may follow %"
            ));
        }
    }
    if !template.starts_with('/') && !template.starts_with("%h") {
        return Err(format!(
            "`authorized_keys` `{template}` must be absolute or start with %h"
        ));
    }
    Ok(())
}

/// Key options for the new line (`from="10.0.0.0/8",no-pty`), checked to be one line.
fn options(target: Target<'_>) -> Result<Option<String>, ProviderError> {
    match text(target.settings, "options") {
        None => Ok(None),
        Some(o) if o.contains(['\n', '\r', '\0']) => Err(ProviderError::Fatal(format!(
            "credential `{}`: `options` must be one line",
            target.credential
        ))),
        Some(o) => Ok(Some(o.to_owned())),
    }
}

#[async_trait]
impl Provider for SshProvider {
    /// Per host: the admin logs in (host key pinned), the account exists, its
    /// authorized_keys can be read.
    async fn preflight(&self, target: Target<'_>) -> Result<(), ProviderError> {
        let account = self.account(target)?;
        let path = self.path(target, account)?;
        options(target)?;
        for addr in self.hosts(target)? {
            let session = self.admin_session(&addr).await?;
            let read = self.read(&session, &addr, account, &path).await;
            session.close().await;
            read?;
        }
        Ok(())
    }

    /// The keys in the account's authorized_keys on every host (union), each with
    /// its comment as the tag (rekey's keys carry `rekey:<run>:<credential>`).
    async fn list(&self, target: Target<'_>) -> Result<Vec<KeyInfo>, ProviderError> {
        let account = self.account(target)?;
        let path = self.path(target, account)?;
        let mut keys: Vec<KeyInfo> = Vec::new();
        // rekey's own admin key is never one of the account's keys to rotate or
        // retire (an account that is the admin user holds it): listing it would
        // let a breach rotation lock rekey out.
        let admin_id = fingerprint(self.admin_key.public_key());
        for addr in self.hosts(target)? {
            let session = self.admin_session(&addr).await?;
            let read = self.read(&session, &addr, account, &path).await;
            session.close().await;
            for key in line_keys(&read?.content).into_iter().flatten() {
                let id = fingerprint(&key);
                if id == admin_id || keys.iter().any(|k| k.id == id) {
                    continue;
                }
                let comment: &str = key.comment().as_ref();
                keys.push(KeyInfo {
                    id,
                    active: true,
                    created_at: None,
                    tag: (!comment.is_empty()).then(|| comment.to_owned()),
                });
            }
        }
        Ok(keys)
    }

    /// A new ed25519 key pair, appended on every host; if one host fails, the
    /// hosts already done are cleaned up so no half-installed key is left.
    async fn create(&self, target: Target<'_>, tag: &str) -> Result<Issued, ProviderError> {
        let account = self.account(target)?;
        let path = self.path(target, account)?;
        let hosts = self.hosts(target)?;
        let options = options(target)?;
        let mut private = PrivateKey::from(Ed25519Keypair::from_seed(&rand::random::<[u8; 32]>()));
        private.set_comment(tag);
        let public = private
            .public_key()
            .to_openssh()
            .map_err(|e| ProviderError::Fatal(format!("cannot encode the new public key: {e}")))?;
        let key_id = fingerprint(private.public_key());
        let line = match options {
            Some(o) => format!("{o} {public}"),
            None => public,
        };
        let secret = Secret::new(
            private
                .to_openssh(LineEnding::LF)
                .map_err(|e| {
                    ProviderError::Fatal(format!("cannot encode the new private key: {e}"))
                })?
                .to_string(),
        );
        for (done, addr) in hosts.iter().enumerate() {
            let added = self
                .edit(addr, account, &path, |c| {
                    let present = line_keys(c)
                        .iter()
                        .flatten()
                        .any(|k| fingerprint(k) == key_id);
                    (!present).then(|| with_line_added(c, &line))
                })
                .await;
            if let Err(e) = added {
                if done > 0 {
                    let _ = self
                        .remove_everywhere(&hosts[..done], account, &path, &key_id)
                        .await;
                }
                return Err(e);
            }
        }
        tracing::debug!(credential = target.credential, key_id = %key_id, hosts = hosts.len(), "Key added.");
        Ok(Issued::new(key_id, secret))
    }

    /// Logs in as the account with the key on every host; refused anywhere: false.
    async fn verify(
        &self,
        target: Target<'_>,
        key_id: Option<&str>,
        secret: &Secret,
    ) -> Result<bool, ProviderError> {
        let account = self.account(target)?;
        let key = PrivateKey::from_openssh(secret.expose()).map_err(|_| {
            ProviderError::Fatal(format!(
                "the value of `{}` is not an OpenSSH private key",
                target.credential
            ))
        })?;
        if let Some(id) = key_id
            && fingerprint(key.public_key()) != id
        {
            return Ok(false);
        }
        let key = Arc::new(key);
        for addr in self.hosts(target)? {
            match client::login(&addr, &self.policy, self.timeout, account, &key).await? {
                Login::Accepted(session) => session.close().await,
                Login::Refused => {
                    tracing::debug!(credential = target.credential, host = %addr, "Login with the key refused.");
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    async fn revoke(&self, target: Target<'_>, key_id: &str) -> Result<(), ProviderError> {
        let account = self.account(target)?;
        let path = self.path(target, account)?;
        let hosts = self.hosts(target)?;
        self.remove_everywhere(&hosts, account, &path, key_id).await
    }

    fn has_sessions(&self) -> bool {
        true
    }

    /// On every host, as root: kills the account's sshd session processes (its
    /// logins, whichever key they used; sshd cannot say which). Processes those
    /// sessions started in the background are not touched: rekey cannot tell
    /// them from the account's own.
    async fn end_sessions(
        &self,
        target: Target<'_>,
        _retired: &[&str],
    ) -> Result<SessionsEnded, ProviderError> {
        let account = self.account(target)?;
        let command = format!(
            "sh -c {} rekey-ssh {}",
            shell_quote(END_SESSIONS_SCRIPT),
            shell_quote(account)
        );
        let mut count = 0;
        let mut cannot = Vec::new();
        let mut first_error = None;
        for addr in self.hosts(target)? {
            let ran = async {
                let session = self.admin_session(&addr).await?;
                let r = session.exec(&command, b"").await;
                session.close().await;
                r
            }
            .await;
            let r = match ran {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(host = %addr, "Could not end the account's sessions: {e}");
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            match r.status {
                0 => {
                    count += String::from_utf8_lossy(&r.stdout)
                        .trim()
                        .parse::<u64>()
                        .unwrap_or(0)
                }
                status::NOT_ROOT => cannot.push(format!(
                    "{addr}: rekey logs in as `{}`, not root, and only root may end another account's sessions",
                    self.admin_user
                )),
                status::ROOT_ACCOUNT => cannot.push(format!(
                    "{addr}: `{account}` is root, whose sshd processes include the server itself"
                )),
                status::NO_PGREP => cannot.push(format!("{addr}: the host has no pgrep")),
                status::NO_ACCOUNT => {
                    first_error.get_or_insert(ProviderError::Fatal(format!(
                        "{addr}: there is no account `{account}`; check the credential's account"
                    )));
                }
                other => {
                    first_error.get_or_insert(ProviderError::Fatal(format!(
                        "{addr}: ending `{account}`'s sessions failed (exit {other})"
                    )));
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if !cannot.is_empty() {
            return Ok(SessionsEnded::Unsupported {
                reason: format!(
                    "{}{}",
                    cannot.join("; "),
                    if count > 0 {
                        format!(" ({count} session(s) ended on the other hosts)")
                    } else {
                        String::new()
                    }
                ),
            });
        }
        Ok(SessionsEnded::Ended { count })
    }

    fn end_sessions_by_hand(&self, target: Target<'_>, _retired: &[&str]) -> String {
        let hosts = self
            .hosts(target)
            .map(|h| {
                h.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        format!(
            "as root on each host ({hosts}): {}",
            pkill_by_hand(target.account.unwrap_or_default())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOKFDxFpb+bIiFAxn3PQH1E2qp4ghIy9kpJ7wK0Us3Yk a@b";

    #[test]
    fn editing_keeps_every_other_line_byte_for_byte() {
        let key = line_keys(A).pop().flatten().unwrap();
        let id = fingerprint(&key);
        let original = format!(
            "# keep me\r\n\n  odd line that is no key\t\nfrom=\"10.0.0.1\" {A}\nssh-rsa BROKEN x"
        );
        let added = with_line_added(&original, "ssh-ed25519 NEW");
        assert_eq!(added, format!("{original}\nssh-ed25519 NEW\n"));
        let removed = without_key(&original, &id).unwrap();
        assert_eq!(
            removed,
            "# keep me\r\n\n  odd line that is no key\t\nssh-rsa BROKEN x"
        );
        assert!(
            without_key(&removed, &id).is_none(),
            "nothing left to remove"
        );
    }

    #[test]
    fn hosts_account_names_and_templates_are_checked() {
        assert_eq!(
            HostAddr::parse("db1:2222", 22).unwrap(),
            HostAddr {
                host: "db1".into(),
                port: 2222
            }
        );
        assert_eq!(HostAddr::parse("db1", 22).unwrap().port, 22);
        assert_eq!(HostAddr::parse("[::1]:23", 22).unwrap().host, "::1");
        assert!(HostAddr::parse("a b", 22).is_err());
        assert!(valid_account("deploy-bot.1") && !valid_account("-x") && !valid_account("a;b"));
        assert!(check_path_template("%h/.ssh/authorized_keys").is_ok());
        assert!(check_path_template("/srv/keys/%u").is_ok());
        assert!(check_path_template("/srv/%x").is_err());
        assert!(check_path_template("relative/%u").is_err());
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
