//! The native `postgres`, `postgres_alternating`, `mysql` and `redis` providers
//! against the real servers `scripts/services` starts, through the real `rekey`
//! binary: full rotations, a verify failure rolled back, preflight errors from
//! `plan --live`, and a run killed mid-rotation and finished by `rekey resume`.
//! Each test makes its own roles/users (random suffix) so tests run in parallel.

use crate::support::{KillOnDrop, rekey};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::services;

fn block<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// OpenBao through the tests' one client ([`crate::support::bao_request`]).
fn http(addr: &str, method: &str, path: &str, token: &str, body: Option<&Value>) -> Value {
    crate::support::bao_request(addr, token, method, path, body).1
}

/// One test's world: a temp dir (playbooks, journal), a Vault prefix and a
/// random suffix for the names it creates on the servers.
struct World {
    dir: tempfile::TempDir,
    prefix: String,
    suffix: String,
    env: HashMap<String, String>,
}

impl World {
    fn new() -> World {
        let suffix = random_hex(4);
        World {
            dir: tempfile::tempdir().unwrap(),
            prefix: format!("it-sql-{suffix}"),
            suffix,
            env: services(),
        }
    }

    fn name(&self, base: &str) -> String {
        format!("{base}_{}", self.suffix)
    }

    fn journal(&self) -> PathBuf {
        self.dir.path().join("journal.db")
    }

    /// The provider instances every test may use; admin credentials come from
    /// environment variables set by `command`.
    fn providers(&self) -> String {
        let e = &self.env;
        format!(
            "  pg: {{ type: postgres, admin: {{ env: REKEY_IT_PG_ADMIN }}, settings: {{ host: \"{}\", port: {}, sslmode: disable }} }}\n  my: {{ type: mysql, admin: {{ env: REKEY_IT_MY_ADMIN }}, settings: {{ host: \"{}\", port: {}, tls: disabled }} }}\n  rd: {{ type: redis, settings: {{ host: \"{}\", port: {}, persist: none }} }}\n",
            e["REKEY_PG_HOST"],
            e["REKEY_PG_PORT"],
            e["REKEY_MYSQL_HOST"],
            e["REKEY_MYSQL_PORT"],
            e["REKEY_REDIS_HOST"],
            e["REKEY_REDIS_PORT"],
        )
    }

