//! `exec`: a provider implemented by an external executable speaking versioned JSON
//! lines on stdin/stdout (docs/exec-protocol.md, wire types in `protocol`).
//!
//! One plugin process per provider instance, started on first use and kept for the
//! run; it handles one request at a time. The process gets a scrubbed environment
//! (only the variables the playbook names), its stderr is relayed to rekey's log
//! line by line (each cut at 4 KiB), and every request has a timeout: when it
//! passes, or when the plugin breaks the protocol, the plugin's process group is
//! killed (the plugin leads one of its own, `process.rs`) and the next request
//! starts a fresh one; the group is killed too when rekey is done with the plugin.
//! It inherits no descriptor but stdin, stdout and stderr. Secrets (the admin credential, new values, values to
//! verify) travel only inside the protocol, never in argv or the environment.

mod process;
pub mod protocol;

use super::admin::Admin;
use super::{Issued, KeyInfo, Provider, ProviderError, Target};
use crate::secret::Secret;
use async_trait::async_trait;
use indexmap::IndexMap;
use protocol::{ErrorKind, FromPlugin};
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use zeroize::Zeroizing;

/// Longest line rekey reads from a plugin; a longer one is a protocol error.
const MAX_LINE: u64 = 1 << 20;
/// Longest error message kept from a plugin (it goes to the journal).
const MAX_MESSAGE: usize = 500;
/// Least time a plugin gets to start and say hello: an interpreter can take longer
/// to start on a loaded machine than a short request timeout allows.
const MIN_START: Duration = Duration::from_secs(10);

/// An exec plugin instance, from the playbook's settings.
pub struct Exec {
    instance: String,
    command: PathBuf,
    args: Vec<String>,
    env: Vec<String>,
    timeout: Duration,
    admin: Option<Admin>,
    session: tokio::sync::Mutex<Option<Session>>,
    next_id: AtomicU64,
}

/// A running plugin that has answered the hello.
struct Session {
    /// Killed with its process group when dropped.
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Drop for Session {
    fn drop(&mut self) {
        process::kill_group(&self.child);
    }
}

/// A request as it goes on the wire. Serialized straight into a buffer that is
/// zeroized after the write, so the values in it are not left in memory.
#[derive(Serialize)]
struct Request<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: u64,
    op: &'a str,
    credential: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<&'a str>,
    settings: &'a IndexMap<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<&'a str>,
    /// `verify`: the value to check.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<&'a str>,
    /// `change`: the value to set.
    #[serde(skip_serializing_if = "Option::is_none")]
    new_secret: Option<&'a str>,
}

/// What a failed exchange did to the session.
enum Broken {
    /// The plugin answered with an error; the session is fine.
    Answered(ProviderError),
    /// The session cannot go on (crash, protocol violation): it is dropped.
    Lost(ProviderError),
}

