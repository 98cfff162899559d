//! Writing the trail: one sealed line per journal record, appended, synced, and
//! the head record updated, before the journal call that committed it returns.

use super::chain::{self, GENESIS, Head};
use super::sink::Sink;
use super::{Actor, AuditError, HMAC_PREFIX};
use crate::files;
use crate::journal::{Event, Mirror, Outcome};
use crate::secret::Secret;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Width of the head record: it is rewritten in place, always this many bytes, so
/// a shorter record never leaves a longer one's tail behind.
const HEAD_WIDTH: usize = 128;

/// Where the credentials of the playbook live, to put on each of their lines.
#[derive(Debug, Clone, Default)]
pub struct CredentialInfo {
    pub provider: String,
    pub vault_path: String,
}

/// An open audit trail. Several processes may append to the same trail: each write
/// takes an exclusive lock on the file and re-reads the last line when another
/// process wrote since.
pub struct Trail {
    path: PathBuf,
    file: File,
    head: File,
    /// The head file again, opened for positioned writes (`head` appends), once.
    head_writer: File,
    /// The head file is known to be exactly one record long (checked at the first
    /// write, not on every line).
    head_sized: bool,
    lines: LineMaker,
    /// (file length after our last write, seq, hash of the last line).
    tail: Option<(u64, u64, String)>,
    sinks: Vec<Sink>,
    /// Whether each line is synced as it is written; `false` once the journal's
    /// group commit syncs the trail's files for a batch of records.
    sync_each: bool,
}

/// What turns journal events into the fields and sealed lines of a trail: the
/// file trail here ([`Trail`]) and the chains a shared journal keeps in its
/// database (`super::chain_mirror`) write the same lines.
pub(super) struct LineMaker {
    key: Vec<u8>,
    actor: Actor,
    credentials: HashMap<String, CredentialInfo>,
    /// Journal fingerprint → trail HMAC, learnt from `note_secret`.
    hmacs: HashMap<String, String>,
    /// What each open intent's line said (key ids, Vault path, secret), repeated
    /// on its outcome's line so each line reads on its own.
    open_intents: HashMap<i64, Map<String, Value>>,
}

impl std::fmt::Debug for Trail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trail")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// `trail` + `suffix`, as the head record's file is named.
pub fn side_file(trail: &Path, suffix: &str) -> PathBuf {
    let mut name = trail.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Opens `path` for appending (mode 0600, created with O_CREAT|O_EXCL when new, its
/// directory 0700), refusing a link, a file of another user or one others can
/// read, and a directory others can write (`crate::files`).
pub(super) fn open_private(path: &Path) -> Result<File, AuditError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| AuditError::Io {
                path: path.to_path_buf(),
                action: "create the directory of",
                source,
            })?;
    }
    let how = files::How {
        read: true,
        write: true,
        append: true,
        create: true,
    };
    files::open(path, how).map(|(f, _)| f).map_err(audit_error)
}

/// The head file again, for positioned writes (the trail's handle appends).
fn open_head_writer(path: &Path) -> Result<File, AuditError> {
    let how = files::How {
        read: false,
        write: true,
        append: false,
        create: false,
    };
    files::open(path, how).map(|(f, _)| f).map_err(audit_error)
}

/// The trail's own words for a file that is not private; the rest as
/// `crate::files` says it.
fn audit_error(e: files::FileError) -> AuditError {
    match e {
        files::FileError::Mode { path, mode } => AuditError::Permissions { path, mode },
        files::FileError::NotAFile { path } => AuditError::NotAFile { path },
        other => AuditError::File(other),
    }
}

