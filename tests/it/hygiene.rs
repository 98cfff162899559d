//! Periodic hygiene against the real OpenBao: `max_age` decides what a run
//! rotates, from the age Vault's metadata gives (a version rekey wrote) or the
//! provider's creation date of the key Vault names; `plan --live` and `rekey
//! report` show the same ages. Versions are read from OpenBao's metadata, so a
//! rotation nobody asked for cannot hide.

use crate::infra_common::{Case, Ran, bao};
use serde_json::{Value, json};

const DAY: u64 = 86_400;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The current version of `PREFIX/<path>` from OpenBao's metadata endpoint.
fn version(case: &Case, path: &str) -> u64 {
    let (status, body) = bao(
        &case.env,
        "GET",
        &format!("secret/metadata/{}/{path}", case.prefix),
        None,
    );
    assert_eq!(status, 200, "metadata of {path}: {body}");
    body["data"]["current_version"].as_u64().unwrap()
}

/// A sandbox state file holding, for account `account`, one key `id` with the
/// value `value`, created `age` seconds ago (the provider's own record).
fn sandbox_key(path: &std::path::Path, entries: &[(&str, &str, &str, u64)]) {
    let mut accounts = serde_json::Map::new();
    for (account, id, value, age) in entries {
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(value));
        accounts.insert(
            (*account).to_owned(),
            json!({ "keys": [{ "id": id, "secret_sha256": digest, "active": true, "created_at": now() - age, "tag": "console" }] }),
        );
    }
    std::fs::write(path, json!({ "accounts": accounts }).to_string()).unwrap();
}

fn hygiene_playbook(case: &Case) -> std::path::PathBuf {
    let dir = case.dir.path().display().to_string();
    case.playbook(
        "hygiene.yaml",
        &format!(
            "version: 1\nname: hygiene-PREFIX\nincident: {{ mode: routine }}\nvault: {{ address: \"VAULT\", staging_prefix: PREFIX/staging }}\ndefaults: {{ max_age: 90d }}\nproviders:\n  keys: {{ type: sandbox, settings: {{ state_file: {dir}/keys.json, latency: 1ms }} }}\n  pw: {{ type: sandbox_password, settings: {{ state_file: {dir}/pw.json, latency: 1ms }} }}\ncredentials:\n  - {{ id: old-key, provider: keys, account: a, vault_path: PREFIX/old-key }}\n  - {{ id: young-key, provider: keys, account: b, vault_path: PREFIX/young-key }}\n  - {{ id: password, provider: pw, account: c, vault_path: PREFIX/password }}\n"
        ),
    )
}

/// Seeds the world a hygiene playbook meets the first time: two keys issued
/// at the provider 100 and 10 days ago (Vault names them, rekey never wrote
/// them), and a password Vault holds with nothing to date it.
fn seed_first_meeting(case: &Case) {
    sandbox_key(
        &case.dir.path().join("keys.json"),
        &[
            ("a", "sbx-old", "old-key-value", 100 * DAY),
            ("b", "sbx-young", "young-key-value", 10 * DAY),
        ],
    );
    case.seed("old-key", "old-key-value", Some("sbx-old"));
    case.seed("young-key", "young-key-value", Some("sbx-young"));
    case.seed("password", "a-password-of-unknown-age", None);
}

