//! The shared journal (PostgreSQL) through the real binary: `rekey status` reads
//! a run, its credentials and who holds them from another process, with the
//! password from `REKEY_JOURNAL_PASSWORD` and never printed; a password in the URL
//! is refused; `run`, `resume` and `rollback` refuse a shared journal in this
//! build instead of taking the URL for a file path. Through the library, on
//! separate connections: the schema is created once by openers racing, a newer
//! one refused; the work queue gives each credential to exactly one runner of
//! its zone, only after its dependencies, and an expired claim to another runner
//! with the state the first one left; a connection the server ends is replaced
//! and nothing recorded is lost; TLS is required by default, never given up.
//! Two `rekey run`s with separate SQLite journals sharing a credential, started
//! together: the Vault lock (`engine/rotate/lock.rs`) lets one rotate it, the
//! other names the holder, and no orphan key is left at the provider.
//!
//! Runners, as processes of the real binary on real PostgreSQL and OpenBao:
//! `rekey run --journal postgres://` works every zone itself (one of them the
//! suite's Redis, checked with redis-cli), and `rekey audit verify --journal`
//! names the line an UPDATE through psql changed; three `rekey runner`s in two
//! zones finish 300 credentials, each rotated by exactly one runner (one create
//! per credential in the journal, one key per account at the provider, the one
//! Vault holds); a runner SIGKILLed mid-run has its credentials finished by
//! another after its claims expire, with no orphan key; a test-owned PostgreSQL
//! stopped and started mid-run: the runners reconnect and finish.

use crate::canary::Lab;
use crate::own_pg::OwnPg;
use crate::pg::TestDb;
use crate::support::{KillOnDrop, rekey, repo_root};
use rekey::journal::{CredentialState, Journal, NewRun};
use serde_json::{Value, json};
use std::time::Duration;

fn new_run() -> NewRun {
    NewRun {
        playbook_name: "shared".to_owned(),
        playbook_path: "playbooks/shared.yaml".to_owned(),
        playbook_sha256: "cd".repeat(32),
        mode: "breach".to_owned(),
        selection: json!({ "compromised": ["idp"], "tags": [] }),
        actor: "alice@host".to_owned(),
        expanded_sha256: None,
    }
}

#[test]
fn status_reads_a_shared_journal_from_another_process_with_who_holds_what() {
    let db = TestDb::new();
    let journal = db.journal();
    let run = journal.create_run(&new_run()).unwrap();
    for (credential, state) in [
        ("billing-db", CredentialState::Rotated),
        ("deploy-bot", CredentialState::Staged),
    ] {
        journal
            .set_state(&run, credential, state, &json!({}))
            .unwrap();
    }
    let holder = Journal::new_lease_holder();
    assert!(
        journal
            .lease(&run, "deploy-bot", &holder, Duration::from_secs(600))
            .unwrap()
    );

    let queue = journal.shared().unwrap();
    queue
        .register_runner(&holder, &["eu".to_owned(), "us".to_owned()])
        .unwrap();

    let url = db.url();
    let password = db.password();
    let status = |format: &str| {
        rekey()
            .args(["status", &run, "--journal", &url, "--format", format])
            .env("REKEY_JOURNAL_PASSWORD", &password)
            .run()
    };
    let text = status("text");
    assert_eq!(text.code, 0, "{}{}", text.stdout, text.stderr);
    assert!(
        text.stdout.contains(&format!("Run {run}")),
        "{}",
        text.stdout
    );
    let line_of = |credential: &str| {
        text.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(credential))
            .unwrap_or_else(|| panic!("{credential} listed: {}", text.stdout))
            .to_owned()
    };
    assert!(line_of("billing-db").contains("rotated"), "{}", text.stdout);
    assert!(line_of("deploy-bot").contains("staged"), "{}", text.stdout);
    assert!(
        text.stdout.contains(&format!("held by {holder} since ")),
        "the lease's holder is shown: {}",
        text.stdout
    );
    assert!(
        text.stdout.contains(&format!("{holder} zones eu,us")),
        "the runner is listed: {}",
        text.stdout
    );
    assert_eq!(
        text.stdout.matches("held by").count(),
        1,
        "only the leased credential is held: {}",
        text.stdout
    );

    let json_out = status("json");
    assert_eq!(json_out.code, 0, "{}", json_out.stderr);
    let doc: Value = serde_json::from_str(&json_out.stdout).unwrap();
    assert_eq!(doc["run"]["id"], json!(run));
    assert_eq!(doc["holders"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(doc["holders"][0]["credential"], json!("deploy-bot"));
    assert_eq!(doc["holders"][0]["holder"], json!(holder));
    assert_eq!(doc["runners"][0]["zones"], json!(["eu", "us"]));

    queue.runner_stopped(&holder).unwrap();

    // Released: nobody holds it any more.
    journal.release(&run, "deploy-bot", &holder).unwrap();
    let after = status("text");
    assert!(!after.stdout.contains("held by"), "{}", after.stdout);
    assert!(after.stdout.contains(": stopped "), "{}", after.stdout);

    for out in [&text, &json_out, &after] {
        assert!(
            !out.stdout.contains(&password) && !out.stderr.contains(&password),
            "the journal's password is never printed"
        );
    }
}

#[test]
fn a_wrong_or_missing_password_fails_without_printing_one() {
    let db = TestDb::new();
    let url = db.url();
    let wrong = "CANARYjournalpw0b5e";
    let out = rekey()
        .args(["status", "--journal", &url])
        .env("REKEY_JOURNAL_PASSWORD", wrong)
        .run();
    assert_ne!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("journal"), "{}", out.stderr);
    assert!(!out.stdout.contains(wrong) && !out.stderr.contains(wrong));
    // No password where the server asks for one: a refusal at once, not a wait
    // for a server that will never accept.
    let none = rekey().args(["status", "--journal", &url]).run();
    assert_ne!(none.code, 0, "{}{}", none.stdout, none.stderr);
    assert!(none.stderr.contains("password"), "{}", none.stderr);
    assert!(!none.stderr.contains("did not answer"), "{}", none.stderr);
}