impl Trail {
    /// Opens (or creates) the trail at `path` with HMAC key `key`; every line
    /// written names `actor`. The existing chain is verified first.
    pub fn open(
        path: &Path,
        key: Vec<u8>,
        actor: Actor,
        credentials: HashMap<String, CredentialInfo>,
        sinks: Vec<Sink>,
    ) -> Result<Trail, AuditError> {
        let file = open_private(path)?;
        let head_path = side_file(path, ".head");
        let head = open_private(&head_path)?;
        let head_writer = open_head_writer(&head_path)?;
        let mut trail = Trail {
            path: path.to_path_buf(),
            file,
            head,
            head_writer,
            head_sized: false,
            lines: LineMaker::new(key, actor, credentials),
            tail: None,
            sinks,
            sync_each: true,
        };
        trail.file.lock().map_err(|source| AuditError::Io {
            path: path.to_path_buf(),
            action: "lock",
            source,
        })?;
        let checked = trail.check_existing();
        let _ = trail.file.unlock();
        checked?;
        Ok(trail)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Verifies the whole trail (under the lock), reading it a line at a time:
    /// a trail of hundreds of megabytes (a journal used for months) is not held in
    /// memory by every run that extends it. Only a trail whose end is broken is
    /// read whole, to keep a torn last line as evidence.
    fn check_existing(&mut self) -> Result<(), AuditError> {
        let read_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| AuditError::Io {
                path,
                action: "read",
                source,
            }
        };
        let mut f = &self.file;
        let len = f
            .seek(SeekFrom::End(0))
            .and_then(|len| f.seek(SeekFrom::Start(0)).map(|_| len))
            .map_err(read_error(&self.path))?;
        let head = self.read_head()?;
        // A brand-new trail has no head yet.
        let head = head.or_else(|| {
            (len == 0).then(|| Head {
                lines: 0,
                last: GENESIS.into(),
            })
        });
        let reader = std::io::BufReader::with_capacity(1 << 16, &self.file);
        let mut verdict = chain::verify_reader(reader, head.as_ref(), |_, _| {})
            .map_err(read_error(&self.path))?;
        let mut kept = len;
        if verdict.problem.is_some() && head.is_some() {
            let mut bytes = Vec::new();
            let mut f = &self.file;
            f.seek(SeekFrom::Start(0))
                .and_then(|_| f.read_to_end(&mut bytes))
                .map_err(read_error(&self.path))?;
            if let Some(cut) = self.torn_tail(&bytes, head.as_ref())? {
                verdict = chain::verify(&bytes[..cut], head.as_ref(), |_, _| {});
                kept = cut as u64;
            }
        }
        if let Some(problem) = verdict.problem {
            return Err(AuditError::Broken {
                path: self.path.clone(),
                line: problem.line,
                reason: problem.reason,
            });
        }
        self.tail = Some((kept, verdict.lines, verdict.last));
        Ok(())
    }

    /// A last line cut short by a failed write (a full disk, a crash mid-write)
    /// after every whole line the head record vouches for: the torn bytes are
    /// kept in `<trail>.torn` as evidence and cut from the trail, so the run can
    /// go on (found by `scripts/chaos`, the journal's disk filled mid-append).
    /// `Some(length kept)`; `None` when the trail is broken in any other way,
    /// which stays an error for a human.
    fn torn_tail(
        &mut self,
        bytes: &[u8],
        head: Option<&Head>,
    ) -> Result<Option<usize>, AuditError> {
        if bytes.last().is_none_or(|b| *b == b'\n') {
            return Ok(None);
        }
        let cut = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let intact = chain::verify(&bytes[..cut], head, |_, _| {});
        if intact.problem.is_some() || head.is_none_or(|h| h.lines != intact.lines) {
            return Ok(None);
        }
        let torn = side_file(&self.path, ".torn");
        let mut evidence = open_private(&torn)?;
        evidence
            .write_all(&bytes[cut..])
            .and_then(|()| evidence.write_all(b"\n"))
            .and_then(|()| evidence.sync_data())
            .and_then(|()| self.file.set_len(cut as u64))
            .and_then(|()| self.file.sync_data())
            .map_err(|source| AuditError::Io {
                path: self.path.clone(),
                action: "cut a torn last line from",
                source,
            })?;
        tracing::warn!(
            trail = %self.path.display(),
            torn = %torn.display(),
            "The trail's last line was cut short by a failed write after line {}; its bytes are kept in {} and the trail goes on from line {}.",
            intact.lines,
            torn.display(),
            intact.lines
        );
        Ok(Some(cut))
    }