    fn playbook(
        &self,
        file: &str,
        mode: &str,
        extra_providers: &str,
        credentials: &str,
    ) -> PathBuf {
        let text = format!(
            "version: 1\nname: sql-providers\nincident: {{ mode: {mode} }}\nvault: {{ address: \"{}\" }}\nproviders:\n{}{extra_providers}credentials:\n{}",
            self.env["VAULT_ADDR"],
            self.providers(),
            credentials.replace("PREFIX", &self.prefix)
        );
        let path = self.dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn command(&self, args: &[&str]) -> crate::support::Output {
        self.command_env(args, &[])
    }

    /// `command` with extra environment variables (e.g. `RUST_LOG`).
    fn command_env(&self, args: &[&str], extra: &[(&str, &str)]) -> crate::support::Output {
        let e = &self.env;
        let mut cmd = rekey();
        for (k, v) in extra {
            cmd = cmd.env(k, v);
        }
        cmd.env("VAULT_TOKEN", &e["VAULT_TOKEN"])
            .env(
                "REKEY_IT_PG_ADMIN",
                &json!({ "username": e["REKEY_PG_ADMIN_USER"], "password": e["REKEY_PG_ADMIN_PASSWORD"] }).to_string(),
            )
            .env(
                "REKEY_IT_MY_ADMIN",
                &json!({ "username": e["REKEY_MYSQL_ADMIN_USER"], "password": e["REKEY_MYSQL_ADMIN_PASSWORD"] }).to_string(),
            )
            .env(
                "REKEY_IT_BAD_ADMIN",
                &json!({ "username": e["REKEY_PG_ADMIN_USER"], "password": "not-the-admin-password" }).to_string(),
            )
            .args(args)
            .run()
    }

    fn run(&self, playbook: &Path) -> (i32, Value, String) {
        let out = self.command(&[
            "run",
            playbook.to_str().unwrap(),
            "--journal",
            self.journal().to_str().unwrap(),
            "--format",
            "json",
        ]);
        let summary = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
        (out.code, summary, format!("{}\n{}", out.stdout, out.stderr))
    }

    fn spawn_run(&self, playbook: &Path) -> std::process::Child {
        let e = &self.env;
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
            .env("VAULT_TOKEN", &e["VAULT_TOKEN"])
            .env(
                "REKEY_IT_PG_ADMIN",
                json!({ "username": e["REKEY_PG_ADMIN_USER"], "password": e["REKEY_PG_ADMIN_PASSWORD"] }).to_string(),
            )
            .env(
                "REKEY_IT_MY_ADMIN",
                json!({ "username": e["REKEY_MYSQL_ADMIN_USER"], "password": e["REKEY_MYSQL_ADMIN_PASSWORD"] }).to_string(),
            )
            .current_dir(crate::support::repo_root())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Starts `rekey run playbook`, kills it (SIGKILL) once a credential of the
    /// run is in `state`, then runs `rekey resume`, which must succeed.
    fn kill_at_then_resume(&self, playbook: &Path, state: &str) {
        let child = KillOnDrop(self.spawn_run(playbook));
        self.wait_for(|states| states.iter().any(|s| s.state == state));
        drop(child); // SIGKILL
        let out = self.resume();
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    }

    fn resume(&self) -> crate::support::Output {
        self.command(&[
            "resume",
            "--journal",
            self.journal().to_str().unwrap(),
            "--format",
            "json",
        ])
    }

    fn plan_live(&self, playbook: &Path) -> crate::support::Output {
        self.command(&["plan", playbook.to_str().unwrap(), "--live"])
    }

    fn vault_put(&self, path: &str, data: Value) {
        let answer = http(
            &self.env["VAULT_ADDR"],
            "POST",
            &format!("/v1/secret/data/{}/{path}", self.prefix),
            &self.env["VAULT_TOKEN"],
            Some(&json!({ "data": data })),
        );
        assert!(answer["data"]["version"].is_u64(), "{answer}");
    }

    /// `data` of the latest version, and the version.
    fn vault_get(&self, path: &str) -> (Value, u64) {
        let v = http(
            &self.env["VAULT_ADDR"],
            "GET",
            &format!("/v1/secret/data/{}/{path}", self.prefix),
            &self.env["VAULT_TOKEN"],
            None,
        );
        (
            v["data"]["data"].clone(),
            v["data"]["metadata"]["version"].as_u64().unwrap_or(0),
        )
    }

    fn vault_value(&self, path: &str) -> String {
        self.vault_get(path).0["value"]
            .as_str()
            .unwrap_or_else(|| panic!("no value at {path}"))
            .to_owned()
    }

    /// Waits (up to 60 s) until the latest run in the journal satisfies `ready`.
    fn wait_for(&self, ready: impl Fn(&[rekey::journal::CredentialRow]) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Ok(j) = rekey::journal::Journal::open(&self.journal())
                && let Some(run) = j.runs().ok().and_then(|r| r.into_iter().next())
                && let Ok(states) = j.states(&run.id)
                && ready(&states)
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the run never reached the expected point");
    }
}

/// The line `plan --live` printed for credential `id`'s provider check.
fn preflight_line(stdout: &str, id: &str) -> String {
    stdout
        .lines()
        .find(|l| l.contains(&format!(" {id} provider")))
        .unwrap_or_else(|| panic!("no provider line for {id}: {stdout}"))
        .trim()
        .to_owned()
}

fn outcome(summary: &Value, id: &str) -> String {
    summary["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {summary}"))
        .iter()
        .find(|r| r["id"] == id)
        .map(|r| r["outcome"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------- PostgreSQL

async fn pg_session(
    w: &World,
    user: &str,
    password: &str,
    database: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&w.env["REKEY_PG_HOST"])
        .port(w.env["REKEY_PG_PORT"].parse().unwrap())
        .user(user)
        .password(password)
        .dbname(database);
    let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// A session as the services' PostgreSQL superuser.
async fn pg_admin_session(w: &World) -> tokio_postgres::Client {
    pg_session(
        w,
        &w.env["REKEY_PG_ADMIN_USER"],
        &w.env["REKEY_PG_ADMIN_PASSWORD"],
        "postgres",
    )
    .await
    .unwrap()
}

fn pg_admin(w: &World, sql: &str) {
    block(async {
        let admin = pg_admin_session(w).await;
        admin.batch_execute(sql).await.unwrap();
    })
}

/// Whether `user` logs in with `password`; panics on anything but success or
/// a refused password.
fn pg_login(w: &World, user: &str, password: &str) -> bool {
    block(async {
        match pg_session(w, user, password, "postgres").await {
            Ok(_) => true,
            Err(e) if e.code().map(|c| c.code()) == Some("28P01") => false,
            Err(e) => panic!("login as {user}: {e}"),
        }
    })
}

/// A login role with a random password, also stored in Vault at `path`.
fn pg_role(w: &World, base: &str, path: &str) -> (String, String) {
    let role = w.name(base);
    let password = random_hex(12);
    pg_admin(
        w,
        &format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"),
    );
    w.vault_put(path, json!({ "value": password }));
    (role, password)
}

#[test]
fn postgres_rotation_sets_a_new_password_that_logs_in_and_is_stored_in_vault() {
    let w = World::new();
    let (role, old) = pg_role(&w, "rk_app", "db");
    let pb = w.playbook(
        "p.yaml",
        "breach",
        "",
        &format!("  - {{ id: db, provider: pg, account: {role}, vault_path: PREFIX/db }}\n"),
    );
    let (code, summary, output) = w.run(&pb);
    assert_eq!(code, 0, "{output}");
    assert_eq!(outcome(&summary, "db"), "rotated");
    let (data, version) = w.vault_get("db");
    let new = data["value"].as_str().unwrap();
    assert_eq!(version, 2);
    assert_ne!(new, old);
    assert!(pg_login(&w, &role, new), "the new password logs in");
    assert!(!pg_login(&w, &role, &old), "the old password is refused");
    assert!(
        !output.contains(new) && !output.contains(&old),
        "a password leaked into the output"
    );
    let journal = std::fs::read(w.journal()).unwrap();
    assert!(
        !journal.windows(new.len()).any(|x| x == new.as_bytes()),
        "the new password is in the journal"
    );
}

#[test]
fn postgres_verify_failure_rolls_back_to_the_old_password() {
    let w = World::new();
    let (role, old) = pg_role(&w, "rk_vf", "db");
    // The role may not connect to this database, so the verify login fails after
    // the change went through: a real failure, not an injected one.
    let closed = w.name("closed_db");
    pg_admin(&w, &format!("CREATE DATABASE {closed}"));
    pg_admin(
        &w,
        &format!("REVOKE CONNECT ON DATABASE {closed} FROM PUBLIC"),
    );
    let pb = w.playbook(
        "p.yaml",
        "routine",
        "",
        &format!("  - {{ id: db, provider: pg, account: {role}, vault_path: PREFIX/db, settings: {{ verify_database: {closed} }} }}\n"),
    );
    let (code, summary, output) = w.run(&pb);
    pg_admin(&w, &format!("DROP DATABASE {closed}"));
    assert_eq!(code, 1, "{output}");
    assert_eq!(outcome(&summary, "db"), "rolled_back", "{output}");
    assert!(pg_login(&w, &role, &old), "the old password works again");
    assert_eq!(
        w.vault_get("db"),
        (json!({ "value": old }), 1),
        "Vault was not touched"
    );
    // The journal says why verify failed, in words an operator can act on.
    let j = rekey::journal::Journal::open(&w.journal()).unwrap();
    let run = j.runs().unwrap().into_iter().next().unwrap();
    let verifies = serde_json::to_string(
        &j.intents(&run.id, "db")
            .unwrap()
            .into_iter()
            .filter(|i| i.step == "verify")
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(verifies.contains("permission denied"), "{verifies}");
}

#[test]
fn postgres_plan_live_names_a_wrong_admin_password_a_missing_role_and_a_dead_server() {
    let w = World::new();
    let (role, _) = pg_role(&w, "rk_pf", "db");
    let e = &w.env;
    let extra = format!(
        "  pg_badpw: {{ type: postgres, admin: {{ env: REKEY_IT_BAD_ADMIN }}, settings: {{ host: \"{h}\", port: {p}, sslmode: disable }} }}\n  pg_down: {{ type: postgres, admin: {{ env: REKEY_IT_PG_ADMIN }}, settings: {{ host: \"127.0.0.1\", port: 1, sslmode: disable }} }}\n",
        h = e["REKEY_PG_HOST"],
        p = e["REKEY_PG_PORT"]
    );
    let pb = w.playbook(
        "p.yaml",
        "breach",
        &extra,
        &format!("  - {{ id: good, provider: pg, account: {role}, vault_path: PREFIX/db }}\n  - {{ id: missing, provider: pg, account: no_such_role_{s}, vault_path: PREFIX/m }}\n  - {{ id: badpw, provider: pg_badpw, account: {role}, vault_path: PREFIX/b }}\n  - {{ id: down, provider: pg_down, account: {role}, vault_path: PREFIX/d }}\n", s = w.suffix),
    );
    let out = w.plan_live(&pb);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let line = |id: &str| preflight_line(&out.stdout, id);
    assert!(line("good").starts_with("ok"), "{}", out.stdout);
    let missing = line("missing");
    assert!(
        missing.starts_with("FAIL")
            && missing.contains("does not exist")
            && missing.contains("account"),
        "{missing}"
    );
    let badpw = line("badpw");
    assert!(
        badpw.starts_with("FAIL")
            && badpw.contains("rejected the admin login")
            && badpw.contains("REKEY_IT_BAD_ADMIN"),
        "{badpw}"
    );
    let down = line("down");
    assert!(
        down.starts_with("FAIL") && down.contains("127.0.0.1:1") && down.contains("server is up"),
        "{down}"
    );
    assert!(
        !out.stdout.contains("not-the-admin-password")
            && !out.stderr.contains("not-the-admin-password")
    );
}

#[test]
fn postgres_run_killed_mid_rotation_is_finished_by_resume() {
    let w = World::new();
    let roles: Vec<(String, String)> = (0..6)
        .map(|i| pg_role(&w, &format!("rk_k{i}"), &format!("c{i}")))
        .collect();
    let creds: String = roles
        .iter()
        .enumerate()
        .map(|(i, (r, _))| {
            format!(
                "  - {{ id: c{i}, provider: pg_slow, account: {r}, vault_path: PREFIX/c{i} }}\n"
            )
        })
        .collect();
    // A slow instance (4 requests a second) keeps the run going long enough to be
    // killed between a password change and its promotion.
    let e = &w.env;
    let extra = format!(
        "  pg_slow: {{ type: postgres, admin: {{ env: REKEY_IT_PG_ADMIN }}, rate: {{ per_second: 4, burst: 1 }}, concurrency: 2, settings: {{ host: \"{}\", port: {}, sslmode: disable }} }}\n",
        e["REKEY_PG_HOST"], e["REKEY_PG_PORT"]
    );
    let pb = w.playbook("p.yaml", "breach", &extra, &creds);
    w.kill_at_then_resume(&pb, "changed");
    for (i, (role, old)) in roles.iter().enumerate() {
        let value = w.vault_value(&format!("c{i}"));
        assert_ne!(&value, old, "c{i} was not rotated");
        assert!(pg_login(&w, role, &value), "c{i}: Vault's password logs in");
        assert!(
            !pg_login(&w, role, old),
            "c{i}: the old password is refused"
        );
    }
}

// ---------------------------------------------------------------- PostgreSQL, alternating

/// A `postgres_alternating` instance named `name` (admin from REKEY_IT_PG_ADMIN),
/// with `rate` (`""` or `rate: {...}, `) before its settings.
fn pga_instance(w: &World, name: &str, rate: &str) -> String {
    format!(
        "  {name}: {{ type: postgres_alternating, admin: {{ env: REKEY_IT_PG_ADMIN }}, {rate}settings: {{ host: \"{}\", port: {}, sslmode: disable }} }}\n",
        w.env["REKEY_PG_HOST"], w.env["REKEY_PG_PORT"]
    )
}

/// A playbook with one `postgres_alternating` credential `db` on `roles`
/// (account, alternate_role), instance `pga` at `rate` (see `pga_instance`),
/// plus extra credential `settings` (`", verify_database: x"`).
fn pga_playbook(
    w: &World,
    file: &str,
    mode: &str,
    rate: &str,
    roles: (&str, &str),
    settings: &str,
) -> PathBuf {
    let (blue, green) = roles;
    w.playbook(
        file,
        mode,
        &pga_instance(w, "pga", rate),
        &format!("  - {{ id: db, provider: pga, account: {blue}, vault_path: PREFIX/db, settings: {{ alternate_role: {green}{settings} }} }}\n"),
    )
}

/// Two login roles with random passwords; the first one's is in Vault at `path`
/// with its name as `key_id` and `username` (what consumers use before the first
/// rotation). Returns ((blue, its password), (green, its password)).
fn pga_pair(w: &World, base: &str, path: &str) -> ((String, String), (String, String)) {
    let blue = w.name(&format!("{base}_blue"));
    let green = w.name(&format!("{base}_green"));
    let (blue_pw, green_pw) = (random_hex(12), random_hex(12));
    pg_admin(
        w,
        &format!(
            "CREATE ROLE {blue} LOGIN PASSWORD '{blue_pw}'; CREATE ROLE {green} LOGIN PASSWORD '{green_pw}'"
        ),
    );
    w.vault_put(
        path,
        json!({ "value": blue_pw, "key_id": blue, "username": blue }),
    );
    ((blue, blue_pw), (green, green_pw))
}

/// The comment on `role` (where rekey marks the role it issued to or retired).
fn pg_comment(w: &World, role: &str) -> Option<String> {
    block(async {
        let admin = pg_admin_session(w).await;
        admin
            .query_one(
                "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
                &[&role],
            )
            .await
            .unwrap()
            .get(0)
    })
}

fn retired(w: &World, role: &str) -> bool {
    pg_comment(w, role).is_some_and(|c| c.starts_with("rekey-retired"))
}

/// Checks that Vault at `path` names `role` (key id, user name, account) with a
/// password that logs in as it, that the other role is retired, and returns the
/// password.
fn pga_in_vault(w: &World, path: &str, role: &str, other: &str) -> String {
    let (data, _) = w.vault_get(path);
    for field in ["key_id", "username", "account"] {
        assert_eq!(
            data[field], role,
            "{path}: `{field}` names the role in use: {data}"
        );
    }
    let value = data["value"].as_str().unwrap().to_owned();
    assert!(
        pg_login(w, role, &value),
        "{path}: Vault's password logs in as {role}"
    );
    assert!(
        pg_comment(w, role).is_some_and(|c| c.starts_with("rekey:")),
        "{path}: {role} carries rekey's issue mark"
    );
    assert!(retired(w, other), "{path}: {other} is marked retired");
    value
}

#[test]
fn postgres_alternating_rotation_switches_roles_and_retires_the_old_one() {
    let w = World::new();
    let ((blue, blue_pw), (green, green_pw)) = pga_pair(&w, "rk_alt", "db");
    let pb = pga_playbook(&w, "p.yaml", "breach", "", (&blue, &green), "");
    // Round 1: green gets a new password and is promoted; blue is retired.
    let (code, summary, output) = w.run(&pb);
    assert_eq!(code, 0, "{output}");
    assert_eq!(outcome(&summary, "db"), "rotated", "{output}");
    assert_eq!(w.vault_get("db").1, 2);
    let first = pga_in_vault(&w, "db", &green, &blue);
    assert!(
        !pg_login(&w, &blue, &blue_pw),
        "blue's old password is refused"
    );
    assert!(
        !pg_login(&w, &green, &green_pw),
        "green's old password is refused"
    );
    assert!(
        !output.contains(&first) && !output.contains(&blue_pw),
        "a password leaked into the output"
    );
    // Round 2: back to blue, with a new password; green's from round 1 dies.
    let (code, summary, output) = w.run(&pb);
    assert_eq!(code, 0, "{output}");
    assert_eq!(outcome(&summary, "db"), "rotated", "{output}");
    assert_eq!(w.vault_get("db").1, 3);
    let second = pga_in_vault(&w, "db", &blue, &green);
    assert_ne!(second, blue_pw);
    assert!(
        !pg_login(&w, &green, &first),
        "round 1's password is refused"
    );
    assert!(!pg_login(&w, &blue, &blue_pw));
    assert!(!output.contains(&second) && !output.contains(&first));
    // The old role stays a login role: it is used again next time.
    block(async {
        let admin = pg_admin_session(&w).await;
        let row = admin
            .query_one(
                "SELECT count(*) FROM pg_roles WHERE rolname IN ($1, $2) AND rolcanlogin",
                &[&blue, &green],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 2, "both roles can still log in");
    });
}

#[test]
fn postgres_alternating_verify_failure_rolls_back_and_the_current_role_keeps_working() {
    let w = World::new();
    let ((blue, blue_pw), (green, green_pw)) = pga_pair(&w, "rk_altvf", "db");
    // Only blue may connect to this database, so the verify login as green (the
    // role the rotation changes) fails after its password was set.
    let closed = w.name("closed_alt_db");
    pg_admin(&w, &format!("CREATE DATABASE {closed}"));
    pg_admin(
        &w,
        &format!(
            "REVOKE CONNECT ON DATABASE {closed} FROM PUBLIC; GRANT CONNECT ON DATABASE {closed} TO {blue}"
        ),
    );
    let pb = pga_playbook(
        &w,
        "p.yaml",
        "routine",
        "",
        (&blue, &green),
        &format!(", verify_database: {closed}"),
    );
    let (code, summary, output) = w.run(&pb);
    pg_admin(&w, &format!("DROP DATABASE {closed}"));
    assert_eq!(code, 1, "{output}");
    assert_eq!(outcome(&summary, "db"), "rolled_back", "{output}");
    assert_eq!(
        w.vault_get("db"),
        (
            json!({ "value": blue_pw, "key_id": blue, "username": blue }),
            1
        ),
        "Vault was not touched"
    );
    assert!(pg_login(&w, &blue, &blue_pw), "the role in use still works");
    assert_eq!(
        pg_comment(&w, &blue),
        None,
        "the role in use was not touched"
    );
    // The new password on green is gone with the rollback.
    assert!(retired(&w, &green), "green was retired by the rollback");
    assert!(!pg_login(&w, &green, &green_pw));
    let j = rekey::journal::Journal::open(&w.journal()).unwrap();
    let run = j.runs().unwrap().into_iter().next().unwrap();
    let intents = j.intents(&run.id, "db").unwrap();
    let verifies = serde_json::to_string(
        &intents
            .iter()
            .filter(|i| i.step == "verify")
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(verifies.contains("permission denied"), "{verifies}");
    assert!(
        intents.iter().any(|i| i.step == "rollback_revoke_new"),
        "the new password was revoked"
    );
    // The next rotation (the database open again) changes green again: a retired
    // role is never the one in use.
    let pb = pga_playbook(&w, "p2.yaml", "routine", "", (&blue, &green), "");
    let (code, summary, output) = w.run(&pb);
    assert_eq!(code, 0, "{output}");
    let value = pga_in_vault(&w, "db", &green, &blue);
    // Blue's old password is gone, so that run cannot be rolled back: rollback
    // says so and leaves green, the working role, alone.
    let out = w.command(&[
        "rollback",
        summary["run_id"].as_str().unwrap(),
        "--journal",
        w.journal().to_str().unwrap(),
    ]);
    assert!(
        out.stdout.contains("roll forward only"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(w.vault_value("db"), value);
    assert!(pg_login(&w, &green, &value));
}

#[test]
fn postgres_alternating_plan_live_names_a_missing_role_the_same_role_twice_a_nologin_role_and_two_issue_marks()
 {
    let w = World::new();
    let ((blue, _), (green, _)) = pga_pair(&w, "rk_altpf", "db");
    let nologin = w.name("rk_altpf_nologin");
    pg_admin(&w, &format!("CREATE ROLE {nologin} NOLOGIN"));
    let ((a, _), (b, _)) = pga_pair(&w, "rk_altpf2", "db2");
    pg_admin(
        &w,
        &format!(
            "COMMENT ON ROLE {a} IS 'rekey:r-20260101-0000-aaaa:x 1'; COMMENT ON ROLE {b} IS 'rekey:r-20260101-0000-bbbb:x 2'"
        ),
    );
    let s = &w.suffix;
    let pb = w.playbook(
        "p.yaml",
        "breach",
        &pga_instance(&w, "pga", ""),
        &format!(
            "  - {{ id: good, provider: pga, account: {blue}, vault_path: PREFIX/db, settings: {{ alternate_role: {green} }} }}\n  - {{ id: missing, provider: pga, account: {blue}, vault_path: PREFIX/m, settings: {{ alternate_role: no_such_role_{s} }} }}\n  - {{ id: same, provider: pga, account: {blue}, vault_path: PREFIX/s, settings: {{ alternate_role: {blue} }} }}\n  - {{ id: nologin, provider: pga, account: {blue}, vault_path: PREFIX/n, settings: {{ alternate_role: {nologin} }} }}\n  - {{ id: twomarks, provider: pga, account: {a}, vault_path: PREFIX/t, settings: {{ alternate_role: {b} }} }}\n"
        ),
    );
    let out = w.plan_live(&pb);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        preflight_line(&out.stdout, "good").starts_with("ok"),
        "{}",
        out.stdout
    );
    for (id, says) in [
        ("missing", &["does not exist", "`alternate_role`"][..]),
        ("same", &["same role", "two roles"]),
        ("nologin", &["cannot log in (NOLOGIN)"]),
        ("twomarks", &["cannot tell which one consumers use"]),
    ] {
        let line = preflight_line(&out.stdout, id);
        assert!(
            line.starts_with("FAIL") && says.iter().all(|s| line.contains(s)),
            "{id}: {line}"
        );
    }
    // The checks changed nothing.
    assert_eq!(pg_comment(&w, &blue), None);
    assert_eq!(pg_comment(&w, &green), None);
}

#[test]
fn postgres_alternating_run_killed_mid_rotation_is_finished_by_resume() {
    let w = World::new();
    let pairs: Vec<_> = (0..6)
        .map(|i| pga_pair(&w, &format!("rk_altk{i}"), &format!("c{i}")))
        .collect();
    let creds: String = pairs
        .iter()
        .enumerate()
        .map(|(i, ((blue, _), (green, _)))| {
            format!(
                "  - {{ id: c{i}, provider: pga_slow, account: {blue}, vault_path: PREFIX/c{i}, settings: {{ alternate_role: {green} }} }}\n"
            )
        })
        .collect();
    // A slow instance keeps the run going long enough to be killed with some
    // credentials created but not staged, some staged but not promoted.
    let extra = pga_instance(
        &w,
        "pga_slow",
        "rate: { per_second: 4, burst: 1 }, concurrency: 2, ",
    );
    let pb = w.playbook("p.yaml", "breach", &extra, &creds);
    w.kill_at_then_resume(&pb, "staged");
    for (i, ((blue, blue_pw), (green, green_pw))) in pairs.iter().enumerate() {
        // Every credential ends on green, in Vault, with blue retired; no
        // password rekey set and did not store is left working.
        let value = pga_in_vault(&w, &format!("c{i}"), green, blue);
        assert_ne!(&value, green_pw, "c{i} was not rotated");
        assert!(
            !pg_login(&w, blue, blue_pw),
            "c{i}: blue's old password is refused"
        );
        assert!(
            !pg_login(&w, green, green_pw),
            "c{i}: green's old password is refused"
        );
    }
}

#[test]
fn postgres_alternating_resume_retires_a_role_changed_but_never_stored() {
    let w = World::new();
    let ((blue, blue_pw), (green, _)) = pga_pair(&w, "rk_alto", "db");
    // One permit a second: the run waits about a second for the permit of its
    // `create` after `list`; it is killed in that wait.
    let pb = pga_playbook(
        &w,
        "p.yaml",
        "breach",
        "rate: { per_second: 1, burst: 1 }, ",
        (&blue, &green),
        "",
    );
    let child = KillOnDrop(w.spawn_run(&pb));
    w.wait_for(|states| states.iter().any(|s| s.state == "creating"));
    drop(child); // SIGKILL
    // What a crash right after `create` leaves: green has a password nobody
    // stored and this rotation's mark (the run id is the journal's).
    let j = rekey::journal::Journal::open(&w.journal()).unwrap();
    let run = j.runs().unwrap().into_iter().next().unwrap();
    assert_eq!(
        j.states(&run.id).unwrap()[0].state,
        "creating",
        "killed before the new password was staged"
    );
    drop(j);
    let lost = random_hex(12);
    pg_admin(
        &w,
        &format!(
            "ALTER ROLE {green} PASSWORD '{lost}'; COMMENT ON ROLE {green} IS 'rekey:{}:db 1'",
            run.id
        ),
    );
    assert!(
        pg_login(&w, &blue, &blue_pw),
        "the role in Vault still works"
    );
    let out = w.resume();
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let j = rekey::journal::Journal::open(&w.journal()).unwrap();
    let steps: Vec<String> = j
        .intents(&run.id, "db")
        .unwrap()
        .into_iter()
        .map(|i| i.step)
        .collect();
    assert!(steps.contains(&"revoke_orphan".to_owned()), "{steps:?}");
    let value = pga_in_vault(&w, "db", &green, &blue);
    assert!(
        !pg_login(&w, &green, &lost),
        "the unstored password is dead"
    );
    assert_ne!(value, lost);
    assert!(
        !pg_login(&w, &blue, &blue_pw),
        "blue's old password is refused"
    );
}

#[test]
fn postgres_alternating_never_retires_the_role_it_just_promoted() {
    let w = World::new();
    let ((blue, blue_pw), (green, green_pw)) = pga_pair(&w, "rk_altm", "db");
    // Vault names green before any rotation, against the documented convention
    // (consumers start on `account`): the first rotation changes green, the role
    // in use, and the engine then asks to retire green as the old key.
    w.vault_put(
        "db",
        json!({ "value": green_pw, "key_id": green, "username": green }),
    );
    let pb = pga_playbook(&w, "p.yaml", "breach", "", (&blue, &green), "");
    let (code, summary, output) = w.run(&pb);
    assert_eq!(code, 3, "quarantined: {output}");
    assert_eq!(outcome(&summary, "db"), "quarantined", "{output}");
    assert!(output.contains("not retiring"), "{output}");
    // The password just promoted still works: the retirement was refused.
    let (data, version) = w.vault_get("db");
    assert_eq!(version, 3);
    assert_eq!(data["username"], green.as_str());
    assert!(pg_login(&w, &green, data["value"].as_str().unwrap()));
    assert!(!retired(&w, &green));
    // As the message says, running rekey again moves consumers to blue with a
    // new password and retires green; blue's old password dies too.
    let (code, _, output) = w.run(&pb);
    assert_eq!(code, 0, "{output}");
    pga_in_vault(&w, "db", &blue, &green);
    assert!(!pg_login(&w, &blue, &blue_pw));
}

#[test]
fn postgres_alternating_no_password_reaches_output_journal_or_audit_trail() {
    let w = World::new();
    let ((blue, blue_pw), (green, green_pw)) = pga_pair(&w, "rk_altc", "db");
    let pb = pga_playbook(&w, "p.yaml", "breach", "", (&blue, &green), "");
    let journal = w.journal();
    let mut places: Vec<(String, Vec<u8>)> = Vec::new();
    for round in 0..2 {
        let out = w.command(&[
            "-vv",
            "run",
            pb.to_str().unwrap(),
            "--journal",
            journal.to_str().unwrap(),
        ]);
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        places.push((format!("stdout of round {round}"), out.stdout.into_bytes()));
        places.push((format!("stderr of round {round}"), out.stderr.into_bytes()));
    }
    let out = w.command(&["status", "--journal", journal.to_str().unwrap()]);
    places.push(("stdout of status".into(), out.stdout.into_bytes()));
    for entry in std::fs::read_dir(w.dir.path()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".yaml") && !name.ends_with(".key") {
            places.push((name, std::fs::read(entry.path()).unwrap()));
        }
    }
    let names: Vec<&str> = places.iter().map(|(n, _)| n.as_str()).collect();
    for must in ["journal.db", "audit.jsonl"] {
        assert!(names.contains(&must), "{must} scanned: {names:?}");
    }
    // Every password each role had: the first ones and both that rekey issued
    // (Vault versions 1 to 3), and the admin password.
    let mut canaries = vec![blue_pw, green_pw, w.env["REKEY_PG_ADMIN_PASSWORD"].clone()];
    for version in 1..=3 {
        let v = http(
            &w.env["VAULT_ADDR"],
            "GET",
            &format!("/v1/secret/data/{}/db?version={version}", w.prefix),
            &w.env["VAULT_TOKEN"],
            None,
        );
        canaries.push(v["data"]["data"]["value"].as_str().unwrap().to_owned());
    }
    let leaks = crate::canary::leaks(&canaries, &places);
    assert!(leaks.is_empty(), "passwords leaked:\n{}", leaks.join("\n"));
}

// ---------------------------------------------------------------- MySQL / MariaDB

fn my_opts(w: &World, user: &str, password: &str) -> mysql_async::Opts {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname(w.env["REKEY_MYSQL_HOST"].clone())
        .tcp_port(w.env["REKEY_MYSQL_PORT"].parse().unwrap())
        .user(Some(user))
        .pass(Some(password))
        .prefer_socket(false)
        .into()
}

fn my_admin(w: &World, sql: &str) {
    use mysql_async::prelude::Queryable;
    block(async {
        let mut c = mysql_async::Conn::new(my_opts(
            w,
            &w.env["REKEY_MYSQL_ADMIN_USER"],
            &w.env["REKEY_MYSQL_ADMIN_PASSWORD"],
        ))
        .await
        .unwrap();
        c.query_drop(sql).await.unwrap();
        c.disconnect().await.unwrap();
    })
}

/// Whether `user` logs in over TCP with `password` (error 1045 = refused).
fn my_login(w: &World, user: &str, password: &str) -> bool {
    block(async {
        match mysql_async::Conn::new(my_opts(w, user, password)).await {
            Ok(c) => {
                let _ = c.disconnect().await;
                true
            }
            Err(mysql_async::Error::Server(e)) if e.code == 1045 => false,
            Err(e) => panic!("login as {user}: {e}"),
        }
    })
}

/// A user with two host parts ('u'@'localhost' and 'u'@'%'), the same random
/// password on both, stored in Vault at `path`.
fn my_user(w: &World, base: &str, path: &str) -> (String, String) {
    let user = w.name(base);
    let password = random_hex(12);
    my_admin(
        w,
        &format!(
            "CREATE USER '{user}'@'localhost' IDENTIFIED BY '{password}', '{user}'@'%' IDENTIFIED BY '{password}'"
        ),
    );
    w.vault_put(path, json!({ "value": password }));
    (user, password)
}

/// The password hashes of every host part of `user`, by host.
fn my_hashes(w: &World, user: &str) -> Vec<(String, String)> {
    use mysql_async::prelude::Queryable;
    block(async {
        let mut c = mysql_async::Conn::new(my_opts(
            w,
            &w.env["REKEY_MYSQL_ADMIN_USER"],
            &w.env["REKEY_MYSQL_ADMIN_PASSWORD"],
        ))
        .await
        .unwrap();
        let rows: Vec<(String, String)> = c
            .exec(
                "SELECT Host, authentication_string FROM mysql.user WHERE User = ? ORDER BY Host",
                (user,),
            )
            .await
            .unwrap();
        c.disconnect().await.unwrap();
        rows
    })
}

#[test]
fn mysql_rotation_changes_every_host_part_and_stores_the_new_password_in_vault() {
    let w = World::new();
    let (user, old) = my_user(&w, "rk_app", "db");
    let pb = w.playbook(
        "p.yaml",
        "breach",
        "",
        &format!("  - {{ id: db, provider: my, account: {user}, vault_path: PREFIX/db }}\n"),
    );
    let (code, summary, output) = w.run(&pb);
    assert_eq!(code, 0, "{output}");
    assert_eq!(outcome(&summary, "db"), "rotated");
    let (data, version) = w.vault_get("db");
    let new = data["value"].as_str().unwrap();
    assert_eq!(version, 2);
    assert!(my_login(&w, &user, new), "the new password logs in");
    assert!(!my_login(&w, &user, &old), "the old password is refused");
    // Both host parts carry the same (new) password.
    let hashes = my_hashes(&w, &user);
    assert_eq!(hashes.len(), 2, "{hashes:?}");
    assert_eq!(
        hashes[0].1, hashes[1].1,
        "host parts drifted apart: {hashes:?}"
    );
    assert!(
        !output.contains(new) && !output.contains(&old),
        "a password leaked into the output"
    );
}

#[test]
fn mysql_verify_failure_rolls_back_to_the_old_password() {
    let w = World::new();
    let (user, old) = my_user(&w, "rk_vf", "db");
    // Only the '%' host part is changed, but a login from 127.0.0.1 matches
    // 'u'@'localhost', which keeps the old password: verify is refused.
    let pb = w.playbook(
        "p.yaml",
        "routine",
        "",
        &format!("  - {{ id: db, provider: my, account: {user}, vault_path: PREFIX/db, settings: {{ hosts: ['%'] }} }}\n"),
    );
    let before = my_hashes(&w, &user);
    let (code, summary, output) = w.run(&pb);
    assert_eq!(code, 1, "{output}");
    assert_eq!(outcome(&summary, "db"), "rolled_back", "{output}");
    assert!(my_login(&w, &user, &old), "the old password works");
    assert_eq!(
        w.vault_get("db"),
        (json!({ "value": old }), 1),
        "Vault was not touched"
    );
    let after = my_hashes(&w, &user);
    assert_eq!(before[0], after[0], "'localhost' untouched");
    // '%' has the old password again (same hash: mysql_native_password is unsalted).
    assert_eq!(before[1].0, after[1].0);
    assert_eq!(
        after[0].1, after[1].1,
        "'%' was set back to the old password: {after:?}"
    );
}

#[test]
fn mysql_plan_live_names_a_wrong_admin_password_a_missing_account_and_a_dead_server() {
    let w = World::new();
    let (user, _) = my_user(&w, "rk_pf", "db");
    let e = &w.env;
    let extra = format!(
        "  my_badpw: {{ type: mysql, admin: {{ env: REKEY_IT_BAD_MY_ADMIN }}, settings: {{ host: \"{h}\", port: {p}, tls: disabled }} }}\n  my_down: {{ type: mysql, admin: {{ env: REKEY_IT_MY_ADMIN }}, settings: {{ host: \"127.0.0.1\", port: 1, tls: disabled, connect_timeout: 3s }} }}\n",
        h = e["REKEY_MYSQL_HOST"],
        p = e["REKEY_MYSQL_PORT"]
    );
    let pb = w.playbook(
        "p.yaml",
        "breach",
        &extra,
        &format!("  - {{ id: good, provider: my, account: {user}, vault_path: PREFIX/db }}\n  - {{ id: missing, provider: my, account: nobody_{s}, vault_path: PREFIX/m }}\n  - {{ id: nohost, provider: my, account: {user}, vault_path: PREFIX/n, settings: {{ hosts: ['10.9.9.9'] }} }}\n  - {{ id: badpw, provider: my_badpw, account: {user}, vault_path: PREFIX/b }}\n  - {{ id: down, provider: my_down, account: {user}, vault_path: PREFIX/d }}\n", s = w.suffix),
    );
    let out = rekey()
        .env("VAULT_TOKEN", &e["VAULT_TOKEN"])
        .env("REKEY_IT_MY_ADMIN", &json!({ "username": e["REKEY_MYSQL_ADMIN_USER"], "password": e["REKEY_MYSQL_ADMIN_PASSWORD"] }).to_string())
        .env("REKEY_IT_BAD_MY_ADMIN", &json!({ "username": e["REKEY_MYSQL_ADMIN_USER"], "password": "not-the-admin-password" }).to_string())
        .env("REKEY_IT_PG_ADMIN", "{}")
        .args(["plan", pb.to_str().unwrap(), "--live"])
        .run();
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let line = |id: &str| preflight_line(&out.stdout, id);
    assert!(line("good").starts_with("ok"), "{}", out.stdout);
    let missing = line("missing");
    assert!(
        missing.starts_with("FAIL")
            && missing.contains("no account for the user")
            && missing.contains("`account`"),
        "{missing}"
    );
    let nohost = line("nohost");
    assert!(
        nohost.starts_with("FAIL") && nohost.contains("'10.9.9.9'") && nohost.contains("`hosts`"),
        "{nohost}"
    );
    let badpw = line("badpw");
    assert!(
        badpw.starts_with("FAIL")
            && badpw.contains("rejected the admin login")
            && badpw.contains("REKEY_IT_BAD_MY_ADMIN"),
        "{badpw}"
    );
    let down = line("down");
    assert!(
        down.starts_with("FAIL") && down.contains("cannot reach MySQL at 127.0.0.1:1"),
        "{down}"
    );
    assert!(
        !out.stdout.contains("not-the-admin-password")
            && !out.stderr.contains("not-the-admin-password")
    );
}

#[test]
fn mysql_run_killed_mid_rotation_is_finished_by_resume() {
    let w = World::new();
    let users: Vec<(String, String)> = (0..6)
        .map(|i| my_user(&w, &format!("rk_k{i}"), &format!("c{i}")))
        .collect();
    let creds: String = users
        .iter()
        .enumerate()
        .map(|(i, (u, _))| {
            format!(
                "  - {{ id: c{i}, provider: my_slow, account: {u}, vault_path: PREFIX/c{i} }}\n"
            )
        })
        .collect();
    let e = &w.env;
    let extra = format!(
        "  my_slow: {{ type: mysql, admin: {{ env: REKEY_IT_MY_ADMIN }}, rate: {{ per_second: 4, burst: 1 }}, concurrency: 2, settings: {{ host: \"{}\", port: {}, tls: disabled }} }}\n",
        e["REKEY_MYSQL_HOST"], e["REKEY_MYSQL_PORT"]
    );
    let pb = w.playbook("p.yaml", "breach", &extra, &creds);
    w.kill_at_then_resume(&pb, "changed");
    for (i, (user, old)) in users.iter().enumerate() {
        let value = w.vault_value(&format!("c{i}"));
        assert_ne!(&value, old, "c{i} was not rotated");
        assert!(my_login(&w, user, &value), "c{i}: Vault's password logs in");
        assert!(
            !my_login(&w, user, old),
            "c{i}: the old password is refused"
        );
    }
}

// ---------------------------------------------------------------- Redis

async fn rd_conn(w: &World) -> redis::aio::MultiplexedConnection {
    use redis::IntoConnectionInfo;
    let info = (
        w.env["REKEY_REDIS_HOST"].as_str(),
        w.env["REKEY_REDIS_PORT"].parse::<u16>().unwrap(),
    )
        .into_connection_info()
        .unwrap()
        .set_redis_settings(redis::RedisConnectionInfo::default().set_skip_set_lib_name());
    redis::Client::open(info)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Runs one command as `default` (no password in the test server).
fn rd(w: &World, args: &[&str]) -> redis::Value {
    block(async {
        let mut c = rd_conn(w).await;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut c).await.unwrap()
    })
}

/// Whether `AUTH user password` succeeds on a fresh connection.
fn rd_login(w: &World, user: &str, password: &str) -> bool {
    block(async {
        let mut c = rd_conn(w).await;
        match redis::cmd("AUTH")
            .arg(user)
            .arg(password)
            .query_async::<redis::Value>(&mut c)
            .await
        {
            Ok(_) => true,
            Err(e) if e.code() == Some("WRONGPASS") => false,
            Err(e) => panic!("AUTH as {user}: {e}"),
        }
    })
}

fn sha256_hex(value: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(value.as_bytes()))
}

/// The SHA-256 hashes of `user`'s passwords.
fn rd_passwords(w: &World, user: &str) -> Vec<String> {
    let answer = rd(w, &["ACL", "GETUSER", user]);
    let redis::Value::Array(items) = answer else {
        panic!("{answer:?}")
    };
    let pos = items
        .iter()
        .position(|v| matches!(v, redis::Value::BulkString(b) if b == b"passwords"))
        .unwrap();
    match &items[pos + 1] {
        redis::Value::Array(a) => a
            .iter()
            .map(|v| match v {
                redis::Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect(),
        other => panic!("{other:?}"),
    }
}

/// An ACL user with one random password, stored in Vault at `path` with its key
/// id (what rekey writes after a rotation).
fn rd_user(w: &World, base: &str, path: &str, flags: &str) -> (String, String) {
    let user = w.name(base);
    let password = random_hex(16);
    rd(
        w,
        &[
            "ACL",
            "SETUSER",
            &user,
            flags,
            &format!(">{password}"),
            "~*",
            "+@all",
        ],
    );
    w.vault_put(
        path,
        json!({ "value": password, "key_id": &sha256_hex(&password)[..16] }),
    );
    (user, password)
}

#[test]
fn redis_rotation_adds_a_password_then_removes_the_old_one() {
    let w = World::new();
    let (user, old) = rd_user(&w, "rk_app", "cache", "on");
    let pb = w.playbook(
        "p.yaml",
        "breach",
        "",
        &format!("  - {{ id: cache, provider: rd, account: {user}, vault_path: PREFIX/cache }}\n"),
    );
    let (code, summary, output) = w.run(&pb);
    assert_eq!(code, 0, "{output}");
    assert_eq!(outcome(&summary, "cache"), "rotated");
    let (data, version) = w.vault_get("cache");
    let new = data["value"].as_str().unwrap();
    assert_eq!(version, 2);
    assert_eq!(
        data["key_id"],
        &sha256_hex(new)[..16],
        "Vault names the new password's key id"
    );
    assert!(rd_login(&w, &user, new), "the new password works");
    assert!(!rd_login(&w, &user, &old), "the old password is retired");
    assert_eq!(
        rd_passwords(&w, &user),
        vec![sha256_hex(new)],
        "exactly the new password is left"
    );
    // The tag record of the retired password is gone; the new one's remains.
    let tags = format!(
        "{:?}",
        rd(&w, &["ACL", "GETUSER", &format!("rekey-tags:{user}")])
    );
    assert!(
        tags.contains(&sha256_hex(new)[..16]) && !tags.contains(&sha256_hex(&old)[..16]),
        "{tags}"
    );
    assert!(
        !output.contains(new) && !output.contains(&old),
        "a password leaked into the output"
    );
}

#[test]
fn redis_verify_failure_removes_the_new_password_and_keeps_the_old() {
    let w = World::new();
    // A disabled user (`off`) accepts ACL changes but refuses every AUTH, so the
    // new password is added and then fails verify.
    let (user, old) = rd_user(&w, "rk_vf", "cache", "off");
    let pb = w.playbook(
        "p.yaml",
        "routine",
        "",
        &format!("  - {{ id: cache, provider: rd, account: {user}, vault_path: PREFIX/cache }}\n"),
    );
    let (code, summary, output) = w.run(&pb);
    assert_eq!(code, 1, "{output}");
    assert_eq!(outcome(&summary, "cache"), "rolled_back", "{output}");
    assert_eq!(
        rd_passwords(&w, &user),
        vec![sha256_hex(&old)],
        "only the old password is left"
    );
    assert_eq!(w.vault_get("cache").1, 1, "Vault was not touched");
    rd(&w, &["ACL", "SETUSER", &user, "on"]);
    assert!(rd_login(&w, &user, &old), "the old password still works");
}

#[test]
fn redis_plan_live_names_a_wrong_admin_password_a_missing_user_a_missing_aclfile_and_a_dead_server()
{
    let w = World::new();
    let (user, _) = rd_user(&w, "rk_pf", "cache", "on");
    let admin = w.name("rk_adm");
    rd(
        &w,
        &[
            "ACL",
            "SETUSER",
            &admin,
            "on",
            ">right-admin-pw",
            "+@all",
            "~*",
        ],
    );
    let e = &w.env;
    let (h, p) = (&e["REKEY_REDIS_HOST"], &e["REKEY_REDIS_PORT"]);
    let extra = format!(
        "  rd_badpw: {{ type: redis, admin: {{ env: REKEY_IT_BAD_RD_ADMIN }}, settings: {{ host: \"{h}\", port: {p}, persist: none }} }}\n  rd_goodpw: {{ type: redis, admin: {{ env: REKEY_IT_RD_ADMIN }}, settings: {{ host: \"{h}\", port: {p}, persist: none }} }}\n  rd_save: {{ type: redis, settings: {{ host: \"{h}\", port: {p} }} }}\n  rd_down: {{ type: redis, settings: {{ host: \"127.0.0.1\", port: 1, persist: none, timeout: 3s }} }}\n"
    );
    let pb = w.playbook(
        "p.yaml",
        "breach",
        &extra,
        &format!("  - {{ id: good, provider: rd_goodpw, account: {user}, vault_path: PREFIX/c }}\n  - {{ id: missing, provider: rd, account: nobody_{s}, vault_path: PREFIX/m }}\n  - {{ id: badpw, provider: rd_badpw, account: {user}, vault_path: PREFIX/b }}\n  - {{ id: noaclfile, provider: rd_save, account: {user}, vault_path: PREFIX/s }}\n  - {{ id: down, provider: rd_down, account: {user}, vault_path: PREFIX/d }}\n", s = w.suffix),
    );
    let out = rekey()
        .env("VAULT_TOKEN", &e["VAULT_TOKEN"])
        .env(
            "REKEY_IT_RD_ADMIN",
            &json!({ "username": admin, "password": "right-admin-pw" }).to_string(),
        )
        .env(
            "REKEY_IT_BAD_RD_ADMIN",
            &json!({ "username": admin, "password": "not-the-admin-password" }).to_string(),
        )
        .env("REKEY_IT_PG_ADMIN", "{}")
        .env("REKEY_IT_MY_ADMIN", "{}")
        .args(["plan", pb.to_str().unwrap(), "--live"])
        .run();
    rd(&w, &["ACL", "DELUSER", &admin]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let line = |id: &str| preflight_line(&out.stdout, id);
    assert!(line("good").starts_with("ok"), "{}", out.stdout);
    let missing = line("missing");
    assert!(
        missing.starts_with("FAIL")
            && missing.contains("does not exist")
            && missing.contains("`account`"),
        "{missing}"
    );
    let badpw = line("badpw");
    assert!(
        badpw.starts_with("FAIL")
            && badpw.contains("rejected the admin login")
            && badpw.contains("REKEY_IT_BAD_RD_ADMIN"),
        "{badpw}"
    );
    let noaclfile = line("noaclfile");
    assert!(
        noaclfile.starts_with("FAIL")
            && noaclfile.contains("no aclfile")
            && noaclfile.contains("persist"),
        "{noaclfile}"
    );
    let down = line("down");
    assert!(
        down.starts_with("FAIL") && down.contains("cannot reach Redis at 127.0.0.1:1"),
        "{down}"
    );
    assert!(
        !out.stdout.contains("not-the-admin-password")
            && !out.stderr.contains("not-the-admin-password")
    );
    // The missing user was not created by the check.
    assert_eq!(
        rd(&w, &["ACL", "GETUSER", &format!("nobody_{}", w.suffix)]),
        redis::Value::Nil
    );
}

#[test]
fn redis_run_killed_mid_rotation_is_finished_by_resume() {
    let w = World::new();
    let users: Vec<(String, String)> = (0..6)
        .map(|i| rd_user(&w, &format!("rk_k{i}"), &format!("c{i}"), "on"))
        .collect();
    let creds: String = users
        .iter()
        .enumerate()
        .map(|(i, (u, _))| {
            format!(
                "  - {{ id: c{i}, provider: rd_slow, account: {u}, vault_path: PREFIX/c{i} }}\n"
            )
        })
        .collect();
    let e = &w.env;
    let extra = format!(
        "  rd_slow: {{ type: redis, rate: {{ per_second: 6, burst: 1 }}, concurrency: 2, settings: {{ host: \"{}\", port: {}, persist: none }} }}\n",
        e["REKEY_REDIS_HOST"], e["REKEY_REDIS_PORT"]
    );
    let pb = w.playbook("p.yaml", "breach", &extra, &creds);
    w.kill_at_then_resume(&pb, "staged");
    for (i, (user, old)) in users.iter().enumerate() {
        let value = w.vault_value(&format!("c{i}"));
        assert_ne!(&value, old, "c{i} was not rotated");
        assert!(rd_login(&w, user, &value), "c{i}: Vault's password works");
        assert!(
            !rd_login(&w, user, old),
            "c{i}: the old password is retired"
        );
        assert_eq!(
            rd_passwords(&w, user),
            vec![sha256_hex(&value)],
            "c{i}: orphan or leftover passwords"
        );
    }
}

// ---------------------------------------------------------------- canaries at trace level

/// The SCRAM verifier PostgreSQL stores for `role`.
fn pg_verifier(w: &World, role: &str) -> String {
    block(async {
        let admin = pg_admin_session(w).await;
        admin
            .query_one(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                &[&role],
            )
            .await
            .unwrap()
            .get(0)
    })
}

/// Every SQL provider rotates at `RUST_LOG=trace` (every crate's logs, the
/// database drivers' too): no password, SCRAM verifier, MySQL hash or Redis ACL
/// hash reaches stdout, stderr, the journal or the audit trail, in any encoding.
#[test]
fn sql_providers_at_rust_log_trace_leak_no_password_verifier_or_hash() {
    let w = World::new();
    let (role, role_pw) = pg_role(&w, "rk_trace", "pg");
    let ((blue, blue_pw), (green, green_pw)) = pga_pair(&w, "rk_tracealt", "pga");
    let (my_user_name, my_pw) = my_user(&w, "rk_trace", "my");
    let (rd_user_name, rd_pw) = rd_user(&w, "rk_trace", "rd", "on");
    let pb = w.playbook(
        "p.yaml",
        "breach",
        &pga_instance(&w, "pga", ""),
        &format!(
            "  - {{ id: pg, provider: pg, account: {role}, vault_path: PREFIX/pg }}\n  - {{ id: pga, provider: pga, account: {blue}, vault_path: PREFIX/pga, settings: {{ alternate_role: {green} }} }}\n  - {{ id: my, provider: my, account: {my_user_name}, vault_path: PREFIX/my }}\n  - {{ id: rd, provider: rd, account: {rd_user_name}, vault_path: PREFIX/rd }}\n"
        ),
    );
    let journal = w.journal();
    let out = w.command_env(
        &[
            "-vv",
            "run",
            pb.to_str().unwrap(),
            "--journal",
            journal.to_str().unwrap(),
        ],
        &[("RUST_LOG", "trace")],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("DEBUG"), "verbose logging was on");
    let mut canaries = vec![
        role_pw,
        blue_pw,
        green_pw,
        my_pw,
        rd_pw.clone(),
        sha256_hex(&rd_pw),
        w.env["REKEY_PG_ADMIN_PASSWORD"].clone(),
        w.env["REKEY_MYSQL_ADMIN_PASSWORD"].clone(),
    ];
    for path in ["pg", "pga", "my", "rd"] {
        let value = w.vault_value(path);
        canaries.push(sha256_hex(&value));
        canaries.push(value);
    }
    for r in [&role, &blue, &green] {
        canaries.extend(crate::canary::verifier_parts(&pg_verifier(&w, r)));
    }
    for (_, hash) in my_hashes(&w, &my_user_name) {
        canaries.push(hash.trim_start_matches('*').to_owned());
    }
    let places = crate::canary::places_in(
        w.dir.path(),
        &[
            ("stdout".into(), out.stdout.clone()),
            ("stderr".into(), out.stderr.clone()),
        ],
    );
    let leaks = crate::canary::leaks(&canaries, &places);
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}

// ---------------------------------------------------------------- Sessions (breach mode)
//
// A session opened with the old password before the run (the attacker's) is held
// by the server's own client; afterwards it is checked from outside with the
// server's own view (pg_stat_activity, SHOW PROCESSLIST, CLIENT LIST), and the
// passwords with the server's own client (psql, mariadb, redis-cli).

/// Waits (up to 15 s) until `ready` holds.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !ready() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Starts `client` (a server's own client running a long command) and waits
/// until `sessions` (the server's count of the account's sessions) shows it.
fn hold_session(mut client: Command, sessions: impl Fn() -> usize) -> KillOnDrop {
    let before = sessions();
    let held = KillOnDrop(
        client
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the client's session is open", || sessions() > before);
    held
}

/// Runs `client` (a server's own client that logs in and prints who it is):
/// `true` when it is logged in as `who`, `false` when the server refused the
/// password (`refused` in what it printed); anything else fails the test.
fn client_login(mut client: Command, who: &str, refused: &str) -> bool {
    let out = client.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        // psql prints the role, mariadb `user@host`.
        assert_eq!(stdout.trim().split('@').next(), Some(who), "{stdout}");
        return true;
    }
    assert!(
        stderr.contains(refused),
        "the client failed otherwise: {stderr}"
    );
    false
}

/// After a breach run: the audit trail recorded one `end_sessions` step that
/// ended `count` sessions, and neither password reached the output, the journal
/// or the trail.
fn assert_ended_and_not_leaked(w: &World, output: &str, count: u64, passwords: [String; 2]) {
    let ended = trail_outcomes(w, "end_sessions");
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0]["outcome"], "ok", "{}", ended[0]);
    assert_eq!(ended[0]["detail"]["ended"], count, "{}", ended[0]);
    let mut places = vec![("output".to_owned(), output.as_bytes().to_vec())];
    for entry in std::fs::read_dir(w.dir.path()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".yaml") && !name.ends_with(".key") {
            places.push((name, std::fs::read(entry.path()).unwrap()));
        }
    }
    let leaks = crate::canary::leaks(&passwords, &places);
    assert!(leaks.is_empty(), "passwords leaked:\n{}", leaks.join("\n"));
}

/// The audit trail's outcome records of `step` (beside the journal).
fn trail_outcomes(w: &World, step: &str) -> Vec<Value> {
    crate::support::trail_outcomes(w.dir.path(), step)
}

/// A breach-mode playbook of one credential `id` (Vault path `PREFIX/id`).
fn breach_playbook(w: &World, extra: &str, id: &str, provider: &str, account: &str) -> PathBuf {
    w.playbook(
        "p.yaml",
        "breach",
        extra,
        &format!("  - {{ id: {id}, provider: {provider}, account: {account}, vault_path: PREFIX/{id} }}\n"),
    )
}

/// Runs a breach-mode playbook of one credential `id`, which must end rotated.
fn breach_run(w: &World, playbook: &Path, id: &str) -> String {
    let (code, summary, output) = w.run(playbook);
    assert_eq!(code, 0, "{output}");
    assert_eq!(outcome(&summary, id), "rotated", "{output}");
    output
}

/// PostgreSQL's own client as `role` with `password`, running `sql`.
fn psql(w: &World, role: &str, password: &str, sql: &str) -> Command {
    let mut c = Command::new("psql");
    c.arg(format!(
        "host={} port={} user={role} dbname=postgres connect_timeout=5",
        w.env["REKEY_PG_HOST"], w.env["REKEY_PG_PORT"]
    ))
    .args(["-X", "-q", "-t", "-A", "-c", sql])
    .env("PGPASSWORD", password)
    .stdin(Stdio::null());
    c
}

fn psql_login(w: &World, role: &str, password: &str) -> bool {
    client_login(
        psql(w, role, password, "SELECT current_user"),
        role,
        "password authentication failed",
    )
}

/// The role's backends, as PostgreSQL shows them.
fn pg_backends(w: &World, role: &str) -> usize {
    block(async {
        let n: i64 = pg_admin_session(w)
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                &[&role],
            )
            .await
            .unwrap()
            .get(0);
        n as usize
    })
}

/// A psql session logged in as `role`, held open by a long query.
fn psql_session(w: &World, role: &str, password: &str) -> KillOnDrop {
    hold_session(psql(w, role, password, "SELECT pg_sleep(600)"), || {
        pg_backends(w, role)
    })
}

/// An instance `name` of `pg` with other admin variable and settings.
fn pg_instance(w: &World, name: &str, admin_env: &str, settings: &str) -> String {
    format!(
        "  {name}: {{ type: postgres, admin: {{ env: {admin_env} }}, settings: {{ host: \"{}\", port: {}, sslmode: disable{settings} }} }}\n",
        w.env["REKEY_PG_HOST"], w.env["REKEY_PG_PORT"]
    )
}

#[test]
fn postgres_breach_run_ends_the_sessions_opened_with_the_old_password() {
    let w = World::new();
    let (role, old) = pg_role(&w, "rk_ses", "db");
    let mut attacker = psql_session(&w, &role, &old);
    assert_eq!(pg_backends(&w, &role), 1);
    let output = breach_run(&w, &breach_playbook(&w, "", "db", "pg", &role), "db");
    assert_eq!(
        pg_backends(&w, &role),
        0,
        "pg_stat_activity shows no session"
    );
    wait_until("psql notices its session ended", || attacker.exited());
    let new = w.vault_value("db");
    assert!(!psql_login(&w, &role, &old), "the old password is refused");
    assert!(psql_login(&w, &role, &new), "Vault's password logs in");
    assert_ended_and_not_leaked(&w, &output, 1, [old, new]);
}

#[test]
fn postgres_end_sessions_false_leaves_the_session_open_and_the_run_says_so() {
    let w = World::new();
    let (role, old) = pg_role(&w, "rk_keep", "db");
    let mut attacker = psql_session(&w, &role, &old);
    let extra = pg_instance(&w, "pg_keep", "REKEY_IT_PG_ADMIN", ", end_sessions: false");
    let pb = breach_playbook(&w, &extra, "db", "pg_keep", &role);
    let plan = w.command(&["plan", pb.to_str().unwrap()]);
    assert!(
        plan.stdout.contains("promote > clear_staging") && !plan.stdout.contains("end_sessions"),
        "{}",
        plan.stdout
    );
    let output = breach_run(&w, &pb, "db");
    assert_eq!(pg_backends(&w, &role), 1, "the session is still open");
    assert!(!attacker.exited());
    let warning = output
        .lines()
        .find(|l| l.contains("WARN") && l.contains("credential=db"))
        .unwrap_or_else(|| panic!("no warning naming the credential: {output}"));
    assert!(
        warning.contains("end_sessions: false")
            && warning.contains(&format!(
                "pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename IN ('{role}')"
            )),
        "{warning}"
    );
    let skipped = trail_outcomes(&w, "end_sessions");
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0]["detail"]["skipped"].is_string(),
        "{}",
        skipped[0]
    );
}

#[test]
fn postgres_routine_run_leaves_sessions_alone() {
    let w = World::new();
    let (role, old) = pg_role(&w, "rk_rout", "db");
    let mut session = psql_session(&w, &role, &old);
    let pb = w.playbook(
        "p.yaml",
        "routine",
        "",
        &format!("  - {{ id: db, provider: pg, account: {role}, vault_path: PREFIX/db }}\n"),
    );
    let (code, summary, output) = w.run(&pb);
    assert_eq!(code, 0, "{output}");
    assert_eq!(outcome(&summary, "db"), "rotated");
    assert_eq!(pg_backends(&w, &role), 1);
    assert!(!session.exited());
    assert!(trail_outcomes(&w, "end_sessions").is_empty());
    assert!(!output.contains("WARN"), "{output}");
}

/// An admin role that may change passwords (CREATEROLE) but not end other roles'
/// sessions (no superuser, no pg_signal_backend): `plan --live` says so, and the
/// run promotes the new password but quarantines the credential with the
/// statement to run, never "rotated".
#[test]
fn postgres_breach_run_quarantines_when_the_admin_may_not_end_sessions() {
    let w = World::new();
    let (role, old) = pg_role(&w, "rk_nosig", "db");
    let admin = w.name("rk_weak_admin");
    let admin_pw = random_hex(12);
    pg_admin(
        &w,
        &format!("CREATE ROLE {admin} LOGIN CREATEROLE PASSWORD '{admin_pw}'"),
    );
    let _attacker = psql_session(&w, &role, &old);
    let extra = pg_instance(&w, "pg_weak", "REKEY_IT_WEAK_ADMIN", "");
    let pb = breach_playbook(&w, &extra, "db", "pg_weak", &role);
    let weak = json!({ "username": admin, "password": admin_pw }).to_string();
    let e = &w.env;
    let command = |args: &[&str]| {
        rekey()
            .env("VAULT_TOKEN", &e["VAULT_TOKEN"])
            .env("REKEY_IT_WEAK_ADMIN", &weak)
            .env("REKEY_IT_PG_ADMIN", "{}")
            .env("REKEY_IT_MY_ADMIN", "{}")
            .args(args)
            .run()
    };
    let plan = command(&["plan", pb.to_str().unwrap(), "--live"]);
    assert_eq!(plan.code, 1, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout
            .contains("promote > end_sessions > clear_staging"),
        "{}",
        plan.stdout
    );
    let line = preflight_line(&plan.stdout, "db");
    assert!(line.starts_with("ok"), "the provider check passes: {line}");
    let sessions = plan
        .stdout
        .lines()
        .find(|l| l.contains(" db sessions"))
        .unwrap_or_else(|| panic!("no sessions check: {}", plan.stdout));
    assert!(
        sessions.trim().starts_with("FAIL") && sessions.contains("pg_signal_backend"),
        "{sessions}"
    );
    let journal = w.journal();
    let out = command(&[
        "run",
        pb.to_str().unwrap(),
        "--journal",
        journal.to_str().unwrap(),
        "--format",
        "json",
    ]);
    pg_admin(&w, &format!("DROP ROLE {admin}"));
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    let summary: Value = serde_json::from_str(&out.stdout).unwrap();
    let result = &summary["results"][0];
    assert_eq!(result["outcome"], "quarantined", "{summary}");
    let reason = result["reason"].as_str().unwrap();
    assert!(
        reason.contains("could not be ended") && reason.contains("pg_signal_backend"),
        "{reason}"
    );
    let action = result["action"].as_str().unwrap();
    assert!(
        action.contains(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename IN ('{role}')"
        )),
        "{action}"
    );
    assert_eq!(pg_backends(&w, &role), 1, "the session is still there");
    // The password itself was changed and promoted: only the sessions are left.
    let new = w.vault_value("db");
    assert!(psql_login(&w, &role, &new) && !psql_login(&w, &role, &old));
    let failed = trail_outcomes(&w, "end_sessions");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["outcome"], "failed");
}