fn run_with(case: &Case, playbook: &std::path::Path, extra: &[&str]) -> Ran {
    let journal = case.journal();
    let mut args = vec![
        "run",
        playbook.to_str().unwrap(),
        "--journal",
        journal.to_str().unwrap(),
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let out = crate::support::rekey()
        .env("VAULT_TOKEN", &case.env["VAULT_TOKEN"])
        .args(args)
        .run();
    Ran {
        code: out.code,
        summary: serde_json::from_str(&out.stdout).unwrap_or(Value::Null),
        stdout: out.stdout,
        stderr: out.stderr,
    }
}

fn not_due(ran: &Ran) -> Vec<String> {
    let mut ids: Vec<String> = ran.summary["not_due"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn rotated(ran: &Ran) -> Vec<String> {
    let mut ids: Vec<String> = ran.summary["results"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .filter(|r| r["outcome"] == "rotated")
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[test]
fn two_hygiene_runs_in_a_row_rotate_nothing_the_second_time_and_what_passes_max_age_rotates() {
    let case = Case::new();
    seed_first_meeting(&case);
    let pb = hygiene_playbook(&case);

    // First meeting: the 100-day-old key (the provider's date) and the password
    // of unknown age are due; the 10-day-old key is not.
    let first = run_with(&case, &pb, &[]);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    assert_eq!(
        rotated(&first),
        ["old-key", "password"],
        "{}",
        first.summary
    );
    assert_eq!(not_due(&first), ["young-key"], "{}", first.summary);
    let young = &first.summary["not_due"][0];
    assert_eq!(young["max_age_seconds"], 90 * DAY);
    assert!(
        young["detail"]
            .as_str()
            .unwrap()
            .contains("key sbx-young created"),
        "the age came from the provider: {young}"
    );
    let versions = |case: &Case| ["old-key", "young-key", "password"].map(|p| version(case, p));
    assert_eq!(versions(&case), [2, 1, 2]);

    // Second run, straight after: everything is younger than 90 days now.
    let second = run_with(&case, &pb, &[]);
    assert_eq!(second.code, 0, "{}\n{}", second.stdout, second.stderr);
    assert!(rotated(&second).is_empty(), "{}", second.summary);
    assert_eq!(not_due(&second), ["old-key", "password", "young-key"]);
    assert_eq!(
        versions(&case),
        [2, 1, 2],
        "OpenBao's versions are unchanged"
    );
    let text = run_with_text(&case, &pb, &[]);
    assert!(
        text.contains("0 rotated") && text.contains("3 not due"),
        "the summary counts what was not due: {text}"
    );

    // Past max_age: `--max-age` overrides the playbook, and what is older rotates.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let third = run_with(&case, &pb, &["--max-age", "2s"]);
    assert_eq!(third.code, 0, "{}\n{}", third.stdout, third.stderr);
    assert_eq!(
        rotated(&third),
        ["old-key", "password", "young-key"],
        "{}",
        third.summary
    );
    assert_eq!(versions(&case), [3, 2, 3]);
}

fn run_with_text(case: &Case, playbook: &std::path::Path, extra: &[&str]) -> String {
    let journal = case.journal();
    let mut args = vec![
        "run",
        playbook.to_str().unwrap(),
        "--journal",
        journal.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = crate::support::rekey()
        .env("VAULT_TOKEN", &case.env["VAULT_TOKEN"])
        .args(args)
        .run();
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    out.stdout
}

#[test]
fn plan_says_ages_are_unknown_offline_and_gives_them_live() {
    let case = Case::new();
    seed_first_meeting(&case);
    let pb = hygiene_playbook(&case);
    let plan = |extra: &[&str]| {
        let mut args = vec!["plan", pb.to_str().unwrap(), "--detailed-exitcode"];
        args.extend_from_slice(extra);
        crate::support::rekey()
            .env("VAULT_TOKEN", &case.env["VAULT_TOKEN"])
            .args(args)
            .run()
    };
    let offline = plan(&[]);
    assert_eq!(offline.code, 10, "{}", offline.stderr);
    assert_eq!(
        offline.stdout.matches("age unknown until --live").count(),
        3,
        "{}",
        offline.stdout
    );
    let live = plan(&["--live"]);
    assert_eq!(live.code, 10, "{}\n{}", live.stdout, live.stderr);
    assert!(live.stdout.contains("1 not due"), "{}", live.stdout);
    assert!(
        live.stdout
            .contains("age 100d of max 90d: due (key sbx-old created"),
        "{}",
        live.stdout
    );
    assert!(
        live.stdout
            .contains("age unknown: due, since rekey cannot tell"),
        "{}",
        live.stdout
    );
    assert!(
        live.stdout.contains("young-key -> ")
            && live.stdout.contains("age 10d of max 90d: not due"),
        "{}",
        live.stdout
    );
    // JSON: the due credentials carry their age, the others are listed apart.
    let json = plan(&["--live", "--format", "json"]);
    let doc: Value = serde_json::from_str(json.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(doc["totals"]["not_due"], 1);
    assert_eq!(doc["not_due"][0]["id"], "young-key");
    assert_eq!(doc["not_due"][0]["age"]["source"], "provider");
    let planned: Vec<&Value> = doc["waves"][0]["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    let old = planned.iter().find(|c| c["id"] == "old-key").unwrap();
    assert_eq!(old["age"]["source"], "provider");
    assert_eq!(old["max_age_seconds"], 90 * DAY);
    // Once everything is rotated, a live plan has nothing to do.
    let ran = run_with(&case, &pb, &["--max-age", "1s"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let after = plan(&["--live"]);
    assert_eq!(after.code, 0, "{}\n{}", after.stdout, after.stderr);
    assert!(after.stdout.contains("3 not due"), "{}", after.stdout);
}

#[test]
fn report_lists_ages_rotations_and_keys_and_exits_10_when_something_is_overdue() {
    let case = Case::new();
    seed_first_meeting(&case);
    let pb = hygiene_playbook(&case);
    let report = |extra: &[&str]| {
        let journal = case.journal();
        let mut args = vec![
            "report",
            pb.to_str().unwrap(),
            "--journal",
            journal.to_str().unwrap(),
            "--detailed-exitcode",
        ];
        args.extend_from_slice(extra);
        crate::support::rekey()
            .env("VAULT_TOKEN", &case.env["VAULT_TOKEN"])
            .args(args)
            .run()
    };
    // Before any run: one overdue (100 days), one of unknown age, one fine.
    let before = report(&["--format", "json"]);
    assert_eq!(before.code, 10, "{}\n{}", before.stdout, before.stderr);
    let doc: Value = serde_json::from_str(&before.stdout).unwrap();
    assert_eq!(doc["totals"]["overdue"], 1);
    assert_eq!(doc["totals"]["unknown_age"], 1);
    let status: Vec<(&str, &str)> = doc["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        status,
        [
            ("old-key", "overdue"),
            ("young-key", "ok"),
            ("password", "unknown_age")
        ]
    );
    assert_eq!(doc["credentials"][0]["keys"]["keys"][0]["id"], "sbx-old");
    assert!(doc["credentials"][0]["last_rotation"].is_null());

    let ran = run_with(&case, &pb, &[]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let run_id = ran.summary["run_id"].as_str().unwrap().to_owned();
    let after = report(&["--format", "json"]);
    assert_eq!(after.code, 0, "nothing is due any more: {}", after.stdout);
    let doc: Value = serde_json::from_str(&after.stdout).unwrap();
    let old = &doc["credentials"][0];
    assert_eq!(old["last_rotation"]["run_id"], run_id.as_str());
    assert_eq!(old["age"]["source"], "vault_metadata");
    let new_key = old["last_rotation"]["key_id"].as_str().unwrap();
    assert_eq!(
        old["keys"]["keys"][0]["id"], new_key,
        "the live key is the new one"
    );

    // The same inventory in the other formats.
    let csv = report(&["--format", "csv"]);
    let lines: Vec<&str> = csv.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", csv.stdout);
    assert!(lines[0].starts_with("credential,provider,type,vault_path,status,"));
    assert!(lines[1].starts_with("old-key,keys,sandbox,") && lines[1].contains(&run_id));
    let md = report(&["--format", "markdown"]);
    assert!(md.stdout.contains("| `old-key` | ok |"), "{}", md.stdout);
    let text = report(&[]);
    assert!(
        text.stdout.contains(&format!("(run {run_id})")),
        "{}",
        text.stdout
    );
    // A shorter max_age on the command line makes them all overdue.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let strict = report(&["--max-age", "1s"]);
    assert_eq!(strict.code, 10, "{}", strict.stdout);
    assert!(strict.stdout.contains("3 overdue"), "{}", strict.stdout);
}

#[test]
fn resume_of_a_hygiene_run_leaves_what_was_not_due_alone() {
    let case = Case::new();
    seed_first_meeting(&case);
    let dir = case.dir.path().display().to_string();
    let pb = case.playbook(
        "resume.yaml",
        &format!(
            "version: 1\nname: hygiene-resume-PREFIX\nincident: {{ mode: routine }}\nvault: {{ address: \"VAULT\", staging_prefix: PREFIX/staging }}\ndefaults: {{ max_age: 90d }}\nproviders:\n  keys: {{ type: sandbox, settings: {{ state_file: {dir}/keys.json, latency: 1ms }} }}\ncredentials:\n  - {{ id: young-key, provider: keys, account: b, vault_path: PREFIX/young-key }}\n  - {{ id: by-hand, provider: manual, instructions: \"Rotate it in the console\", vault_path: PREFIX/by-hand }}\n"
        ),
    );
    let first = run_with(&case, &pb, &[]);
    assert_eq!(first.code, 5, "the manual step waits: {}", first.stderr);
    assert_eq!(not_due(&first), ["young-key"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rekey"))
        .env_clear()
        .env("VAULT_TOKEN", &case.env["VAULT_TOKEN"])
        .env("NO_COLOR", "1")
        .current_dir(crate::support::repo_root())
        .args([
            "resume",
            "--journal",
            case.journal().to_str().unwrap(),
            "--credential",
            "by-hand",
            "--value-stdin",
            "--format",
            "json",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"the-new-console-value\n")?;
            child.wait_with_output()
        })
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    let ids: Vec<&str> = summary["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["by-hand"],
        "resume took up only what was due: {summary}"
    );
    assert_eq!(summary["not_due"][0]["id"], "young-key");
    assert_eq!(
        version(&case, "young-key"),
        1,
        "the young key was not rotated"
    );
}
