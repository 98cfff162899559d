//! The journal through its library API, on real files: permissions, durability across a
//! SIGKILL, leases, ordering, schema versions, several connections at once, and the
//! promise that no secret value reaches the database or its write-ahead log. The
//! tests of records, leases and errors run on the SQLite file and on PostgreSQL
//! (`on_both`).

use rekey::journal::{
    CredentialState, IntentId, Journal, JournalError, NewRun, Outcome, RecordedOutcome, RunStatus,
};
use rekey::secret::Secret;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set (to a journal path) when this test binary runs itself as a child that writes to
/// the journal and is then killed.
const CRASH_ENV: &str = "REKEY_JOURNAL_CRASH_TEST";
/// The run id the child writes under.
const CRASH_RUN_ENV: &str = "REKEY_JOURNAL_CRASH_RUN";

fn new_run(name: &str) -> NewRun {
    NewRun {
        playbook_name: name.to_owned(),
        playbook_path: format!("playbooks/{name}.yaml"),
        playbook_sha256: "ab".repeat(32),
        mode: "breach".to_owned(),
        selection: json!({ "compromised": ["idp"], "tags": [] }),
        actor: "alice@host".to_owned(),
        expanded_sha256: None,
    }
}

fn temp_journal() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal.db");
    (dir, path)
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Runs `check` on an SQLite journal, then on a PostgreSQL one (a database of its
/// own): the same records, leases and errors on both. `open` opens one more
/// connection to the journal under test.
fn on_both(check: impl Fn(&dyn Fn() -> Journal)) {
    let (_dir, path) = temp_journal();
    check(&|| Journal::open(&path).unwrap());
    let db = crate::pg::TestDb::new();
    check(&|| db.journal());
}

/// The full name libtest knows this module's test `name` by (`journal::name`).
fn test_name(name: &str) -> String {
    let module = module_path!()
        .split_once("::")
        .map_or(module_path!(), |(_, rest)| rest);
    format!("{module}::{name}")
}

/// This test binary, running only test `name`, as a child told which journal to use.
fn child(name: &str, journal: &Path, run: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
    cmd.args([
        "--exact",
        &test_name(name),
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CRASH_ENV, journal)
    .env(CRASH_RUN_ENV, run);
    cmd
}

/// In a child: the journal path and run id the parent passed.
fn child_args() -> Option<(PathBuf, String)> {
    let path = std::env::var_os(CRASH_ENV)?;
    Some((
        PathBuf::from(path),
        std::env::var(CRASH_RUN_ENV).expect("run id for the child"),
    ))
}

fn kill_self() -> ! {
    // SIGKILL, not abort(): no handler, no unwinding, no SQLite close, exactly like
    // `kill -9` or the OOM killer.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    // POSIX delivers a signal a process sends itself before kill() returns; wait anyway
    // rather than run on.
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn journal_file_and_its_wal_are_created_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/rekey/journal.db");
    let journal = Journal::open(&path).unwrap();
    journal.create_run(&new_run("idp")).unwrap();

    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(
        mode_of(path.parent().unwrap()),
        0o700,
        "missing parent directories are created private"
    );
    // SQLite gives its side files the main file's mode; they hold the newest records.
    assert_eq!(mode_of(&side_file(&path, "-wal")), 0o600);
    assert_eq!(mode_of(&side_file(&path, "-shm")), 0o600);
}

#[test]
fn journal_readable_by_others_is_refused() {
    let (_dir, path) = temp_journal();
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();

    let err = Journal::open(&path).unwrap_err();
    assert!(
        matches!(err, JournalError::Permissions { mode: 0o644, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&format!("chmod 600 {}", path.display())),
        "{message}"
    );
    assert_eq!(
        mode_of(&path),
        0o644,
        "rekey refuses; it does not quietly fix someone else's mistake"
    );
}

#[test]
fn journal_with_a_readable_write_ahead_log_is_refused() {
    let (_dir, path) = temp_journal();
    drop(Journal::open(&path).unwrap());
    let wal = side_file(&path, "-wal");
    std::fs::write(&wal, b"").unwrap();
    std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o640)).unwrap();

    let err = Journal::open(&path).unwrap_err();
    assert!(
        matches!(&err, JournalError::Permissions { path: p, mode: 0o640 } if *p == wal),
        "{err:?}"
    );
}

#[test]
fn reopening_the_journal_keeps_runs_states_and_intents() {
    let (_dir, path) = temp_journal();
    let (run, intent) = {
        let journal = Journal::open(&path).unwrap();
        let run = journal.create_run(&new_run("idp")).unwrap();
        journal
            .set_state(
                &run,
                "billing-db",
                CredentialState::Staged,
                &json!({ "staging_version": 3 }),
            )
            .unwrap();
        let intent = journal
            .intent(&run, "billing-db", "promote", &json!({ "cas": 7 }))
            .unwrap();
        journal
            .outcome(intent, Outcome::Ok, &json!({ "version": 8 }))
            .unwrap();
        journal.finish_run(&run, RunStatus::Succeeded).unwrap();
        (run, intent)
    };

    let journal = Journal::open(&path).unwrap();
    let row = journal.run(&run).unwrap().expect("run survives reopening");
    assert_eq!(row.status, RunStatus::Succeeded);
    assert_eq!(row.selection, json!({ "compromised": ["idp"], "tags": [] }));
    assert_eq!(row.playbook_sha256, "ab".repeat(32));
    assert!(row.finished_at.is_some());
    assert!(
        row.id.starts_with("r-") && row.id.len() == "r-20261128-0742-3f9a".len(),
        "{}",
        row.id
    );

    let states = journal.states(&run).unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(
        (states[0].state.as_str(), &states[0].detail),
        ("staged", &json!({ "staging_version": 3 }))
    );

    let intents = journal.intents(&run, "billing-db").unwrap();
    assert_eq!(intents.len(), 1);
    assert_eq!(intents[0].id, intent);
    assert_eq!(intents[0].detail, json!({ "cas": 7 }));
    let RecordedOutcome {
        outcome, detail, ..
    } = intents[0].outcome.clone().expect("outcome kept");
    assert_eq!((outcome, detail), (Outcome::Ok, json!({ "version": 8 })));
    assert!(journal.open_intents(&run).unwrap().is_empty());
}

/// The heart of crash recovery: once `intent()` returns, the record is on disk, even if
/// the process dies the next instant without closing anything.
#[test]
fn intent_survives_sigkill_right_after_it_returns() {
    if let Some((path, run)) = child_args() {
        let journal = Journal::open(&path).unwrap();
        journal
            .intent(
                &run,
                "deploy-bot-aws",
                "create_key",
                &json!({ "user": "deploy-bot" }),
            )
            .unwrap();
        kill_self();
    }

    let (_dir, path) = temp_journal();
    let run = Journal::open(&path)
        .unwrap()
        .create_run(&new_run("idp"))
        .unwrap();
    // The parent's connection is closed: the child is the only one, and dies holding it.
    let status = child(
        "intent_survives_sigkill_right_after_it_returns",
        &path,
        &run,
    )
    .output()
    .unwrap()
    .status;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the child reached kill_self: {status:?}"
    );
    assert!(
        side_file(&path, "-wal").exists(),
        "the intent is only in the write-ahead log, never checkpointed"
    );

    let journal = Journal::open(&path).unwrap();
    let open = journal.open_intents(&run).unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(
        (open[0].credential.as_str(), open[0].step.as_str()),
        ("deploy-bot-aws", "create_key")
    );
    assert_eq!(open[0].detail, json!({ "user": "deploy-bot" }));
    assert_eq!(open[0].outcome, None);
    assert_eq!(
        journal.run(&run).unwrap().unwrap().status,
        RunStatus::Running,
        "a killed run still reads as running"
    );
    assert_eq!(
        journal.latest_unfinished().unwrap().map(|r| r.id),
        Some(run)
    );
}