#[test]
fn a_password_in_the_journal_url_is_refused() {
    let out = rekey()
        .args([
            "status",
            "--journal",
            "postgres://rekey:CANARYinurl77@127.0.0.1:5432/rekey?sslmode=disable",
        ])
        .run();
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("REKEY_JOURNAL_PASSWORD"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("CANARYinurl77"), "{}", out.stderr);
}

#[test]
fn resume_and_rollback_refuse_a_shared_journal_and_create_no_file() {
    let mut lab = Lab::new();
    let pb = lab.playbook(
        "refused",
        "breach",
        "  keys: { type: sandbox, settings: { state_file: DIR/keys.json, latency: 1ms } }",
        "  - { id: api, provider: keys, account: a, vault_path: PREFIX/api }\n",
    );
    let url = "postgres://rekey@127.0.0.1:1/rekey?sslmode=disable";
    let cases: [Vec<&str>; 3] = [
        // --no-work records a run for runners: only on a shared journal.
        vec!["run", &pb, "--no-work", "--journal", "no-work.db"],
        vec!["resume", "--journal", url],
        vec!["rollback", "r-1", "--journal", url],
    ];
    for args in cases {
        let (code, out, err) = lab.rekey(&args, &[]);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains("shared journal"), "{args:?}: {err}");
        assert!(
            !repo_root().join("postgres:").exists(),
            "{args:?}: the URL was taken for a path"
        );
    }
    assert!(
        !lab.dir.path().join("keys.json").exists(),
        "nothing was rotated"
    );
}

#[test]
fn runners_opening_a_new_database_together_create_the_schema_once_and_a_newer_one_is_refused() {
    let db = TestDb::new();
    let openers: Vec<_> = (0..4)
        .map(|_| {
            let (location, password) = (db.url(), db.password());
            std::thread::spawn(move || {
                let location = rekey::journal::postgres::PgLocation::parse(&location).unwrap();
                let password = rekey::secret::Secret::new(password);
                rekey::journal::postgres::PgJournal::connect(&location, Some(&password))
                    .map(|j| j.fingerprint_key())
            })
        })
        .collect();
    let keys: Vec<Vec<u8>> = openers
        .into_iter()
        .map(|t| t.join().unwrap().expect("every opener succeeds"))
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] == w[1]),
        "one shared fingerprint key"
    );
    assert_eq!(db.value("SELECT version FROM rekey.meta"), "1");

    db.sql("UPDATE rekey.meta SET version = 99");
    let location = rekey::journal::postgres::PgLocation::parse(&db.url()).unwrap();
    let password = rekey::secret::Secret::new(db.password());
    let refused = rekey::journal::postgres::PgJournal::connect(&location, Some(&password))
        .expect_err("a schema from a newer rekey is refused");
    assert!(
        matches!(
            refused,
            rekey::journal::JournalError::NewerSchema { found: 99, .. }
        ),
        "{refused}"
    );
}

/// A shared run of `n` credentials `c000`...: even ones in zone `a`, odd ones in
/// zone `b`; every tenth (from the tenth) depends on the one before it (the other
/// zone's).
fn shared_run(journal: &Journal, n: usize) -> String {
    use rekey::journal::postgres::{SharedRun, TaskSpec};
    let tasks = (0..n)
        .map(|i| TaskSpec {
            credential: format!("c{i:03}"),
            zone: if i % 2 == 0 { "a" } else { "b" }.to_owned(),
            depends_on: if i > 0 && i % 10 == 0 {
                vec![format!("c{:03}", i - 1)]
            } else {
                Vec::new()
            },
        })
        .collect();
    let shared = SharedRun {
        playbook: "version: 1\n".to_owned(),
        variables: Default::default(),
        tasks,
    };
    journal
        .shared()
        .unwrap()
        .create_shared_run(&new_run(), &shared)
        .unwrap()
}

