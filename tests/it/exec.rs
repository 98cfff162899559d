//! Exec plugins end to end: `rekey run` drives the example plugins (Python and
//! Rust, from `examples/`) against the real OpenBao, and copes with plugins that
//! hang, crash, write garbage, send unknown messages or speak another version.

use crate::lab::{Lab, sha256_hex};
use serde_json::Value;

const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/plugins/keystore.py");

/// The Rust example plugin, built if this test run has not built it yet.
fn rust_plugin() -> String {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/it-<hash> -> target/<profile>/examples/exec_plugin
    let path = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples/exec_plugin");
    if !path.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", "exec_plugin"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "cargo build --example exec_plugin");
    }
    path.display().to_string()
}

/// A playbook with one exec instance `plug` (`settings` inline YAML) and `credentials`.
fn playbook(lab: &Lab, settings: &str, credentials: &str) -> String {
    lab.playbook(
        "breach",
        &format!(
            "providers:\n  plug: {{ type: exec, settings: {{ {settings} }} }}\ncredentials:\n{credentials}"
        ),
    )
    .display()
    .to_string()
}

fn python(lab: &Lab, extra_args: &str) -> String {
    format!(
        "command: {PYTHON}, args: [--state, {}{extra_args}], timeout: 10s",
        lab.path("ks.json").display()
    )
}

const ONE_KEY: &str = "  - { id: api, provider: plug, account: a, vault_path: PREFIX/api }\n";

fn state(lab: &Lab) -> Value {
    serde_json::from_slice(&std::fs::read(lab.path("ks.json")).unwrap_or_default())
        .unwrap_or(Value::Null)
}

/// No process started for this lab (its state path is in their argv) is left.
fn no_plugin_left(lab: &Lab) -> bool {
    let needle = lab.path("ks.json").display().to_string();
    std::fs::read_dir("/proc").unwrap().flatten().all(|p| {
        std::fs::read(p.path().join("cmdline"))
            .map(|c| !String::from_utf8_lossy(&c).contains(&needle))
            .unwrap_or(true)
    })
}

#[test]
fn a_python_plugin_rotates_a_key_end_to_end() {
    let lab = Lab::new();
    let pb = playbook(
        &lab,
        &python(&lab, ""),
        "  - { id: api, provider: plug, account: a, vault_path: PREFIX/api, settings: { team: billing } }\n",
    );
    for round in 1..=2 {
        let run = lab.rekey(&["run", &pb], None, &[]);
        assert_eq!(run.code, 0, "round {round}: {}", run.stderr);
        assert_eq!(run.outcome("api"), "rotated");
    }
    let entry = lab.vault("api");
    assert_eq!(entry["metadata"]["version"], 2);
    let keys = state(&lab)["accounts"]["a"]["keys"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(keys.len(), 1, "the old key was revoked: {keys:?}");
    assert_eq!(keys[0]["id"], entry["data"]["key_id"]);
    assert_eq!(
        keys[0]["settings"]["team"], "billing",
        "the credential's settings reach the plugin"
    );
    assert_eq!(
        keys[0]["sha256"],
        sha256_hex(entry["data"]["value"].as_str().unwrap()),
        "Vault holds the value the plugin issued"
    );
    assert!(!lab.journal_holds(entry["data"]["value"].as_str().unwrap()));
    assert!(no_plugin_left(&lab));
}

#[test]
fn a_single_kind_plugin_changes_a_password_in_place() {
    let lab = Lab::new();
    let pb = playbook(
        &lab,
        &format!("{}, kind: single", python(&lab, "")),
        ONE_KEY,
    );
    let run = lab.rekey(&["run", &pb], None, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.outcome("api"), "rotated");
    let value = lab.vault("api")["data"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        state(&lab)["accounts"]["a"]["password_sha256"],
        sha256_hex(&value)
    );
}

#[test]
fn a_rust_plugin_rotates_a_key_end_to_end() {
    let lab = Lab::new();
    let settings = format!(
        "command: {}, args: [--state, {}]",
        rust_plugin(),
        lab.path("ks.json").display()
    );
    let pb = playbook(&lab, &settings, ONE_KEY);
    let run = lab.rekey(&["run", &pb], None, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let entry = lab.vault("api");
    let keys = state(&lab)["accounts"]["a"]["keys"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], entry["data"]["key_id"]);
    assert_eq!(
        keys[0]["sha256"],
        sha256_hex(entry["data"]["value"].as_str().unwrap())
    );
}

#[test]
fn a_plugin_that_hangs_is_killed_at_the_timeout_and_the_key_rolls_back() {
    let lab = Lab::new();
    let settings = python(&lab, ", --misbehave, timeout, --on, create").replace("10s", "1s");
    let pb = playbook(&lab, &settings, ONE_KEY);
    let run = lab.rekey(&["run", &pb], None, &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.outcome("api"), "rolled_back");
    let reason = run.json()["results"][0]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains("did not answer `create` within 1s"),
        "{reason}"
    );
    assert!(no_plugin_left(&lab), "every hung plugin process was killed");
    assert!(lab.vault("api").is_null());
}