#[test]
fn postgres_alternating_breach_run_ends_the_retired_role_s_sessions_only() {
    let w = World::new();
    let ((blue, blue_pw), (green, green_pw)) = pga_pair(&w, "rk_altses", "db");
    let mut attacker = psql_session(&w, &blue, &blue_pw);
    let mut other = psql_session(&w, &green, &green_pw);
    let pb = pga_playbook(&w, "p.yaml", "breach", "", (&blue, &green), "");
    let (code, summary, output) = w.run(&pb);
    assert_eq!(code, 0, "{output}");
    assert_eq!(outcome(&summary, "db"), "rotated", "{output}");
    // blue was retired: its session is gone. green (the role now in use) got a
    // new password, and its session, whatever opened it, is not rekey's to end.
    assert_eq!(pg_backends(&w, &blue), 0);
    wait_until("psql notices its session ended", || attacker.exited());
    assert_eq!(pg_backends(&w, &green), 1);
    assert!(!other.exited());
    assert!(!psql_login(&w, &blue, &blue_pw));
    let new = w.vault_value("db");
    assert_ended_and_not_leaked(&w, &output, 1, [blue_pw, new]);
}

/// MariaDB's own client as `user` with `password` (TCP, as consumers connect).
fn mariadb(w: &World, user: &str, password: &str, sql: &str) -> Command {
    let mut c = Command::new("mariadb");
    c.args([
        "--protocol=TCP",
        "-h",
        &w.env["REKEY_MYSQL_HOST"],
        "-P",
        &w.env["REKEY_MYSQL_PORT"],
        "-u",
        user,
        "--connect-timeout=5",
        "-N",
        "-B",
        "-e",
        sql,
    ])
    .env("MYSQL_PWD", password)
    .stdin(Stdio::null());
    c
}