fn all_rotated(states: &[rekey::journal::CredentialRow]) -> rekey::journal::RunStatus {
    if states.iter().all(|s| s.state == CredentialState::Rotated) {
        rekey::journal::RunStatus::Succeeded
    } else {
        rekey::journal::RunStatus::Failed
    }
}

#[test]
fn three_runners_of_two_zones_take_every_credential_once_and_only_after_its_dependencies() {
    let db = TestDb::new();
    let run = shared_run(&db.journal(), 300);
    let taken = std::sync::Mutex::new(Vec::<(String, String, String)>::new());
    std::thread::scope(|scope| {
        for zone in ["a", "a", "b"] {
            let (db, run, taken) = (&db, &run, &taken);
            scope.spawn(move || {
                let journal = db.journal();
                let queue = journal.shared().unwrap();
                let holder = Journal::new_lease_holder();
                let zones = vec![zone.to_owned()];
                queue.register_runner(&holder, &zones).unwrap();
                while !queue.runs_with_work(&zones).unwrap().is_empty() {
                    let claims = queue
                        .claim(run, &zones, &holder, Duration::from_secs(60), 8)
                        .unwrap();
                    if claims.is_empty() {
                        // Waiting for the other zone's dependencies.
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    let tasks = queue.tasks(run).unwrap();
                    for claim in claims {
                        let index: usize = claim.credential[1..].parse().unwrap();
                        if index > 0 && index.is_multiple_of(10) {
                            let dependency = format!("c{:03}", index - 1);
                            let dep = tasks.iter().find(|t| t.credential == dependency).unwrap();
                            assert_eq!(
                                dep.status, "done",
                                "{} claimed before {dependency}",
                                claim.credential
                            );
                        }
                        assert!(claim.taken_from.is_none() && claim.last.is_none());
                        journal
                            .set_state(run, &claim.credential, CredentialState::Rotated, &json!({}))
                            .unwrap();
                        assert!(queue.complete(run, &claim.credential, &holder).unwrap());
                        taken.lock().unwrap().push((
                            claim.credential,
                            holder.clone(),
                            zone.to_owned(),
                        ));
                    }
                    queue.heartbeat(&holder, Duration::from_secs(60)).unwrap();
                }
                queue.runner_stopped(&holder).unwrap();
            });
        }
    });
    let mut taken = taken.into_inner().unwrap();
    taken.sort();
    assert_eq!(taken.len(), 300, "every credential taken exactly once");
    for (i, (credential, _, zone)) in taken.iter().enumerate() {
        assert_eq!(credential, &format!("c{i:03}"), "no credential taken twice");
        assert_eq!(
            zone,
            if i % 2 == 0 { "a" } else { "b" },
            "{credential} in its zone"
        );
    }
    let zone_a_holders: std::collections::BTreeSet<_> = taken
        .iter()
        .filter(|t| t.2 == "a")
        .map(|t| t.1.clone())
        .collect();
    assert_eq!(zone_a_holders.len(), 2, "both runners of zone a took work");

    let journal = db.journal();
    let queue = journal.shared().unwrap();
    assert_eq!(
        queue.finish_if_done(&run, all_rotated).unwrap(),
        Some(rekey::journal::RunStatus::Succeeded)
    );
    assert_eq!(
        queue.finish_if_done(&run, all_rotated).unwrap(),
        None,
        "ended once"
    );
    assert_eq!(queue.runners().unwrap().len(), 3);
    assert!(
        queue
            .runners()
            .unwrap()
            .iter()
            .all(|r| r.stopped_at.is_some())
    );
}

#[test]
fn an_expired_claim_is_taken_over_from_where_its_runner_left_it() {
    let db = TestDb::new();
    let (first, second) = (db.journal(), db.journal());
    let (a, b) = (first.shared().unwrap(), second.shared().unwrap());
    let run = shared_run(&first, 3);
    let (holder_a, holder_b) = (Journal::new_lease_holder(), Journal::new_lease_holder());
    let zones = vec!["a".to_owned()];
    let ttl = Duration::from_millis(800);

    let claimed = a.claim(&run, &zones, &holder_a, ttl, 1).unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].credential, "c000");
    first
        .set_state(
            &run,
            "c000",
            CredentialState::Staged,
            &json!({ "step": "stage" }),
        )
        .unwrap();
    let other = b.claim(&run, &zones, &holder_b, ttl, 8).unwrap();
    assert_eq!(
        other
            .iter()
            .map(|c| c.credential.as_str())
            .collect::<Vec<_>>(),
        ["c002"],
        "a live claim is skipped"
    );
    assert!(b.complete(&run, "c002", &holder_b).unwrap());
    let holders = second.holders(&run).unwrap();
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert_eq!(holders[0].holder, holder_a);
    assert_eq!(holders[0].zone.as_deref(), Some("a"));
    let status = rekey()
        .args(["status", &run, "--journal", &db.url()])
        .env("REKEY_JOURNAL_PASSWORD", &db.password())
        .run();
    assert!(
        status
            .stdout
            .contains(&format!("held by {holder_a} (zone a) since ")),
        "{}{}",
        status.stdout,
        status.stderr
    );

    // No heartbeat from a: its claim lapses and b takes the credential over.
    std::thread::sleep(ttl * 2);
    let taken = b.claim(&run, &zones, &holder_b, ttl, 8).unwrap();
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert_eq!(taken[0].credential, "c000");
    assert_eq!(taken[0].taken_from.as_deref(), Some(holder_a.as_str()));
    assert_eq!(
        taken[0].last.as_ref().map(|l| l.state),
        Some(CredentialState::Staged),
        "the state the first runner left"
    );
    assert!(
        !a.complete(&run, "c000", &holder_a).unwrap(),
        "a lost its claim"
    );
    assert!(b.complete(&run, "c000", &holder_b).unwrap());
    let task = b
        .tasks(&run)
        .unwrap()
        .into_iter()
        .find(|t| t.credential == "c000")
        .unwrap();
    assert_eq!((task.status.as_str(), task.reclaims), ("done", 1));
}