    fn read_head(&self) -> Result<Option<Head>, AuditError> {
        let mut buf = Vec::new();
        let mut f = &self.head;
        f.seek(SeekFrom::Start(0))
            .and_then(|_| f.read_to_end(&mut buf))
            .map_err(|source| AuditError::Io {
                path: side_file(&self.path, ".head"),
                action: "read",
                source,
            })?;
        Ok(chain::parse_head(&buf))
    }

    /// The HMAC of `secret` under this trail's key, as lines show it.
    pub fn hmac(&self, secret: &Secret) -> String {
        self.lines.hmac(secret)
    }

    /// Appends one line built from `fields` (seq, ts, actor, prev and hash are
    /// added here), synced, then the head record, then the extra sinks.
    pub fn append(&mut self, fields: Map<String, Value>) -> Result<(), AuditError> {
        let io = |path: &Path, action: &'static str| {
            let path = path.to_path_buf();
            move |source| AuditError::Io {
                path,
                action,
                source,
            }
        };
        self.file.lock().map_err(io(&self.path, "lock"))?;
        let result = self.append_locked(fields);
        let _ = self.file.unlock();
        let line = result?;
        for sink in &mut self.sinks {
            sink.send(&line);
        }
        Ok(())
    }

    fn append_locked(&mut self, fields: Map<String, Value>) -> Result<String, AuditError> {
        let len = self
            .file
            .metadata()
            .map_err(|source| AuditError::Io {
                path: self.path.clone(),
                action: "read",
                source,
            })?
            .len();
        // Another process appended since our last write: learn where the chain is.
        if self.tail.as_ref().is_none_or(|(l, _, _)| *l != len) {
            self.check_existing()?;
        }
        let (_, seq, prev) = self.tail.clone().unwrap_or((0, 0, GENESIS.into()));
        let seq = seq + 1;
        let line = self.lines.seal(seq, &prev, fields);
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        // One write of the whole line (O_APPEND), then fdatasync: the line is on
        // disk before the step it records goes ahead.
        (&self.file)
            .write_all(&bytes)
            .and_then(|_| {
                if self.sync_each {
                    self.file.sync_data()
                } else {
                    Ok(())
                }
            })
            .map_err(|source| {
                // A line cut short (a full disk) is taken back, so the trail stays
                // whole for the next write; should that fail too, the next open
                // cuts it (`torn_tail`).
                let _ = self.file.set_len(len);
                AuditError::Io {
                    path: self.path.clone(),
                    action: "append to",
                    source,
                }
            })?;
        let last = chain::sha256_hex(line.as_bytes());
        let mut record = serde_json::to_string(&Head {
            lines: seq,
            last: last.clone(),
        })
        .unwrap_or_default();
        while record.len() < HEAD_WIDTH - 1 {
            record.push(' ');
        }
        record.push('\n');
        // The head is rewritten in place (the file was opened O_APPEND, so
        // positioned writes go through a second handle).
        let h = &self.head_writer;
        h.write_all_at(record.as_bytes(), 0)
            .and_then(|()| {
                // Only a head written by another build can be longer than ours.
                if !self.head_sized && h.metadata()?.len() != HEAD_WIDTH as u64 {
                    h.set_len(HEAD_WIDTH as u64)?;
                }
                self.head_sized = true;
                if self.sync_each {
                    h.sync_data()
                } else {
                    Ok(())
                }
            })
            .map_err(|source| AuditError::Io {
                path: side_file(&self.path, ".head"),
                action: "update",
                source,
            })?;
        self.tail = Some((len + bytes.len() as u64, seq, last));
        Ok(line)
    }
}

impl LineMaker {
    pub(super) fn new(
        key: Vec<u8>,
        actor: Actor,
        credentials: HashMap<String, CredentialInfo>,
    ) -> LineMaker {
        LineMaker {
            key,
            actor,
            credentials,
            hmacs: HashMap::new(),
            open_intents: HashMap::new(),
        }
    }