#[test]
fn a_plugin_that_crashes_fails_the_step_with_its_exit_status() {
    let lab = Lab::new();
    let pb = playbook(
        &lab,
        &python(&lab, ", --misbehave, crash, --on, create"),
        ONE_KEY,
    );
    let run = lab.rekey(&["run", &pb], None, &[]);
    assert_eq!(run.outcome("api"), "rolled_back", "{}", run.stderr);
    let reason = run.json()["results"][0]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains("exited (exit status: 3) during `create`"),
        "{reason}"
    );
}

#[test]
fn garbage_on_a_plugins_stdout_is_a_protocol_error_that_is_not_quoted() {
    let lab = Lab::new();
    let pb = playbook(
        &lab,
        &python(&lab, ", --misbehave, garbage, --on, verify"),
        ONE_KEY,
    );
    let run = lab.rekey(&["run", &pb], None, &[]);
    assert_eq!(run.outcome("api"), "rolled_back", "{}", run.stderr);
    let reason = run.json()["results"][0]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("not a protocol message"), "{reason}");
    assert!(!run.stdout.contains("Traceback") && !run.stderr.contains("Traceback"));
    // The key created before verify failed was revoked: nothing is left behind.
    assert_eq!(state(&lab)["accounts"]["a"]["keys"], serde_json::json!([]));
    assert!(no_plugin_left(&lab));
}

/// Found while writing the oracle of the fuzz target `exec_message` (which now
/// checks it): serde's "invalid type" errors quote the value they met, so a plugin
/// that answered `verify` with the secret where the boolean goes had that secret
/// copied into the error, the journal and the run's JSON.
#[test]
fn a_result_of_the_wrong_shape_is_refused_without_quoting_the_value() {
    let lab = Lab::new();
    let pb = playbook(
        &lab,
        &python(&lab, ", --misbehave, wrong_shape, --on, verify"),
        ONE_KEY,
    );
    let run = lab.rekey(&["run", &pb], None, &[]);
    assert_eq!(run.outcome("api"), "rolled_back", "{}", run.stderr);
    let reason = run.json()["results"][0]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("wrong shape"), "{reason}");
    assert!(reason.contains("expected a boolean"), "{reason}");
    for (what, text) in [
        ("reason", &reason),
        ("stdout", &run.stdout),
        ("stderr", &run.stderr),
    ] {
        assert!(
            !holds_issued_value(text.as_bytes()),
            "the value reached the {what}: {text}"
        );
    }
    for file in ["journal.db", "journal.db-wal"] {
        let bytes = std::fs::read(lab.path(file)).unwrap_or_default();
        assert!(!holds_issued_value(&bytes), "the value reached {file}");
    }
    assert!(no_plugin_left(&lab));
}

/// Whether `bytes` hold a value issued by keystore.py: `ks_` and 32 URL-safe
/// base64 characters (`secrets.token_urlsafe(24)`).
fn holds_issued_value(bytes: &[u8]) -> bool {
    let urlsafe = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
    bytes
        .windows(3 + 32)
        .any(|w| w.starts_with(b"ks_") && w[3..].iter().all(urlsafe))
}

