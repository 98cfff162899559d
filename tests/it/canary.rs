//! The canary test: rotations through the real binary, at the most verbose log
//! levels, with recognisable secret values everywhere a secret can be (old values,
//! admin credentials from the environment and from Vault, the Vault token itself,
//! every new value rekey or a provider made). Afterwards stdout, stderr, the
//! journal (database and write-ahead log), the audit trail and its side files are
//! scanned for each canary, raw and base64-, hex- and URL-encoded: none may appear.
//!
//! Scenarios are a list: a provider or sink added later adds one entry to
//! `scenarios()` (its playbook lines, what to seed, which commands to run).

use crate::support::{KillOnDrop, rekey};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;

pub use crate::support::services;

/// OpenBao through the tests' one client ([`crate::support::bao_request`]).
pub fn http(addr: &str, method: &str, path: &str, token: &str, body: Option<&Value>) -> Value {
    crate::support::bao_request(addr, token, method, path, body).1
}

/// One place to run scenarios: a directory (journal, trail, sandbox state), a
/// Vault prefix, a canary Vault token, and everything the binary printed.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub prefix: String,
    pub env: HashMap<String, String>,
    /// A Vault token with a recognisable id: it must never be printed or stored.
    pub token: String,
    pub canaries: Vec<String>,
    pub outputs: Vec<(String, String)>,
}

impl Lab {
    pub fn new() -> Lab {
        let env = services();
        let tag = hex::encode(rand::random::<[u8; 6]>());
        let token = format!("CANARYvaulttoken{tag}");
        http(
            &env["VAULT_ADDR"],
            "POST",
            "/v1/auth/token/create",
            &env["VAULT_TOKEN"],
            Some(&json!({ "id": token, "policies": ["root"], "display_name": "canary-operator" })),
        );
        Lab {
            dir: tempfile::tempdir().unwrap(),
            prefix: format!("canary-{tag}"),
            env,
            canaries: vec![token.clone()],
            token,
            outputs: Vec::new(),
        }
    }

    pub fn journal(&self) -> PathBuf {
        self.dir.path().join("journal.db")
    }

    pub fn trail(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    /// Writes `value` (a canary) to Vault at `path` under the prefix.
    pub fn seed(&mut self, path: &str, data: Value) {
        for v in data.as_object().unwrap().values() {
            if let Some(s) = v.as_str()
                && s.starts_with("CANARY")
            {
                self.canaries.push(s.to_owned());
            }
        }
        http(
            &self.env["VAULT_ADDR"],
            "POST",
            &format!("/v1/secret/data/{}/{path}", self.prefix),
            &self.env["VAULT_TOKEN"],
            Some(&json!({ "data": data })),
        );
    }

    /// Every value of every version under the prefix (new values rekey wrote,
    /// staged ones, old ones): all of them are canaries too.
    pub fn harvest(&mut self) {
        let addr = self.env["VAULT_ADDR"].clone();
        let root = self.env["VAULT_TOKEN"].clone();
        let mut pending = vec![self.prefix.clone(), "rekey/staging".to_owned()];
        while let Some(dir) = pending.pop() {
            let list = http(
                &addr,
                "LIST",
                &format!("/v1/secret/metadata/{dir}"),
                &root,
                None,
            );
            for key in list["data"]["keys"].as_array().cloned().unwrap_or_default() {
                let key = key.as_str().unwrap_or_default();
                let path = format!("{dir}/{key}");
                if key.ends_with('/') {
                    pending.push(path.trim_end_matches('/').to_owned());
                    continue;
                }
                let meta = http(
                    &addr,
                    "GET",
                    &format!("/v1/secret/metadata/{path}"),
                    &root,
                    None,
                );
                let latest = meta["data"]["current_version"].as_u64().unwrap_or(0);
                for v in 1..=latest {
                    let entry = http(
                        &addr,
                        "GET",
                        &format!("/v1/secret/data/{path}?version={v}"),
                        &root,
                        None,
                    );
                    if let Some(value) = entry["data"]["data"]["value"].as_str() {
                        self.canaries.push(value.to_owned());
                    }
                }
            }
        }
    }

    /// Runs `rekey ARGS` with the canary token, `-vv`, and `extra_env`; keeps what
    /// it printed for the scan. Returns (exit code, stdout, stderr).
    pub fn rekey(&mut self, args: &[&str], extra_env: &[(&str, &str)]) -> (i32, String, String) {
        let mut cmd = rekey()
            .env("VAULT_TOKEN", &self.token)
            .args(["-vv"])
            .args(args);
        for (k, v) in extra_env {
            cmd = cmd.env(k, v);
        }
        let out = cmd.run();
        self.outputs.push((
            format!("stdout of rekey {}", args.join(" ")),
            out.stdout.clone(),
        ));
        self.outputs.push((
            format!("stderr of rekey {}", args.join(" ")),
            out.stderr.clone(),
        ));
        (out.code, out.stdout, out.stderr)
    }

    pub fn playbook(&self, name: &str, mode: &str, providers: &str, credentials: &str) -> String {
        let d = self.dir.path().display();
        let text = format!(
            "version: 1\nname: {name}\nincident: {{ mode: {mode} }}\nvault: {{ address: \"{addr}\" }}\nproviders:\n{providers}\ncredentials:\n{credentials}",
            addr = self.env["VAULT_ADDR"],
        )
        .replace("PREFIX", &self.prefix)
        .replace("DIR", &d.to_string());
        let path = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// The run command with this lab's journal and trail.
    pub fn run_args<'a>(&'a self, playbook: &'a str, journal: &'a str) -> Vec<&'a str> {
        vec!["run", playbook, "--journal", journal, "--format", "json"]
    }

