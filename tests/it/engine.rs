//! `rekey run` end to end: the real OpenBao (from `scripts/services`) as the store,
//! the built-in sandbox providers as the credential issuers.

use crate::support::rekey;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

use crate::support::services;

/// A fresh scenario: its own state files, journal and Vault prefix.
struct Scenario {
    dir: tempfile::TempDir,
    prefix: String,
    env: HashMap<String, String>,
}

impl Scenario {
    fn new() -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("it-{}", hex::encode(rand::random::<[u8; 5]>()));
        Scenario {
            dir,
            prefix,
            env: services(),
        }
    }

    /// Writes the playbook and returns its path.
    fn playbook(&self, mode: &str, credentials: &str) -> String {
        let path = self.dir.path().join("playbook.yaml");
        std::fs::write(&path, self.playbook_text(mode, credentials)).unwrap();
        path.display().to_string()
    }

    fn playbook_text(&self, mode: &str, credentials: &str) -> String {
        let d = self.dir.path().display();
        let text = format!(
            "version: 1\nname: engine-test\nincident: {{ mode: {mode} }}\nvault: {{ address: \"{addr}\" }}\nproviders:\n  keys: {{ type: sandbox, settings: {{ state_file: {d}/keys.json, latency: 1ms }} }}\n  pw: {{ type: sandbox_password, settings: {{ state_file: {d}/pw.json, latency: 1ms }} }}\ncredentials:\n{}",
            credentials.replace("PREFIX", &self.prefix),
            addr = self.env["VAULT_ADDR"],
        );
        text
    }

    fn run(&self, playbook: &str, extra: &[&str]) -> (i32, Value, String) {
        let journal = self.dir.path().join("journal.db");
        let mut args = vec![
            "run",
            playbook,
            "--journal",
            journal.to_str().unwrap(),
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        let out = rekey()
            .env("VAULT_TOKEN", &self.env["VAULT_TOKEN"])
            .args(args)
            .run();
        let summary = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
        (out.code, summary, out.stderr)
    }

    /// Starts `rekey run PLAYBOOK` in the background with this scenario's journal
    /// (JSON summary on its stdout), for tests that act while it runs.
    fn spawn_run(&self, playbook: &Path) -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_rekey"))
            .args([
                "run",
                playbook.to_str().unwrap(),
                "--journal",
                self.dir.path().join("journal.db").to_str().unwrap(),
                "--format",
                "json",
            ])
            .env("VAULT_TOKEN", &self.env["VAULT_TOKEN"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn vault(&self, path: &str) -> Value {
        http(
            &self.env["VAULT_ADDR"],
            "GET",
            &format!("/v1/secret/data/{}/{path}", self.prefix),
            &self.env["VAULT_TOKEN"],
            None,
        )
    }

    fn state(&self, file: &str) -> Value {
        serde_json::from_slice(
            &std::fs::read(self.dir.path().join(file)).unwrap_or_else(|_| b"{}".to_vec()),
        )
        .unwrap()
    }
}

/// OpenBao through the tests' one client ([`crate::support::bao_request`]).
fn http(addr: &str, method: &str, path: &str, token: &str, body: Option<&Value>) -> Value {
    crate::support::bao_request(addr, token, method, path, body).1
}

/// Waits (up to 30 s) until the latest run in `journal` satisfies `ready`: tests
/// act on what the run has done, not on how long it has been running.
fn wait_for_journal(journal: &Path, ready: impl Fn(&rekey::journal::Journal, &str) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Ok(j) = rekey::journal::Journal::open(journal)
            && let Some(run) = j.runs().ok().and_then(|r| r.into_iter().next())
            && ready(&j, &run.id)
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("the run never reached the expected point");
}

fn digest(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

fn outcome(summary: &Value, id: &str) -> String {
    summary["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .map(|r| r["outcome"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn file_contains(path: &Path, needle: &str) -> bool {
    std::fs::read(path)
        .map(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .unwrap_or(false)
}

#[test]
fn run_rotates_dual_keys_and_retires_the_old_one() {
    let s = Scenario::new();
    let pb = s.playbook(
        "breach",
        "  - { id: api, provider: keys, account: a, vault_path: PREFIX/api }\n",
    );
    let (code, summary, stderr) = s.run(&pb, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(outcome(&summary, "api"), "rotated");
    let first = s.vault("api")["data"]["data"].clone();
    let first_key = first["key_id"].as_str().unwrap().to_owned();

    let (code, summary, stderr) = s.run(&pb, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(outcome(&summary, "api"), "rotated");
    let entry = s.vault("api")["data"].clone();
    assert_eq!(entry["metadata"]["version"], 2);
    assert_eq!(
        entry["metadata"]["custom_metadata"]["rekey_provider"],
        "keys"
    );
    let second = &entry["data"];
    assert_ne!(second["key_id"], first_key.as_str());
    // The provider holds exactly the new key, and it is the value Vault holds.
    let keys = s.state("keys.json")["accounts"]["a"]["keys"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(keys.len(), 1, "the old key is deleted: {keys:?}");
    assert_eq!(keys[0]["id"], second["key_id"]);
    assert_eq!(
        keys[0]["secret_sha256"],
        digest(second["value"].as_str().unwrap())
    );
    // This run's staging entries are cleared.
    let run_id = summary["run_id"].as_str().unwrap();
    let staging = http(
        &s.env["VAULT_ADDR"],
        "LIST",
        &format!("/v1/secret/metadata/rekey/staging/{run_id}"),
        &s.env["VAULT_TOKEN"],
        None,
    );
    assert!(
        staging["data"]["keys"]
            .as_array()
            .is_none_or(|k| k.is_empty()),
        "staging entry left: {staging}"
    );
}

#[test]
fn run_rolls_back_when_verify_fails_and_skips_dependents() {
    let s = Scenario::new();
    let pb = s.playbook("breach", "  - { id: api, provider: keys, account: a, vault_path: PREFIX/api, settings: { fail: verify } }\n  - { id: db, provider: pw, account: d, vault_path: PREFIX/db, depends_on: [api] }\n");
    let (code, summary, stderr) = s.run(&pb, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(outcome(&summary, "api"), "rolled_back");
    assert_eq!(outcome(&summary, "db"), "skipped");
    // Nothing visible changed: no key left at the provider, nothing in Vault.
    assert_eq!(
        s.state("keys.json")["accounts"]["a"]["keys"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0),
        0
    );
    assert!(s.vault("api")["data"].is_null());
    assert!(s.vault("db")["data"].is_null());
}

#[test]
fn run_changes_single_passwords_and_stores_them() {
    let s = Scenario::new();
    let pb = s.playbook("routine", "  - { id: db, provider: pw, account: d, vault_path: PREFIX/db, password: { length: 24 } }\n");
    let (code, summary, stderr) = s.run(&pb, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(outcome(&summary, "db"), "rotated");
    let value = s.vault("db")["data"]["data"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(value.len(), 24);
    assert_eq!(
        s.state("pw.json")["accounts"]["d"]["password_sha256"],
        digest(&value)
    );
}

#[test]
fn routine_mode_restores_the_old_password_when_the_new_one_fails() {
    let s = Scenario::new();
    let good = s.playbook(
        "routine",
        "  - { id: db, provider: pw, account: d, vault_path: PREFIX/db }\n",
    );
    assert_eq!(s.run(&good, &[]).0, 0);
    let old = s.vault("db")["data"]["data"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let failing = s.playbook("routine", "  - { id: db, provider: pw, account: d, vault_path: PREFIX/db, settings: { fail: verify } }\n");
    let (code, summary, stderr) = s.run(&failing, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(outcome(&summary, "db"), "rolled_back");
    assert_eq!(
        s.state("pw.json")["accounts"]["d"]["password_sha256"],
        digest(&old),
        "the old password works again"
    );
    assert_eq!(
        s.vault("db")["data"]["metadata"]["version"],
        1,
        "Vault was not touched"
    );
}

#[test]
fn breach_mode_never_restores_a_compromised_password() {
    let s = Scenario::new();
    let good = s.playbook(
        "breach",
        "  - { id: db, provider: pw, account: d, vault_path: PREFIX/db }\n",
    );
    assert_eq!(s.run(&good, &[]).0, 0);
    let old = s.vault("db")["data"]["data"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let failing = s.playbook("breach", "  - { id: db, provider: pw, account: d, vault_path: PREFIX/db, settings: { fail: verify } }\n");
    let (code, summary, stderr) = s.run(&failing, &[]);
    assert_eq!(code, 3, "{stderr}");
    assert_eq!(outcome(&summary, "db"), "quarantined");
    assert_ne!(
        s.state("pw.json")["accounts"]["d"]["password_sha256"],
        digest(&old),
        "the compromised value is not restored"
    );
    let status = rekey()
        .args([
            "status",
            "--journal",
            s.dir.path().join("journal.db").to_str().unwrap(),
        ])
        .run();
    assert!(
        status.stdout.contains("quarantined") && status.stdout.contains("to do:"),
        "{}",
        status.stdout
    );
}

#[test]
fn a_vault_path_changed_out_of_band_is_quarantined_not_overwritten() {
    let s = Scenario::new();
    let d = s.dir.path().display().to_string();
    let pb = s.playbook_text("breach", "  - { id: api, provider: slow, account: a, vault_path: PREFIX/api }\n").replace(
        "  pw: {",
        &format!("  slow: {{ type: sandbox, settings: {{ state_file: {d}/slow.json, latency: 700ms }} }}\n  pw: {{"),
    );
    let path = s.dir.path().join("slow.yaml");
    std::fs::write(&path, pb).unwrap();
    let journal = s.dir.path().join("journal.db");
    let child = s.spawn_run(&path);
    // The run reads the path first, then spends over 2 s at the provider
    // (list, create, verify at 700 ms each): write in between, as a colleague would.
    wait_for_journal(&journal, |j, run| {
        j.intents(run, "api")
            .is_ok_and(|i| i.iter().any(|x| x.step == "create"))
    });
    http(
        &s.env["VAULT_ADDR"],
        "POST",
        &format!("/v1/secret/data/{}/api", s.prefix),
        &s.env["VAULT_TOKEN"],
        Some(&serde_json::json!({ "data": { "value": "set-by-a-colleague" } })),
    );
    let out = child.wait_with_output().unwrap();
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(outcome(&summary, "api"), "quarantined");
    assert_eq!(
        s.vault("api")["data"]["data"]["value"],
        "set-by-a-colleague"
    );
    assert_eq!(
        s.state("slow.json")["accounts"]["a"]["keys"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0),
        0,
        "the unpromoted key is deleted"
    );
}

#[test]
fn no_secret_value_reaches_the_journal_or_the_output() {
    let s = Scenario::new();
    let pb = s.playbook("breach", "  - { id: api, provider: keys, account: a, vault_path: PREFIX/api }\n  - { id: db, provider: pw, account: d, vault_path: PREFIX/db }\n");
    let journal = s.dir.path().join("journal.db");
    let out = rekey()
        .env("VAULT_TOKEN", &s.env["VAULT_TOKEN"])
        .env("RUST_LOG", "trace")
        .args(["run", &pb, "--journal", journal.to_str().unwrap()])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    for id in ["api", "db"] {
        let value = s.vault(id)["data"]["data"]["value"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            !out.stdout.contains(&value) && !out.stderr.contains(&value),
            "{id}'s value in the output"
        );
        for file in ["journal.db", "journal.db-wal", "journal.key"] {
            assert!(
                !file_contains(&s.dir.path().join(file), &value),
                "{id}'s value in {file}"
            );
        }
    }
    assert!(
        !out.stderr.contains(&s.env["VAULT_TOKEN"]) || s.env["VAULT_TOKEN"] == "root",
        "the Vault token in the output"
    );
}

#[test]
fn run_refuses_provider_types_it_cannot_drive_before_changing_anything() {
    let s = Scenario::new();
    // A catalog file for a native type this build has no code for (as a newer
    // catalog read with `--providers` could name).
    let extra = s.dir.path().join("providers");
    std::fs::create_dir_all(&extra).unwrap();
    let sandbox =
        std::fs::read_to_string(crate::support::repo_root().join("providers/sandbox.yaml"))
            .unwrap();
    std::fs::write(
        extra.join("mainframe_racf.yaml"),
        sandbox
            .replace("name: sandbox\n", "name: mainframe_racf\n")
            .replace("implementation: builtin", "implementation: native"),
    )
    .unwrap();
    let pb = s.playbook_text("breach", "  - { id: api, provider: keys, account: a, vault_path: PREFIX/api }\n").replace("credentials:\n", "  racf: { type: mainframe_racf }\ncredentials:\n  - { id: db, provider: racf, account: x, vault_path: PREFIX/db }\n");
    std::fs::write(pb_path(&s), &pb).unwrap();
    let (code, _, stderr) = s.run(
        pb_path(&s).to_str().unwrap(),
        &["--providers", extra.to_str().unwrap()],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("`mainframe_racf`") && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert!(s.vault("api")["data"].is_null());
}

fn pb_path(s: &Scenario) -> std::path::PathBuf {
    s.dir.path().join("mixed.yaml")
}

/// Whatever moment a run is killed at, `rekey resume` leaves every credential
/// new-and-in-Vault-and-working with no orphan key at the provider.
#[test]
fn a_run_killed_at_any_moment_is_finished_by_resume() {
    let mut resumed = 0;
    for kill_after_ms in [150u64, 450, 900, 1500] {
        let s = Scenario::new();
        let creds = "  - { id: k1, provider: keys, account: a1, vault_path: PREFIX/k1 }\n  - { id: k2, provider: keys, account: a2, vault_path: PREFIX/k2 }\n  - { id: p1, provider: pw, account: d1, vault_path: PREFIX/p1, depends_on: [k1] }\n  - { id: p2, provider: pw, account: d2, vault_path: PREFIX/p2 }\n";
        // A first, quick run gives every credential an old value.
        let quick = s.playbook("breach", creds);
        assert_eq!(s.run(&quick, &[]).0, 0);
        let slow = s
            .playbook_text("breach", creds)
            .replace("latency: 1ms", "latency: 120ms");
        let path = s.dir.path().join("slow.yaml");
        std::fs::write(&path, slow).unwrap();
        let journal = s.dir.path().join("journal.db");
        let mut child = s.spawn_run(&path);
        std::thread::sleep(std::time::Duration::from_millis(kill_after_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();

        let out = rekey()
            .env("VAULT_TOKEN", &s.env["VAULT_TOKEN"])
            .args([
                "resume",
                "--journal",
                journal.to_str().unwrap(),
                "--format",
                "json",
            ])
            .run();
        let finished_before_kill = out.code == 2 && out.stderr.contains("no unfinished run");
        assert!(
            out.code == 0 || finished_before_kill,
            "kill at {kill_after_ms} ms: resume exited {}: {}",
            out.code,
            out.stderr
        );
        resumed += usize::from(out.code == 0);

        for (id, account) in [("k1", "a1"), ("k2", "a2")] {
            let data = s.vault(id)["data"]["data"].clone();
            let keys = s.state("keys.json")["accounts"][account]["keys"]
                .as_array()
                .unwrap()
                .clone();
            assert_eq!(
                keys.len(),
                1,
                "kill at {kill_after_ms} ms: {id} has orphan or leftover keys: {keys:?}"
            );
            assert_eq!(
                keys[0]["id"], data["key_id"],
                "kill at {kill_after_ms} ms: {id}: Vault holds another key"
            );
            assert_eq!(
                keys[0]["secret_sha256"],
                digest(data["value"].as_str().unwrap()),
                "kill at {kill_after_ms} ms: {id}: Vault's value does not work"
            );
        }
        for (id, account) in [("p1", "d1"), ("p2", "d2")] {
            let value = s.vault(id)["data"]["data"]["value"]
                .as_str()
                .unwrap()
                .to_owned();
            assert_eq!(
                s.state("pw.json")["accounts"][account]["password_sha256"],
                digest(&value),
                "kill at {kill_after_ms} ms: {id}: Vault's password does not work"
            );
        }
    }
    // The kill points fall inside the run (about 2 s at 120 ms a call), so most
    // iterations really test a resume, not a finished run.
    assert!(
        resumed >= 2,
        "only {resumed} of 4 kills interrupted the run"
    );
}

/// The first Ctrl-C lets the credentials in flight finish and starts no new one;
/// the run exits 4 ("resume me") with every credential in a safe state.
#[test]
fn ctrl_c_stops_starting_new_work_and_resume_finishes() {
    let s = Scenario::new();
    let creds: String = (1..=6)
        .map(|i| {
            format!("  - {{ id: k{i}, provider: keys, account: a{i}, vault_path: PREFIX/k{i} }}\n")
        })
        .collect();
    let quick = s.playbook("breach", &creds);
    assert_eq!(s.run(&quick, &[]).0, 0);
    let before: Vec<Value> = (1..=6)
        .map(|i| s.vault(&format!("k{i}"))["data"]["data"].clone())
        .collect();
    let slow = s
        .playbook_text("breach", &creds)
        .replace("latency: 1ms", "latency: 150ms")
        .replace("providers:\n", "defaults: { concurrency: 1 }\nproviders:\n");
    let path = s.dir.path().join("slow.yaml");
    std::fs::write(&path, slow).unwrap();
    let journal = s.dir.path().join("journal.db");
    let child = s.spawn_run(&path);
    wait_for_journal(&journal, |j, run| {
        j.run(run)
            .is_ok_and(|r| r.is_some_and(|r| r.status == rekey::journal::RunStatus::Running))
            && j.states(run).is_ok_and(|s| {
                s.iter()
                    .any(|x| x.state == "retired" || x.state == "rotated")
            })
    });
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = summary["results"].as_array().unwrap();
    // Every credential is reported: those the interruption kept from starting as
    // not started (resume starts them).
    assert_eq!(results.len(), 6, "{summary}");
    let done = results
        .iter()
        .filter(|r| r["outcome"] != "not_started")
        .count();
    assert!(
        (1..6).contains(&done),
        "{done} credentials finished before the interruption took effect"
    );
    // Every credential is either rotated and working, or untouched and working.
    for i in 1..=6 {
        let data = s.vault(&format!("k{i}"))["data"]["data"].clone();
        let keys = s.state("keys.json")["accounts"][format!("a{i}")]["keys"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(keys.len(), 1, "k{i}: {keys:?}");
        assert_eq!(
            keys[0]["secret_sha256"],
            digest(data["value"].as_str().unwrap()),
            "k{i}: Vault's value does not work"
        );
        let rotated = summary["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == format!("k{i}") && r["outcome"] != "not_started");
        assert_eq!(
            data != before[i - 1],
            rotated,
            "k{i}: changed only if it finished"
        );
    }
    let out = rekey()
        .env("VAULT_TOKEN", &s.env["VAULT_TOKEN"])
        .args([
            "resume",
            "--journal",
            journal.to_str().unwrap(),
            "--format",
            "json",
        ])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    for i in 1..=6 {
        assert_ne!(
            s.vault(&format!("k{i}"))["data"]["data"],
            before[i - 1],
            "k{i} rotated after resume"
        );
    }
}

#[test]
fn rollback_restores_routine_passwords_and_refuses_breach_runs() {
    let s = Scenario::new();
    let pb = s.playbook("routine", "  - { id: db, provider: pw, account: d, vault_path: PREFIX/db }\n  - { id: api, provider: keys, account: a, vault_path: PREFIX/api }\n");
    assert_eq!(s.run(&pb, &[]).0, 0);
    let old = s.vault("db")["data"]["data"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, summary, stderr) = s.run(&pb, &[]);
    assert_eq!(code, 0, "{stderr}");
    let run_id = summary["run_id"].as_str().unwrap().to_owned();
    let journal = s.dir.path().join("journal.db");
    let out = rekey()
        .env("VAULT_TOKEN", &s.env["VAULT_TOKEN"])
        .args([
            "rollback",
            &run_id,
            "--journal",
            journal.to_str().unwrap(),
            "--format",
            "json",
        ])
        .run();
    let result: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
    // The password comes back, at the provider and in Vault (as a new version).
    assert_eq!(outcome(&result, "db"), "rolled_back", "{}", out.stderr);
    assert_eq!(s.vault("db")["data"]["data"]["value"], old.as_str());
    assert_eq!(s.vault("db")["data"]["metadata"]["version"], 3);
    assert_eq!(
        s.state("pw.json")["accounts"]["d"]["password_sha256"],
        digest(&old)
    );
    // The dual key's old key was retired at once (no grace): roll forward only.
    assert_eq!(outcome(&result, "api"), "skipped");
    assert_eq!(out.code, 1);

    let breach = Scenario::new();
    let pb = breach.playbook(
        "breach",
        "  - { id: db, provider: pw, account: d, vault_path: PREFIX/db }\n",
    );
    let (_, summary, _) = breach.run(&pb, &[]);
    let run_id = summary["run_id"].as_str().unwrap().to_owned();
    let out = rekey()
        .env("VAULT_TOKEN", &breach.env["VAULT_TOKEN"])
        .args([
            "rollback",
            &run_id,
            "--journal",
            breach.dir.path().join("journal.db").to_str().unwrap(),
        ])
        .run();
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("never restores a compromised value"),
        "{}",
        out.stderr
    );
}

#[test]
fn plan_live_checks_vault_versions_staging_and_providers_without_changing_anything() {
    let s = Scenario::new();
    let text = s
        .playbook_text(
            "breach",
            "  - { id: api, provider: keys, account: a, vault_path: PREFIX/api }\n",
        )
        .replace(
            &format!("address: \"{}\" }}", s.env["VAULT_ADDR"]),
            &format!(
                "address: \"{}\", staging_prefix: {}/staging }}",
                s.env["VAULT_ADDR"], s.prefix
            ),
        );
    let path = s.dir.path().join("live.yaml");
    std::fs::write(&path, &text).unwrap();
    let live = |token: &str| {
        rekey()
            .env("VAULT_TOKEN", token)
            .args(["plan", path.to_str().unwrap(), "--live"])
            .run()
    };
    let out = live(&s.env["VAULT_TOKEN"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("ok   vault:")
            && out.stdout.contains("ok   api vault: ")
            && out.stdout.contains("is new")
            && out.stdout.contains("ok   api provider"),
        "{}",
        out.stdout
    );
    assert!(
        s.vault("api")["data"].is_null(),
        "plan --live wrote to Vault"
    );
    let out = live("not-a-valid-token");
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stdout.contains("FAIL vault:"), "{}", out.stdout);
    assert!(
        !out.stdout.contains("not-a-valid-token") && !out.stderr.contains("not-a-valid-token"),
        "the token leaked"
    );
}

/// Routine mode: during the grace period both keys work and Vault already holds the
/// new one (consumers switch over); the old key goes when the grace period ends.
#[test]
fn routine_grace_keeps_the_old_key_working_until_it_ends() {
    let s = Scenario::new();
    let creds = "  - { id: api, provider: keys, account: a, vault_path: PREFIX/api, grace: 4s }\n  - { id: db, provider: pw, account: d, vault_path: PREFIX/db, depends_on: [api] }\n";
    let pb = s.playbook("routine", creds);
    assert_eq!(s.run(&pb, &[]).0, 0);
    let old_key = s.vault("api")["data"]["data"]["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let journal = s.dir.path().join("journal.db");
    let child = s.spawn_run(Path::new(&pb));
    // Once the dependent is done (it waits for api's promotion, not its grace):
    wait_for_journal(&journal, |j, run| {
        j.run(run)
            .is_ok_and(|r| r.is_some_and(|r| r.status == rekey::journal::RunStatus::Running))
            && j.states(run).is_ok_and(|s| {
                s.iter()
                    .any(|x| x.credential == "db" && x.state == "rotated")
            })
    });
    // In the grace period: Vault has the new key, the old one still exists, and the
    // dependent credential did not wait for the grace period to end.
    let keys = s.state("keys.json")["accounts"]["a"]["keys"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(keys.len(), 2, "both keys during the grace period: {keys:?}");
    assert_ne!(s.vault("api")["data"]["data"]["key_id"], old_key.as_str());
    assert_eq!(
        s.vault("db")["data"]["metadata"]["version"],
        2,
        "the dependent rotated during the grace period"
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = s.state("keys.json")["accounts"]["a"]["keys"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(keys.len(), 1, "the old key is gone after the grace period");
    assert_ne!(keys[0]["id"], old_key.as_str());
}

/// A provider that allows fewer requests than the playbook says answers 429s;
/// the instance pauses as told and every credential still rotates.
#[test]
fn rate_limited_answers_pause_the_instance_and_nothing_fails() {
    let s = Scenario::new();
    let creds: String = (1..=8)
        .map(|i| {
            format!("  - {{ id: k{i}, provider: keys, account: a{i}, vault_path: PREFIX/k{i} }}\n")
        })
        .collect();
    let text = s
        .playbook_text("breach", &creds)
        .replacen(
            "latency: 1ms }",
            "latency: 1ms, server_rate: 10 }, rate: { per_second: 100, burst: 20 }, concurrency: 8",
            1,
        )
        .replace("providers:\n", "defaults: { concurrency: 8 }\nproviders:\n");
    let path = s.dir.path().join("limited.yaml");
    std::fs::write(&path, &text).unwrap();
    let (code, summary, stderr) = s.run(path.to_str().unwrap(), &[]);
    assert_eq!(code, 0, "{stderr}");
    for i in 1..=8 {
        assert_eq!(outcome(&summary, &format!("k{i}")), "rotated");
    }
    assert!(
        stderr.contains("rate limit hit"),
        "the provider never throttled: {stderr}"
    );
    let keys = &summary["instances"][0];
    assert_eq!(keys["instance"], "keys");
    assert!(keys["rate_limited"].as_u64().unwrap() > 0, "{keys}");
    // 8 rotations x 3 provider calls (list, create, verify) and the 429s, each one
    // attempt: the summary counts them all.
    assert!(
        keys["requests"].as_u64().unwrap() >= 24 + keys["rate_limited"].as_u64().unwrap(),
        "{keys}"
    );
}

/// A provider that refuses everything with 429 for a while (a block, not a rate):
/// every credential waits it out and rotates, and the rate is not lowered for it.
#[test]
fn a_provider_block_is_waited_out_without_failures_or_a_lowered_rate() {
    let s = Scenario::new();
    let creds: String = (1..=4)
        .map(|i| {
            format!("  - {{ id: p{i}, provider: pw, account: d{i}, vault_path: PREFIX/p{i} }}\n")
        })
        .collect();
    let text = s.playbook_text("breach", &creds).replacen(
        "latency: 1ms } }\ncredentials",
        "latency: 1ms, outage: { after: 0s, for: 2s } }, rate: { per_second: 50 } }\ncredentials",
        1,
    );
    assert!(text.contains("outage"), "{text}");
    let path = s.dir.path().join("blocked.yaml");
    std::fs::write(&path, &text).unwrap();
    let (code, summary, stderr) = s.run(path.to_str().unwrap(), &[]);
    assert_eq!(code, 0, "{stderr}");
    for i in 1..=4 {
        assert_eq!(outcome(&summary, &format!("p{i}")), "rotated", "{summary}");
    }
    let pw = summary["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance"] == "pw")
        .expect("the pw instance reports totals")
        .clone();
    let refused = pw["rate_limited"].as_u64().unwrap();
    // A probe a second during the 2 s block, plus the first requests of the credentials in flight.
    assert!((1..=8).contains(&refused), "{pw}");
    assert_eq!(pw["final_per_second"], 50.0, "{pw}");
    assert!(pw["learned_per_second"].is_null(), "{pw}");
}

/// With a limit far above what the provider admits, rekey measures the real limit
/// from the 429s, says so in the summary, and every credential rotates.
#[test]
fn a_limit_above_the_providers_is_learned_and_reported() {
    let s = Scenario::new();
    let creds: String = (1..=16)
        .map(|i| {
            format!("  - {{ id: p{i}, provider: pw, account: d{i}, vault_path: PREFIX/p{i} }}\n")
        })
        .collect();
    // 32 requests against a server admitting 4 a second (and 4 at once to start):
    // about 7 s, whatever rekey tries.
    let text = s
        .playbook_text("breach", &creds)
        .replacen(
            "latency: 1ms } }\ncredentials",
            "latency: 1ms, server_rate: 4 }, rate: { per_second: 400 }, concurrency: 8 }\ncredentials",
            1,
        )
        .replace("providers:\n", "defaults: { concurrency: 8 }\nproviders:\n");
    let path = s.dir.path().join("learn.yaml");
    std::fs::write(&path, &text).unwrap();
    let journal = s.dir.path().join("journal.db");
    let out = rekey()
        .env("VAULT_TOKEN", &s.env["VAULT_TOKEN"])
        .args([
            "run",
            path.to_str().unwrap(),
            "--journal",
            journal.to_str().unwrap(),
        ])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let line = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("instance pw:"))
        .unwrap_or_else(|| panic!("no instance line: {}", out.stdout));
    assert!(line.contains("rate-limited"), "{line}");
    assert!(
        line.contains("the provider admits about") && line.contains("(configured 400/s)"),
        "{line}"
    );
    assert!(out.stderr.contains("lowering the rate"), "{}", out.stderr);
}

#[test]
fn a_vault_entry_without_key_id_has_its_old_key_retired_or_named() {
    // An entry written before rekey managed it: a value and no `key_id`. Breach
    // mode retires every key that existed before the run, whatever Vault holds.
    // Routine mode retires the key the value belongs to (found by verifying the
    // value against each active key); a value that belongs to no key (stale) leaves
    // the key alive, and the credential is quarantined naming it, never "rotated".
    let s = Scenario::new();
    let cases = [
        ("breach", "a", "old-secret-written-by-hand", 1, "rotated"),
        ("breach", "b", "stale", 1, "rotated"),
        ("routine", "c", "old-secret-written-by-hand", 1, "rotated"),
        ("routine", "d", "stale", 2, "quarantined"),
    ];
    for (mode, account, in_vault, left, expected) in cases {
        let state = json!({ "accounts": { account: { "keys": [{
            "id": "k-old", "secret_sha256": digest("old-secret-written-by-hand"),
            "active": true, "created_at": 1, "tag": "" }] } } });
        std::fs::write(s.dir.path().join("keys.json"), state.to_string()).unwrap();
        http(
            &s.env["VAULT_ADDR"],
            "POST",
            &format!("/v1/secret/data/{}/{account}", s.prefix),
            &s.env["VAULT_TOKEN"],
            Some(&json!({ "data": { "value": in_vault } })),
        );
        let pb = s.playbook(
            mode,
            &format!("  - {{ id: c{account}, provider: keys, account: {account}, vault_path: PREFIX/{account} }}\n"),
        );
        let (code, summary, stderr) = s.run(&pb, &[]);
        let id = format!("c{account}");
        assert_eq!(outcome(&summary, &id), expected, "{account}: {stderr}");
        assert_eq!(code, if expected == "rotated" { 0 } else { 3 }, "{stderr}");
        let keys = s.state("keys.json")["accounts"][account]["keys"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(keys.len(), left, "{account}: {keys:?}");
        let promoted = s.vault(account)["data"]["data"]["key_id"].clone();
        assert!(keys.iter().any(|k| k["id"] == promoted), "{keys:?}");
        assert_eq!(keys.iter().any(|k| k["id"] == "k-old"), left == 2);
        if expected == "quarantined" {
            let result = summary["results"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["id"] == id.as_str())
                .unwrap()
                .clone();
            assert!(
                result["action"].as_str().unwrap().contains("k-old"),
                "{result}"
            );
        }
    }
}

/// `rekey run` with `token` as VAULT_TOKEN and the playbook at `path`.
fn run_with_token(s: &Scenario, path: &str, token: &str) -> crate::support::Output {
    rekey()
        .env("VAULT_TOKEN", token)
        .args([
            "run",
            path,
            "--journal",
            s.dir.path().join("journal.db").to_str().unwrap(),
        ])
        .run()
}

/// Vault that cannot serve the run ends it at once with one clear error, before
/// any provider is touched: a wrong token, a KV version 1 mount, a token whose
/// policy cannot write the paths, a refused address, an address that accepts and
/// never answers (not an hour of 30-second timeouts, one credential at a time).
#[test]
fn run_refuses_at_once_when_vault_cannot_serve_it() {
    let s = Scenario::new();
    let creds: String = (1..=4)
        .map(|i| {
            format!("  - {{ id: k{i}, provider: keys, account: a{i}, vault_path: PREFIX/k{i} }}\n")
        })
        .collect();
    let good = s.playbook("breach", &creds);
    let text = std::fs::read_to_string(&good).unwrap();
    let untouched = |out: &crate::support::Output, says: &str| {
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(out.stderr.contains(says), "{}", out.stderr);
        assert!(out.stderr.contains("nothing was changed"), "{}", out.stderr);
        assert!(!out.stderr.contains("rolled back"), "{}", out.stderr);
        assert!(
            !s.dir.path().join("keys.json").exists(),
            "a provider was touched"
        );
    };
    // A wrong token.
    untouched(&run_with_token(&s, &good, "not-a-token"), "token");
    // A KV version 1 mount.
    let kv1 = format!("kv1-{}", s.prefix);
    http(
        &s.env["VAULT_ADDR"],
        "POST",
        &format!("/v1/sys/mounts/{kv1}"),
        &s.env["VAULT_TOKEN"],
        Some(&json!({ "type": "kv", "options": { "version": "1" } })),
    );
    let v1 = s.dir.path().join("kv1.yaml");
    std::fs::write(
        &v1,
        text.replace("vault: {", &format!("vault: {{ mount: {kv1},")),
    )
    .unwrap();
    untouched(
        &run_with_token(&s, v1.to_str().unwrap(), &s.env["VAULT_TOKEN"]),
        "version 2",
    );
    // A token that may read but not write the paths.
    let policy = format!("read-only-{}", s.prefix);
    http(
        &s.env["VAULT_ADDR"],
        "PUT",
        &format!("/v1/sys/policies/acl/{policy}"),
        &s.env["VAULT_TOKEN"],
        Some(&json!({ "policy": "path \"secret/*\" { capabilities = [\"read\", \"list\"] }" })),
    );
    let token = http(
        &s.env["VAULT_ADDR"],
        "POST",
        "/v1/auth/token/create",
        &s.env["VAULT_TOKEN"],
        Some(&json!({ "policies": [policy], "ttl": "10m" })),
    )["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    untouched(&run_with_token(&s, &good, &token), "lacks");
    // Nothing listens.
    let refused = s.dir.path().join("refused.yaml");
    std::fs::write(
        &refused,
        text.replace(&s.env["VAULT_ADDR"], "http://127.0.0.1:9"),
    )
    .unwrap();
    untouched(
        &run_with_token(&s, refused.to_str().unwrap(), &s.env["VAULT_TOKEN"]),
        "127.0.0.1:9",
    );
    // Something listens and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung = s.dir.path().join("hung.yaml");
    std::fs::write(
        &hung,
        text.replace(
            &s.env["VAULT_ADDR"],
            &format!("http://{}", listener.local_addr().unwrap()),
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    untouched(
        &run_with_token(&s, hung.to_str().unwrap(), &s.env["VAULT_TOKEN"]),
        "did not answer within",
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(40));
    drop(listener);
}

/// `status` says what a tired operator needs: a run whose process was killed is
/// "stopped" with the command that finishes it, never "running"; a rolled-back
/// credential gets its reason and next step; the actor is the trail's.
#[test]
fn status_tells_a_dead_run_from_a_running_one_and_says_what_to_do() {
    let s = Scenario::new();
    let creds: String = (1..=5)
        .map(|i| {
            format!("  - {{ id: k{i}, provider: keys, account: a{i}, vault_path: PREFIX/k{i} }}\n")
        })
        .collect();
    let slow = s
        .playbook_text("breach", &creds)
        .replace("latency: 1ms", "latency: 300ms")
        .replace("providers:\n", "defaults: { concurrency: 1 }\nproviders:\n");
    let path = s.dir.path().join("slow.yaml");
    std::fs::write(&path, slow).unwrap();
    let journal = s.dir.path().join("journal.db");
    let mut child = s.spawn_run(&path);
    wait_for_journal(&journal, |j, run| {
        j.states(run)
            .is_ok_and(|s| s.iter().any(|x| x.state == "rotated"))
    });
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    let out = rekey()
        .args(["status", "--journal", journal.to_str().unwrap()])
        .run();
    assert!(
        out.stdout.contains("stopped: the process that ran it"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("rekey resume"), "{}", out.stdout);
    assert!(!out.stdout.contains(": running;"), "{}", out.stdout);
    let json: Value = serde_json::from_str(
        &rekey()
            .args([
                "status",
                "--journal",
                journal.to_str().unwrap(),
                "--format",
                "json",
            ])
            .run()
            .stdout,
    )
    .unwrap();
    assert_eq!(json["run"]["status"], "stopped", "{json}");
    // The actor is the one the audit trail names.
    let trail = std::fs::read_to_string(s.dir.path().join("audit.jsonl")).unwrap();
    let first: Value = serde_json::from_str(trail.lines().next().unwrap()).unwrap();
    assert_eq!(
        json["run"]["actor"], first["actor"]["user"],
        "{json}\n{first}"
    );

    // A rolled-back credential: why, and what to do.
    let s = Scenario::new();
    let pb = s.playbook(
        "breach",
        "  - { id: broken, provider: keys, account: b, vault_path: PREFIX/b, settings: { fail: verify } }\n",
    );
    let (_, summary, _) = s.run(&pb, &[]);
    assert_eq!(outcome(&summary, "broken"), "rolled_back", "{summary}");
    let out = rekey()
        .args([
            "status",
            "--journal",
            s.dir.path().join("journal.db").to_str().unwrap(),
        ])
        .run();
    assert!(out.stdout.contains("why:"), "{}", out.stdout);
    assert!(out.stdout.contains("--only broken"), "{}", out.stdout);
}

/// `resume` acts only on the instructions a run started with: the same file, and
/// the same expansion of its `${VAR}`s.
#[test]
fn resume_refuses_a_playbook_that_expands_differently() {
    let s = Scenario::new();
    let text = s.playbook_text(
        "breach",
        "  - { id: m, provider: manual, vault_path: PREFIX/m, instructions: \"${HOW}\" }\n",
    );
    let path = s.dir.path().join("expand.yaml");
    std::fs::write(&path, text).unwrap();
    let journal = s.dir.path().join("journal.db");
    let out = rekey()
        .env("VAULT_TOKEN", &s.env["VAULT_TOKEN"])
        .env("HOW", "rotate it in the console")
        .args([
            "run",
            path.to_str().unwrap(),
            "--journal",
            journal.to_str().unwrap(),
        ])
        .run();
    assert_eq!(out.code, 5, "awaiting an operator: {}", out.stderr);
    let status = rekey()
        .args(["status", "--journal", journal.to_str().unwrap()])
        .run();
    assert!(
        status.stdout.contains("awaiting operator"),
        "{}",
        status.stdout
    );
    let out = rekey()
        .env("VAULT_TOKEN", &s.env["VAULT_TOKEN"])
        .env("HOW", "something else")
        .args([
            "resume",
            "--journal",
            journal.to_str().unwrap(),
            "--confirm",
        ])
        .run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("expands differently"), "{}", out.stderr);
}

/// What an operator reads, pinned: the text of `run` (its summary on stdout and its
/// progress on stderr), `status` and `audit show` for a run where one credential
/// rotates, one password changes, one rolls back and one is skipped. The chain of
/// dependencies and concurrency 1 make the order fixed (a dependency on another
/// instance is met once its new value is promoted, so with more slots `db` would
/// start while `api` still retires its old key); ids, times, digests and paths are
/// filtered.
#[test]
fn run_status_and_audit_show_text_are_stable() {
    let s = Scenario::new();
    let text = s
        .playbook_text(
            "breach",
            "  - { id: api, provider: keys, account: a, vault_path: PREFIX/api }\n  - { id: db, provider: pw, account: d, vault_path: PREFIX/db, depends_on: [api] }\n  - { id: broken, provider: keys, account: b, vault_path: PREFIX/b, depends_on: [db], settings: { fail: verify } }\n  - { id: after, provider: pw, account: e, vault_path: PREFIX/e, depends_on: [broken] }\n",
        )
        .replacen("providers:\n", "defaults: { concurrency: 1 }\nproviders:\n", 1);
    let pb = s.dir.path().join("playbook.yaml");
    std::fs::write(&pb, text).unwrap();
    let pb = pb.display().to_string();
    let journal = s.dir.path().join("journal.db");
    let journal = journal.to_str().unwrap();
    let trail = s.dir.path().join("audit.jsonl");
    let cmd = || rekey().env("VAULT_TOKEN", &s.env["VAULT_TOKEN"]);
    let run = cmd()
        .args(["run", &pb, "--journal", journal, "--color", "never"])
        .run();
    assert_eq!(run.code, 1, "{}", run.stderr);
    let status = cmd()
        .args(["status", "--journal", journal, "--color", "never"])
        .run();
    let show = cmd()
        .args(["audit", "show", trail.to_str().unwrap(), "--color", "never"])
        .run();
    assert_eq!(show.code, 0, "{}", show.stderr);
    let dir = s.dir.path().display().to_string();
    let mut settings = insta::Settings::clone_current();
    for (pattern, replacement) in [
        (regex_escape(&dir), "[DIR]"),
        (regex_escape(&s.prefix), "[PREFIX]"),
        (regex_escape(&s.env["VAULT_ADDR"]), "[VAULT]"),
        (r"\b[0-9a-f]{64}\b".into(), "[SHA256]"),
        (
            r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)".into(),
            "[TIME]",
        ),
        (r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d( UTC)?".into(), "[TIME]"),
        (r"\b\d+(\.\d+)? ?(ms|s|m)\b".into(), "[DURATION]"),
        (
            r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b".into(),
            "[UUID]",
        ),
        (r"\br-\d{8}-\d{4}-[0-9a-f]{4}\b".into(), "[RUN]"),
        (r"hmac-sha256:[0-9a-f]+".into(), "hmac-sha256:[HMAC]"),
        (r"\buid \d+".into(), "uid [UID]"),
        (r"\bsbx-[0-9a-zA-Z]+\b".into(), "[KEY]"),
        (r"pid \d+".into(), "pid [PID]"),
        (r"\b(user|host)[ =:]+[A-Za-z0-9_.@-]+".into(), "$1 [WHO]"),
    ] {
        settings.add_filter(&pattern, replacement);
    }
    settings.bind(|| {
        insta::assert_snapshot!(
            "run_text",
            format!("stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr)
        );
        insta::assert_snapshot!(
            "status_text",
            format!("exit {}\n{}{}", status.code, status.stdout, status.stderr)
        );
        insta::assert_snapshot!("audit_show_text", show.stdout);
    });
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' || c == '-' || c == '_' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}