#[test]
fn messages_of_unknown_kinds_are_skipped() {
    let lab = Lab::new();
    let pb = playbook(
        &lab,
        &python(&lab, ", --misbehave, unknown, --on, create"),
        ONE_KEY,
    );
    let run = lab.rekey(&["run", &pb], None, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.outcome("api"), "rotated");
}

#[test]
fn a_plugin_speaking_another_protocol_version_is_refused() {
    let lab = Lab::new();
    let pb = playbook(&lab, &python(&lab, ", --misbehave, version"), ONE_KEY);
    let run = lab.rekey(&["run", &pb], None, &[]);
    assert_eq!(run.outcome("api"), "rolled_back", "{}", run.stderr);
    let reason = run.json()["results"][0]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("speaks protocol version 99"), "{reason}");
}

#[test]
fn a_plugin_gets_only_the_environment_variables_the_playbook_names() {
    let lab = Lab::new();
    let settings = format!("{}, env: [KEEP_ME]", python(&lab, ", --misbehave, env"));
    let pb = playbook(&lab, &settings, ONE_KEY);
    let run = lab.rekey(
        &["-v", "run", &pb],
        None,
        &[("KEEP_ME", "1"), ("OTHER_CANARY", "2")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("keystore env:"))
        .unwrap_or_else(|| panic!("the plugin's stderr is relayed: {}", run.stderr))
        .to_owned();
    assert!(line.contains("KEEP_ME"), "{line}");
    assert!(
        !line.contains("OTHER_CANARY") && !line.contains("VAULT_TOKEN"),
        "{line}"
    );
}

#[test]
fn the_admin_credential_reaches_the_plugin_in_the_hello_only() {
    let lab = Lab::new();
    let admin = "ks-admin-canary-31";
    let settings = python(&lab, &format!(", --admin-sha256, {}", sha256_hex(admin)));
    let pb = lab
        .playbook(
            "breach",
            &format!(
                "providers:\n  plug: {{ type: exec, admin: {{ env: KS_ADMIN }}, settings: {{ {settings} }} }}\ncredentials:\n{ONE_KEY}"
            ),
        )
        .display()
        .to_string();
    let run = lab.rekey(&["run", &pb], None, &[("KS_ADMIN", admin)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.outcome("api"), "rotated");
    let refused = lab.rekey(&["run", &pb], None, &[("KS_ADMIN", "wrong")]);
    assert_eq!(refused.outcome("api"), "rolled_back");
    let reason = refused.json()["results"][0]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("admin credential refused"), "{reason}");
    assert!(!lab.journal_holds(admin));
}

#[test]
fn a_rate_limited_answer_is_retried_after_the_delay_the_plugin_gives() {
    let lab = Lab::new();
    let pb = playbook(
        &lab,
        &python(&lab, ", --misbehave, rate_limited, --on, create"),
        ONE_KEY,
    );
    let run = lab.rekey(&["run", &pb], None, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.outcome("api"), "rotated");
    let j = rekey::journal::Journal::open(&lab.path("journal.db")).unwrap();
    let create = j
        .intents(run.json()["run_id"].as_str().unwrap(), "api")
        .unwrap()
        .into_iter()
        .find(|i| i.step == "create")
        .unwrap();
    // A rate-limited answer is retried without using up the step's attempts.
    let detail = create.outcome.unwrap().detail;
    assert_eq!(
        detail["rate_limited"], 1,
        "one rate-limited retry: {detail}"
    );
    assert_eq!(detail["attempts"], 1, "{detail}");
}

/// A plugin that starts a helper process and then hangs: at the timeout rekey
/// kills the plugin's whole process group, the helper too.
#[test]
fn a_hung_plugin_is_killed_with_its_helper_processes_at_the_timeout() {
    let lab = Lab::new();
    let _cleanup = KillLeftovers(&lab);
    let settings = python(&lab, ", --misbehave, spawn, --on, create").replace("10s", "1s");
    let pb = playbook(&lab, &settings, ONE_KEY);
    let run = lab.rekey(&["run", &pb], None, &[]);
    assert_eq!(run.outcome("api"), "rolled_back", "{}", run.stderr);
    assert!(
        wait_until(|| no_plugin_left(&lab)),
        "the plugin's helper outlived the plugin"
    );
}

/// A plugin whose helper process would outlive it: when rekey exits, the
/// plugin's process group is stopped with it.
#[test]
fn a_plugins_helper_processes_are_stopped_when_rekey_exits() {
    let lab = Lab::new();
    let _cleanup = KillLeftovers(&lab);
    let pb = playbook(&lab, &python(&lab, ", --misbehave, daemon"), ONE_KEY);
    let run = lab.rekey(&["run", &pb], None, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.outcome("api"), "rotated");
    assert!(
        wait_until(|| no_plugin_left(&lab)),
        "the plugin's helper outlived rekey"
    );
}

/// rekey's own parent left a descriptor open without close-on-exec (a shell's
/// `exec 7<file`, a CI runner): the plugin gets stdin, stdout and stderr only.
#[test]
fn a_plugin_inherits_no_file_descriptor_beyond_stdin_stdout_and_stderr() {
    let lab = Lab::new();
    let leaked = lab.path("leaked.txt");
    std::fs::write(&leaked, "x").unwrap();
    let c_path = std::ffi::CString::new(leaked.to_str().unwrap()).unwrap();
    // SAFETY: open(2) of a path we own; the descriptor is closed below. No
    // O_CLOEXEC on purpose: the spawned rekey inherits it.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_RDONLY) };
    assert!(fd > 2);
    let pb = playbook(&lab, &python(&lab, ", --misbehave, fds"), ONE_KEY);
    let run = lab.rekey(&["-v", "run", &pb], None, &[]);
    // SAFETY: closes the descriptor opened above, once.
    unsafe { libc::close(fd) };
    assert_eq!(run.code, 0, "{}", run.stderr);
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("keystore fds:"))
        .unwrap_or_else(|| panic!("the plugin's stderr is relayed: {}", run.stderr))
        .to_owned();
    let fds = line
        .split("keystore fds: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next());
    assert_eq!(fds, Some("0,1,2"), "{line}");
}

/// A plugin writing a 4 MiB stderr line: rekey relays a bounded part of it (a
/// plugin cannot fill rekey's memory or the operator's log with one line).
#[test]
fn a_plugins_stderr_lines_are_cut_at_a_limit() {
    let lab = Lab::new();
    let pb = playbook(&lab, &python(&lab, ", --misbehave, long_line"), ONE_KEY);
    let run = lab.rekey(&["-v", "run", &pb], None, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("keystore: xxxx"))
        .unwrap_or_else(|| {
            panic!(
                "the line is relayed: {}",
                &run.stderr[..2000.min(run.stderr.len())]
            )
        })
        .to_owned();
    assert!(line.len() < 10_000, "{} bytes relayed", line.len());
    assert!(
        line.contains("bytes cut"),
        "the cut is said: {}",
        &line[line.len() - 200..]
    );
    // The plugin still worked: its later lines came through.
    assert!(
        run.stderr.contains("keystore: create for api"),
        "{}",
        run.stderr.len()
    );
}

/// Kills, when dropped, every process left that names `lab`'s state file (a
/// failed test must not leave a sleeping helper behind).
struct KillLeftovers<'a>(&'a Lab);

impl Drop for KillLeftovers<'_> {
    fn drop(&mut self) {
        let needle = self.0.path("ks.json").display().to_string();
        for p in std::fs::read_dir("/proc").unwrap().flatten() {
            let named = std::fs::read(p.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle));
            if let (true, Ok(pid)) = (named, p.file_name().to_string_lossy().parse::<i32>()) {
                // SAFETY: kill(2) of a process this test's plugin started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Polls `done` for up to 5 s (a killed process takes a moment to go away).
fn wait_until(done: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    done()
}