    /// Every file rekey wrote in the lab directory (journal, its WAL, the trail and
    /// its head), as (name, bytes). Key files hold random keys, not canaries.
    pub fn written_files(&self) -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let path = entry.path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".yaml") || name.ends_with(".json") || name.ends_with(".key") {
                continue;
            }
            files.push((name, std::fs::read(&path).unwrap_or_default()));
        }
        files
    }
}

/// The forms a leaked value could take in a log or a file.
pub fn encodings(value: &str) -> Vec<String> {
    const STD: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b64 = |alphabet: &[u8]| {
        let bytes = value.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        // The last group depends on what follows the value: drop it.
        let keep = out.len().saturating_sub(4).max(out.len().min(8));
        out.truncate(keep);
        out
    };
    let url: String = value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let mut forms = vec![
        value.to_owned(),
        b64(STD),
        b64(URL),
        url,
        hex::encode(value),
    ];
    forms.sort();
    forms.dedup();
    forms
}

/// Names every place a canary (in any form) appears.
pub fn leaks(canaries: &[String], places: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut found = Vec::new();
    for canary in canaries.iter().filter(|c| c.len() >= 8) {
        for form in encodings(canary) {
            for (name, bytes) in places {
                if bytes.windows(form.len()).any(|w| w == form.as_bytes()) {
                    found.push(format!("{form:?} (a form of a canary) in {name}"));
                }
            }
        }
    }
    found
}

/// Everything a provider test's run left to scan: what rekey printed and the
/// files rekey wrote in `dir` (journal, WAL, trail, head; not the key files).
pub fn places_in(dir: &std::path::Path, printed: &[(String, String)]) -> Vec<(String, Vec<u8>)> {
    let mut places: Vec<(String, Vec<u8>)> = printed
        .iter()
        .map(|(n, t)| (n.clone(), t.clone().into_bytes()))
        .collect();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let rekeys = name.starts_with("journal") || name.starts_with("audit");
        if rekeys && !name.ends_with(".key") && entry.path().is_file() {
            places.push((name, std::fs::read(entry.path()).unwrap_or_default()));
        }
    }
    let names: Vec<&str> = places.iter().map(|(n, _)| n.as_str()).collect();
    for must in ["journal.db", "audit.jsonl"] {
        assert!(names.contains(&must), "{must} scanned: {names:?}");
    }
    places
}

/// The parts of a PostgreSQL SCRAM verifier (`SCRAM-SHA-256$<iter>:<salt>$<stored
/// key>:<server key>`) that would betray it in a log: the whole and each key.
pub fn verifier_parts(verifier: &str) -> Vec<String> {
    let mut parts = vec![verifier.to_owned()];
    parts.extend(
        verifier
            .split(['$', ':'])
            .filter(|p| p.len() >= 16)
            .map(str::to_owned),
    );
    parts
}