impl Exec {
    pub fn from_settings(
        instance: &str,
        settings: &IndexMap<String, Value>,
        admin: Option<Admin>,
    ) -> Result<Exec, ProviderError> {
        let bad = |what: &str| {
            ProviderError::Fatal(format!(
                "exec instance `{instance}`: {what}; see providers/exec.yaml"
            ))
        };
        let command = settings
            .get("command")
            .and_then(Value::as_str)
            .filter(|c| !c.trim().is_empty())
            .ok_or_else(|| bad("`command` must be the path of the plugin executable"))?;
        let strings = |key: &str| -> Result<Vec<String>, ProviderError> {
            match settings.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad(&format!("`{key}` must be a list of strings"))),
                Some(_) => Err(bad(&format!("`{key}` must be a list of strings"))),
            }
        };
        let args = strings("args")?;
        let env = strings("env")?;
        if let Some(v) = env
            .iter()
            .find(|v| v.is_empty() || v.contains('=') || v.contains('\0'))
        {
            return Err(bad(&format!(
                "`env` lists variable names; `{}` is not one",
                v.split('=').next().unwrap_or("")
            )));
        }
        let timeout = match settings.get("timeout") {
            None => Duration::from_secs(30),
            Some(Value::String(t)) => {
                crate::doc::rate::parse_duration(t).map_err(|e| bad(&format!("`timeout`: {e}")))?
            }
            Some(_) => return Err(bad("`timeout` is a duration such as `30s`")),
        };
        // `kind` (dual or single) is checked by validation and becomes the
        // instance's kind: the engine drives the protocol, the plugin follows it.
        Ok(Exec {
            instance: instance.to_owned(),
            command: PathBuf::from(command),
            args,
            env,
            timeout,
            admin,
            session: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
        })
    }

    fn plugin(&self) -> String {
        format!(
            "exec plugin `{}` ({})",
            self.instance,
            self.command.display()
        )
    }

    /// Starts the plugin and exchanges hellos.
    async fn start(&self) -> Result<Session, ProviderError> {
        let mut cmd = Command::new(&self.command);
        cmd.args(&self.args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        process::isolate(&mut cmd);
        for name in &self.env {
            if let Some(value) = crate::env_vars::get_os(name) {
                cmd.env(name, value);
            }
        }
        let mut child = cmd.spawn().map_err(|e| {
            ProviderError::Fatal(format!(
                "cannot start {}: {e}; check the path and that it is executable",
                self.plugin()
            ))
        })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(ProviderError::Fatal(format!(
                "{}: no pipes to the plugin",
                self.plugin()
            )));
        };
        // The plugin's stderr goes to rekey's log as is (each line capped):
        // plugins must never print secrets there (docs/exec-protocol.md).
        let instance = self.instance.clone();
        tokio::spawn(process::relay_lines(stderr, move |line| {
            tracing::info!(plugin = %instance, "{line}");
        }));
        let mut session = Session {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        let admin_fields = self
            .admin
            .as_ref()
            .map(|a| a.fields().map(|(k, v)| (k, v.expose())).collect());
        let hello = protocol::Hello {
            kind: "hello",
            protocol_versions: protocol::VERSIONS,
            rekey_version: env!("CARGO_PKG_VERSION"),
            instance: &self.instance,
            admin: admin_fields,
        };
        let exchange = async {
            self.send(&mut session, &hello, "hello").await?;
            loop {
                match self.receive(&mut session, "hello").await? {
                    FromPlugin::Hello {
                        protocol_version,
                        name,
                    } => {
                        if !protocol::VERSIONS.contains(&protocol_version) {
                            return Err(ProviderError::Fatal(format!(
                                "{} speaks protocol version {protocol_version}; this rekey speaks {:?}: upgrade one of them",
                                self.plugin(),
                                protocol::VERSIONS
                            )));
                        }
                        tracing::debug!(plugin = %self.instance, name = name.as_deref().unwrap_or(""), protocol_version, "Plugin ready.");
                        return Ok(());
                    }
                    FromPlugin::Unknown => {
                        tracing::debug!(plugin = %self.instance, "Skipped a message of a kind this rekey does not know.");
                    }
                    FromPlugin::Response { .. } => {
                        return Err(ProviderError::Fatal(format!(
                            "{} answered the hello with a response; it must say hello first",
                            self.plugin()
                        )));
                    }
                }
            }
        };
        let start_timeout = self.timeout.max(MIN_START);
        match tokio::time::timeout(start_timeout, exchange).await {
            Ok(Ok(())) => Ok(session),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ProviderError::Transient(format!(
                "{} did not say hello within {}; it was stopped",
                self.plugin(),
                humantime::format_duration(start_timeout)
            ))),
        }
    }

    async fn send<T: Serialize>(
        &self,
        session: &mut Session,
        message: &T,
        op: &str,
    ) -> Result<(), ProviderError> {
        let mut line =
            Zeroizing::new(serde_json::to_vec(message).map_err(|e| {
                ProviderError::Fatal(format!("cannot encode the `{op}` request: {e}"))
            })?);
        line.push(b'\n');
        let sent = async {
            session.stdin.write_all(&line).await?;
            session.stdin.flush().await
        };
        sent.await.map_err(|e| {
            ProviderError::Transient(format!(
                "{} stopped reading its input during `{op}` ({e})",
                self.plugin()
            ))
        })
    }

    /// The next message from the plugin. A line that is not a protocol message,
    /// or the end of its output, is an error (the caller drops the session).
    async fn receive(&self, session: &mut Session, op: &str) -> Result<FromPlugin, ProviderError> {
        let mut line = Zeroizing::new(Vec::new());
        let read = (&mut session.stdout)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await;
        match read {
            Ok(0) => {
                let status =
                    match tokio::time::timeout(Duration::from_millis(200), session.child.wait())
                        .await
                    {
                        Ok(Ok(s)) => format!(" ({s})"),
                        _ => String::new(),
                    };
                return Err(ProviderError::Transient(format!(
                    "{} exited{status} during `{op}`; see its log lines above",
                    self.plugin()
                )));
            }
            Ok(_) if !line.ends_with(b"\n") && line.len() as u64 >= MAX_LINE => {
                return Err(ProviderError::Fatal(format!(
                    "{} wrote a line longer than {MAX_LINE} bytes during `{op}`",
                    self.plugin()
                )));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(ProviderError::Transient(format!(
                    "cannot read from {} during `{op}`: {e}",
                    self.plugin()
                )));
            }
        }
        // Never quote the line: it may hold a secret.
        serde_json::from_slice::<FromPlugin>(&line).map_err(|e| {
            ProviderError::Fatal(format!(
                "{} wrote something that is not a protocol message during `{op}` ({} bytes; {}); it was stopped. Plugins write only protocol lines on stdout (logs go to stderr)",
                self.plugin(),
                line.len(),
                protocol::describe_error(&e)
            ))
        })
    }

    /// One request and its response.
    async fn exchange(
        &self,
        session: &mut Session,
        request: &Request<'_>,
    ) -> Result<Value, Broken> {
        let op = request.op;
        self.send(session, request, op)
            .await
            .map_err(Broken::Lost)?;
        loop {
            match self.receive(session, op).await.map_err(Broken::Lost)? {
                FromPlugin::Response { id, result, error } if id == request.id => {
                    return match (result, error) {
                        (_, Some(e)) => Err(Broken::Answered(self.wire_error(e, op))),
                        (Some(v), None) => Ok(v),
                        (None, None) => Ok(Value::Object(Default::default())),
                    };
                }
                FromPlugin::Response { id, .. } => {
                    tracing::warn!(plugin = %self.instance, id, expected = request.id, "Ignored a response to another request.");
                }
                FromPlugin::Hello { .. } => {
                    tracing::warn!(plugin = %self.instance, "Ignored a second hello.");
                }
                FromPlugin::Unknown => {
                    tracing::debug!(plugin = %self.instance, op, "Skipped a message of a kind this rekey does not know.");
                }
            }
        }
    }

    fn wire_error(&self, e: protocol::WireError, op: &str) -> ProviderError {
        let mut message: String = e.message.chars().take(MAX_MESSAGE).collect();
        if message.is_empty() {
            message = "no message".into();
        }
        let message = format!("{} failed `{op}`: {message}", self.plugin());
        match e.kind {
            ErrorKind::Transient => ProviderError::Transient(message),
            ErrorKind::RateLimited => ProviderError::RateLimited {
                retry_after: e.retry_after_ms.map(Duration::from_millis),
                message,
            },
            ErrorKind::Fatal | ErrorKind::Unknown => ProviderError::Fatal(message),
        }
    }

    /// Sends `request` (its id filled in), starting the plugin when none runs,
    /// within the timeout; kills the plugin when it times out or breaks.
    async fn call(&self, mut request: Request<'_>) -> Result<Value, ProviderError> {
        let mut slot = self.session.lock().await;
        if slot.is_none() {
            *slot = Some(self.start().await?);
        }
        let Some(session) = slot.as_mut() else {
            return Err(ProviderError::Fatal("no plugin session".into()));
        };
        request.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let op = request.op;
        match tokio::time::timeout(self.timeout, self.exchange(session, &request)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(Broken::Answered(e))) => Err(e),
            Ok(Err(Broken::Lost(e))) => {
                *slot = None;
                Err(e)
            }
            Err(_) => {
                // Dropping the session kills the process (kill_on_drop).
                *slot = None;
                tracing::warn!(plugin = %self.instance, op, "Plugin timed out; stopped it.");
                Err(ProviderError::Transient(format!(
                    "{} did not answer `{op}` within {}; it was stopped",
                    self.plugin(),
                    humantime::format_duration(self.timeout)
                )))
            }
        }
    }

    fn request<'a>(&self, op: &'a str, target: Target<'a>) -> Request<'a> {
        Request {
            kind: "request",
            id: 0,
            op,
            credential: target.credential,
            account: target.account,
            settings: target.settings,
            tag: None,
            key_id: None,
            secret: None,
            new_secret: None,
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        v: Value,
        op: &str,
    ) -> Result<T, ProviderError> {
        serde_json::from_value(v).map_err(|e| {
            ProviderError::Fatal(format!(
                "{} answered `{op}` with a result of the wrong shape ({}); see docs/exec-protocol.md",
                self.plugin(),
                protocol::describe_error(&e)
            ))
        })
    }
}

