//! The `ldap` and `ssh` providers through the real `rekey` binary, against the real
//! slapd and sshd (and OpenBao as the store) that `scripts/services` starts.
//!
//! Independent oracles check the results: binds and compares with the ldap3 crate
//! for LDAP, the OpenSSH `ssh` client for SSH logins. Each test uses its own LDAP
//! entries and Vault prefix; SSH tests each lease one of the test accounts
//! `scripts/services` made (a lock file each), so tests run in parallel.

use crate::support::{KillOnDrop, Output, rekey};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::services;

/// A test's own directory, Vault prefix and journal.
struct Case {
    dir: tempfile::TempDir,
    prefix: String,
    env: HashMap<String, String>,
}

impl Case {
    fn new(name: &str) -> Case {
        let env = services();
        for var in ["VAULT_ADDR", "REKEY_LDAP_URL", "REKEY_SSH_PORT"] {
            assert!(
                env.contains_key(var),
                "{var} missing from target/services/env: run scripts/services up"
            );
        }
        Case {
            dir: tempfile::tempdir().unwrap(),
            prefix: format!("it-{name}-{}", hex::encode(rand::random::<[u8; 4]>())),
            env,
        }
    }

    fn journal(&self) -> PathBuf {
        self.dir.path().join("journal.db")
    }