#[test]
fn a_journal_whose_connection_the_server_ends_reconnects_and_loses_nothing() {
    let db = TestDb::new();
    let journal = db.journal();
    let run = journal.create_run(&new_run()).unwrap();
    let intent = journal
        .intent(&run, "billing-db", "create", &json!({}))
        .unwrap();
    // The server ends every connection to the database (as on a fast shutdown or
    // a failover); the journal's next calls reconnect.
    let ended = db.value(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    );
    assert_eq!(ended, "1", "the journal's connection was ended");
    journal
        .outcome(intent, rekey::journal::Outcome::Ok, &json!({}))
        .unwrap();
    journal
        .set_state(&run, "billing-db", CredentialState::Rotated, &json!({}))
        .unwrap();
    let intents = journal.intents(&run, "billing-db").unwrap();
    assert_eq!(intents.len(), 1);
    assert!(intents[0].outcome.is_some(), "{intents:?}");
    assert_eq!(
        journal.states(&run).unwrap()[0].state,
        CredentialState::Rotated
    );
}

#[test]
fn tls_is_required_by_default_and_never_given_up_for_plain_text() {
    // The suite's PostgreSQL speaks plain text only: a journal URL without
    // `sslmode=disable` must fail rather than fall back to it.
    let db = TestDb::new();
    let url = db.url().replace("?sslmode=disable", "");
    let out = rekey()
        .args(["status", "--journal", &url])
        .env("REKEY_JOURNAL_PASSWORD", &db.password())
        .run();
    assert_ne!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.to_lowercase().contains("tls"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("did not answer"),
        "at once: {}",
        out.stderr
    );
    let schema = db.value("SELECT count(*) FROM pg_namespace WHERE nspname = 'rekey'");
    assert_eq!(schema, "0", "nothing was written over plain text");
}

