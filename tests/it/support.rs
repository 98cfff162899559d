//! A small builder for CLI cases: runs the real `rekey` binary with a clean
//! environment from the repository root.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub struct Rekey {
    cmd: Command,
}

/// `rekey` with only the variables a test sets (plus PATH), run from the repo root.
pub fn rekey() -> Rekey {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rekey"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .current_dir(repo_root());
    Rekey { cmd }
}

impl Rekey {
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.cmd.env(key, value);
        self
    }
    /// The variables the shipped playbooks interpolate.
    pub fn playbook_env(self) -> Self {
        self.env("VAULT_ADDR", "http://127.0.0.1:8200")
    }
    /// Starts it without waiting, stdout and stderr into `log`; killed and
    /// reaped when the handle is dropped (a test that fails stops it too).
    pub fn spawn_logged(mut self, log: &Path) -> KillOnDrop {
        let file = std::fs::File::create(log).expect("create the log file");
        self.cmd
            .stdout(file.try_clone().expect("clone the log file"))
            .stderr(file);
        KillOnDrop(self.cmd.spawn().expect("rekey binary starts"))
    }
    pub fn run(mut self) -> Output {
        let out = self.cmd.output().expect("rekey binary runs");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Writes `text` to a fresh temporary playbook file and returns its directory
/// (kept alive by the caller) and path.
pub fn playbook_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("playbook.yaml");
    std::fs::write(&path, text).expect("write playbook");
    (dir, path)
}

pub fn shipped_playbooks() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("playbooks"))
        .expect("playbooks/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

pub fn relative(p: &Path) -> String {
    p.strip_prefix(repo_root())
        .unwrap_or(p)
        .display()
        .to_string()
}

/// Plans playbook `text` from a temporary file with `extra` flags and `env`;
/// returns (exit code, stdout, stderr) with the file's path shown as `PLAYBOOK`.
pub fn plan_text(text: &str, extra: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let (_dir, path) = playbook_file(text);
    let mut args = vec!["plan", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut cmd = rekey().args(args);
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    let out = cmd.run();
    let shown = |t: String| t.replace(path.to_str().unwrap(), "PLAYBOOK");
    (out.code, shown(out.stdout), shown(out.stderr))
}

/// The variables `scripts/services up` wrote to `target/services/env` (where each
/// real service listens, its admin credentials).
pub fn services() -> std::collections::HashMap<String, String> {
    let text = std::fs::read_to_string(repo_root().join("target/services/env"))
        .expect("start the services with scripts/services up (scripts/test does)");
    text.lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
}

/// A child process (a server's client, a `rekey run`) killed and reaped when
/// dropped, even when the test fails first.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// Whether the process has ended.
    pub fn exited(&mut self) -> bool {
        self.0.try_wait().unwrap().is_some()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The outcome records of `step` in the audit trail rekey keeps beside the
/// journal in `dir` (`audit.jsonl`).
pub fn trail_outcomes(dir: &Path, step: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["event"] == "outcome" && l["action"] == step)
        .collect()
}

/// The one OpenBao client of the tests: one HTTP/1.0 request to `addr`
/// (`http://host:port`) with `token` ("" for none) and an optional JSON body, to
/// `path` as given (`/v1/...`). Answers (status, JSON body or null). Tests read and
/// write Vault through this, never through rekey's own client.
pub fn bao_request(
    addr: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let host = addr.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("X-Vault-Token: {token}\r\n")
    };
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let json = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    (
        status,
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

/// [`bao_request`] with `addr` and the root token from the services' environment.
pub fn bao_env(
    env: &std::collections::HashMap<String, String>,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> serde_json::Value {
    bao_request(&env["VAULT_ADDR"], &env["VAULT_TOKEN"], method, path, body).1
}