    /// The HMAC of `secret` under the trail's key, as lines show it.
    pub(super) fn hmac(&self, secret: &Secret) -> String {
        format!("{HMAC_PREFIX}{}", secret.fingerprint(&self.key))
    }

    /// Line `seq` of a chain, after the line whose SHA-256 is `prev`: `fields`
    /// with the time and the actor, sealed (see `chain::seal`).
    pub(super) fn seal(&self, seq: u64, prev: &str, fields: Map<String, Value>) -> String {
        let mut body = Map::new();
        body.insert("seq".into(), json!(seq));
        body.insert(
            "ts".into(),
            json!(humantime::format_rfc3339_millis(SystemTime::now()).to_string()),
        );
        body.insert(
            "actor".into(),
            serde_json::to_value(&self.actor).unwrap_or_default(),
        );
        for (k, v) in fields {
            body.insert(k, v);
        }
        body.insert("prev".into(), json!(prev));
        chain::seal(&Value::Object(body).to_string())
    }

    /// The fields of `event`'s line; an outcome repeats what its intent's line said.
    pub(super) fn fields(&mut self, event: Event<'_>) -> Map<String, Value> {
        let mut fields = self.fields_for(&event);
        match event {
            Event::Intent { intent, .. } => {
                let said: Map<String, Value> =
                    ["key_ids", "vault_path", "vault_version", "secret_hmac"]
                        .iter()
                        .filter_map(|k| Some((k.to_string(), fields.get(*k)?.clone())))
                        .collect();
                self.open_intents.insert(intent.0, said);
            }
            Event::Outcome { intent, .. } => {
                for (k, v) in self.open_intents.remove(&intent.0).unwrap_or_default() {
                    fields.insert(k, v);
                }
            }
            _ => {}
        }
        fields
    }

    /// Remembers the trail HMAC of a value the journal refers to by `fingerprint`.
    pub(super) fn learn(&mut self, fingerprint: &str, secret: &Secret) {
        if !self.hmacs.contains_key(fingerprint) {
            let hmac = self.hmac(secret);
            self.hmacs.insert(fingerprint.to_owned(), hmac);
        }
    }

    /// The fields of one line for a journal event.
    fn fields_for(&self, event: &Event<'_>) -> Map<String, Value> {
        let mut f = Map::new();
        let credential_fields = |f: &mut Map<String, Value>, run: &str, credential: &str| {
            f.insert("run".into(), json!(run));
            f.insert("credential".into(), json!(credential));
            if let Some(info) = self.credentials.get(credential) {
                f.insert("provider".into(), json!(info.provider));
            }
        };
        match *event {
            Event::RunStarted { run, new_run } => {
                f.insert("run".into(), json!(run));
                f.insert("event".into(), json!("run"));
                f.insert("action".into(), json!("start"));
                f.insert(
                    "detail".into(),
                    json!({
                        "playbook": new_run.playbook_name,
                        "playbook_path": new_run.playbook_path,
                        "playbook_sha256": new_run.playbook_sha256,
                        "mode": new_run.mode,
                        "selection": new_run.selection,
                    }),
                );
            }
            Event::RunFinished { run, status } => {
                f.insert("run".into(), json!(run));
                f.insert("event".into(), json!("run"));
                f.insert("action".into(), json!("finish"));
                f.insert("outcome".into(), json!(status.as_str()));
            }
            Event::RunReopened { run } => {
                f.insert("run".into(), json!(run));
                f.insert("event".into(), json!("run"));
                f.insert("action".into(), json!("resume"));
            }
            Event::Intent {
                run,
                credential,
                step,
                intent,
                detail,
            } => {
                credential_fields(&mut f, run, credential);
                f.insert("event".into(), json!("intent"));
                f.insert("action".into(), json!(step));
                f.insert("intent".into(), json!(intent.0));
                self.describe(&mut f, credential, detail);
            }
            Event::Outcome {
                run,
                credential,
                step,
                intent,
                outcome,
                detail,
            } => {
                credential_fields(&mut f, run, credential);
                f.insert("event".into(), json!("outcome"));
                f.insert("action".into(), json!(step));
                f.insert("intent".into(), json!(intent.0));
                match outcome {
                    Outcome::Ok => {
                        f.insert("outcome".into(), json!("ok"));
                    }
                    Outcome::Failed { kind, message } => {
                        f.insert("outcome".into(), json!("failed"));
                        f.insert("error".into(), json!({ "kind": kind, "message": message }));
                    }
                }
                self.describe(&mut f, credential, detail);
            }
            Event::State {
                run,
                credential,
                state,
                detail,
            } => {
                credential_fields(&mut f, run, credential);
                f.insert("event".into(), json!("state"));
                f.insert("action".into(), json!(state));
                self.describe(&mut f, credential, detail);
            }
        }
        f
    }

