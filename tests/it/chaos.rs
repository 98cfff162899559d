//! What the chaos harness (`scripts/chaos`) found, each as a regression test
//! through the binary against the real OpenBao from `scripts/services`, and the
//! harness's own check proved able to fail (`--sabotage`).

use crate::support::{KillOnDrop, bao_request, rekey, repo_root, services};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};

fn vault_get(env: &std::collections::HashMap<String, String>, path: &str) -> Value {
    let path = format!("/v1/secret/data/{path}");
    bao_request(&env["VAULT_ADDR"], &env["VAULT_TOKEN"], "GET", &path, None).1
}

/// The credential's state in the latest run of `journal`, as `rekey status` reads it.
fn state_of(journal: &Path, credential: &str) -> Option<String> {
    let j = rekey::journal::Journal::open(journal).ok()?;
    let run = j.runs().ok()?.into_iter().next()?;
    j.states(&run.id)
        .ok()?
        .into_iter()
        .find(|r| r.credential == credential)
        .map(|r| r.state.as_str().to_owned())
}

/// One sandbox credential `api` (type `kind`, state file `state.json`) with its
/// own journal and Vault prefix, killed mid-rotation and resumed while the
/// provider cannot be read.
struct Scene {
    env: std::collections::HashMap<String, String>,
    dir: tempfile::TempDir,
    prefix: String,
    kind: &'static str,
}

impl Scene {
    fn new(kind: &'static str) -> Scene {
        Scene {
            env: services(),
            dir: tempfile::tempdir().unwrap(),
            prefix: format!("it-{}", hex::encode(rand::random::<[u8; 5]>())),
            kind,
        }
    }

    /// The breach-mode playbook with the provider's simulated latency.
    fn playbook(&self, latency: &str) -> std::path::PathBuf {
        let d = self.dir.path().display();
        let path = self.dir.path().join(format!("pb-{latency}.yaml"));
        std::fs::write(
            &path,
            format!(
                "version: 1\nname: chaos-regression\nincident: {{ mode: breach }}\nvault: {{ address: \"{}\" }}\nproviders:\n  p: {{ type: {}, settings: {{ state_file: {d}/state.json, latency: {latency} }} }}\ncredentials:\n  - {{ id: api, provider: p, account: a, vault_path: {}/api }}\n",
                self.env["VAULT_ADDR"], self.kind, self.prefix
            ),
        )
        .unwrap();
        path
    }

    fn journal(&self) -> std::path::PathBuf {
        self.dir.path().join("journal.db")
    }

    fn rekey(&self, args: &[&str]) -> crate::support::Output {
        let journal = self.journal();
        rekey()
            .env("VAULT_TOKEN", &self.env["VAULT_TOKEN"])
            .args(args)
            .args(["--journal", journal.to_str().unwrap()])
            .run()
    }

    fn vault(&self) -> Value {
        vault_get(&self.env, &format!("{}/api", self.prefix))["data"]["data"].clone()
    }