type Scenario = fn(&mut Lab);

/// Every scenario the canary test runs. Add providers and sinks here.
fn scenarios() -> Vec<(&'static str, Scenario)> {
    vec![
        ("dual keys, breach, twice (old key retired)", dual_breach),
        (
            "single password, admin from env, routine, then rollback",
            single_env_admin_rollback,
        ),
        (
            "dual key, admin from Vault, verify fails (rollback before promotion)",
            dual_vault_admin_verify_fails,
        ),
        (
            "trace logs of every crate (RUST_LOG=trace)",
            everything_traced,
        ),
        (
            "killed mid-rotation (SIGKILL), then resumed",
            killed_then_resumed,
        ),
        (
            "HTTP provider sending the new secret in a form field (Okta client_secret_post)",
            http_secret_in_a_form_field,
        ),
        (
            "breach mode ends database sessions (PostgreSQL, MariaDB, Redis)",
            database_sessions_ended,
        ),
        (
            "notifications: webhooks hear a breach run (quarantine, operator, end) and watch",
            notified,
        ),
    ]
}

/// Webhooks (`notify:`) get what the run does; every payload they received is
/// scanned like rekey's output. The authorization header and the URL are
/// canaries too (they are credentials): never printed.
fn notified(lab: &mut Lab) {
    let (url, got) = crate::notify::receiver(1);
    lab.seed("notify/api", json!({ "value": "CANARYnotifyapi8" }));
    lab.seed("notify/db", json!({ "value": "CANARYnotifydb9" }));
    let auth = "Bearer CANARYnotifyauth10";
    let down = format!("{}/CANARYnotifyurl11", crate::notify::down_url());
    lab.canaries.extend([auth.to_owned(), down.clone()]);
    let pb = lab.playbook(
        "notified",
        "breach",
        "  keys: { type: sandbox, settings: { state_file: DIR/keys-n.json, latency: 1ms } }\n  pw: { type: sandbox_password, settings: { state_file: DIR/pw-n.json, latency: 1ms } }",
        &format!("  - {{ id: api, provider: keys, account: n1, vault_path: PREFIX/notify/api }}\n  - {{ id: db, provider: pw, account: n2, vault_path: PREFIX/notify/db, settings: {{ fail: verify }} }}\n  - {{ id: hand, provider: manual, instructions: \"Do it by hand\", vault_path: PREFIX/notify/hand }}\nnotify:\n  - {{ name: ops, url: \"{url}/in\", authorization_env: HOOK_AUTH }}\n  - {{ name: chat, format: slack, url_env: HOOK_URL }}\n"),
    );
    let journal = journal_of(lab);
    let env = [("HOOK_AUTH", auth), ("HOOK_URL", down.as_str())];
    let (code, out, err) = lab.rekey(
        &["run", &pb, "--journal", &journal, "--format", "json"],
        &env,
    );
    assert_eq!(code, 3, "{out}\n{err}");
    // `watch` reads the retired key's last use (and would notify): scanned too.
    let (code, out, err) = lab.rekey(&["watch", "--journal", &journal], &env);
    assert_eq!(code, 0, "{out}\n{err}");
    let bodies = got.lock().unwrap().clone();
    assert!(bodies.len() >= 4, "{bodies:?}");
    for (i, (_, _, body)) in bodies.into_iter().enumerate() {
        lab.outputs.push((format!("webhook payload {i}"), body));
    }
}

