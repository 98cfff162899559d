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

/// Found by `scripts/chaos` (finding 3): when Vault did not answer a rotated
/// credential's last `clear_staging` (or `unlock`), the run said "rotated" and
/// nothing else, and Vault kept a copy of the new value under the staging
/// prefix for good. Here real OpenBao refuses the deletes (the token's policy
/// allows everything a run needs except deleting staging entries, which its
/// preflight cannot see because it probes one path it may delete): the run and
/// `rekey status` name each entry left, and once the policy allows it, `rekey
/// resume RUN` removes them, as OpenBao's own listing shows.
#[test]
fn staging_entries_vault_would_not_remove_are_named_and_resume_removes_them() {
    let env = services();
    let dir = tempfile::tempdir().unwrap();
    let tag = hex::encode(rand::random::<[u8; 5]>());
    let prefix = format!("it-tidy-{tag}");
    let staging = format!("it-tidy-staging-{tag}");
    let policy = format!("it-tidy-{tag}");
    let root = |method: &str, path: &str, body: Option<&Value>| {
        bao_request(&env["VAULT_ADDR"], &env["VAULT_TOKEN"], method, path, body)
    };
    let set_policy = |delete_staging: bool| {
        let staging_caps = if delete_staging {
            r#"["read", "list", "delete"]"#
        } else {
            r#"["read", "list"]"#
        };
        let rules = format!(
            r#"path "secret/data/{prefix}/*" {{ capabilities = ["create", "read", "update"] }}
               path "secret/metadata/{prefix}/*" {{ capabilities = ["create", "read", "update", "patch"] }}
               path "secret/data/{staging}/*" {{ capabilities = ["create", "read", "update"] }}
               path "secret/metadata/{staging}/*" {{ capabilities = {staging_caps} }}
               path "secret/metadata/{staging}/rekey-access-check" {{ capabilities = ["delete"] }}
               path "secret/metadata/{staging}/locks/*" {{ capabilities = ["read", "delete"] }}"#
        );
        let (code, body) = root(
            "PUT",
            &format!("/v1/sys/policies/acl/{policy}"),
            Some(&serde_json::json!({ "policy": rules })),
        );
        assert!(code == 200 || code == 204, "{code} {body}");
    };
    set_policy(false);
    let (code, body) = root(
        "POST",
        "/v1/auth/token/create",
        Some(&serde_json::json!({ "policies": [policy], "ttl": "10m" })),
    );
    assert_eq!(code, 200, "{body}");
    let token = body["auth"]["client_token"].as_str().unwrap().to_owned();
    let d = dir.path().display();
    let playbook = dir.path().join("pb.yaml");
    std::fs::write(
        &playbook,
        format!(
            "version: 1\nname: tidy\nincident: {{ mode: breach }}\nvault: {{ address: \"{}\", staging_prefix: {staging} }}\nproviders:\n  keys: {{ type: sandbox, settings: {{ state_file: {d}/keys.json }} }}\n  pw: {{ type: sandbox_password, settings: {{ state_file: {d}/pw.json }} }}\ncredentials:\n  - {{ id: api, provider: keys, account: a, vault_path: {prefix}/api }}\n  - {{ id: db, provider: pw, account: b, vault_path: {prefix}/db }}\n",
            env["VAULT_ADDR"]
        ),
    )
    .unwrap();
    let journal = dir.path().join("journal.db");
    let rekey_as = |args: &[&str]| {
        rekey()
            .env("VAULT_TOKEN", &token)
            .args(args)
            .args(["--journal", journal.to_str().unwrap()])
            .run()
    };
    let out = rekey_as(&["run", playbook.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let run = out
        .stdout
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    assert!(out.stdout.contains("2 rotated"), "{}", out.stdout);
    for credential in ["api", "db"] {
        assert!(
            out.stderr
                .contains(&format!("{staging}/{run}/{credential}")),
            "the run names the staging entry it left: {}",
            out.stderr
        );
    }
    let listed = |path: &str| -> Vec<String> {
        let (_, body) = root("LIST", &format!("/v1/secret/metadata/{path}"), None);
        body["data"]["keys"]
            .as_array()
            .map(|k| k.iter().map(|k| k.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    assert_eq!(listed(&format!("{staging}/{run}")), vec!["api", "db"]);
    // The locks were released (the policy lets them go).
    assert_eq!(
        listed(&format!("{staging}/locks/{prefix}")),
        Vec::<String>::new()
    );

    let status = rekey_as(&["status", &run, "--format", "json"]);
    let doc: Value = serde_json::from_str(&status.stdout).unwrap();
    let left = doc["leftovers"].as_array().unwrap();
    assert_eq!(left.len(), 2, "{doc}");
    assert!(left.iter().all(|l| l["kind"] == "staging"), "{doc}");
    let status = rekey_as(&["status", &run]);
    assert!(
        status
            .stdout
            .contains(&format!("`rekey resume {run} --journal")),
        "{}",
        status.stdout
    );

    set_policy(true);
    let out = rekey_as(&["resume", &run]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(!out.stderr.contains("could not remove"), "{}", out.stderr);
    assert_eq!(
        listed(&format!("{staging}/{run}")),
        Vec::<String>::new(),
        "OpenBao lists no staging entry of the run"
    );
    let status = rekey_as(&["status", &run, "--format", "json"]);
    let doc: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(doc["leftovers"], serde_json::json!([]), "{doc}");
    assert_eq!(doc["run"]["status"], "succeeded", "{doc}");
    root("DELETE", &format!("/v1/sys/policies/acl/{policy}"), None);
}

/// Unmounts the test's tmpfs however the test ends.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The journal's file system full in the middle of a run, then read-only when
/// `resume` starts (the chaos harness's `journal_full` and `journal_readonly`):
/// rekey stops with a message that names the journal and says what to do, never
/// a panic; once there is room, `resume` finishes every credential, the sandbox's
/// own key table holds exactly the key Vault names for each, and the trail
/// verifies. Needs root for `mount` (the suite's machine runs as root); as
/// another user it says so and checks nothing.
#[test]
fn a_full_then_read_only_journal_disk_stops_cleanly_and_resume_finishes() {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot mount a tmpfs for the journal; nothing checked");
        return;
    }
    let env = services();
    let dir = tempfile::tempdir().unwrap();
    let jdir = dir.path().join("journal-fs");
    std::fs::create_dir(&jdir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs"])
        .arg(&jdir)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs as root");
    let _mount = Mounted(jdir.clone());
    let prefix = format!("it-disk-{}", hex::encode(rand::random::<[u8; 5]>()));
    let d = dir.path().display();
    let n = 30;
    let mut pb = format!(
        "version: 1\nname: disk\nincident: {{ mode: breach }}\nvault: {{ address: \"{}\" }}\ndefaults: {{ concurrency: 2 }}\nproviders:\n  p: {{ type: sandbox, settings: {{ state_file: {d}/keys.json, latency: 40ms }} }}\ncredentials:\n",
        env["VAULT_ADDR"]
    );
    for i in 0..n {
        pb +=
            &format!("  - {{ id: c{i}, provider: p, account: a{i}, vault_path: {prefix}/c{i} }}\n");
    }
    let playbook = dir.path().join("pb.yaml");
    std::fs::write(&playbook, pb).unwrap();
    let journal = jdir.join("journal.db");
    let mut child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_rekey"))
            .args(["run", playbook.to_str().unwrap()])
            .args(["--journal", journal.to_str().unwrap()])
            .env("VAULT_TOKEN", &env["VAULT_TOKEN"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while state_of(&journal, &format!("c{}", n / 3)).as_deref() != Some("rotated") {
        assert!(
            Instant::now() < deadline,
            "the run never got a third of the way"
        );
        assert!(!child.exited(), "the run ended before the disk filled");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Fill what is left of the file system.
    {
        use std::io::Write;
        let mut filler = std::fs::File::create(jdir.join("filler")).unwrap();
        let mut chunk = vec![0u8; 1 << 16];
        while !chunk.is_empty() {
            if filler.write_all(&chunk).is_err() {
                chunk.truncate(chunk.len() / 4);
            }
        }
    }
    let status = child.0.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "the run cannot finish on a full disk");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(journal.to_str().unwrap()) && stderr.contains("full"),
        "the error names the journal and the full file system: {stderr}"
    );
    std::fs::remove_file(jdir.join("filler")).unwrap();

    // Read-only when resume starts: refused, naming the journal and the fix.
    let remount = |how: &str| {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{how}")])
            .arg(&jdir)
            .status()
            .unwrap();
        assert!(ok.success(), "remount {how}");
    };
    remount("ro");
    let resume = || {
        rekey()
            .env("VAULT_TOKEN", &env["VAULT_TOKEN"])
            .args(["resume", "--journal", journal.to_str().unwrap()])
            .run()
    };
    let out = resume();
    remount("rw");
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(
        out.stderr.contains(journal.to_str().unwrap()) && out.stderr.contains("read-only"),
        "{}",
        out.stderr
    );

    // A line cut short by a write that failed (the disk filled mid-append, or
    // the process died mid-write): what the head record vouches for is whole,
    // so the next process keeps the torn bytes aside and goes on.
    let trail = jdir.join("audit.jsonl");
    let torn = b"{\"seq\":99999,\"ts\":\"2026-12-02T";
    std::fs::OpenOptions::new()
        .append(true)
        .open(&trail)
        .and_then(|mut f| std::io::Write::write_all(&mut f, torn))
        .unwrap();
    let out = resume();
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("cut short"), "{}", out.stderr);
    let kept = std::fs::read(jdir.join("audit.jsonl.torn")).unwrap();
    assert!(
        kept.starts_with(torn),
        "the torn bytes are kept as evidence"
    );
    let keys: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("keys.json")).unwrap()).unwrap();
    for i in 0..n {
        let data = vault_get(&env, &format!("{prefix}/c{i}"))["data"]["data"].clone();
        let listed = keys["accounts"][format!("a{i}")]["keys"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(listed.len(), 1, "c{i}: exactly one key: {listed:?}");
        assert_eq!(listed[0]["id"], data["key_id"], "c{i}");
        assert_eq!(listed[0]["secret_sha256"], digest(&data["value"]), "c{i}");
    }
    let out = rekey()
        .args([
            "audit",
            "verify",
            jdir.join("audit.jsonl").to_str().unwrap(),
        ])
        .run();
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
}