#[test]
fn two_runs_with_separate_journals_sharing_a_credential_rotate_it_once_and_the_other_names_the_holder()
 {
    let lab = Lab::new();
    // The sandbox keeps its state in a file that one process at a time may
    // write: the shared credential has an instance (and file) of its own, which
    // only the run holding the lock changes; each run's own credential another.
    let playbooks: Vec<String> = (1..=2)
        .map(|n| {
            lab.playbook(
                &format!("team{n}"),
                "breach",
                &format!(
                    "  keys: {{ type: sandbox, settings: {{ state_file: DIR/keys.json, latency: 700ms }} }}\n  mine: {{ type: sandbox, settings: {{ state_file: DIR/own{n}.json, latency: 1ms }} }}"
                ),
                &format!(
                    "  - {{ id: api, provider: keys, account: shared, vault_path: PREFIX/api }}\n  - {{ id: own{n}, provider: mine, account: own{n}, vault_path: PREFIX/own{n} }}\n"
                ),
            )
        })
        .collect();
    let token = lab.token.clone();
    let outs: Vec<_> = std::thread::scope(|scope| {
        let runs: Vec<_> = playbooks
            .iter()
            .enumerate()
            .map(|(i, pb)| {
                let journal = lab.dir.path().join(format!("j{i}/journal.db"));
                let token = token.clone();
                scope.spawn(move || {
                    rekey()
                        .env("VAULT_TOKEN", &token)
                        .args(["run", pb, "--format", "json", "--journal"])
                        .args([journal])
                        .run()
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let result = |out: &crate::support::Output, id: &str| -> Value {
        let summary: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}{}", out.stdout, out.stderr));
        summary["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let rotated: Vec<usize> = (0..2)
        .filter(|&i| result(&outs[i], "api")["outcome"] == "rotated")
        .collect();
    assert_eq!(
        rotated.len(),
        1,
        "exactly one run rotates the shared credential: {}\n{}",
        outs[0].stdout,
        outs[1].stdout
    );
    let other = &outs[1 - rotated[0]];
    let said = result(other, "api").to_string();
    assert!(
        said.contains("another rekey process holds"),
        "the other run says who holds it: {said}\n{}",
        other.stderr
    );
    for (i, out) in outs.iter().enumerate() {
        assert_eq!(
            result(out, &format!("own{}", i + 1))["outcome"],
            "rotated",
            "each run's own credential: {}",
            out.stdout
        );
    }
    let state: Value =
        serde_json::from_slice(&std::fs::read(lab.dir.path().join("keys.json")).unwrap()).unwrap();
    assert_eq!(
        state["accounts"]["shared"]["keys"].as_array().map(Vec::len),
        Some(1),
        "no orphan key at the provider: {state}"
    );
}

/// A shared run's surroundings: the lab's OpenBao (and its token) and a
/// journal URL, with its password when it needs one.
struct Fleet {
    lab: Lab,
    url: String,
    password: Option<String>,
}

impl Fleet {
    fn on(db: &TestDb) -> Fleet {
        Fleet {
            lab: Lab::new(),
            url: db.url(),
            password: Some(db.password()),
        }
    }

    fn rekey(&self) -> crate::support::Rekey {
        let r = rekey().env("VAULT_TOKEN", &self.lab.token);
        match &self.password {
            Some(p) => r.env("REKEY_JOURNAL_PASSWORD", p),
            None => r,
        }
    }

    /// `rekey run --no-work`: the run's id.
    fn record(&self, playbook: &str) -> String {
        let out = self
            .rekey()
            .args(["run", playbook, "--no-work", "--journal", &self.url])
            .run();
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        out.stdout.trim().to_owned()
    }

    /// `rekey runner --once` of `zones`, with `extra` arguments, logging to `log`.
    fn runner(&self, zones: &[&str], extra: &[&str], log: &str) -> KillOnDrop {
        let mut r = self
            .rekey()
            .args(["runner", "--once", "--journal", &self.url]);
        for z in zones {
            r = r.args(["--zone", z]);
        }
        r.args(extra).spawn_logged(&self.lab.dir.path().join(log))
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.lab.dir.path().join(name)).unwrap_or_default()
    }

    fn audit_verify(&self, run: &str) -> crate::support::Output {
        self.rekey()
            .args(["audit", "verify", "--journal", &self.url, "--run", run])
            .run()
    }

    /// A playbook of `n` sandbox credentials per zone (`east`, `west`), each
    /// account holding one old key (`old-<account>`) that breach mode must
    /// retire; every tenth west credential depends on its east twin.
    fn zoned_playbook(&self, n: usize, latency: &str, concurrency: u32) -> String {
        let dir = self.lab.dir.path();
        let mut text = format!(
            "version: 1\nname: zones\nincident: {{ mode: breach }}\nvault: {{ address: \"{}\" }}\ndefaults: {{ concurrency: {concurrency} }}\nproviders:\n",
            self.lab.env["VAULT_ADDR"]
        );
        for zone in ["east", "west"] {
            text += &format!(
                "  {zone}: {{ type: sandbox, zone: {zone}, settings: {{ state_file: {}/{zone}.json, latency: {latency} }} }}\n",
                dir.display()
            );
        }
        text += "credentials:\n";
        for zone in ["east", "west"] {
            let mut state = serde_json::Map::new();
            for i in 0..n {
                let account = format!("{zone}{i}");
                let depends = if zone == "west" && i % 10 == 0 {
                    format!(", depends_on: [east{i}]")
                } else {
                    String::new()
                };
                text += &format!(
                    "  - {{ id: {account}, provider: {zone}, account: {account}, vault_path: {}/{account}{depends} }}\n",
                    self.lab.prefix
                );
                state.insert(
                    account.clone(),
                    json!({ "keys": [{ "id": format!("old-{account}"), "secret_sha256": "00".repeat(32),
                                       "active": true, "created_at": 1, "tag": "seed" }] }),
                );
            }
            std::fs::write(
                dir.join(format!("{zone}.json")),
                json!({ "accounts": state }).to_string(),
            )
            .unwrap();
        }
        let path = dir.join("zones.yaml");
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// Every credential of `zoned_playbook(n)`, checked at the provider and in
    /// Vault: its account holds exactly one key (the old one retired, no orphan),
    /// the one Vault's entry names, whose value Vault holds.
    fn assert_each_rotated_once(&self, n: usize) {
        for zone in ["east", "west"] {
            let state: Value = serde_json::from_slice(
                &std::fs::read(self.lab.dir.path().join(format!("{zone}.json"))).unwrap(),
            )
            .unwrap();
            for i in 0..n {
                let account = format!("{zone}{i}");
                let keys = state["accounts"][&account]["keys"].as_array().unwrap();
                assert_eq!(keys.len(), 1, "{account}: one key, no orphan: {keys:?}");
                let key = &keys[0];
                assert_ne!(key["id"], json!(format!("old-{account}")), "{account}");
                let entry = crate::canary::http(
                    &self.lab.env["VAULT_ADDR"],
                    "GET",
                    &format!("/v1/secret/data/{}/{account}", self.lab.prefix),
                    &self.lab.env["VAULT_TOKEN"],
                    None,
                );
                let data = &entry["data"]["data"];
                assert_eq!(data["key_id"], key["id"], "{account}: Vault names the key");
                let value = data["value"].as_str().unwrap();
                assert_eq!(
                    json!(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                        value.as_bytes()
                    ))),
                    key["secret_sha256"],
                    "{account}: Vault holds the key's value"
                );
            }
        }
    }
}

/// Waits up to `limit` for `child` to end; its exit code.
fn wait_exit(child: &mut KillOnDrop, limit: Duration) -> i32 {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the process did not end within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Each credential of `run` had exactly one create (one runner rotated it), and
/// every task is done by a runner serving its zone.
fn assert_one_create_each_by_a_runner_of_its_zone(db: &TestDb, run: &str, n: usize) {
    let creates = db.sql(&format!(
        "SELECT credential, count(*) FROM rekey.intents WHERE run_id = '{run}' AND step = 'create'
         GROUP BY credential HAVING count(*) <> 1"
    ));
    assert!(
        creates.is_empty(),
        "credentials created more than once: {creates:?}"
    );
    assert_eq!(
        db.value(&format!(
            "SELECT count(DISTINCT credential) FROM rekey.intents WHERE run_id = '{run}' AND step = 'create'"
        )),
        n.to_string()
    );
    assert_eq!(
        db.value(&format!(
            "SELECT count(*) FROM rekey.tasks t JOIN rekey.runners r ON r.holder = t.holder
             WHERE t.run_id = '{run}' AND t.status = 'done' AND t.zone = ANY (r.zones)"
        )),
        n.to_string(),
        "every task done by a runner of its zone"
    );
}

#[test]
fn rekey_run_on_a_shared_journal_works_every_zone_and_audit_verify_names_a_line_changed_through_psql()
 {
    let db = TestDb::new();
    let fleet = Fleet::on(&db);
    let env = &fleet.lab.env;
    // A real server in one zone: the suite's Redis, an ACL user with an old password.
    let user = format!("rk_runner_{}", hex::encode(rand::random::<[u8; 4]>()));
    let old = hex::encode(rand::random::<[u8; 16]>());
    let redis_cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args([
                "-h",
                &env["REKEY_REDIS_HOST"],
                "-p",
                &env["REKEY_REDIS_PORT"],
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        redis_cli(&[
            "ACL",
            "SETUSER",
            &user,
            "on",
            &format!(">{old}"),
            "~*",
            "+@all"
        ]),
        "OK"
    );
    let sha = |v: &str| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(v.as_bytes()));
    let vault = |method: &str, path: &str, body: Option<&Value>| {
        crate::canary::http(
            &env["VAULT_ADDR"],
            method,
            &format!("/v1/secret/data/{}/{path}", fleet.lab.prefix),
            &env["VAULT_TOKEN"],
            body,
        )
    };
    vault(
        "POST",
        "cache",
        Some(&json!({ "data": { "value": old, "key_id": &sha(&old)[..16] } })),
    );
    let pb = fleet.lab.playbook(
        "two-zones",
        "breach",
        &format!(
            "  keys: {{ type: sandbox, zone: saas, settings: {{ state_file: DIR/keys.json, latency: 1ms }} }}\n  rd: {{ type: redis, zone: cache-vpc, settings: {{ host: \"{}\", port: {}, persist: none }} }}",
            env["REKEY_REDIS_HOST"], env["REKEY_REDIS_PORT"]
        ),
        &format!(
            "  - {{ id: cache, provider: rd, account: {user}, vault_path: PREFIX/cache }}\n  - {{ id: api, provider: keys, account: a, vault_path: PREFIX/api, depends_on: [cache] }}\n  - {{ id: api2, provider: keys, account: b, vault_path: PREFIX/api2 }}\n"
        ),
    );
    let out = fleet
        .rekey()
        .args(["run", &pb, "--journal", &fleet.url, "--format", "json"])
        .run();
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let summary: Value = serde_json::from_str(&out.stdout).unwrap();
    let run = summary["run_id"].as_str().unwrap().to_owned();
    for r in summary["results"].as_array().unwrap() {
        assert_eq!(r["outcome"], "rotated", "{summary}");
    }
    assert!(
        out.stderr.contains("zones cache-vpc (1), saas (2)"),
        "{}",
        out.stderr
    );
    assert_eq!(
        db.value(&format!("SELECT status FROM rekey.runs WHERE id = '{run}'")),
        "succeeded"
    );
    // Redis, as its own client sees it: the new password logs in, the old one
    // does not (redis-cli falls back to `default` when AUTH fails), and the ACL
    // holds exactly the new password's hash.
    let new = vault("GET", "cache", None)["data"]["data"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new, old);
    let whoami = |pw: &str| {
        redis_cli(&[
            "--user",
            &user,
            "--pass",
            pw,
            "--no-auth-warning",
            "ACL",
            "WHOAMI",
        ])
    };
    assert_eq!(whoami(&new), user, "the new password works");
    assert_ne!(whoami(&old), user, "the old password is retired");
    let acl = redis_cli(&["ACL", "GETUSER", &user]);
    assert!(
        acl.contains(&sha(&new)) && !acl.contains(&sha(&old)),
        "{acl}"
    );
    redis_cli(&["ACL", "DELUSER", &user, &format!("rekey-tags:{user}")]);

    let verified = fleet.audit_verify(&run);
    assert_eq!(verified.code, 0, "{}{}", verified.stdout, verified.stderr);
    let lines: u64 = db
        .value(&format!(
            "SELECT count(*) FROM rekey.audit WHERE run_id = '{run}'"
        ))
        .parse()
        .unwrap();
    assert!(lines > 20, "a line per record: {lines}");
    assert!(
        verified
            .stdout
            .contains(&format!("run {run}: {lines} lines verified")),
        "{}",
        verified.stdout
    );
    // The audit key is the database's: the trail's HMAC of the new value is on
    // the line that staged it, and no value is.
    let all: String = db
        .sql(&format!(
            "SELECT line FROM rekey.audit WHERE run_id = '{run}' ORDER BY seq"
        ))
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    assert!(
        !all.contains(&new) && !all.contains(&old),
        "no value in the chain"
    );
    assert!(all.contains("secret_hmac"), "values are named by HMAC");
    // Nor in the journal's records, nor in what the command printed (the Vault
    // token is the lab's canary).
    let records: String = db
        .sql(&format!(
            "SELECT detail FROM rekey.intents WHERE run_id = '{run}'
             UNION ALL SELECT o.detail FROM rekey.outcomes o JOIN rekey.intents i ON i.id = o.intent_id WHERE i.run_id = '{run}'
             UNION ALL SELECT detail FROM rekey.credential_states WHERE run_id = '{run}'"
        ))
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    for canary in [&new, &old, &fleet.lab.token] {
        for (place, text) in [
            ("journal", &records),
            ("stdout", &out.stdout),
            ("stderr", &out.stderr),
        ] {
            assert!(!text.contains(canary.as_str()), "a secret in the {place}");
        }
    }

    // One line changed through psql (PostgreSQL's own client): verify names it.
    let tamper = std::process::Command::new("psql")
        .env("PGPASSWORD", db.password())
        .args([
            "-X",
            "-q",
            "-h",
            &env["REKEY_PG_HOST"],
            "-p",
            &env["REKEY_PG_PORT"],
            "-U",
            &env["REKEY_PG_ADMIN_USER"],
            "-d",
            &db.name,
            "-c",
            &format!(
                "UPDATE rekey.audit SET line = replace(line, '\"seq\":7,', '\"seq\":7,\"note\":\"x\",') WHERE run_id = '{run}' AND seq = 7"
            ),
        ])
        .output()
        .unwrap();
    assert!(
        tamper.status.success(),
        "{}",
        String::from_utf8_lossy(&tamper.stderr)
    );
    let broken = fleet.audit_verify(&run);
    assert_eq!(broken.code, 1, "{}{}", broken.stdout, broken.stderr);
    assert!(
        broken.stderr.contains(&format!("run {run}: line 7:")),
        "{}",
        broken.stderr
    );
    let everything = fleet
        .rekey()
        .args(["audit", "verify", "--journal", &fleet.url])
        .run();
    assert_eq!(everything.code, 1, "{}", everything.stderr);
}

#[test]
fn three_runners_in_two_zones_finish_300_credentials_each_rotated_by_exactly_one() {
    let db = TestDb::new();
    let fleet = Fleet::on(&db);
    let n = 150;
    let pb = fleet.zoned_playbook(n, "1ms", 16);
    let run = fleet.record(&pb);
    let mut runners = [
        fleet.runner(&["east"], &[], "east1.log"),
        fleet.runner(&["east"], &[], "east2.log"),
        fleet.runner(&["west"], &[], "west.log"),
    ];
    for (r, log) in runners
        .iter_mut()
        .zip(["east1.log", "east2.log", "west.log"])
    {
        assert_eq!(
            wait_exit(r, Duration::from_secs(240)),
            0,
            "{}",
            fleet.log(log)
        );
    }
    assert_eq!(
        db.value(&format!("SELECT status FROM rekey.runs WHERE id = '{run}'")),
        "succeeded"
    );
    assert_eq!(
        db.value(&format!(
            "SELECT count(*) FROM rekey.credential_states WHERE run_id = '{run}' AND state = 'rotated'"
        )),
        (2 * n).to_string()
    );
    assert_one_create_each_by_a_runner_of_its_zone(&db, &run, 2 * n);
    fleet.assert_each_rotated_once(n);
    let verified = fleet.audit_verify(&run);
    assert_eq!(verified.code, 0, "{}{}", verified.stdout, verified.stderr);
}

#[test]
fn a_runner_killed_mid_run_has_its_credentials_finished_by_another_after_its_claims_expire() {
    let db = TestDb::new();
    let fleet = Fleet::on(&db);
    let n = 20;
    let pb = fleet.zoned_playbook(n, "150ms", 8);
    let run = fleet.record(&pb);
    let mut first = fleet.runner(&["east", "west"], &["--lease", "2s"], "first.log");
    let done = || -> u64 {
        db.value(&format!(
            "SELECT count(*) FROM rekey.tasks WHERE run_id = '{run}' AND status = 'done'"
        ))
        .parse()
        .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while done() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            fleet.log("first.log")
        );
        assert!(!first.exited(), "{}", fleet.log("first.log"));
        std::thread::sleep(Duration::from_millis(20));
    }
    first.0.kill().unwrap(); // SIGKILL: no goodbye, claims left to expire.
    first.0.wait().unwrap();
    let held: u64 = db
        .value(&format!(
            "SELECT count(*) FROM rekey.tasks WHERE run_id = '{run}' AND status = 'claimed'"
        ))
        .parse()
        .unwrap();
    assert!(held > 0, "killed with credentials in flight");
    assert!(done() < (2 * n) as u64, "killed mid-run");

    let mut second = fleet.runner(&["east", "west"], &["--lease", "2s"], "second.log");
    assert_eq!(
        wait_exit(&mut second, Duration::from_secs(120)),
        0,
        "{}",
        fleet.log("second.log")
    );
    assert_eq!(
        db.value(&format!("SELECT status FROM rekey.runs WHERE id = '{run}'")),
        "succeeded",
        "{}",
        fleet.log("second.log")
    );
    let taken_over: u64 = db
        .value(&format!(
            "SELECT coalesce(sum(reclaims), 0) FROM rekey.tasks WHERE run_id = '{run}'"
        ))
        .parse()
        .unwrap();
    assert_eq!(
        taken_over, held,
        "each claim the dead runner held was taken over once"
    );
    fleet.assert_each_rotated_once(n);
    let verified = fleet.audit_verify(&run);
    assert_eq!(verified.code, 0, "{}{}", verified.stdout, verified.stderr);
}

#[test]
fn runners_reconnect_and_finish_when_their_postgresql_restarts_mid_run() {
    let pg = OwnPg::new();
    let fleet = Fleet {
        lab: Lab::new(),
        url: pg.url(),
        password: None,
    };
    let n = 20;
    let pb = fleet.zoned_playbook(n, "100ms", 4);
    let run = fleet.record(&pb);
    let journal = {
        let location = rekey::journal::postgres::PgLocation::parse(&pg.url()).unwrap();
        Journal::from(rekey::journal::postgres::PgJournal::connect(&location, None).unwrap())
    };
    let done = |journal: &Journal| {
        journal
            .shared()
            .unwrap()
            .tasks(&run)
            .unwrap()
            .iter()
            .filter(|t| t.status == "done")
            .count()
    };
    let mut east = fleet.runner(&["east"], &[], "east.log");
    let mut west = fleet.runner(&["west"], &[], "west.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while done(&journal) < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            fleet.log("east.log")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    pg.stop();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !east.exited() && !west.exited(),
        "runners wait for the journal"
    );
    pg.start();
    for (r, log) in [(&mut east, "east.log"), (&mut west, "west.log")] {
        assert_eq!(
            wait_exit(r, Duration::from_secs(120)),
            0,
            "{}",
            fleet.log(log)
        );
    }
    assert!(
        fleet
            .log("east.log")
            .contains("The journal does not answer")
            && fleet
                .log("west.log")
                .contains("The journal does not answer"),
        "both runners lost the journal: {}",
        fleet.log("east.log")
    );
    assert_eq!(done(&journal), 2 * n);
    let run_row = journal.run(&run).unwrap().unwrap();
    assert_eq!(run_row.status, rekey::journal::RunStatus::Succeeded);
    fleet.assert_each_rotated_once(n);
    let verified = fleet.audit_verify(&run);
    assert_eq!(verified.code, 0, "{}{}", verified.stdout, verified.stderr);
}