    /// Writes a playbook; `PREFIX` and `VAULT` in `text` are replaced.
    fn playbook(&self, file: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(file);
        let text = text
            .replace("PREFIX", &self.prefix)
            .replace("VAULT", &self.env["VAULT_ADDR"]);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn rekey(&self, args: &[&str]) -> Output {
        self.rekey_env(args, &[])
    }

    /// `rekey` with extra environment variables (e.g. `RUST_LOG`).
    fn rekey_env(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut cmd = rekey().env("VAULT_TOKEN", &self.env["VAULT_TOKEN"]);
        for (k, v) in extra {
            cmd = cmd.env(k, v);
        }
        cmd.args(args).run()
    }

    fn run(&self, playbook: &Path) -> (Output, Value) {
        let out = self.rekey(&[
            "run",
            playbook.to_str().unwrap(),
            "--journal",
            self.journal().to_str().unwrap(),
            "--format",
            "json",
        ]);
        let summary = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
        (out, summary)
    }

    fn spawn_run(&self, playbook: &Path) -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_rekey"))
            .args([
                "run",
                playbook.to_str().unwrap(),
                "--journal",
                self.journal().to_str().unwrap(),
                "--format",
                "json",
            ])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("VAULT_TOKEN", &self.env["VAULT_TOKEN"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    fn resume(&self) -> Output {
        self.rekey(&[
            "resume",
            "--journal",
            self.journal().to_str().unwrap(),
            "--format",
            "json",
        ])
    }

    fn vault_put(&self, path: &str, data: Value) {
        let answer = vault(
            &self.env,
            "POST",
            &format!("/v1/secret/data/{}/{path}", self.prefix),
            Some(&json!({ "data": data })),
        );
        assert!(answer["data"]["version"].is_u64(), "{answer}");
    }

    /// The current data of `path` (Null when absent).
    fn vault_get(&self, path: &str) -> Value {
        vault(
            &self.env,
            "GET",
            &format!("/v1/secret/data/{}/{path}", self.prefix),
            None,
        )["data"]["data"]
            .clone()
    }

    /// Staging entries left by this test's runs (the playbooks stage under
    /// PREFIX/staging): none once a run finished.
    fn staging_left(&self) -> Vec<String> {
        let runs = vault(
            &self.env,
            "LIST",
            &format!("/v1/secret/metadata/{}/staging", self.prefix),
            None,
        )["data"]["keys"]
            .clone();
        let mut left = Vec::new();
        for run in runs
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let entries = vault(
                &self.env,
                "LIST",
                &format!("/v1/secret/metadata/{}/staging/{run}", self.prefix),
                None,
            )["data"]["keys"]
                .clone();
            for e in entries
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                left.push(format!("{run}{e}"));
            }
        }
        left
    }

    /// Has the journal's latest run put a credential in one of `states`?
    fn in_state(&self, states: &[&str]) -> bool {
        rekey::journal::Journal::open(&self.journal()).is_ok_and(|j| {
            j.runs()
                .ok()
                .and_then(|r| r.into_iter().next())
                .and_then(|run| j.states(&run.id).ok())
                .is_some_and(|rows| rows.iter().any(|r| states.contains(&r.state.as_str())))
        })
    }

    /// SIGKILLs a run as soon as `reached` says so (polled every millisecond):
    /// the test acts on what the run did, not on how long it ran.
    fn kill_when(&self, child: &mut std::process::Child, what: &str, reached: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if reached() {
                let _ = child.kill(); // SIGKILL
                let _ = child.wait();
                return;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the run ended ({status}) before {what}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the run never reached the point: {what}");
    }
}

/// OpenBao with the root token, through the tests' one client.
fn vault(env: &HashMap<String, String>, method: &str, path: &str, body: Option<&Value>) -> Value {
    crate::support::bao_env(env, method, path, body)
}

fn outcome(summary: &Value, id: &str) -> String {
    summary["results"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["id"] == id))
        .and_then(|r| r["outcome"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// A TCP port on loopback that nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// What every test checks in the end: no value leaked into the output or journal.
fn assert_not_leaked(case: &Case, out: &Output, values: &[&str]) {
    let journal = std::fs::read(case.journal()).unwrap_or_default();
    for v in values.iter().filter(|v| !v.is_empty()) {
        // Key material: its longest line is distinctive enough.
        let needle = v.lines().max_by_key(|l| l.len()).unwrap_or(v);
        assert!(
            !out.stdout.contains(needle) && !out.stderr.contains(needle),
            "a secret reached the output"
        );
        assert!(
            !journal
                .windows(needle.len())
                .any(|w| w == needle.as_bytes()),
            "a secret reached the journal"
        );
    }
}

// ------------------------------------------------------------------------ LDAP

mod ldap_oracle {
    //! Direct LDAP calls with the ldap3 crate, as an independent check.
    use ldap3::LdapConnAsync;
    use std::collections::HashSet;

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    async fn admin(env: &super::HashMap<String, String>) -> ldap3::Ldap {
        let (conn, mut ldap) = LdapConnAsync::new(&env["REKEY_LDAP_URL"]).await.unwrap();
        ldap3::drive!(conn);
        ldap.simple_bind(
            &env["REKEY_LDAP_ADMIN_DN"],
            &env["REKEY_LDAP_ADMIN_PASSWORD"],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
        ldap
    }

    pub fn add_user(env: &super::HashMap<String, String>, dn: &str, uid: &str, password: &str) {
        block_on(async {
            let mut ldap = admin(env).await;
            let attrs = vec![
                ("objectClass", HashSet::from(["inetOrgPerson"])),
                ("uid", HashSet::from([uid])),
                ("cn", HashSet::from([uid])),
                ("sn", HashSet::from(["test"])),
                ("userPassword", HashSet::from([password])),
            ];
            ldap.add(dn, attrs).await.unwrap().success().unwrap();
            let _ = ldap.unbind().await;
        })
    }

    /// Does a simple bind as `dn` with `password` succeed?
    pub fn binds(env: &super::HashMap<String, String>, dn: &str, password: &str) -> bool {
        block_on(async {
            let (conn, mut ldap) = LdapConnAsync::new(&env["REKEY_LDAP_URL"]).await.unwrap();
            ldap3::drive!(conn);
            let rc = ldap.simple_bind(dn, password).await.unwrap().rc;
            let _ = ldap.unbind().await;
            assert!(rc == 0 || rc == 49, "bind answered {rc}");
            rc == 0
        })
    }

    /// The `userPassword` values of `dn` (hashes, as slapd stores them), read as
    /// the admin.
    pub fn stored_passwords(env: &super::HashMap<String, String>, dn: &str) -> Vec<String> {
        block_on(async {
            let mut ldap = admin(env).await;
            let (entries, _) = ldap
                .search(
                    dn,
                    ldap3::Scope::Base,
                    "(objectClass=*)",
                    vec!["userPassword"],
                )
                .await
                .unwrap()
                .success()
                .unwrap();
            let _ = ldap.unbind().await;
            entries
                .into_iter()
                .flat_map(|e| {
                    let e = ldap3::SearchEntry::construct(e);
                    let text = e.attrs.get("userPassword").cloned().unwrap_or_default();
                    let binary = e.bin_attrs.get("userPassword").cloned().unwrap_or_default();
                    text.into_iter()
                        .chain(
                            binary
                                .into_iter()
                                .map(|b| String::from_utf8_lossy(&b).into_owned()),
                        )
                        .collect::<Vec<_>>()
                })
                .collect()
        })
    }

    /// A connection bound as `dn` with `password`, kept open (on its own runtime)
    /// while the test goes on: a session someone opened before the rotation.
    pub struct Bound {
        runtime: tokio::runtime::Runtime,
        ldap: ldap3::Ldap,
    }

    impl Bound {
        pub fn open(env: &super::HashMap<String, String>, dn: &str, password: &str) -> Bound {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            let ldap = runtime.block_on(async {
                let (conn, mut ldap) = LdapConnAsync::new(&env["REKEY_LDAP_URL"]).await.unwrap();
                ldap3::drive!(conn);
                ldap.simple_bind(dn, password)
                    .await
                    .unwrap()
                    .success()
                    .unwrap();
                ldap
            });
            Bound { runtime, ldap }
        }

        /// Who the server says this connection is bound as (WhoAmI, RFC 4532).
        pub fn whoami(&mut self) -> String {
            let ldap = &mut self.ldap;
            self.runtime.block_on(async {
                let (exop, _) = ldap
                    .extended(ldap3::exop::WhoAmI)
                    .await
                    .unwrap()
                    .success()
                    .unwrap();
                exop.parse::<ldap3::exop::WhoAmIResp>().authzid
            })
        }
    }

    /// Moves an entry from ou=disabled to ou=people (as the admin), where it can
    /// bind: how the test learns which password a disabled entry holds (slapd's
    /// compare does not match hashed passwords).
    pub fn enable(env: &super::HashMap<String, String>, dn: &str, uid: &str) -> String {
        block_on(async {
            let mut ldap = admin(env).await;
            ldap.modifydn(
                dn,
                &format!("uid={uid}"),
                true,
                Some(&env["REKEY_LDAP_BASE_DN"]),
            )
            .await
            .unwrap()
            .success()
            .unwrap();
            let _ = ldap.unbind().await;
        });
        format!("uid={uid},{}", env["REKEY_LDAP_BASE_DN"])
    }
}

/// An LDAP user of this test, with an old password in the directory and in Vault.
struct LdapUser {
    uid: String,
    dn: String,
    old: String,
}

fn ldap_user(case: &Case, ou: &str) -> LdapUser {
    let uid = format!("{}-{}", case.prefix, hex::encode(rand::random::<[u8; 3]>()));
    let dn = format!("uid={uid},ou={ou},{}", case.env["REKEY_LDAP_SUFFIX"]);
    let old = format!("old-{}", hex::encode(rand::random::<[u8; 12]>()));
    ldap_oracle::add_user(&case.env, &dn, &uid, &old);
    case.vault_put("user", json!({ "value": old }));
    case.vault_put(
        "admin",
        json!({
            "bind_dn": case.env["REKEY_LDAP_ADMIN_DN"],
            "password": case.env["REKEY_LDAP_ADMIN_PASSWORD"],
        }),
    );
    LdapUser { uid, dn, old }
}

fn ldap_playbook(case: &Case, mode: &str, base_dn: &str, credentials: &str, extra: &str) -> String {
    format!(
        "version: 1\nname: ldap-test\nincident: {{ mode: {mode} }}\nvault: {{ address: \"VAULT\", staging_prefix: PREFIX/staging }}\nproviders:\n  dir:\n    type: ldap\n    settings: {{ url: \"{url}\", base_dn: \"{base_dn}\", ca_file: \"{ca}\" }}\n    admin: {{ vault_path: PREFIX/admin }}\n{extra}credentials:\n{credentials}",
        url = case.env["REKEY_LDAP_URL"],
        ca = case.env["REKEY_LDAP_CA_FILE"],
    )
}

#[test]
fn ldap_rotation_changes_the_password_and_the_old_one_stops_working() {
    let case = Case::new("ldap-rot");
    let user = ldap_user(&case, "people");
    let base = case.env["REKEY_LDAP_BASE_DN"].clone();
    let pb = case.playbook(
        "ldap.yaml",
        &ldap_playbook(
            &case,
            "breach",
            &base,
            &format!(
                "  - {{ id: user, provider: dir, account: {}, vault_path: PREFIX/user }}\n",
                user.uid
            ),
            "",
        ),
    );
    let (out, summary) = case.run(&pb);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcome(&summary, "user"), "rotated", "{summary}");
    let new = case.vault_get("user")["value"].as_str().unwrap().to_owned();
    assert_ne!(new, user.old);
    assert!(
        ldap_oracle::binds(&case.env, &user.dn, &new),
        "the new password does not bind"
    );
    assert!(
        !ldap_oracle::binds(&case.env, &user.dn, &user.old),
        "the old password still binds"
    );
    assert_not_leaked(
        &case,
        &out,
        &[&new, &user.old, &case.env["REKEY_LDAP_ADMIN_PASSWORD"]],
    );
}

/// Entries under ou=disabled take a password change but refuse every bind (as
/// directories do for disabled accounts): verify fails for real, and routine mode
/// sets the old password back.
#[test]
fn ldap_verify_failure_sets_the_old_password_back() {
    let case = Case::new("ldap-rb");
    let user = ldap_user(&case, "disabled");
    let base = format!("ou=disabled,{}", case.env["REKEY_LDAP_SUFFIX"]);
    let pb = case.playbook(
        "ldap.yaml",
        &ldap_playbook(
            &case,
            "routine",
            &base,
            &format!(
                "  - {{ id: user, provider: dir, account: {}, vault_path: PREFIX/user }}\n",
                user.uid
            ),
            "",
        ),
    );
    let (out, summary) = case.run(&pb);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(outcome(&summary, "user"), "rolled_back", "{summary}");
    assert_eq!(case.vault_get("user")["value"], user.old, "Vault changed");
    let enabled = ldap_oracle::enable(&case.env, &user.dn, &user.uid);
    assert!(
        ldap_oracle::binds(&case.env, &enabled, &user.old),
        "the old password was not set back"
    );
    let journal = rekey::journal::Journal::open(&case.journal()).unwrap();
    let run = journal.runs().unwrap().remove(0);
    let steps: Vec<String> = journal
        .intents(&run.id, "user")
        .unwrap()
        .into_iter()
        .map(|i| i.step)
        .collect();
    assert!(
        steps.contains(&"change".to_owned()) && steps.contains(&"rollback_change".to_owned()),
        "{steps:?}"
    );
    assert_not_leaked(&case, &out, &[&user.old]);
}

#[test]
fn ldap_preflight_names_a_wrong_admin_password_a_missing_entry_and_an_unreachable_server() {
    let case = Case::new("ldap-pre");
    let user = ldap_user(&case, "people");
    case.vault_put(
        "bad-admin",
        json!({ "bind_dn": case.env["REKEY_LDAP_ADMIN_DN"], "password": "not-the-admin-password" }),
    );
    let base = case.env["REKEY_LDAP_BASE_DN"].clone();
    let text = format!(
        "version: 1\nname: ldap-pre\nincident: {{ mode: breach }}\nvault: {{ address: \"VAULT\", staging_prefix: PREFIX/staging }}\nproviders:\n  dir: {{ type: ldap, settings: {{ url: \"{url}\", base_dn: \"{base}\", ca_file: \"{ca}\" }}, admin: {{ vault_path: PREFIX/admin }} }}\n  plain: {{ type: ldap, settings: {{ url: \"{url}\", base_dn: \"{base}\", starttls: false }}, admin: {{ vault_path: PREFIX/admin }} }}\n  untrusted: {{ type: ldap, settings: {{ url: \"{url}\", base_dn: \"{base}\" }}, admin: {{ vault_path: PREFIX/admin }} }}\n  badadmin: {{ type: ldap, settings: {{ url: \"{url}\", base_dn: \"{base}\", ca_file: \"{ca}\" }}, admin: {{ vault_path: PREFIX/bad-admin }} }}\n  down: {{ type: ldap, settings: {{ url: \"ldap://127.0.0.1:{closed}\", base_dn: \"{base}\", starttls: false, timeout: 2s }}, admin: {{ vault_path: PREFIX/admin }} }}\ncredentials:\n  - {{ id: fine, provider: dir, account: {uid}, vault_path: PREFIX/fine }}\n  - {{ id: missing, provider: dir, account: nobody-{uid}, vault_path: PREFIX/missing }}\n  - {{ id: wrong-admin, provider: badadmin, account: {uid}, vault_path: PREFIX/wa }}\n  - {{ id: unreachable, provider: down, account: {uid}, vault_path: PREFIX/un }}\n  - {{ id: in-clear, provider: plain, account: {uid}, vault_path: PREFIX/pl }}\n  - {{ id: unknown-ca, provider: untrusted, account: {uid}, vault_path: PREFIX/ut }}\n",
        url = case.env["REKEY_LDAP_URL"],
        ca = case.env["REKEY_LDAP_CA_FILE"],
        closed = closed_port(),
        uid = user.uid,
    );
    let pb = case.playbook("pre.yaml", &text);
    let out = case.rekey(&["plan", pb.to_str().unwrap(), "--live"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let row = |id: &str| {
        out.stdout
            .lines()
            .find(|l| l.contains(&format!(" {id} provider")))
            .unwrap_or_else(|| panic!("no row for {id}:\n{}", out.stdout))
            .to_owned()
    };
    assert!(
        row("fine").trim_start().starts_with("ok "),
        "{}",
        row("fine")
    );
    // Plain text works where explicitly allowed (with a warning); without the
    // test CA the server's certificate is refused, never skipped.
    assert!(
        row("in-clear").trim_start().starts_with("ok "),
        "{}",
        row("in-clear")
    );
    assert!(out.stderr.contains("starttls is off"), "{}", out.stderr);
    assert!(
        row("unknown-ca").contains("TLS handshake failed")
            && row("unknown-ca").contains("`ca_file`"),
        "{}",
        row("unknown-ca")
    );
    assert!(
        row("missing").contains(&format!("no entry `uid=nobody-{}", user.uid)),
        "{}",
        row("missing")
    );
    assert!(
        row("wrong-admin")
            .contains("admin bind as `cn=admin,dc=rekey,dc=test` was refused (invalidCredentials)")
            && row("wrong-admin").contains("bad-admin"),
        "{}",
        row("wrong-admin")
    );
    assert!(
        row("unreachable").contains("cannot reach the LDAP server ldap://127.0.0.1:"),
        "{}",
        row("unreachable")
    );
    assert!(
        !out.stdout.contains("not-the-admin-password")
            && !out.stderr.contains("not-the-admin-password")
    );
    // Read-only: the password did not change.
    assert!(ldap_oracle::binds(&case.env, &user.dn, &user.old));
}

/// Killed after the new password was staged but before the change, or after the
/// change but before promotion, `rekey resume` ends with one working password:
/// the one in Vault.
#[test]
fn ldap_run_killed_midway_is_finished_by_resume() {
    for round in ["staged, not changed", "changed, not promoted"] {
        let case = Case::new("ldap-kill");
        let user = ldap_user(&case, "people");
        let base = case.env["REKEY_LDAP_BASE_DN"].clone();
        // A slow rate makes every provider call wait, so each kill point is wide.
        let pb = case.playbook(
            "ldap.yaml",
            &ldap_playbook(
                &case,
                "breach",
                &base,
                &format!(
                    "  - {{ id: user, provider: dir, account: {}, vault_path: PREFIX/user }}\n",
                    user.uid
                ),
                "    rate: { per_second: 2 }\n",
            ),
        );
        let mut child = case.spawn_run(&pb);
        if round.starts_with("staged") {
            case.kill_when(&mut child, round, || case.in_state(&["staged"]));
        } else {
            case.kill_when(&mut child, round, || {
                !ldap_oracle::binds(&case.env, &user.dn, &user.old)
            });
        }
        let out = case.resume();
        assert_eq!(out.code, 0, "{round}: {}", out.stderr);
        let value = case.vault_get("user")["value"].as_str().unwrap().to_owned();
        assert_ne!(value, user.old, "{round}: not rotated");
        assert!(
            ldap_oracle::binds(&case.env, &user.dn, &value),
            "{round}: Vault's password does not bind"
        );
        assert!(
            !ldap_oracle::binds(&case.env, &user.dn, &user.old),
            "{round}: the old password still binds"
        );
        let left = case.staging_left();
        assert!(left.is_empty(), "{round}: staging left: {left:?}");
    }
}

// ------------------------------------------------------------------------- SSH

/// One of the sshd test accounts, held for the life of the test.
struct Account {
    name: String,
    keys_file: PathBuf,
    _lock: std::fs::File,
}

/// Leases a free test account (an exclusive lock file each), waiting if all are taken.
fn take_account(env: &HashMap<String, String>) -> Account {
    use std::os::fd::AsRawFd;
    let names: Vec<String> = env["REKEY_SSH_ACCOUNTS"]
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert!(!names.is_empty(), "REKEY_SSH_ACCOUNTS is empty");
    let locks = crate::support::repo_root().join("target/services/sshd/locks");
    std::fs::create_dir_all(&locks).unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        for name in &names {
            let file = std::fs::File::create(locks.join(format!("{name}.lock"))).unwrap();
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                let keys_file = PathBuf::from(&env["REKEY_SSH_AUTHORIZED_KEYS_DIR"]).join(name);
                return Account {
                    name: name.clone(),
                    keys_file,
                    _lock: file,
                };
            }
        }
        assert!(Instant::now() < deadline, "no free sshd test account");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A key pair made by ssh-keygen: (private key file, public line, fingerprint).
fn keygen(dir: &Path, name: &str, comment: &str) -> (PathBuf, String, String) {
    let path = dir.join(name);
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (
        path.clone(),
        public.trim_end().to_owned(),
        fingerprint_of(&path.with_extension("pub")),
    )
}

fn fingerprint_of(public: &Path) -> String {
    let out = std::process::Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(public)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

/// Writes a private key (from Vault) to a file OpenSSH accepts.
fn key_file(dir: &Path, name: &str, pem: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Does sshd let `account` in with `key`? Checked with the OpenSSH client. The
/// test accounts' shell is nologin, so a session that got in still exits non-zero;
/// `ssh` exits 255 only when it could not connect or log in.
fn ssh_login_works(env: &HashMap<String, String>, account: &str, key: &Path) -> bool {
    let out = std::process::Command::new("ssh")
        .args([
            "-F",
            "none",
            "-T",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .args([
            "-o",
            "PreferredAuthentications=publickey",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            env["REKEY_SSH_KNOWN_HOSTS"]
        ))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=5",
            "-i",
        ])
        .arg(key)
        .args(["-p", &env["REKEY_SSH_PORT"]])
        .arg(format!("{account}@{}", env["REKEY_SSH_HOST"]))
        .arg("true")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(255) {
        assert!(
            stderr.contains("Permission denied"),
            "ssh failed for another reason than a refused key: {stderr}"
        );
        return false;
    }
    true
}

/// An account whose authorized_keys holds an unrelated comment, a foreign key and
/// the old key (also in Vault); the admin credential in Vault.
struct SshSetup {
    account: Account,
    old_key: PathBuf,
    old_fingerprint: String,
    /// The file's lines that are not the old key, exactly.
    others: String,
    /// Someone else's key in the same file: breach mode retires it unless kept.
    foreign_fingerprint: String,
    foreign_key: PathBuf,
}

fn ssh_setup(case: &Case) -> SshSetup {
    use std::os::unix::fs::PermissionsExt;
    let account = take_account(&case.env);
    let (old_key, old_public, old_fingerprint) = keygen(case.dir.path(), "old", "deploy@laptop");
    let (foreign_key, foreign_public, foreign_fingerprint) =
        keygen(case.dir.path(), "foreign", "someone-else");
    let mut others =
        format!("# managed by hand\r\nfrom=\"10.0.0.0/8\",no-pty {foreign_public}\n\n");
    // Not root: the only test account is the admin itself, whose own key must stay.
    if account.name == case.env["REKEY_SSH_ADMIN_USER"] {
        let admin_public =
            std::fs::read_to_string(format!("{}.pub", case.env["REKEY_SSH_ADMIN_KEY_FILE"]))
                .unwrap();
        others.push_str(&admin_public);
    }
    std::fs::write(&account.keys_file, format!("{others}{old_public}\n")).unwrap();
    std::fs::set_permissions(&account.keys_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    case.vault_put(
        "key",
        json!({ "value": std::fs::read_to_string(&old_key).unwrap(), "key_id": old_fingerprint, "account": account.name }),
    );
    case.vault_put(
        "admin",
        json!({
            "private_key": std::fs::read_to_string(&case.env["REKEY_SSH_ADMIN_KEY_FILE"]).unwrap(),
            "username": case.env["REKEY_SSH_ADMIN_USER"],
        }),
    );
    assert!(
        ssh_login_works(&case.env, &account.name, &old_key),
        "setup: the old key does not log in"
    );
    SshSetup {
        account,
        old_key,
        old_fingerprint,
        others,
        foreign_fingerprint,
        foreign_key,
    }
}

/// The playbook: the instance pins sshd's host key by fingerprint (from
/// `scripts/services`, which generated it), as production playbooks should.
fn ssh_playbook(case: &Case, account: &str, credential_settings: &str, extra: &str) -> String {
    format!(
        "version: 1\nname: ssh-test\nincident: {{ mode: breach }}\nvault: {{ address: \"VAULT\", staging_prefix: PREFIX/staging }}\nproviders:\n  hosts:\n    type: ssh\n    settings:\n      hosts: [\"{host}:{port}\"]\n      host_key_fingerprints: [\"{fp}\"]\n      authorized_keys: \"{dir}/%u\"\n    admin: {{ vault_path: PREFIX/admin }}\n{extra}credentials:\n  - {{ id: key, provider: hosts, account: {account}, vault_path: PREFIX/key{credential_settings} }}\n",
        host = case.env["REKEY_SSH_HOST"],
        port = case.env["REKEY_SSH_PORT"],
        fp = case.env["REKEY_SSH_HOST_KEY_FINGERPRINT"],
        dir = case.env["REKEY_SSH_AUTHORIZED_KEYS_DIR"],
    )
}

/// The keys (fingerprints) and rekey-tagged lines of an authorized_keys file.
fn rekey_lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" rekey:"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn ssh_rotation_installs_a_new_key_and_removes_the_old_one() {
    let case = Case::new("ssh-rot");
    let setup = ssh_setup(&case);
    let pb = case.playbook(
        "ssh.yaml",
        &ssh_playbook(
            &case,
            &setup.account.name,
            &format!(
                ", settings: {{ options: \"no-port-forwarding,no-agent-forwarding\" }}, keep: [\"{}\"]",
                setup.foreign_fingerprint
            ),
            "",
        ),
    );
    let (out, summary) = case.run(&pb);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcome(&summary, "key"), "rotated", "{summary}");

    let data = case.vault_get("key");
    let new_key = key_file(case.dir.path(), "new", data["value"].as_str().unwrap());
    let new_fingerprint = fingerprint_of(&new_key);
    assert_eq!(
        data["key_id"], new_fingerprint,
        "key_id is the new key's SHA256 fingerprint"
    );
    assert_ne!(new_fingerprint, setup.old_fingerprint);
    assert!(
        ssh_login_works(&case.env, &setup.account.name, &new_key),
        "the new key is refused"
    );
    assert!(
        !ssh_login_works(&case.env, &setup.account.name, &setup.old_key),
        "the old key still logs in"
    );

    // Every other line kept byte for byte; the new key tagged with the run.
    let content = std::fs::read_to_string(&setup.account.keys_file).unwrap();
    let tagged = rekey_lines(&setup.account.keys_file);
    assert_eq!(tagged.len(), 1, "{content}");
    assert!(
        tagged[0].starts_with("no-port-forwarding,no-agent-forwarding ssh-ed25519 ")
            && tagged[0].ends_with(":key"),
        "{}",
        tagged[0]
    );
    assert_eq!(content, format!("{}{}\n", setup.others, tagged[0]));
    assert_not_leaked(
        &case,
        &out,
        &[
            data["value"].as_str().unwrap(),
            &std::fs::read_to_string(&setup.old_key).unwrap(),
            &std::fs::read_to_string(&case.env["REKEY_SSH_ADMIN_KEY_FILE"]).unwrap(),
        ],
    );
}

/// An attacker who reached the account leaves a key of their own in
/// authorized_keys. Breach mode retires every key that was there before the run
/// (unless the playbook keeps it): the file sshd reads no longer holds it.
#[test]
fn ssh_breach_rotation_removes_a_planted_key_that_is_not_kept() {
    let case = Case::new("ssh-plant");
    let setup = ssh_setup(&case);
    let planted = std::fs::read_to_string(setup.foreign_key.with_extension("pub")).unwrap();
    let planted_blob = planted.split_whitespace().nth(1).unwrap().to_owned();
    let pb = case.playbook(
        "ssh.yaml",
        &ssh_playbook(&case, &setup.account.name, "", ""),
    );
    let (out, summary) = case.run(&pb);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcome(&summary, "key"), "rotated", "{summary}");
    let data = case.vault_get("key");
    let new_key = key_file(case.dir.path(), "new", data["value"].as_str().unwrap());
    assert!(ssh_login_works(&case.env, &setup.account.name, &new_key));
    assert!(!ssh_login_works(
        &case.env,
        &setup.account.name,
        &setup.old_key
    ));
    let content = std::fs::read_to_string(&setup.account.keys_file).unwrap();
    assert!(
        !content.contains(&planted_blob),
        "the planted key is still authorized: {content}"
    );
    assert!(
        content.starts_with("# managed by hand"),
        "comments are kept: {content}"
    );
}

/// The playbook points rekey at a file sshd does not read (a real misconfiguration:
/// `authorized_keys` not matching sshd's AuthorizedKeysFile): the key is added,
/// the login with it is refused, so rekey removes it again and keeps the old one.
#[test]
fn ssh_verify_failure_removes_the_new_key_and_keeps_the_old_one() {
    let case = Case::new("ssh-rb");
    let setup = ssh_setup(&case);
    let decoy = case.dir.path().join("decoy-%u");
    let settings = format!(", settings: {{ authorized_keys: \"{}\" }}", decoy.display());
    let pb = case.playbook(
        "ssh.yaml",
        &ssh_playbook(&case, &setup.account.name, &settings, ""),
    );
    let (out, summary) = case.run(&pb);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(outcome(&summary, "key"), "rolled_back", "{summary}");
    let data = case.vault_get("key");
    assert_eq!(data["key_id"], setup.old_fingerprint, "Vault changed");
    assert!(
        ssh_login_works(&case.env, &setup.account.name, &setup.old_key),
        "the old key stopped working"
    );
    let decoy_file = case
        .dir
        .path()
        .join(format!("decoy-{}", setup.account.name));
    assert!(
        decoy_file.exists(),
        "rekey never wrote the file it was pointed at"
    );
    assert!(
        rekey_lines(&decoy_file).is_empty(),
        "the new key was left behind: {:?}",
        rekey_lines(&decoy_file)
    );
    assert!(rekey_lines(&setup.account.keys_file).is_empty());
    let journal = rekey::journal::Journal::open(&case.journal()).unwrap();
    let run = journal.runs().unwrap().remove(0);
    let steps: Vec<String> = journal
        .intents(&run.id, "key")
        .unwrap()
        .into_iter()
        .map(|i| i.step)
        .collect();
    assert!(
        steps.contains(&"rollback_revoke_new".to_owned()),
        "{steps:?}"
    );
}

#[test]
fn ssh_preflight_names_a_refused_admin_a_missing_account_a_wrong_host_key_and_a_dead_host() {
    let case = Case::new("ssh-pre");
    let setup = ssh_setup(&case);
    let (stranger, _, _) = keygen(case.dir.path(), "stranger", "not-authorized");
    case.vault_put(
        "bad-admin",
        json!({ "private_key": std::fs::read_to_string(&stranger).unwrap(), "username": case.env["REKEY_SSH_ADMIN_USER"] }),
    );
    let host = format!(
        "{}:{}",
        case.env["REKEY_SSH_HOST"], case.env["REKEY_SSH_PORT"]
    );
    let fp = &case.env["REKEY_SSH_HOST_KEY_FINGERPRINT"];
    let dir = &case.env["REKEY_SSH_AUTHORIZED_KEYS_DIR"];
    let instance = |name: &str, hosts: &str, pin: &str, admin: &str| {
        format!(
            "  {name}: {{ type: ssh, settings: {{ hosts: [\"{hosts}\"], {pin}, authorized_keys: \"{dir}/%u\", timeout: 3s }}, admin: {{ vault_path: PREFIX/{admin} }} }}\n"
        )
    };
    let pinned = format!("host_key_fingerprints: [\"{fp}\"]");
    let text = format!(
        "version: 1\nname: ssh-pre\nincident: {{ mode: breach }}\nvault: {{ address: \"VAULT\", staging_prefix: PREFIX/staging }}\nproviders:\n{}{}{}{}{}credentials:\n  - {{ id: fine, provider: good, account: {a}, vault_path: PREFIX/k1 }}\n  - {{ id: missing, provider: good, account: no-such-user-x, vault_path: PREFIX/k2 }}\n  - {{ id: wrong-admin, provider: badadmin, account: {a}, vault_path: PREFIX/k3 }}\n  - {{ id: wrong-pin, provider: badpin, account: {a}, vault_path: PREFIX/k4 }}\n  - {{ id: dead, provider: down, account: {a}, vault_path: PREFIX/k5 }}\n  - {{ id: known, provider: viaknownhosts, account: {a}, vault_path: PREFIX/k6 }}\n",
        instance("good", &host, &pinned, "admin"),
        instance("badadmin", &host, &pinned, "bad-admin"),
        instance(
            "badpin",
            &host,
            "host_key_fingerprints: [\"SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"]",
            "admin"
        ),
        instance(
            "down",
            &format!("127.0.0.1:{}", closed_port()),
            &pinned,
            "admin"
        ),
        instance(
            "viaknownhosts",
            &host,
            &format!("known_hosts: \"{}\"", case.env["REKEY_SSH_KNOWN_HOSTS"]),
            "admin"
        ),
        a = setup.account.name,
    );
    let pb = case.playbook("pre.yaml", &text);
    let before = std::fs::read(&setup.account.keys_file).unwrap();
    let out = case.rekey(&["plan", pb.to_str().unwrap(), "--live"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let row = |id: &str| {
        out.stdout
            .lines()
            .find(|l| l.contains(&format!(" {id} provider")))
            .unwrap_or_else(|| panic!("no row for {id}:\n{}", out.stdout))
            .to_owned()
    };
    assert!(
        row("fine").trim_start().starts_with("ok "),
        "{}",
        row("fine")
    );
    assert!(
        row("known").trim_start().starts_with("ok "),
        "{}",
        row("known")
    );
    assert!(
        row("missing").contains("there is no account `no-such-user-x`"),
        "{}",
        row("missing")
    );
    assert!(
        row("wrong-admin").contains(&format!(
            "the admin login as `{}` was refused",
            case.env["REKEY_SSH_ADMIN_USER"]
        )) && row("wrong-admin").contains("bad-admin"),
        "{}",
        row("wrong-admin")
    );
    assert!(
        row("wrong-pin").contains(&format!("presented host key {fp}, which neither")),
        "{}",
        row("wrong-pin")
    );
    assert!(
        row("dead").contains("cannot connect to 127.0.0.1:"),
        "{}",
        row("dead")
    );
    assert_eq!(
        std::fs::read(&setup.account.keys_file).unwrap(),
        before,
        "preflight changed the file"
    );
}

/// Killed right after the new key reached authorized_keys (before or just after
/// it was staged: an orphan in the making), or while it is verified, `rekey
/// resume` leaves exactly one rekey key (the one in Vault, which logs in), the old
/// key gone, and every other line untouched.
#[test]
fn ssh_run_killed_midway_is_finished_by_resume_without_orphan_keys() {
    for round in ["new key written", "staged or verified"] {
        let case = Case::new("ssh-kill");
        let setup = ssh_setup(&case);
        let pb = case.playbook(
            "ssh.yaml",
            &ssh_playbook(
                &case,
                &setup.account.name,
                &format!(", keep: [\"{}\"]", setup.foreign_fingerprint),
                "    rate: { per_second: 3 }\n",
            ),
        );
        let mut child = case.spawn_run(&pb);
        if round == "new key written" {
            case.kill_when(&mut child, round, || {
                !rekey_lines(&setup.account.keys_file).is_empty()
            });
        } else {
            case.kill_when(&mut child, round, || case.in_state(&["staged", "verified"]));
        }
        let out = case.resume();
        assert_eq!(out.code, 0, "{round}: {}", out.stderr);
        let data = case.vault_get("key");
        let key = key_file(case.dir.path(), "resumed", data["value"].as_str().unwrap());
        assert_eq!(data["key_id"], fingerprint_of(&key), "{round}");
        assert!(
            ssh_login_works(&case.env, &setup.account.name, &key),
            "{round}: Vault's key is refused"
        );
        assert!(
            !ssh_login_works(&case.env, &setup.account.name, &setup.old_key),
            "{round}: the old key still logs in"
        );
        let tagged = rekey_lines(&setup.account.keys_file);
        assert_eq!(tagged.len(), 1, "{round}: orphan keys: {tagged:?}");
        let content = std::fs::read_to_string(&setup.account.keys_file).unwrap();
        assert_eq!(
            content,
            format!("{}{}\n", setup.others, tagged[0]),
            "{round}"
        );
        let left = case.staging_left();
        assert!(left.is_empty(), "{round}: staging left: {left:?}");
    }
}

/// `ldap` and `ssh` rotate at `RUST_LOG=trace` (ldap3, rustls and russh logs
/// too): no password, stored password hash or private key (old, new or the
/// admin's) reaches stdout, stderr, the journal or the audit trail, in any
/// encoding.
#[test]
fn ldap_and_ssh_at_rust_log_trace_leak_no_password_hash_or_private_key() {
    let case = Case::new("trace");
    let traced_run = |name: &str, pb: &Path, printed: &mut Vec<(String, String)>| {
        let out = case.rekey_env(
            &[
                "-vv",
                "run",
                pb.to_str().unwrap(),
                "--journal",
                case.journal().to_str().unwrap(),
            ],
            &[("RUST_LOG", "trace")],
        );
        assert_eq!(out.code, 0, "{name}: {}\n{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("DEBUG"), "verbose logging was on");
        printed.push((format!("stdout of {name}"), out.stdout));
        printed.push((format!("stderr of {name}"), out.stderr));
    };
    // Private keys: each line of their base64 body but the first (the format's
    // header, the same in every key).
    let key_lines = |pem: &str| -> Vec<String> {
        pem.lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .skip(1)
            .map(str::to_owned)
            .collect()
    };
    let mut printed = Vec::new();

    let user = ldap_user(&case, "people");
    let base = case.env["REKEY_LDAP_BASE_DN"].clone();
    let ldap_pb = case.playbook(
        "ldap.yaml",
        &ldap_playbook(
            &case,
            "breach",
            &base,
            &format!(
                "  - {{ id: user, provider: dir, account: {}, vault_path: PREFIX/user }}\n",
                user.uid
            ),
            "",
        ),
    );
    let mut canaries = vec![
        user.old.clone(),
        case.env["REKEY_LDAP_ADMIN_PASSWORD"].clone(),
    ];
    canaries.extend(ldap_oracle::stored_passwords(&case.env, &user.dn));
    traced_run("ldap", &ldap_pb, &mut printed);
    canaries.extend(ldap_oracle::stored_passwords(&case.env, &user.dn));
    canaries.push(case.vault_get("user")["value"].as_str().unwrap().to_owned());

    // The ssh setup replaces the admin entry in Vault with the ssh admin's.
    let setup = ssh_setup(&case);
    let ssh_pb = case.playbook(
        "ssh.yaml",
        &ssh_playbook(&case, &setup.account.name, "", ""),
    );
    canaries.extend(key_lines(&std::fs::read_to_string(&setup.old_key).unwrap()));
    canaries.extend(key_lines(
        &std::fs::read_to_string(&case.env["REKEY_SSH_ADMIN_KEY_FILE"]).unwrap(),
    ));
    traced_run("ssh", &ssh_pb, &mut printed);
    canaries.extend(key_lines(case.vault_get("key")["value"].as_str().unwrap()));

    let places = crate::canary::places_in(case.dir.path(), &printed);
    let leaks = crate::canary::leaks(&canaries, &places);
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}

// ------------------------------------------------------------ Sessions (breach mode)

/// The audit trail's outcome records of `step` (beside the journal).
fn trail_outcomes(case: &Case, step: &str) -> Vec<Value> {
    crate::support::trail_outcomes(case.dir.path(), step)
}

/// LDAP cannot end another client's bind: a connection bound with the old
/// password stays bound after a breach run, and the run says so, naming the
/// credential and what to do by hand; the journal and the trail record it.
#[test]
fn ldap_breach_run_warns_that_connections_bound_with_the_old_password_stay_bound() {
    let case = Case::new("ldap-ses");
    let user = ldap_user(&case, "people");
    let mut attacker = ldap_oracle::Bound::open(&case.env, &user.dn, &user.old);
    let base = case.env["REKEY_LDAP_BASE_DN"].clone();
    let pb = case.playbook(
        "ldap.yaml",
        &ldap_playbook(
            &case,
            "breach",
            &base,
            &format!(
                "  - {{ id: user, provider: dir, account: {}, vault_path: PREFIX/user }}\n",
                user.uid
            ),
            "",
        ),
    );
    let (out, summary) = case.run(&pb);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcome(&summary, "user"), "rotated", "{summary}");
    assert!(!ldap_oracle::binds(&case.env, &user.dn, &user.old));
    assert_eq!(
        attacker.whoami(),
        format!("dn:{}", user.dn),
        "the connection bound before the run is still bound"
    );
    let warning = out
        .stderr
        .lines()
        .find(|l| l.contains("WARN") && l.contains("credential=user"))
        .unwrap_or_else(|| panic!("no warning naming the credential: {}", out.stderr));
    assert!(
        warning.contains("no operation to end another client's bind")
            && warning.contains("restart the directory server")
            && warning.contains(&user.dn),
        "{warning}"
    );
    let recorded = trail_outcomes(&case, "end_sessions");
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert!(
        recorded[0]["detail"]["unsupported"].is_string(),
        "{}",
        recorded[0]
    );
}

/// The account's logins on this test's sshd: its sshd processes (the
/// unprivileged half of each login) under the listener `scripts/services`
/// started. Other sshd servers on the machine may serve the same accounts.
fn sshd_sessions(account: &str) -> usize {
    let listener: u32 = std::fs::read_to_string(
        crate::support::repo_root().join("target/services/sshd/data/sshd-own.pid"),
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let out = std::process::Command::new("ps")
        .args(["-eo", "pid=,ppid=,user:32=,comm="])
        .output()
        .unwrap();
    let table: Vec<(u32, u32, String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.parse().ok()?,
                f.get(1)?.parse().ok()?,
                f.get(2)?.to_string(),
                f.get(3)?.to_string(),
            ))
        })
        .collect();
    let parent = |pid: u32| table.iter().find(|p| p.0 == pid).map(|p| p.1);
    let under_listener = |mut pid: u32| {
        while pid > 1 {
            if pid == listener {
                return true;
            }
            pid = parent(pid).unwrap_or(0);
        }
        false
    };
    table
        .iter()
        .filter(|(pid, _, user, comm)| {
            user == account && (comm == "sshd" || comm == "sshd-session") && under_listener(*pid)
        })
        .count()
}

/// An SSH login as `account` with `key` held open (`ssh -N`: no shell, which the
/// test accounts do not have).
fn ssh_session(env: &HashMap<String, String>, account: &str, key: &Path) -> KillOnDrop {
    let before = sshd_sessions(account);
    let child = std::process::Command::new("ssh")
        .args([
            "-F",
            "none",
            "-N",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            env["REKEY_SSH_KNOWN_HOSTS"]
        ))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-i",
        ])
        .arg(key)
        .args(["-p", &env["REKEY_SSH_PORT"]])
        .arg(format!("{account}@{}", env["REKEY_SSH_HOST"]))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut held = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    while sshd_sessions(account) <= before {
        assert!(!held.exited(), "ssh gave up");
        assert!(Instant::now() < deadline, "the ssh session never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
    held
}

/// A login made with the old key before a breach run is ended on the host when
/// rekey logs in as root (as here under `scripts/test` as root); with another
/// admin it cannot be, and the run says so.
#[test]
fn ssh_breach_run_ends_the_account_s_sessions_when_rekey_is_root() {
    let case = Case::new("ssh-ses");
    let setup = ssh_setup(&case);
    let account = setup.account.name.clone();
    let mut attacker = ssh_session(&case.env, &account, &setup.old_key);
    let pb = case.playbook("ssh.yaml", &ssh_playbook(&case, &account, "", ""));
    let (out, summary) = case.run(&pb);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcome(&summary, "key"), "rotated", "{summary}");
    assert!(!ssh_login_works(&case.env, &account, &setup.old_key));
    let recorded = trail_outcomes(&case, "end_sessions");
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    if case.env["REKEY_SSH_ADMIN_USER"] == "root" {
        assert_eq!(sshd_sessions(&account), 0, "the login is gone");
        let deadline = Instant::now() + Duration::from_secs(15);
        while !attacker.exited() {
            assert!(Instant::now() < deadline, "ssh did not notice");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(recorded[0]["detail"]["ended"], 1, "{}", recorded[0]);
    } else {
        assert!(recorded[0]["detail"]["unsupported"].is_string());
        assert!(
            out.stderr.contains("credential=key") && out.stderr.contains("pkill -KILL -u"),
            "{}",
            out.stderr
        );
    }
}