#[async_trait]
impl Provider for Exec {
    async fn preflight(&self, target: Target<'_>) -> Result<(), ProviderError> {
        self.call(self.request("preflight", target))
            .await
            .map(|_| ())
    }

    async fn list(&self, target: Target<'_>) -> Result<Vec<KeyInfo>, ProviderError> {
        let v = self.call(self.request("list", target)).await?;
        let listed: protocol::Listed = self.parse(v, "list")?;
        Ok(listed
            .keys
            .into_iter()
            .map(|k| KeyInfo {
                id: k.id,
                active: k.active,
                created_at: k.created_at,
                tag: k.tag,
            })
            .collect())
    }

    async fn create(&self, target: Target<'_>, tag: &str) -> Result<Issued, ProviderError> {
        let v = self
            .call(Request {
                tag: Some(tag),
                ..self.request("create", target)
            })
            .await?;
        let created: protocol::Created = self.parse(v, "create")?;
        if created.secret.is_empty() || created.key_id.is_empty() {
            return Err(ProviderError::Fatal(format!(
                "{} answered `create` with an empty key id or secret",
                self.plugin()
            )));
        }
        Ok(Issued::new(created.key_id, Secret::new(created.secret)))
    }

    async fn change(&self, target: Target<'_>, new: &Secret) -> Result<(), ProviderError> {
        self.call(Request {
            new_secret: Some(new.expose()),
            ..self.request("change", target)
        })
        .await
        .map(|_| ())
    }

    async fn verify(
        &self,
        target: Target<'_>,
        key_id: Option<&str>,
        secret: &Secret,
    ) -> Result<bool, ProviderError> {
        let v = self
            .call(Request {
                key_id,
                secret: Some(secret.expose()),
                ..self.request("verify", target)
            })
            .await?;
        let verified: protocol::Verified = self.parse(v, "verify")?;
        Ok(verified.valid)
    }

    async fn deactivate(&self, target: Target<'_>, key_id: &str) -> Result<(), ProviderError> {
        self.call(Request {
            key_id: Some(key_id),
            ..self.request("deactivate", target)
        })
        .await
        .map(|_| ())
    }

    async fn revoke(&self, target: Target<'_>, key_id: &str) -> Result<(), ProviderError> {
        self.call(Request {
            key_id: Some(key_id),
            ..self.request("revoke", target)
        })
        .await
        .map(|_| ())
    }
}