/// SIGKILL at an arbitrary moment of a busy writer: every record the child saw committed
/// is there, and at most the one step in flight has no outcome.
#[test]
fn sigkill_mid_stream_loses_nothing_that_was_committed() {
    if let Some((path, run)) = child_args() {
        let journal = Journal::open(&path).unwrap();
        for n in 0.. {
            let intent = journal
                .intent(
                    &run,
                    &format!("cred-{}", n % 7),
                    "create_key",
                    &json!({ "n": n }),
                )
                .unwrap();
            println!("intent {}", intent.0);
            journal
                .outcome(
                    intent,
                    Outcome::Ok,
                    &json!({ "key_id": format!("AKIA{n}") }),
                )
                .unwrap();
            println!("outcome {}", intent.0);
        }
        unreachable!();
    }

    let (_dir, path) = temp_journal();
    let run = Journal::open(&path)
        .unwrap()
        .create_run(&new_run("idp"))
        .unwrap();
    let mut child = child(
        "sigkill_mid_stream_loses_nothing_that_was_committed",
        &path,
        &run,
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut committed_intents = Vec::new();
    let mut committed_outcomes = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        match line.split_once(' ') {
            Some(("intent", id)) => committed_intents.push(IntentId(id.parse().unwrap())),
            Some(("outcome", id)) => committed_outcomes.push(IntentId(id.parse().unwrap())),
            _ => continue,
        }
        if committed_intents.len() == 40 {
            child.kill().unwrap(); // SIGKILL, mid-stream
            break;
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert_eq!(
        committed_intents.len(),
        40,
        "the child wrote until it was killed"
    );

    let journal = Journal::open(&path).unwrap();
    let recorded: Vec<_> = (0..7)
        .flat_map(|c| journal.intents(&run, &format!("cred-{c}")).unwrap())
        .collect();
    for id in &committed_intents {
        assert!(
            recorded.iter().any(|row| row.id == *id),
            "intent {id} was reported committed but is gone"
        );
    }
    for id in &committed_outcomes {
        assert!(
            recorded
                .iter()
                .any(|row| row.id == *id && row.outcome.is_some()),
            "outcome of {id} is gone"
        );
    }
    assert!(
        journal.open_intents(&run).unwrap().len() <= 1,
        "only the step in flight can lack an outcome"
    );
    let check: String = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn lease_is_exclusive_until_released_or_expired() {
    on_both(|open| {
        let journal = open();
        let run = journal.create_run(&new_run("idp")).unwrap();
        let other_run = journal.create_run(&new_run("idp")).unwrap();
        let (a, b) = (Journal::new_lease_holder(), Journal::new_lease_holder());
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("{}-", std::process::id())), "{a}");
        let minute = Duration::from_secs(60);

        assert!(journal.lease(&run, "billing-db", &a, minute).unwrap());
        assert!(
            !journal.lease(&run, "billing-db", &b, minute).unwrap(),
            "held by a"
        );
        assert!(
            !journal.lease(&other_run, "billing-db", &b, minute).unwrap(),
            "held by a, whatever the run"
        );
        assert!(
            journal.lease(&run, "deploy-bot-aws", &b, minute).unwrap(),
            "leases are per credential"
        );
        assert!(
            journal.lease(&run, "billing-db", &a, minute).unwrap(),
            "the holder renews"
        );

        journal.release(&run, "billing-db", &b).unwrap(); // not b's: changes nothing
        assert!(!journal.lease(&run, "billing-db", &b, minute).unwrap());
        journal.release(&run, "billing-db", &a).unwrap();
        assert!(
            journal.lease(&run, "billing-db", &b, minute).unwrap(),
            "free once released"
        );

        // A zero TTL expires at once: the next taker wins, and the old holder's renewal fails.
        assert!(
            journal
                .lease(&run, "redis-acl", &a, Duration::ZERO)
                .unwrap()
        );
        std::thread::sleep(Duration::from_millis(2));
        assert!(
            journal.lease(&run, "redis-acl", &b, minute).unwrap(),
            "an expired lease is taken"
        );
        assert!(
            !journal.lease(&run, "redis-acl", &a, minute).unwrap(),
            "a lost lease cannot be renewed"
        );
        journal.release(&run, "redis-acl", &a).unwrap(); // releasing a lost lease is not an error

        let err = journal.lease("r-nope", "x", &a, minute).unwrap_err();
        assert!(matches!(err, JournalError::UnknownRun { .. }), "{err:?}");
    });
}

#[test]
fn lease_of_a_dead_holder_can_be_seen_and_broken() {
    on_both(|open| {
        let journal = open();
        let run = journal.create_run(&new_run("idp")).unwrap();
        let (dead, alive) = (Journal::new_lease_holder(), Journal::new_lease_holder());
        assert_eq!(journal.lease_holder("billing-db").unwrap(), None);
        assert!(
            journal
                .lease(&run, "billing-db", &dead, Duration::from_secs(600))
                .unwrap()
        );
        assert_eq!(
            journal.lease_holder("billing-db").unwrap(),
            Some((run.clone(), dead.clone()))
        );

        assert!(
            !journal.break_lease("billing-db", &alive).unwrap(),
            "only the named holder's lease is broken"
        );
        assert!(journal.break_lease("billing-db", &dead).unwrap());
        assert_eq!(journal.lease_holder("billing-db").unwrap(), None);
        assert!(
            journal
                .lease(&run, "billing-db", &alive, Duration::from_secs(600))
                .unwrap()
        );
    });
}

#[test]
fn lease_held_by_one_connection_excludes_another() {
    on_both(|open| {
        let (first, second) = (open(), open());
        let run = first.create_run(&new_run("idp")).unwrap();
        let (a, b) = (Journal::new_lease_holder(), Journal::new_lease_holder());
        assert!(
            first
                .lease(&run, "billing-db", &a, Duration::from_secs(60))
                .unwrap()
        );
        assert!(
            !second
                .lease(&run, "billing-db", &b, Duration::from_secs(60))
                .unwrap()
        );
    });
}

#[test]
fn states_keep_first_insertion_order_and_intents_their_sequence() {
    on_both(|open| {
        let journal = open();
        let run = journal.create_run(&new_run("idp")).unwrap();
        for credential in ["zeta", "alpha", "mid"] {
            journal
                .set_state(&run, credential, CredentialState::Creating, &json!({}))
                .unwrap();
        }
        journal
            .set_state(
                &run,
                "alpha",
                CredentialState::Staged,
                &json!({ "key_id": "AKIA1" }),
            )
            .unwrap();
        let states = journal.states(&run).unwrap();
        let order: Vec<_> = states
            .iter()
            .map(|s| (s.credential.as_str(), s.state.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                ("zeta", "creating"),
                ("alpha", "staged"),
                ("mid", "creating")
            ]
        );
        assert_eq!(states[1].detail, json!({ "key_id": "AKIA1" }));

        let steps = ["check_quota", "create_key", "stage", "verify", "promote"];
        let mut ids = Vec::new();
        for step in steps {
            let id = journal.intent(&run, "alpha", step, &json!({})).unwrap();
            journal.intent(&run, "zeta", step, &json!({})).unwrap(); // interleaved, other credential
            ids.push(id);
        }
        let failure = Outcome::Failed {
            kind: "transient".into(),
            message: "connection reset".into(),
        };
        journal
            .outcome(ids[1], failure.clone(), &json!({ "attempt": 1 }))
            .unwrap();
        journal.outcome(ids[0], Outcome::Ok, &json!({})).unwrap();

        let alpha = journal.intents(&run, "alpha").unwrap();
        assert_eq!(
            alpha.iter().map(|i| i.step.as_str()).collect::<Vec<_>>(),
            steps
        );
        assert_eq!(alpha.iter().map(|i| i.id).collect::<Vec<_>>(), ids);
        assert_eq!(
            alpha[1].outcome.as_ref().map(|o| &o.outcome),
            Some(&failure)
        );
        assert_eq!(
            alpha[0].outcome.as_ref().map(|o| &o.outcome),
            Some(&Outcome::Ok)
        );

        let open = journal.open_intents(&run).unwrap();
        assert_eq!(open.len(), 8, "10 intents, 2 outcomes");
        assert!(open.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
    });
}

#[test]
fn outcome_is_recorded_once_and_only_for_a_known_intent() {
    on_both(|open| {
        let journal = open();
        let run = journal.create_run(&new_run("idp")).unwrap();
        let intent = journal
            .intent(&run, "billing-db", "change_password", &json!({}))
            .unwrap();
        journal.outcome(intent, Outcome::Ok, &json!({})).unwrap();

        let err = journal
            .outcome(intent, Outcome::Ok, &json!({}))
            .unwrap_err();
        assert!(
            matches!(err, JournalError::OutcomeAlreadyRecorded { id, .. } if id == intent.0),
            "{err:?}"
        );
        let err = journal
            .outcome(IntentId(intent.0 + 100), Outcome::Ok, &json!({}))
            .unwrap_err();
        assert!(matches!(err, JournalError::UnknownIntent { .. }), "{err:?}");
        let err = journal
            .intent("r-20000101-0000-0000", "billing-db", "x", &json!({}))
            .unwrap_err();
        assert!(matches!(err, JournalError::UnknownRun { .. }), "{err:?}");
        let err = journal
            .set_state(
                "r-20000101-0000-0000",
                "billing-db",
                CredentialState::Creating,
                &json!({}),
            )
            .unwrap_err();
        assert!(matches!(err, JournalError::UnknownRun { .. }), "{err:?}");
        let err = journal.open_intents("r-20000101-0000-0000").unwrap_err();
        assert!(
            matches!(err, JournalError::UnknownRun { .. }),
            "a mistyped run id must not read as 'nothing in flight'"
        );
    });
}

#[test]
fn outcome_and_state_are_recorded_together_or_not_at_all() {
    on_both(|open| {
        let journal = open();
        let run = journal.create_run(&new_run("idp")).unwrap();
        journal
            .set_state(&run, "billing-db", CredentialState::Creating, &json!({}))
            .unwrap();
        let intent = journal
            .intent(&run, "billing-db", "stage", &json!({}))
            .unwrap();

        journal
            .outcome_and_state(
                intent,
                Outcome::Ok,
                &json!({ "version": 2 }),
                CredentialState::Staged,
                &json!({ "version": 2 }),
            )
            .unwrap();
        let states = journal.states(&run).unwrap();
        assert_eq!(
            (states[0].state.as_str(), &states[0].detail),
            ("staged", &json!({ "version": 2 }))
        );
        assert!(journal.open_intents(&run).unwrap().is_empty());

        // The second outcome is refused, and the state change that came with it is rolled back.
        let err = journal
            .outcome_and_state(
                intent,
                Outcome::Ok,
                &json!({}),
                CredentialState::Verified,
                &json!({}),
            )
            .unwrap_err();
        assert!(
            matches!(err, JournalError::OutcomeAlreadyRecorded { .. }),
            "{err:?}"
        );
        assert_eq!(journal.states(&run).unwrap()[0].state, "staged");
    });
}

#[test]
fn runs_are_listed_newest_first_and_resume_finds_the_unfinished_one() {
    on_both(|open| {
        let journal = open();
        assert_eq!(journal.latest_unfinished().unwrap(), None);
        let first = journal.create_run(&new_run("first")).unwrap();
        let second = journal.create_run(&new_run("second")).unwrap();
        let third = journal.create_run(&new_run("third")).unwrap();
        let ids: Vec<_> = journal.runs().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, [third.clone(), second.clone(), first.clone()]);

        journal.finish_run(&third, RunStatus::Succeeded).unwrap();
        journal.finish_run(&second, RunStatus::Interrupted).unwrap();
        assert_eq!(
            journal.latest_unfinished().unwrap().map(|r| r.id),
            Some(second.clone()),
            "interrupted is resumable"
        );
        journal.finish_run(&second, RunStatus::Quarantined).unwrap();
        assert_eq!(
            journal.latest_unfinished().unwrap().map(|r| r.id),
            Some(first.clone()),
            "still running (crashed)"
        );
        journal.finish_run(&first, RunStatus::Failed).unwrap();
        assert_eq!(journal.latest_unfinished().unwrap(), None);

        journal.reopen_run(&first).unwrap();
        let row = journal.run(&first).unwrap().unwrap();
        assert_eq!((row.status, row.finished_at), (RunStatus::Running, None));

        let err = journal.finish_run(&first, RunStatus::Running).unwrap_err();
        assert!(
            matches!(err, JournalError::RunningIsNotFinal { .. }),
            "{err:?}"
        );
        let err = journal.finish_run("r-nope", RunStatus::Failed).unwrap_err();
        assert!(matches!(err, JournalError::UnknownRun { .. }), "{err:?}");
        assert_eq!(journal.run("r-nope").unwrap(), None);
    });
}

#[test]
fn journal_from_a_newer_rekey_is_refused() {
    let (_dir, path) = temp_journal();
    drop(Journal::open(&path).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();

    let err = Journal::open(&path).unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::NewerSchema {
                found: 99,
                supported: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn files_that_are_not_rekey_journals_are_refused() {
    let (_dir, path) = temp_journal();
    {
        let other = rusqlite::Connection::open(&path).unwrap();
        other
            .execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
            .unwrap();
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = Journal::open(&path).unwrap_err();
    assert!(matches!(err, JournalError::Foreign { .. }), "{err:?}");

    let (_dir, path) = temp_journal();
    std::fs::write(&path, b"this is a playbook, not a journal\n".repeat(200)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = Journal::open(&path).unwrap_err();
    assert!(matches!(err, JournalError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("not an SQLite database"), "{err}");
}

#[test]
fn second_connection_waits_for_a_writer_then_reports_busy_when_it_never_ends() {
    let (_dir, path) = temp_journal();
    let first = Journal::open(&path).unwrap();
    let second = Journal::open(&path).unwrap();
    let run = first.create_run(&new_run("idp")).unwrap();
    // WAL: each connection sees the other's commits.
    second
        .set_state(&run, "billing-db", CredentialState::Creating, &json!({}))
        .unwrap();
    assert_eq!(first.states(&run).unwrap().len(), 1);

    // Another process holds the write lock for a moment: the write waits, then succeeds.
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    let writer = std::thread::spawn({
        let run = run.clone();
        move || {
            second
                .intent(&run, "billing-db", "verify", &json!({}))
                .map(|id| (id, second))
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    // Readers are never blocked by a writer in WAL mode.
    assert_eq!(first.runs().unwrap().len(), 1);
    blocker.execute_batch("COMMIT").unwrap();
    let (_, second) = writer
        .join()
        .unwrap()
        .expect("the write waited for the lock instead of failing");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );

    // A lock held past the busy timeout is reported as such.
    second.set_busy_timeout(Duration::from_millis(50)).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = second
        .intent(&run, "billing-db", "verify", &json!({}))
        .unwrap_err();
    assert!(matches!(err, JournalError::Busy { .. }), "{err:?}");
    assert!(
        err.to_string().contains("locked by another rekey process"),
        "{err}"
    );
    let err = second
        .outcome(IntentId(1), Outcome::Ok, &json!({}))
        .unwrap_err();
    assert!(matches!(err, JournalError::Busy { .. }), "{err:?}");
    blocker.execute_batch("ROLLBACK").unwrap();
}

#[test]
fn concurrent_writers_on_separate_connections_all_land() {
    on_both(|open| {
        let run = open().create_run(&new_run("idp")).unwrap();
        std::thread::scope(|scope| {
            for w in 0..4 {
                let (journal, run) = (open(), run.clone());
                scope.spawn(move || {
                    for n in 0..25 {
                        let id = journal
                            .intent(&run, &format!("cred-{w}"), "create_key", &json!({ "n": n }))
                            .unwrap();
                        journal.outcome(id, Outcome::Ok, &json!({})).unwrap();
                        journal
                            .set_state(
                                &run,
                                &format!("cred-{w}"),
                                CredentialState::Staged,
                                &json!({ "n": n }),
                            )
                            .unwrap();
                    }
                });
            }
        });
        let journal = open();
        for w in 0..4 {
            let intents = journal.intents(&run, &format!("cred-{w}")).unwrap();
            assert_eq!(intents.len(), 25);
            assert!(intents.iter().all(|i| i.outcome.is_some()));
        }
        assert!(journal.open_intents(&run).unwrap().is_empty());
        assert_eq!(journal.states(&run).unwrap().len(), 4);
    });
}

/// The engine hands the journal fingerprints, never values; this checks the bytes on disk
/// (main file and write-ahead log, before and after checkpointing) against a canary.
#[test]
fn journal_holds_fingerprints_never_the_secret_behind_them() {
    let canary = format!("canary-{:016x}", rand::random::<u64>());
    let secret = Secret::new(canary.clone());
    let fingerprint = secret.fingerprint(b"per-run-key");
    let (_dir, path) = temp_journal();
    let journal = Journal::open(&path).unwrap();
    let run = journal.create_run(&new_run("idp")).unwrap();
    let lease = Journal::new_lease_holder();
    assert!(
        journal
            .lease(&run, "deploy-bot-aws", &lease, Duration::from_secs(30))
            .unwrap()
    );
    let intent = journal
        .intent(
            &run,
            "deploy-bot-aws",
            "stage",
            &json!({ "staging_path": "rekey/staging/x" }),
        )
        .unwrap();
    journal
        .outcome(
            intent,
            Outcome::Ok,
            &json!({ "key_id": "AKIA0001", "fingerprint": fingerprint }),
        )
        .unwrap();
    journal
        .set_state(
            &run,
            "deploy-bot-aws",
            CredentialState::Staged,
            &json!({ "fingerprint": fingerprint, "version": 4 }),
        )
        .unwrap();
    let failed = journal
        .intent(
            &run,
            "deploy-bot-aws",
            "verify",
            &json!({ "fingerprint": fingerprint }),
        )
        .unwrap();
    let failure = Outcome::Failed {
        kind: "fatal".into(),
        message: "InvalidClientTokenId for AKIA0001".into(),
    };
    journal.outcome(failed, failure, &json!({})).unwrap();

    let contains = |haystack: &[u8], needle: &str| {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    };
    let read_all = || -> Vec<u8> {
        ["", "-wal", "-shm"]
            .iter()
            .flat_map(|suffix| std::fs::read(side_file(&path, suffix)).unwrap_or_default())
            .collect()
    };
    let bytes = read_all();
    assert!(
        contains(&bytes, &fingerprint),
        "the scan sees what was written (else it proves nothing)"
    );
    assert!(
        !contains(&bytes, &canary),
        "the secret value reached the journal's files"
    );

    drop(journal); // closing checkpoints the log into the main file
    let bytes = read_all();
    assert!(contains(&bytes, &fingerprint));
    assert!(!contains(&bytes, &canary));
}