    /// Key ids, Vault path and version, the secret's HMAC, and the rest of the
    /// journal detail (its journal fingerprint replaced by the trail's HMAC).
    fn describe(&self, f: &mut Map<String, Value>, credential: &str, detail: &Value) {
        let mut rest = match detail {
            Value::Object(m) => m.clone(),
            Value::Null => Map::new(),
            other => Map::from_iter([("value".to_owned(), other.clone())]),
        };
        let mut keys = Map::new();
        for (name, label) in [
            ("key_id", "key"),
            ("new_key_id", "new"),
            ("old_key_id", "old"),
        ] {
            if let Some(v) = rest.remove(name).filter(|v| !v.is_null()) {
                keys.insert(label.to_owned(), v);
            }
        }
        if let Some(k) = rest
            .get("fields")
            .and_then(|x| x.get("key_id"))
            .filter(|v| !v.is_null())
        {
            keys.entry("new").or_insert_with(|| k.clone());
        }
        if !keys.is_empty() {
            f.insert("key_ids".into(), Value::Object(keys));
        }
        let path = rest
            .remove("path")
            .and_then(|p| p.as_str().map(str::to_owned))
            .or_else(|| {
                self.credentials
                    .get(credential)
                    .map(|c| c.vault_path.clone())
            });
        if let Some(p) = path {
            f.insert("vault_path".into(), json!(p));
        }
        let version = ["version", "vault_version", "cas"]
            .iter()
            .find_map(|k| rest.get(*k).and_then(Value::as_u64));
        rest.remove("version");
        rest.remove("vault_version");
        if let Some(v) = version {
            f.insert("vault_version".into(), json!(v));
        }
        if let Some(fp) = rest.remove("fingerprint") {
            // Only the trail's own HMAC leaves; the journal's never does.
            if let Some(h) = fp.as_str().and_then(|fp| self.hmacs.get(fp)) {
                f.insert("secret_hmac".into(), json!(h));
            }
        }
        if !rest.is_empty() {
            f.insert("detail".into(), Value::Object(rest));
        }
    }
}

impl Mirror for Trail {
    fn defer_sync(&mut self) -> Result<Vec<File>, String> {
        let head_path = side_file(&self.path, ".head");
        let files = [
            self.file.try_clone().map_err(|e| e.to_string()),
            open_head_writer(&head_path).map_err(|e| e.to_string()),
        ]
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "cannot open the audit trail {} for syncing: {e}",
                self.path.display()
            )
        })?;
        self.sync_each = false;
        Ok(files)
    }

    fn position(&mut self) -> Result<Option<(PathBuf, u64, String)>, String> {
        let Some((_, lines, last)) = self.tail.clone().filter(|(_, lines, _)| *lines > 0) else {
            return Ok(None);
        };
        // On disk before the journal records it (under group commit the lines may
        // not be synced yet).
        self.file
            .sync_data()
            .and_then(|()| self.head_writer.sync_data())
            .map_err(|e| format!("cannot sync the audit trail {}: {e}", self.path.display()))?;
        Ok(Some((self.path.clone(), lines, last)))
    }

    fn record(&mut self, event: Event<'_>) -> Result<(), String> {
        let fields = self.lines.fields(event);
        self.append(fields).map_err(|e| e.to_string())
    }

    fn note_secret(&mut self, fingerprint: &str, secret: &Secret) {
        self.lines.learn(fingerprint, secret);
    }
}
