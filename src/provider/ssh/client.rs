//! One SSH connection (russh): host-key pinning, public-key login, and running one
//! command with input. Each operation opens its own connection.

use super::super::ProviderError;
use russh::ChannelMsg;
use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which server keys rekey accepts: a key whose SHA-256 fingerprint is listed, or
/// one a known_hosts file records for that host and port. Nothing else: an
/// unknown or changed host key fails the connection.
#[derive(Clone, Debug)]
pub struct HostKeyPolicy {
    pub fingerprints: Vec<String>,
    pub known_hosts: Option<PathBuf>,
}

/// A host rekey edits, as `host` or `host:port` in the settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostAddr {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for HostAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl HostAddr {
    /// `host`, `host:port`, `[v6]:port` or a bare IPv6 address.
    pub fn parse(text: &str, default_port: u16) -> Result<HostAddr, String> {
        let text = text.trim();
        let bad = || format!("`{text}` is not a host, host:port or [address]:port");
        if text.is_empty() || text.chars().any(char::is_whitespace) {
            return Err(bad());
        }
        if let Some(rest) = text.strip_prefix('[') {
            let (host, port) = rest.split_once("]:").ok_or_else(bad)?;
            return Ok(HostAddr {
                host: host.to_owned(),
                port: port.parse().map_err(|_| bad())?,
            });
        }
        match text.split_once(':') {
            Some((host, port)) if !port.contains(':') => Ok(HostAddr {
                host: host.to_owned(),
                port: port.parse().map_err(|_| bad())?,
            }),
            _ => Ok(HostAddr {
                host: text.to_owned(),
                port: default_port,
            }),
        }
    }
}

struct Handler {
    addr: HostAddr,
    policy: Arc<HostKeyPolicy>,
    /// The fingerprint the server showed, for the error message when refused.
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Handler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // Host certificates are not trusted here: only pinned keys.
        let PublicKeyOrCertificate::PublicKey { key, .. } = server_key else {
            return Ok(false);
        };
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(fingerprint.clone());
        }
        if self.policy.fingerprints.iter().any(|f| f == &fingerprint) {
            return Ok(true);
        }
        if let Some(file) = &self.policy.known_hosts {
            return Ok(matches!(
                russh::keys::check_known_hosts_path(&self.addr.host, self.addr.port, key, file),
                Ok(true)
            ));
        }
        Ok(false)
    }
}

/// An authenticated session.
pub struct Session {
    handle: Handle<Handler>,
    addr: HostAddr,
}

/// What a remote command gave back.
pub struct Exec {
    pub status: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// The outcome of a login attempt that reached the server.
pub enum Login {
    Accepted(Session),
    Refused,
}

/// Connects (checking the host key) and logs in as `user` with `key`.
pub async fn login(
    addr: &HostAddr,
    policy: &Arc<HostKeyPolicy>,
    timeout: Duration,
    user: &str,
    key: &Arc<PrivateKey>,
) -> Result<Login, ProviderError> {
    let config = Arc::new(client::Config {
        inactivity_timeout: Some(timeout),
        ..Default::default()
    });
    let seen = Arc::new(Mutex::new(None));
    let handler = Handler {
        addr: addr.clone(),
        policy: policy.clone(),
        seen: seen.clone(),
    };
    let connecting = client::connect(config, (addr.host.as_str(), addr.port), handler);
    let mut handle = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => {
            return Err(ProviderError::Transient(format!(
                "cannot connect to {addr}: timed out after {timeout:?}; check the host, the port and that sshd runs"
            )));
        }
        Ok(Err(russh::Error::UnknownKey)) => {
            let shown = seen.lock().ok().and_then(|s| s.clone());
            return Err(ProviderError::Fatal(match shown {
                Some(fp) => format!(
                    "{addr} presented host key {fp}, which neither `host_key_fingerprints` nor `known_hosts` pins; if the host key really changed, add the new one there"
                ),
                None => format!(
                    "{addr} presented a host certificate; rekey only accepts pinned host keys"
                ),
            }));
        }
        Ok(Err(e)) => return Err(connection_error(addr, "connect to", &e)),
        Ok(Ok(h)) => h,
    };
    let auth = handle
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key.clone(), None))
        .await
        .map_err(|e| connection_error(addr, "log in at", &e))?;
    if !auth.success() {
        let _ = handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
        return Ok(Login::Refused);
    }
    Ok(Login::Accepted(Session {
        handle,
        addr: addr.clone(),
    }))
}

fn connection_error(addr: &HostAddr, what: &str, e: &russh::Error) -> ProviderError {
    let detail = match e {
        russh::Error::IO(io) => io.to_string(),
        other => other.to_string(),
    };
    ProviderError::Transient(format!(
        "cannot {what} {addr}: {detail}; check the host, the port and that sshd runs"
    ))
}

impl Session {
    /// Runs `command` with `input` on its stdin; collects its output and exit status.
    pub async fn exec(&self, command: &str, input: &[u8]) -> Result<Exec, ProviderError> {
        let fail = |e: russh::Error| connection_error(&self.addr, "run a command at", &e);
        let mut channel = self.handle.channel_open_session().await.map_err(fail)?;
        channel.exec(true, command).await.map_err(fail)?;
        if !input.is_empty() {
            channel.data(input).await.map_err(fail)?;
        }
        channel.eof().await.map_err(fail)?;
        let mut out = Exec {
            status: u32::MAX,
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, .. } => out.stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => out.status = exit_status,
                _ => {}
            }
        }
        if out.status == u32::MAX {
            return Err(ProviderError::Transient(format!(
                "{}: the command ended without an exit status",
                self.addr
            )));
        }
        Ok(out)
    }

    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}