fn http_secret_in_a_form_field(lab: &mut Lab) {
    use crate::http_stubs::{ADMIN_TOKEN, Api, Stub};
    let stub = Stub::start(Api::Okta);
    stub.with(|s| {
        s.okta_auth_method
            .insert("0oaCANARY".into(), "client_secret_post".into());
    });
    let old = "CANARYoktaoldsecret6";
    let old_id = stub.seed_key("0oaCANARY", old, "console");
    lab.canaries.push(ADMIN_TOKEN.into());
    lab.seed("http/okta", json!({ "value": old, "key_id": old_id }));
    let pb = lab.playbook(
        "http",
        "breach",
        &format!("  okta: {{ type: okta_client_secret, admin: {{ env: OKTA_ADMIN }}, settings: {{ domain: example.okta.com, base_url: \"{}\" }} }}", stub.url),
        "  - { id: okta, provider: okta, vault_path: PREFIX/http/okta, settings: { app_id: 0oaCANARY, scope: s, token_auth: client_secret_post } }\n",
    );
    let journal = journal_of(lab);
    let admin = json!({ "token": ADMIN_TOKEN }).to_string();
    let (code, out, err) = lab.rekey(
        &["run", &pb, "--journal", &journal, "--format", "json"],
        &[("OKTA_ADMIN", &admin)],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let new = stub.keys("0oaCANARY");
    assert_eq!(new.len(), 1, "{new:?}");
    lab.canaries.push(new[0].secret.clone());
}

fn journal_of(lab: &Lab) -> String {
    lab.journal().display().to_string()
}

fn dual_breach(lab: &mut Lab) {
    lab.seed("dual/api", json!({ "value": "CANARYolddualvalue1" }));
    let pb = lab.playbook(
        "dual",
        "breach",
        "  keys: { type: sandbox, settings: { state_file: DIR/keys.json, latency: 1ms } }",
        "  - { id: api, provider: keys, account: a, vault_path: PREFIX/dual/api }\n",
    );
    let journal = journal_of(lab);
    for _ in 0..2 {
        let args: Vec<String> = lab
            .run_args(&pb, &journal)
            .iter()
            .map(|s| s.to_string())
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = lab.rekey(&args, &[]);
        assert_eq!(code, 0, "{out}\n{err}");
    }
}

fn single_env_admin_rollback(lab: &mut Lab) {
    let admin = "CANARYadminfromenv2";
    lab.canaries.push(admin.into());
    lab.seed("single/db", json!({ "value": "CANARYoldpassword3" }));
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(admin));
    let pb = lab.playbook(
        "single",
        "routine",
        &format!("  pw: {{ type: sandbox_password, admin: {{ env: SANDBOX_ADMIN }}, settings: {{ state_file: DIR/pw.json, latency: 1ms, admin_sha256: {digest} }} }}"),
        "  - { id: db, provider: pw, account: b, vault_path: PREFIX/single/db }\n",
    );
    let journal = journal_of(lab);
    let env = [("SANDBOX_ADMIN", admin)];
    let (code, out, err) = lab.rekey(
        &["run", &pb, "--journal", &journal, "--format", "json"],
        &env,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let run: Value = serde_json::from_str(&out).unwrap();
    let run_id = run["run_id"].as_str().unwrap().to_owned();
    let (code, out, err) = lab.rekey(&["rollback", &run_id, "--journal", &journal], &env);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("rolled back"), "{out}");
    // A wrong admin credential is refused without being echoed.
    let (code, out, err) = lab.rekey(
        &["run", &pb, "--journal", &journal],
        &[("SANDBOX_ADMIN", "CANARYwrongadmin4x")],
    );
    lab.canaries.push("CANARYwrongadmin4x".into());
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(out.contains("admin credential was refused"), "{out}");
}

fn dual_vault_admin_verify_fails(lab: &mut Lab) {
    let admin = "CANARYadminfromvault5";
    lab.seed(
        "infra/admin",
        json!({ "password": admin, "username": "rotator" }),
    );
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(admin));
    let pb = lab.playbook(
        "vault-admin",
        "breach",
        &format!("  keys: {{ type: sandbox, admin: {{ vault_path: PREFIX/infra/admin }}, settings: {{ state_file: DIR/keys2.json, latency: 1ms, admin_sha256: {digest} }} }}"),
        "  - { id: ok, provider: keys, account: c, vault_path: PREFIX/va/ok }\n  - { id: broken, provider: keys, account: d, vault_path: PREFIX/va/broken, settings: { fail: verify } }\n",
    );
    let journal = journal_of(lab);
    let (code, out, err) = lab.rekey(
        &["run", &pb, "--journal", &journal, "--format", "json"],
        &[],
    );
    assert_ne!(code, 0, "the broken credential fails: {out}\n{err}");
    let summary: Value = serde_json::from_str(&out).unwrap();
    let outcomes: Vec<_> = summary["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(outcomes, ["rotated", "rolled_back"], "{out}");
}

