//! Manual steps end to end: a run without a terminal leaves them waiting, the rest
//! of the run goes on, and `rekey resume` with a value from stdin or a file
//! finishes them in the real OpenBao.

use crate::lab::{Lab, sha256_hex};

const MANUAL: &str = "providers:
  keys: { type: sandbox, settings: { state_file: DIR/keys.json, latency: 1ms } }
credentials:
  - { id: api, provider: keys, account: a, vault_path: PREFIX/api }
  - id: exchange
    provider: manual
    vault_path: PREFIX/exchange
    instructions: Create a new key in the exchange console, then delete the old one.
  - { id: after, provider: keys, account: b, vault_path: PREFIX/after, depends_on: [exchange] }
";

#[test]
fn a_run_without_a_terminal_leaves_a_manual_step_waiting_and_resume_from_stdin_finishes_it() {
    let lab = Lab::new();
    let pb = lab.playbook("breach", MANUAL);
    let run = lab.rekey(&["run", pb.to_str().unwrap()], None, &[]);
    assert_eq!(run.code, 5, "exit 5: a manual step waits\n{}", run.stderr);
    assert_eq!(run.outcome("api"), "rotated", "the rest of the run goes on");
    assert_eq!(run.outcome("exchange"), "awaiting_operator");
    assert_eq!(
        run.outcome("after"),
        "skipped",
        "its dependency has not rotated yet"
    );
    assert!(
        run.stderr.contains("rekey resume") && run.stderr.contains("--value-stdin"),
        "{}",
        run.stderr
    );
    let run_id = run.json()["run_id"].as_str().unwrap().to_owned();

    let status = lab.rekey(&["status"], None, &[]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(
        status.stdout.contains("awaiting_operator"),
        "{}",
        status.stdout
    );
    assert!(
        status
            .stdout
            .contains("Create a new key in the exchange console"),
        "status shows the instructions: {}",
        status.stdout
    );

    let canary = "exch-canary-Zq81xW";
    let resumed = lab.rekey(
        &["resume", "--value-stdin"],
        Some(&format!("{canary}\n")),
        &[],
    );
    assert_eq!(resumed.code, 0, "{}\n{}", resumed.stdout, resumed.stderr);
    assert_eq!(
        resumed.json()["run_id"],
        run_id.as_str(),
        "the waiting run is found"
    );
    assert_eq!(resumed.outcome("exchange"), "rotated");
    assert_eq!(
        resumed.outcome("after"),
        "rotated",
        "the dependent goes once it can"
    );
    assert_eq!(resumed.outcome("api"), "rotated");
    assert_eq!(
        lab.vault("exchange")["data"]["value"],
        canary,
        "Vault holds the value"
    );
    assert_eq!(lab.vault("exchange")["metadata"]["version"], 1);

    for out in [
        &run.stdout,
        &run.stderr,
        &resumed.stdout,
        &resumed.stderr,
        &status.stdout,
    ] {
        assert!(!out.contains(canary), "the value leaked into output");
    }
    assert!(
        !lab.journal_holds(canary),
        "the value leaked into the journal"
    );
    let status = lab.rekey(&["status", &run_id], None, &[]);
    assert!(status.stdout.contains("succeeded"), "{}", status.stdout);
}

#[test]
fn resume_takes_a_value_from_a_file_only_for_a_waiting_manual_step() {
    let lab = Lab::new();
    let pb = lab.playbook(
        "breach",
        "credentials:
  - { id: one, provider: manual, vault_path: PREFIX/one, instructions: Do one. }
  - { id: two, provider: manual, vault_path: PREFIX/two, instructions: Do two. }
",
    );
    let run = lab.rekey(&["run", pb.to_str().unwrap()], None, &[]);
    assert_eq!(run.code, 5, "{}", run.stderr);

    // Two steps wait: a value without a credential is ambiguous.
    let file = lab.path("value.txt");
    std::fs::write(&file, "file-canary-77\n").unwrap();
    let file = file.to_str().unwrap();
    let ambiguous = lab.rekey(&["resume", "--value-file", file], None, &[]);
    assert_eq!(ambiguous.code, 2, "{}", ambiguous.stderr);
    assert!(
        ambiguous.stderr.contains("--credential"),
        "{}",
        ambiguous.stderr
    );
    let unknown = lab.rekey(
        &["resume", "--value-file", file, "--credential", "nope"],
        None,
        &[],
    );
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    assert!(unknown.stderr.contains("one, two"), "{}", unknown.stderr);
    assert!(lab.vault("one").is_null(), "nothing was written");

    let first = lab.rekey(
        &["resume", "--value-file", file, "--credential", "two"],
        None,
        &[],
    );
    assert_eq!(first.code, 5, "`one` still waits: {}", first.stderr);
    assert_eq!(first.outcome("two"), "rotated");
    assert_eq!(first.outcome("one"), "awaiting_operator");
    assert_eq!(lab.vault("two")["data"]["value"], "file-canary-77");
    assert!(lab.vault("one").is_null());

    let empty = lab.rekey(&["resume", "--value-stdin"], Some("\n"), &[]);
    assert_eq!(empty.code, 2, "an empty value is refused: {}", empty.stderr);
    let last = lab.rekey(&["resume", "--value-stdin"], Some("stdin-canary-78"), &[]);
    assert_eq!(last.code, 0, "{}", last.stderr);
    assert_eq!(lab.vault("one")["data"]["value"], "stdin-canary-78");
    assert!(!lab.journal_holds("file-canary-77") && !lab.journal_holds("stdin-canary-78"));
}

#[test]
fn a_manual_value_that_does_not_verify_is_not_promoted_and_the_step_waits() {
    let lab = Lab::new();
    // The "console" where the operator sets the password by hand: a sandbox
    // password store whose state this test writes.
    let right = "right-value-Kd93";
    std::fs::write(
        lab.path("pw.json"),
        serde_json::json!({ "accounts": { "ops": { "keys": [], "password_sha256": sha256_hex(right) } } })
            .to_string(),
    )
    .unwrap();
    let pb = lab.playbook(
        "breach",
        "providers:
  console: { type: sandbox_password, settings: { state_file: DIR/pw.json, latency: 1ms } }
credentials:
  - id: ops
    provider: manual
    account: ops
    vault_path: PREFIX/ops
    instructions: Set a new password for ops in the console.
    settings: { verify_with: console }
",
    );
    let run = lab.rekey(&["run", pb.to_str().unwrap()], None, &[]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    let wrong = lab.rekey(&["resume", "--value-stdin"], Some("mistyped-value"), &[]);
    assert_eq!(wrong.code, 5, "{}", wrong.stderr);
    assert_eq!(wrong.outcome("ops"), "awaiting_operator");
    assert!(wrong.stderr.contains("did not verify"), "{}", wrong.stderr);
    assert!(
        lab.vault("ops").is_null(),
        "an unverified value is not promoted"
    );
    let good = lab.rekey(&["resume", "--value-stdin"], Some(right), &[]);
    assert_eq!(good.code, 0, "{}", good.stderr);
    assert_eq!(lab.vault("ops")["data"]["value"], right);
}

#[test]
fn a_confirm_only_step_records_the_confirmation_and_stores_nothing() {
    let lab = Lab::new();
    let pb = lab.playbook(
        "breach",
        "credentials:
  - id: old-token
    provider: manual
    vault_path: PREFIX/old-token
    instructions: Revoke the old token in the console.
    settings: { confirm_only: true }
",
    );
    let run = lab.rekey(&["run", pb.to_str().unwrap()], None, &[]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    let value = lab.rekey(&["resume", "--value-stdin"], Some("x"), &[]);
    assert_eq!(value.code, 0, "{}", value.stderr);
    assert_eq!(value.outcome("old-token"), "rotated");
    assert!(
        lab.vault("old-token").is_null(),
        "a confirmation stores no value"
    );
    let j = rekey::journal::Journal::open(&lab.path("journal.db")).unwrap();
    let run_id = value.json()["run_id"].as_str().unwrap().to_owned();
    let steps: Vec<String> = j
        .intents(&run_id, "old-token")
        .unwrap()
        .into_iter()
        .map(|i| i.step)
        .collect();
    assert!(
        steps.contains(&"operator_confirmed".to_owned()),
        "{steps:?}"
    );
}

#[test]
fn on_a_terminal_the_value_is_read_with_echo_off_and_promoted() {
    use std::io::{Read, Write};
    let lab = Lab::new();
    let pb = lab.playbook(
        "breach",
        "credentials:
  - { id: tty, provider: manual, vault_path: PREFIX/tty, instructions: Make a key by hand. }
",
    );
    // util-linux `script` runs rekey on a pseudo-terminal; the value is typed only
    // once rekey shows the prompt (and so has turned echo off).
    let command = format!(
        "{} run {} --journal {}",
        env!("CARGO_BIN_EXE_rekey"),
        pb.display(),
        lab.path("journal.db").display()
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("VAULT_TOKEN", &lab.env["VAULT_TOKEN"])
        .env("NO_COLOR", "1")
        .env("TERM", "dumb")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("util-linux `script` (package bsdutils) runs rekey on a terminal");
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("Paste the new value") {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "no prompt: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let canary = "tty-canary-Pw42";
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{canary}\n").as_bytes()).unwrap();
    stdout.read_to_end(&mut seen).unwrap();
    let status = child.wait().unwrap();
    drop(stdin);
    let output = String::from_utf8_lossy(&seen).into_owned();
    assert!(status.success(), "{output}");
    assert!(
        output.contains("Make a key by hand."),
        "the instructions show: {output}"
    );
    assert!(output.contains("rotated"), "{output}");
    assert!(!output.contains(canary), "the value was echoed: {output}");
    assert_eq!(lab.vault("tty")["data"]["value"], canary);
}
