//! A small lab for end-to-end runs of manual steps, exec plugins and sinks: a
//! temporary directory (playbook, journal, state files), a Vault prefix of its own
//! in the real OpenBao of `scripts/services`, and `rekey` runs with stdin.

use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use crate::support::services;

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub prefix: String,
    pub env: HashMap<String, String>,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or(Value::Null)
    }
    /// The outcome of credential `id` in a `--format json` summary.
    pub fn outcome(&self, id: &str) -> String {
        self.json()["results"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["id"] == id)
            .and_then(|r| r["outcome"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

impl Lab {
    pub fn new() -> Lab {
        Lab {
            dir: tempfile::tempdir().unwrap(),
            prefix: format!("it-{}", hex::encode(rand::random::<[u8; 5]>())),
            env: services(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a playbook: `DIR` becomes the lab's directory, `PREFIX` its Vault
    /// prefix, `VAULT` the OpenBao address. `body` holds `providers:` and
    /// `credentials:` (and anything else after `vault:`).
    pub fn playbook(&self, mode: &str, body: &str) -> PathBuf {
        let text = format!(
            "version: 1\nname: lab\nincident: {{ mode: {mode} }}\nvault: {{ address: \"VAULT\" }}\n{body}"
        );
        let text = text
            .replace("VAULT", &self.env["VAULT_ADDR"])
            .replace("PREFIX", &self.prefix)
            .replace("DIR", &self.dir.path().display().to_string());
        let path = self.path("playbook.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `rekey ARGS --journal J` (with `--format json` where it applies),
    /// feeding `stdin`, with VAULT_TOKEN and `env` set and nothing else but PATH.
    pub fn rekey(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Run {
        let journal = self.path("journal.db");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rekey"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NO_COLOR", "1")
            .env("VAULT_TOKEN", &self.env["VAULT_TOKEN"])
            .current_dir(crate::support::repo_root())
            .args(args)
            .arg("--journal")
            .arg(&journal)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if matches!(args.first(), Some(&"run") | Some(&"resume")) {
            cmd.args(["--format", "json"]);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("rekey starts");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The KV v2 entry at `PREFIX/path` (`data` of the read answer), or Null.
    pub fn vault(&self, path: &str) -> Value {
        self.vault_abs(&format!("{}/{path}", self.prefix))
    }

    pub fn vault_abs(&self, path: &str) -> Value {
        http(
            &self.env["VAULT_ADDR"],
            "GET",
            &format!("/v1/secret/data/{path}"),
            &self.env["VAULT_TOKEN"],
            None,
        )["data"]
            .clone()
    }

    /// Whether `needle` appears in the journal or its write-ahead log.
    pub fn journal_holds(&self, needle: &str) -> bool {
        ["journal.db", "journal.db-wal"]
            .iter()
            .any(|f| file_contains(&self.path(f), needle))
    }
}

pub fn file_contains(path: &Path, needle: &str) -> bool {
    std::fs::read(path)
        .map(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .unwrap_or(false)
}

/// OpenBao through the tests' one client ([`crate::support::bao_request`]).
pub fn http(addr: &str, method: &str, path: &str, token: &str, body: Option<&Value>) -> Value {
    crate::support::bao_request(addr, token, method, path, body).1
}

pub fn sha256_hex(value: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(value.as_bytes()))
}