fn everything_traced(lab: &mut Lab) {
    let pb = lab.playbook(
        "traced",
        "breach",
        "  keys: { type: sandbox, settings: { state_file: DIR/keys3.json, latency: 1ms } }\n  pw: { type: sandbox_password, settings: { state_file: DIR/pw3.json, latency: 1ms } }",
        "  - { id: t1, provider: keys, account: e, vault_path: PREFIX/t/one }\n  - { id: t2, provider: pw, account: f, vault_path: PREFIX/t/two }\n",
    );
    lab.seed("t/two", json!({ "value": "CANARYtracedold6" }));
    let journal = journal_of(lab);
    let (code, out, err) = lab.rekey(
        &["run", &pb, "--journal", &journal, "--audit-sink", "stdout"],
        &[("RUST_LOG", "trace")],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("DEBUG"), "verbose logging was on");
    assert!(
        out.contains("\"secret_hmac\":\"hmac-sha256:"),
        "the stdout sink got the trail lines"
    );
}

fn killed_then_resumed(lab: &mut Lab) {
    let pb = lab.playbook(
        "resume",
        "breach",
        "  keys: { type: sandbox, settings: { state_file: DIR/keys5.json, latency: 150ms } }\n  pw: { type: sandbox_password, settings: { state_file: DIR/pw5.json, latency: 400ms } }",
        "  - { id: r1, provider: keys, account: g, vault_path: PREFIX/r/one }\n  - { id: r2, provider: pw, account: h, vault_path: PREFIX/r/two }\n",
    );
    let journal = lab.journal();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_rekey"))
        .args(["-vv", "run", &pb, "--journal", journal.to_str().unwrap()])
        .env_clear()
        .env("VAULT_TOKEN", &lab.token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Killed once both credentials hold a staged value (what resume must read back).
    // The password's slower provider keeps it staged while the key is created and
    // staged (list + create at 150 ms each), so both are staged at once for a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut child = child;
    loop {
        let staged = rekey::journal::Journal::open(&journal).ok().and_then(|j| {
            let run = j.runs().ok()?.into_iter().next()?;
            (run.playbook_name == "resume").then_some(())?;
            let states = j.states(&run.id).ok()?;
            Some(
                states
                    .iter()
                    .filter(|s| s.state == "staged" || s.state == "changed")
                    .count(),
            )
        });
        if staged == Some(2) || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "killed mid-run, not finished");
    lab.outputs.push((
        "stdout of the killed run".into(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ));
    lab.outputs.push((
        "stderr of the killed run".into(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ));
    let journal = journal.display().to_string();
    let (code, out, err) = lab.rekey(&["resume", "--journal", &journal, "--format", "json"], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    let summary: Value = serde_json::from_str(&out).unwrap();
    assert!(
        summary["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["outcome"] == "rotated"),
        "{out}"
    );
}

fn run_id(summary: &str) -> String {
    serde_json::from_str::<Value>(summary).unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Runs a server's own client (`program`, password in `env`) to completion;
/// returns what it printed.
fn client(program: &str, args: &[&str], env: (&str, &str)) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .env(env.0, env.1)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts a server's own client holding a session open; killed when dropped.
fn hold(program: &str, args: &[&str], env: (&str, &str)) -> KillOnDrop {
    KillOnDrop(
        std::process::Command::new(program)
            .args(args)
            .env(env.0, env.1)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A PostgreSQL role, a MariaDB user and a Redis user with canary passwords, each
/// with a session open (held by the server's own client), rotated in breach mode:
/// the sessions are ended, and nothing of the passwords (nor the admin's) reaches
/// the output, the journal or the trail on the way.
fn database_sessions_ended(lab: &mut Lab) {
    let e = lab.env.clone();
    let name = lab.prefix.replace('-', "_");
    let admin_pw = e["REKEY_PG_ADMIN_PASSWORD"].clone();
    lab.canaries.push(admin_pw.clone());
    let (pg_old, my_old, rd_old) = (
        format!("CANARYpgold{name}"),
        format!("CANARYmyold{name}"),
        format!("CANARYrdold{name}"),
    );
    let pg = |user: &str| {
        format!(
            "host={} port={} user={user} dbname=postgres",
            e["REKEY_PG_HOST"], e["REKEY_PG_PORT"]
        )
    };
    let my = |user: &str| {
        vec![
            "--protocol=TCP".to_owned(),
            "-h".to_owned(),
            e["REKEY_MYSQL_HOST"].clone(),
            "-P".to_owned(),
            e["REKEY_MYSQL_PORT"].clone(),
            "-u".to_owned(),
            user.to_owned(),
            "-e".to_owned(),
        ]
    };
    let rd = vec![
        "-h".to_owned(),
        e["REKEY_REDIS_HOST"].clone(),
        "-p".to_owned(),
        e["REKEY_REDIS_PORT"].clone(),
    ];
    client(
        "psql",
        &[
            &pg(&e["REKEY_PG_ADMIN_USER"]),
            "-c",
            &format!("CREATE ROLE {name} LOGIN PASSWORD '{pg_old}'"),
        ],
        ("PGPASSWORD", &admin_pw),
    );
    let mut args = my(&e["REKEY_MYSQL_ADMIN_USER"]);
    args.push(format!("CREATE USER '{name}'@'%' IDENTIFIED BY '{my_old}'"));
    client("mariadb", &strs(&args), ("MYSQL_PWD", &admin_pw));
    let mut args = rd.clone();
    args.extend(
        [
            "ACL",
            "SETUSER",
            &name,
            "on",
            &format!(">{rd_old}"),
            "~*",
            "+@all",
        ]
        .map(str::to_owned),
    );
    client("redis-cli", &strs(&args), ("REDISCLI_AUTH", ""));
    lab.seed("sessions/pg", json!({ "value": pg_old }));
    lab.seed("sessions/my", json!({ "value": my_old }));
    lab.seed(
        "sessions/rd",
        json!({ "value": rd_old, "key_id": &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&rd_old))[..16] }),
    );
    let mut held = vec![hold(
        "psql",
        &[&pg(&name), "-c", "SELECT pg_sleep(600)"],
        ("PGPASSWORD", &pg_old),
    )];
    let mut args = my(&name);
    args.push("SELECT SLEEP(600)".into());
    held.push(hold("mariadb", &strs(&args), ("MYSQL_PWD", &my_old)));
    let mut args = rd.clone();
    args.extend(["--user", &name, "BLPOP", &format!("canary:{name}"), "600"].map(str::to_owned));
    held.push(hold("redis-cli", &strs(&args), ("REDISCLI_AUTH", &rd_old)));
    // Each server shows its session before the run starts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut args = my(&e["REKEY_MYSQL_ADMIN_USER"]);
    args.push(format!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '{name}'"
    ));
    let mut clients = rd.clone();
    clients.extend(["CLIENT", "LIST"].map(str::to_owned));
    let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{name}'");
    let pg_admin_session = pg(&e["REKEY_PG_ADMIN_USER"]);
    while client(
        "psql",
        &[&pg_admin_session, "-tAc", &sql],
        ("PGPASSWORD", &admin_pw),
    )
    .trim()
        != "1"
        || client("mariadb", &strs(&args), ("MYSQL_PWD", &admin_pw))
            .lines()
            .last()
            != Some("1")
        || !client("redis-cli", &strs(&clients), ("REDISCLI_AUTH", ""))
            .contains(&format!(" user={name} "))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the sessions never opened"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pb = lab.playbook(
        "sessions",
        "breach",
        &format!(
            "  pg: {{ type: postgres, admin: {{ env: CANARY_PG_ADMIN }}, settings: {{ host: \"{}\", port: {}, sslmode: disable }} }}\n  my: {{ type: mysql, admin: {{ env: CANARY_MY_ADMIN }}, settings: {{ host: \"{}\", port: {}, tls: disabled }} }}\n  rd: {{ type: redis, settings: {{ host: \"{}\", port: {}, persist: none }} }}",
            e["REKEY_PG_HOST"], e["REKEY_PG_PORT"], e["REKEY_MYSQL_HOST"], e["REKEY_MYSQL_PORT"], e["REKEY_REDIS_HOST"], e["REKEY_REDIS_PORT"]
        ),
        &format!("  - {{ id: pg, provider: pg, account: {name}, vault_path: PREFIX/sessions/pg }}\n  - {{ id: my, provider: my, account: {name}, vault_path: PREFIX/sessions/my }}\n  - {{ id: rd, provider: rd, account: {name}, vault_path: PREFIX/sessions/rd }}\n"),
    );
    let journal = journal_of(lab);
    let pg_admin =
        json!({ "username": e["REKEY_PG_ADMIN_USER"], "password": admin_pw }).to_string();
    let my_admin = json!({ "username": e["REKEY_MYSQL_ADMIN_USER"], "password": e["REKEY_MYSQL_ADMIN_PASSWORD"] }).to_string();
    let (code, out, err) = lab.rekey(
        &["run", &pb, "--journal", &journal, "--format", "json"],
        &[
            ("CANARY_PG_ADMIN", &pg_admin),
            ("CANARY_MY_ADMIN", &my_admin),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let ended = std::fs::read_to_string(lab.trail())
        .unwrap()
        .lines()
        .filter(|l| {
            l.contains("\"action\":\"end_sessions\"")
                && l.contains("\"event\":\"outcome\"")
                && l.contains(&format!(
                    "\"run\":{}",
                    serde_json::to_string(&run_id(&out)).unwrap()
                ))
                && l.contains("\"ended\":1")
        })
        .count();
    assert_eq!(ended, 3, "one session ended per credential: {err}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    for h in &mut held {
        while !h.exited() {
            assert!(
                std::time::Instant::now() < deadline,
                "a session was not ended: {err}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

#[test]
fn no_canary_secret_reaches_output_logs_journal_or_audit_trail() {
    let mut lab = Lab::new();
    for (name, scenario) in scenarios() {
        eprintln!("canary scenario: {name}");
        scenario(&mut lab);
    }
    lab.harvest();
    // The harvest found the new values too (not only what was seeded).
    assert!(lab.canaries.len() > 12, "{} canaries", lab.canaries.len());
    let mut places: Vec<(String, Vec<u8>)> = lab
        .outputs
        .iter()
        .map(|(n, t)| (n.clone(), t.clone().into_bytes()))
        .collect();
    let files = lab.written_files();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    for must in ["journal.db", "audit.jsonl", "audit.jsonl.head"] {
        assert!(names.contains(&must), "{must} scanned: {names:?}");
    }
    places.extend(files);
    let leaks = leaks(&lab.canaries, &places);
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    // And the trail refers to the values it concerns by HMAC, checkable by whoever
    // holds one: the last value of `t/two` is found in the trail.
    let value = http(
        &lab.env["VAULT_ADDR"],
        "GET",
        &format!("/v1/secret/data/{}/t/two", lab.prefix),
        &lab.env["VAULT_TOKEN"],
        None,
    )["data"]["data"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rekey"))
        .args(["audit", "hmac", lab.trail().to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(value.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("t2 state rotated") || stdout.contains("t2 intent promote"),
        "{stdout}"
    );
    assert!(!stdout.contains(&value));
}

#[test]
fn the_leak_scanner_finds_every_encoding_it_looks_for() {
    let canary = "CANARY/with+odd=chars?&x";
    for form in encodings(canary) {
        let place = (
            "sample".to_owned(),
            format!("prefix {form} suffix").into_bytes(),
        );
        assert_eq!(leaks(&[canary.to_owned()], &[place]).len(), 1, "{form}");
    }
    assert!(
        leaks(
            &[canary.to_owned()],
            &[("clean".into(), b"nothing here".to_vec())]
        )
        .is_empty()
    );
    // The base64 form is the real one (RFC 4648 test vector), minus its last group.
    assert!(
        encodings("Many hands make light work.")
            .contains(&"TWFueSBoYW5kcyBtYWtlIGxpZ2h0IHdv".to_owned())
    );
}