fn mariadb_login(w: &World, user: &str, password: &str) -> bool {
    client_login(
        mariadb(w, user, password, "SELECT CURRENT_USER()"),
        user,
        "Access denied",
    )
}

/// The user's connections, as SHOW PROCESSLIST shows them to the admin.
fn my_processes(w: &World, user: &str) -> usize {
    use mysql_async::prelude::Queryable;
    block(async {
        let mut c = mysql_async::Conn::new(my_opts(
            w,
            &w.env["REKEY_MYSQL_ADMIN_USER"],
            &w.env["REKEY_MYSQL_ADMIN_PASSWORD"],
        ))
        .await
        .unwrap();
        let rows: Vec<mysql_async::Row> = c.query("SHOW PROCESSLIST").await.unwrap();
        c.disconnect().await.unwrap();
        rows.iter()
            .filter(|r| r.get::<Option<String>, _>("User").flatten().as_deref() == Some(user))
            .count()
    })
}

#[test]
fn mysql_breach_run_kills_the_connections_opened_with_the_old_password() {
    let w = World::new();
    let (user, old) = my_user(&w, "rk_ses", "db");
    let hold = || {
        hold_session(mariadb(&w, &user, &old, "SELECT SLEEP(600)"), || {
            my_processes(&w, &user)
        })
    };
    let (mut first, mut second) = (hold(), hold());
    assert_eq!(my_processes(&w, &user), 2);
    let output = breach_run(&w, &breach_playbook(&w, "", "db", "my", &user), "db");
    assert_eq!(my_processes(&w, &user), 0, "SHOW PROCESSLIST shows none");
    wait_until("the mariadb clients notice", || {
        first.exited() && second.exited()
    });
    let new = w.vault_value("db");
    assert!(
        !mariadb_login(&w, &user, &old),
        "the old password is refused"
    );
    assert!(mariadb_login(&w, &user, &new), "Vault's password logs in");
    assert_ended_and_not_leaked(&w, &output, 2, [old, new]);
}

