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

/// Found by `scripts/chaos` (a Redis credential in breach mode): a run killed
/// after staging its new key, a first `resume` that could not list the
/// provider's keys (the server was restarting: the credential is quarantined,
/// resumable), then a second `resume` that promoted the staged key. The first
/// resume's quarantine replaced the checkpoint that named the old keys to
/// retire, so the second one promoted the new key and retired nothing: the
/// old, compromised key still worked, and the run said "rotated".
#[test]
fn a_resume_that_could_not_list_keys_still_retires_the_old_key_on_the_next_resume() {
    let env = services();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let prefix = format!("it-{}", hex::encode(rand::random::<[u8; 5]>()));
    let playbook = |latency: &str| {
        format!(
            "version: 1\nname: chaos-regression\nincident: {{ mode: breach }}\nvault: {{ address: \"{}\" }}\nproviders:\n  keys: {{ type: sandbox, settings: {{ state_file: {d}/keys.json, latency: {latency} }} }}\ncredentials:\n  - {{ id: api, provider: keys, account: a, vault_path: {prefix}/api }}\n",
            env["VAULT_ADDR"]
        )
    };
    let quick = dir.path().join("quick.yaml");
    let slow = dir.path().join("slow.yaml");
    std::fs::write(&quick, playbook("1ms")).unwrap();
    std::fs::write(&slow, playbook("400ms")).unwrap();
    let journal = dir.path().join("journal.db");
    let journal_arg = journal.to_str().unwrap();
    let run = |args: &[&str]| {
        rekey()
            .env("VAULT_TOKEN", &env["VAULT_TOKEN"])
            .args(args)
            .run()
    };

    // A first run gives the account the key consumers use (the old one).
    let out = run(&["run", quick.to_str().unwrap(), "--journal", journal_arg]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let old_key = vault_get(&env, &format!("{prefix}/api"))["data"]["data"]["key_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The second run is killed once its new key is staged.
    let mut child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_rekey"))
            .args(["run", slow.to_str().unwrap(), "--journal", journal_arg])
            .env("VAULT_TOKEN", &env["VAULT_TOKEN"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while state_of(&journal, "api").as_deref() != Some("staged") {
        assert!(Instant::now() < deadline, "the run never staged its key");
        assert!(!child.exited(), "the run ended before it was killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(child); // SIGKILL

    // The provider cannot be read during the first resume: its state file is
    // out of the way (a directory stands in its place).
    let state = dir.path().join("keys.json");
    let aside = dir.path().join("keys.json.aside");
    std::fs::rename(&state, &aside).unwrap();
    std::fs::create_dir(&state).unwrap();
    let out = run(&["resume", "--journal", journal_arg]);
    assert_ne!(out.code, 0, "resume cannot succeed without the provider");
    assert_eq!(state_of(&journal, "api").as_deref(), Some("quarantined"));

    // The provider answers again: the second resume finishes the rotation.
    std::fs::remove_dir(&state).unwrap();
    std::fs::rename(&aside, &state).unwrap();
    let out = run(&["resume", "--journal", journal_arg, "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    let data = vault_get(&env, &format!("{prefix}/api"))["data"]["data"].clone();
    let keys: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let keys = keys["accounts"]["a"]["keys"].as_array().unwrap().clone();
    assert_ne!(data["key_id"], old_key.as_str(), "the new key is promoted");
    assert!(
        !keys.iter().any(|k| k["id"] == old_key.as_str()),
        "breach mode: the old key {old_key} is still at the provider after the run said rotated: {keys:?}"
    );
    assert_eq!(keys.len(), 1, "only the promoted key is left: {keys:?}");
    assert_eq!(keys[0]["id"], data["key_id"]);
    assert_eq!(
        keys[0]["secret_sha256"],
        hex::encode(Sha256::digest(data["value"].as_str().unwrap().as_bytes()))
    );
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