    fn state(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.dir.path().join("state.json")).unwrap()).unwrap()
    }

    /// A first, quick run gives the account the value consumers use (the old
    /// one); a second, slow one is killed once the credential reaches `state`.
    fn kill_second_run_at(&self, state: &str) {
        let out = self.rekey(&["run", self.playbook("1ms").to_str().unwrap()]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let journal = self.journal();
        let mut child = KillOnDrop(
            std::process::Command::new(env!("CARGO_BIN_EXE_rekey"))
                .args(["run", self.playbook("400ms").to_str().unwrap()])
                .args(["--journal", journal.to_str().unwrap()])
                .env("VAULT_TOKEN", &self.env["VAULT_TOKEN"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while state_of(&journal, "api").as_deref() != Some(state) {
            assert!(Instant::now() < deadline, "the run never reached `{state}`");
            assert!(!child.exited(), "the run ended before it was killed");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(child); // SIGKILL
    }

    /// A `resume` while the provider cannot be read (a directory stands where
    /// its state file was), then one after it answers again, which must finish.
    fn resume_past_an_unreadable_provider(&self) {
        let state = self.dir.path().join("state.json");
        let aside = self.dir.path().join("state.json.aside");
        std::fs::rename(&state, &aside).unwrap();
        std::fs::create_dir(&state).unwrap();
        let out = self.rekey(&["resume"]);
        assert_ne!(out.code, 0, "resume cannot succeed without the provider");
        // The provider did not answer, not Vault: the message blames neither.
        assert!(
            out.stderr.contains("Vault or a provider did not answer"),
            "{}",
            out.stderr
        );
        assert_eq!(
            state_of(&self.journal(), "api").as_deref(),
            Some("quarantined")
        );
        std::fs::remove_dir(&state).unwrap();
        std::fs::rename(&aside, &state).unwrap();
        let out = self.rekey(&["resume"]);
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    }
}

fn digest(value: &Value) -> String {
    hex::encode(Sha256::digest(value.as_str().unwrap().as_bytes()))
}

/// Found by `scripts/chaos` (a Redis credential in breach mode): a run killed
/// after staging its new key, a first `resume` that could not list the
/// provider's keys (the server was restarting: the credential is quarantined,
/// resumable), then a second `resume` that promoted the staged key. The first
/// resume's quarantine replaced the checkpoint that named the old keys to
/// retire, so the second one promoted the new key and retired nothing: the
/// old, compromised key still worked, and the run said "rotated".
#[test]
fn a_resume_that_could_not_list_keys_still_retires_the_old_key_on_the_next_resume() {
    let s = Scene::new("sandbox");
    s.kill_second_run_at("staged");
    let old_key = s.vault()["key_id"].as_str().unwrap().to_owned();
    s.resume_past_an_unreadable_provider();

    let data = s.vault();
    let keys = s.state()["accounts"]["a"]["keys"]
        .as_array()
        .unwrap()
        .clone();
    assert_ne!(data["key_id"], old_key.as_str(), "the new key is promoted");
    assert!(
        !keys.iter().any(|k| k["id"] == old_key.as_str()),
        "breach mode: the old key {old_key} is still at the provider after the run said rotated: {keys:?}"
    );
    assert_eq!(keys.len(), 1, "only the promoted key is left: {keys:?}");
    assert_eq!(keys[0]["id"], data["key_id"]);
    assert_eq!(keys[0]["secret_sha256"], digest(&data["value"]));
}

/// Found by `scripts/chaos` (a PostgreSQL role in breach mode): a run killed
/// after changing a password, then a `resume` while the server's connections
/// were reset. Neither login (the staged value, the value in Vault) could be
/// tried, and resume took that for "neither value logs in": quarantined for a
/// human, never resumable, with the new password in force at the server and the
/// dead one in Vault. A probe that cannot reach the provider now leaves the
/// credential to the next `resume`, which finishes it.
#[test]
fn a_resume_that_cannot_reach_the_provider_leaves_a_changed_password_to_the_next_resume() {
    let s = Scene::new("sandbox_password");
    s.kill_second_run_at("changed");
    s.resume_past_an_unreadable_provider();

    let data = s.vault();
    assert_eq!(
        s.state()["accounts"]["a"]["password_sha256"],
        digest(&data["value"]),
        "the value Vault holds is the account's password"
    );
    assert_eq!(state_of(&s.journal(), "api").as_deref(), Some("rotated"));
}

/// The harness's check is not one that cannot fail: with `--sabotage` it breaks
/// one credential of each kind behind rekey's back after the run (a PostgreSQL
/// password changed, a Redis password and a sandbox key planted, a sandbox
/// password put back) and exits 0 only when its counts include every one.
#[test]
fn the_chaos_check_counts_credentials_broken_behind_rekeys_back() {
    // Under target/, not /tmp: PostgreSQL runs as the `postgres` OS user when the
    // suite runs as root, and must reach its data directory.
    let dir = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    let out = std::process::Command::new(repo_root().join("scripts/chaos"))
        .args([
            "--iterations",
            "1",
            "--credentials",
            "12",
            "--seed",
            "5",
            "--sabotage",
        ])
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_rekey"))
        .arg("--dir")
        .arg(dir.path().join("chaos"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("the check counted them"), "{stdout}");
    let summary: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("chaos-summary.json")).unwrap())
            .unwrap();
    assert!(
        summary["totals"]["lost"].as_u64().unwrap() >= 2,
        "{summary}"
    );
    assert!(
        summary["totals"]["orphans"].as_u64().unwrap() >= 2,
        "{summary}"
    );
}