/// redis-cli (Redis's own client) as `user`, password from the environment.
fn redis_cli(w: &World, user: &str, password: &str, args: &[&str]) -> Command {
    let mut c = Command::new("redis-cli");
    c.args([
        "-h",
        &w.env["REKEY_REDIS_HOST"],
        "-p",
        &w.env["REKEY_REDIS_PORT"],
        "--user",
        user,
    ])
    .args(args)
    .env("REDISCLI_AUTH", password)
    .stdin(Stdio::null());
    c
}

/// Whether redis-cli is logged in as `user` with `password`. redis-cli falls
/// back to `default` when AUTH fails and still exits 0: ACL WHOAMI tells, not
/// its exit code.
fn redis_cli_login(w: &World, user: &str, password: &str) -> bool {
    let out = redis_cli(w, user, password, &["ACL", "WHOAMI"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == user
}

/// The user's connections, as CLIENT LIST shows them.
fn rd_clients(w: &World, user: &str) -> usize {
    let redis::Value::BulkString(list) = rd(w, &["CLIENT", "LIST"]) else {
        panic!("CLIENT LIST")
    };
    String::from_utf8_lossy(&list)
        .lines()
        .filter(|l| l.split(' ').any(|f| f == format!("user={user}")))
        .count()
}

/// A redis-cli connection as `user`, held open by a blocking pop.
fn redis_cli_session(w: &World, user: &str, password: &str) -> KillOnDrop {
    let key = format!("rekey-it:{user}");
    hold_session(
        redis_cli(w, user, password, &["BLPOP", &key, "600"]),
        || rd_clients(w, user),
    )
}

#[test]
fn redis_breach_run_kills_the_connections_opened_with_the_old_password() {
    let w = World::new();
    let (user, old) = rd_user(&w, "rk_ses", "cache", "on");
    let mut attacker = redis_cli_session(&w, &user, &old);
    assert_eq!(rd_clients(&w, &user), 1);
    let output = breach_run(&w, &breach_playbook(&w, "", "cache", "rd", &user), "cache");
    assert_eq!(rd_clients(&w, &user), 0, "CLIENT LIST shows none");
    wait_until("redis-cli notices", || attacker.exited());
    let new = w.vault_value("cache");
    assert!(
        !redis_cli_login(&w, &user, &old),
        "the old password is refused"
    );
    assert!(redis_cli_login(&w, &user, &new), "Vault's password logs in");
    assert_ended_and_not_leaked(&w, &output, 1, [old, new]);
}

/// The first day rekey is used is usually a breach day: the user holds the
/// password the attacker knows and a stray one, Vault holds the first by hand
/// with no `key_id`. After the run only the new password works, and the
/// attacker's connection is gone.
/// A create that half happened, on the real Redis: `ACL SETUSER` adds the
/// password, then the persist step fails (the suite's Redis runs without a
/// config file, so `CONFIG REWRITE` answers an error). The credential is rolled
/// back and, as redis-cli sees it, the user holds only the old password, which
/// still logs in (the `scripts/chaos` finding behind
/// `protocol::a_create_that_half_happened_leaves_no_key_nobody_holds`).
#[test]
fn redis_a_create_whose_persist_fails_leaves_only_the_old_password() {
    let w = World::new();
    let (user, old) = rd_user(&w, "rk_half", "cache", "on");
    let pb = w.playbook(
        "p.yaml",
        "breach",
        &format!(
            "  rdw: {{ type: redis, settings: {{ host: \"{}\", port: {}, persist: config_rewrite }} }}\n",
            w.env["REKEY_REDIS_HOST"], w.env["REKEY_REDIS_PORT"]
        ),
        &format!("  - {{ id: cache, provider: rdw, account: {user}, vault_path: PREFIX/cache }}\n"),
    );
    let (code, summary, output) = w.run(&pb);
    assert_eq!(code, 1, "{output}");
    assert_eq!(outcome(&summary, "cache"), "rolled_back", "{output}");
    assert_eq!(
        rd_passwords(&w, &user),
        vec![sha256_hex(&old)],
        "no password nobody holds: {output}"
    );
    assert!(
        redis_cli_login(&w, &user, &old),
        "the old password still works"
    );
    assert_eq!(w.vault_value("cache"), old, "Vault keeps the old value");
}

#[test]
fn redis_first_adoption_during_a_breach_leaves_only_the_new_password() {
    let w = World::new();
    let user = w.name("rk_adopt");
    let (known, stray) = (random_hex(16), random_hex(16));
    rd(
        &w,
        &[
            "ACL",
            "SETUSER",
            &user,
            "on",
            &format!(">{known}"),
            &format!(">{stray}"),
            "~*",
            "+@all",
        ],
    );
    w.vault_put("cache", json!({ "value": known }));
    let mut attacker = redis_cli_session(&w, &user, &stray);
    let output = breach_run(&w, &breach_playbook(&w, "", "cache", "rd", &user), "cache");
    let new = w.vault_value("cache");
    assert_eq!(rd_passwords(&w, &user), vec![sha256_hex(&new)], "{output}");
    for old in [&known, &stray] {
        assert!(
            !redis_cli_login(&w, &user, old),
            "an old password still works"
        );
    }
    assert!(redis_cli_login(&w, &user, &new));
    assert_eq!(rd_clients(&w, &user), 0);
    wait_until("redis-cli notices", || attacker.exited());
}

/// Three responders run the same breach playbook at once, each with its own
/// journal (the default journal is relative to the current directory). Before the
/// Vault lock, rounds like this left PostgreSQL roles whose Vault value PostgreSQL
/// rejected. Now one process rotates at a time; the others skip, naming the
/// holder, or rotate after it. Checked with psql: Vault's value logs in.
#[test]
fn concurrent_runs_with_different_journals_never_leave_a_vault_value_postgres_rejects() {
    let w = World::new();
    let (role, old) = pg_role(&w, "rk_race", "db");
    let pb = w.playbook(
        "p.yaml",
        "breach",
        "",
        &format!("  - {{ id: db, provider: pg, account: {role}, vault_path: PREFIX/db }}\n"),
    );
    for round in 0..3 {
        let outs: Vec<(i32, String)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..3)
                .map(|i| {
                    let journal = w.dir.path().join(format!("j{round}-{i}.db"));
                    let pb = &pb;
                    let w = &w;
                    scope.spawn(move || {
                        let out = w.command(&[
                            "run",
                            pb.to_str().unwrap(),
                            "--journal",
                            journal.to_str().unwrap(),
                            "--format",
                            "json",
                        ]);
                        let summary: Value =
                            serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
                        (
                            out.code,
                            format!(
                                "{} {} {}",
                                outcome(&summary, "db"),
                                summary["results"][0]["reason"].as_str().unwrap_or_default(),
                                out.stderr
                            ),
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (code, said) in &outs {
            assert!(
                said.starts_with("rotated") || said.contains("another rekey process holds"),
                "round {round}: exit {code}: {said}"
            );
        }
        assert!(
            outs.iter().any(|(_, s)| s.starts_with("rotated")),
            "{outs:?}"
        );
        let (data, _) = w.vault_get("db");
        let value = data["value"].as_str().unwrap();
        assert!(
            psql_login(&w, &role, value),
            "round {round}: psql refuses Vault's value"
        );
        assert!(
            !psql_login(&w, &role, &old),
            "the old password still logs in"
        );
    }
}

/// A redis-server of this test's own, with an aclfile under `dir`, on `port`.
fn redis_with_aclfile(dir: &Path, port: u16) -> KillOnDrop {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--aclfile")
        .arg(dir.join("users.acl"))
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = KillOnDrop(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(!server.exited(), "redis-server did not start");
        assert!(
            std::time::Instant::now() < deadline,
            "redis-server did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    server
}

/// Found by `scripts/chaos` (iteration 124, breach mode): a run killed inside
/// the old password's revoke, after `ACL SETUSER u !<hash>` and before `ACL
/// SAVE`. The password was gone from memory, so `resume` (which now asks for
/// that revoke again) found nothing to remove, and the Redis provider then did
/// not persist: the restart of Redis read the aclfile and the old, compromised
/// password logged in again. Asked to revoke a password already gone, the
/// provider now persists. Checked with redis-cli after a restart of a
/// redis-server with an aclfile (the suite's own Redis has none).
#[test]
fn redis_a_revoke_that_stopped_before_acl_save_is_saved_when_asked_again() {
    use rekey::provider::Provider;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("users.acl"),
        "user default on nopass ~* &* +@all\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cli = |user: &str, password: &str, args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--user", user])
            .args(args)
            .env("REDISCLI_AUTH", password)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let logs_in = |password: &str| cli("app", password, &["ACL", "WHOAMI"]) == "app";
    let (old, new) = ("old-password-of-app", "new-password-of-app");
    let mut server = redis_with_aclfile(dir.path(), port);
    let admin = |args: &[&str]| cli("default", "", args);
    assert_eq!(
        admin(&[
            "ACL",
            "SETUSER",
            "app",
            "on",
            &format!(">{old}"),
            &format!(">{new}"),
            "~*",
            "+@all"
        ]),
        "OK"
    );
    assert_eq!(admin(&["ACL", "SAVE"]), "OK");
    // The revoke that stopped half-way: removed in memory, never saved.
    assert_eq!(admin(&["ACL", "SETUSER", "app", &format!("<{old}")]), "OK");
    assert!(!logs_in(old) && logs_in(new));

    let mut settings = indexmap::IndexMap::new();
    settings.insert("host".to_owned(), json!("127.0.0.1"));
    settings.insert("port".to_owned(), json!(port));
    settings.insert("persist".to_owned(), json!("acl_save"));
    let provider = rekey::provider::redis::Redis::new("rd", &settings, None).unwrap();
    let target = rekey::provider::Target {
        credential: "app",
        account: Some("app"),
        settings: &indexmap::IndexMap::new(),
    };
    let old_id = rekey::provider::redis::key_id(&rekey::secret::Secret::new(old));
    block(provider.revoke(target, &old_id)).unwrap();

    // Redis restarted: what it reads back from its aclfile is what holds.
    drop(server);
    server = redis_with_aclfile(dir.path(), port);
    assert!(logs_in(new), "the new password survives the restart");
    assert!(
        !logs_in(old),
        "the old password came back from the aclfile after a restart"
    );
    drop(server);
}

/// A TCP proxy to the suite's PostgreSQL with the worst realistic timing: it
/// forwards the first `ALTER ROLE` to the server, then drops the server's answer
/// and closes every connection, old and new (each accepted and closed at once),
/// until `heal`. The change lands; nobody hears of it.
struct AnswerLostProxy {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl AnswerLostProxy {
    fn start(upstream: (String, u16)) -> AnswerLostProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering::SeqCst;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (c, a) = (cut.clone(), armed.clone());
        // Detached: it ends with the test process, as the suite's own stubs do.
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c.load(SeqCst) {
                    continue; // closed at once
                }
                let Ok(server) = std::net::TcpStream::connect((upstream.0.as_str(), upstream.1))
                else {
                    continue;
                };
                let (c1, a1) = (c.clone(), a.clone());
                let (mut from_client, mut to_server) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = from_client.read(&mut buf) {
                        if n == 0 || c1.load(SeqCst) {
                            break;
                        }
                        let alter = buf[..n].windows(10).any(|w| w == b"ALTER ROLE");
                        if alter && a1.swap(false, SeqCst) {
                            c1.store(true, SeqCst); // its answer is never forwarded
                        }
                        if to_server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = from_client.shutdown(std::net::Shutdown::Both);
                });
                let c2 = c.clone();
                let (mut from_server, mut to_client) = (server, client);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = from_server.read(&mut buf) {
                        if n == 0 || c2.load(SeqCst) || to_client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to_client.shutdown(std::net::Shutdown::Both);
                    let _ = from_server.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        AnswerLostProxy { port, cut, armed }
    }

    fn heal(&self) {
        self.armed.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Chaos finding 11 against the real PostgreSQL: `ALTER ROLE` reaches the
/// server and commits, its answer is lost, and the server cannot be reached for
/// the retries or the probe of the new password. Before the fix, rekey called
/// that "rolled back" and deleted the staging entry while the new password was
/// in force and nobody held it. Now it is a resumable quarantine, and `resume`
/// (with the server reachable again) promotes the password that logs in.
/// Checked with PostgreSQL's own logins, not through rekey.
#[test]
fn postgres_a_password_change_whose_answer_was_lost_is_finished_by_resume() {
    let w = World::new();
    let (role, old) = pg_role(&w, "rk_lost", "db");
    let proxy = AnswerLostProxy::start((
        w.env["REKEY_PG_HOST"].clone(),
        w.env["REKEY_PG_PORT"].parse().unwrap(),
    ));
    let pb = w.playbook(
        "p.yaml",
        "breach",
        &format!(
            "  pgx: {{ type: postgres, admin: {{ env: REKEY_IT_PG_ADMIN }}, settings: {{ host: \"127.0.0.1\", port: {}, sslmode: disable, connect_timeout: 2s }} }}\n",
            proxy.port
        ),
        &format!("  - {{ id: db, provider: pgx, account: {role}, vault_path: PREFIX/db }}\n"),
    );
    let (code, summary, output) = w.run(&pb);
    assert_ne!(code, 0, "{output}");
    assert_eq!(outcome(&summary, "db"), "quarantined", "{output}");
    assert!(
        !pg_login(&w, &role, &old),
        "the change landed: the old password no longer logs in"
    );
    assert_eq!(
        w.vault_get("db").0["value"],
        old.as_str(),
        "Vault still holds the old one"
    );

    proxy.heal();
    let out = w.command(&["resume", "--journal", w.journal().to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let value = w.vault_get("db").0["value"].as_str().unwrap().to_owned();
    assert_ne!(value, old);
    assert!(
        pg_login(&w, &role, &value),
        "the password Vault holds logs in"
    );
}
