//! What the tests of the native infrastructure providers (`providers_aws`,
//! `providers_vault`) share: the services' addresses, a scenario with its own
//! journal and Vault prefix, runs of the real `rekey` binary, and a small client
//! for OpenBao's HTTP API.

use crate::support::rekey;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use crate::support::services;

/// A short random suffix for names that must not clash between parallel tests.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", hex::encode(rand::random::<[u8; 4]>()))
}

/// One test's world: a temporary directory (playbook, journal), a Vault prefix,
/// and the environment variables `rekey` gets.
pub struct Case {
    pub dir: tempfile::TempDir,
    pub prefix: String,
    pub env: HashMap<String, String>,
    /// Extra variables for `rekey` (admin credentials).
    pub vars: Vec<(String, String)>,
}

pub struct Ran {
    pub code: i32,
    pub summary: Value,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// `outcome` of credential `id` in the JSON summary.
    pub fn outcome(&self, id: &str) -> String {
        self.result(id)["outcome"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn result(&self, id: &str) -> Value {
        self.summary["results"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["id"] == id).cloned())
            .unwrap_or(Value::Null)
    }

    /// Fails if any of `secrets` appears in what rekey printed.
    pub fn assert_no_leak(&self, secrets: &[&str]) {
        for s in secrets {
            assert!(
                !self.stdout.contains(s) && !self.stderr.contains(s),
                "a secret value reached rekey's output"
            );
        }
    }
}

impl Case {
    pub fn new() -> Case {
        Case {
            dir: tempfile::tempdir().unwrap(),
            prefix: unique("it"),
            env: services(),
            vars: Vec::new(),
        }
    }

    pub fn journal(&self) -> PathBuf {
        self.dir.path().join("journal.db")
    }

    /// Writes a playbook: `VAULT` and `PREFIX` in `text` are replaced.
    pub fn playbook(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let text = text
            .replace("VAULT", &self.env["VAULT_ADDR"])
            .replace("PREFIX", &self.prefix);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn command(&self, args: &[&str]) -> crate::support::Rekey {
        let mut cmd = rekey()
            .env("VAULT_TOKEN", &self.env["VAULT_TOKEN"])
            .args(args);
        for (k, v) in &self.vars {
            cmd = cmd.env(k, v);
        }
        cmd
    }

    fn finish(out: crate::support::Output) -> Ran {
        Ran {
            code: out.code,
            summary: serde_json::from_str(&out.stdout).unwrap_or(Value::Null),
            stdout: out.stdout,
            stderr: out.stderr,
        }
    }

    /// `rekey run PLAYBOOK --format json` with this case's journal.
    pub fn run(&self, playbook: &Path) -> Ran {
        let journal = self.journal();
        Self::finish(
            self.command(&[
                "run",
                playbook.to_str().unwrap(),
                "--journal",
                journal.to_str().unwrap(),
                "--format",
                "json",
            ])
            .run(),
        )
    }

    pub fn resume(&self) -> Ran {
        let journal = self.journal();
        Self::finish(
            self.command(&[
                "resume",
                "--journal",
                journal.to_str().unwrap(),
                "--format",
                "json",
            ])
            .run(),
        )
    }

    /// `rekey plan PLAYBOOK --live` (text).
    pub fn plan_live(&self, playbook: &Path) -> Ran {
        Self::finish(
            self.command(&["plan", playbook.to_str().unwrap(), "--live"])
                .run(),
        )
    }

    /// Starts `rekey run` in the background, for tests that kill it.
    pub fn spawn_run(&self, playbook: &Path) -> std::process::Child {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rekey"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("VAULT_TOKEN", &self.env["VAULT_TOKEN"])
            .current_dir(crate::support::repo_root())
            .args([
                "run",
                playbook.to_str().unwrap(),
                "--journal",
                self.journal().to_str().unwrap(),
                "--format",
                "json",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    }

    /// The KV v2 entry at `PREFIX/<path>` (`data` of the answer; null if none).
    pub fn vault(&self, path: &str) -> Value {
        bao(
            &self.env,
            "GET",
            &format!("secret/data/{}/{path}", self.prefix),
            None,
        )
        .1["data"]
            .clone()
    }

    /// Seeds `PREFIX/<path>` with a current value (and key id), as consumers see it.
    pub fn seed(&self, path: &str, value: &str, key_id: Option<&str>) {
        let mut data = json!({ "value": value });
        if let Some(k) = key_id {
            data["key_id"] = json!(k);
        }
        let (status, _) = bao(
            &self.env,
            "POST",
            &format!("secret/data/{}/{path}", self.prefix),
            Some(&json!({ "data": data })),
        );
        assert_eq!(status, 200, "seeding Vault");
    }

    /// Fails if any of `secrets` is in the journal's files (database and WAL).
    pub fn assert_journal_clean(&self, secrets: &[&str]) {
        for suffix in ["", "-wal"] {
            let path = PathBuf::from(format!("{}{suffix}", self.journal().display()));
            let bytes = std::fs::read(&path).unwrap_or_default();
            for s in secrets {
                assert!(
                    !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                    "a secret value reached {}",
                    path.display()
                );
            }
        }
    }

    /// Blocks until the latest run in the journal satisfies `ready` (up to 60 s):
    /// tests act on what the run has done, not on how long it has run.
    pub fn wait_for_state(&self, credential: &str, states: &[&str]) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Ok(j) = rekey::journal::Journal::open(&self.journal())
                && let Some(run) = j.runs().ok().and_then(|r| r.into_iter().next())
                && j.states(&run.id).ok().is_some_and(|rows| {
                    rows.iter()
                        .any(|r| r.credential == credential && states.contains(&r.state.as_str()))
                })
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the run never reached {states:?}");
    }
}

/// One request to OpenBao with the root token: (status, JSON body or null).
pub fn bao(
    env: &HashMap<String, String>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    bao_as(env, &env["VAULT_TOKEN"], method, path, body)
}

/// One request to OpenBao with `token` ("" for none), through the tests' one client.
pub fn bao_as(
    env: &HashMap<String, String>,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    crate::support::bao_request(
        &env["VAULT_ADDR"],
        token,
        method,
        &format!("/v1/{path}"),
        body,
    )
}
