//! Propagation sinks end to end: after promotion the value reaches other Vault
//! paths (the real OpenBao), files (atomic, 0600, reload command) and GitHub
//! Actions secrets (a local stateful stub of the GitHub REST API whose private key
//! opens the sealed box); a failing sink quarantines the credential.

use crate::lab::{Lab, file_contains};
use base64::Engine as _;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const KEYS: &str = "providers:\n  keys: { type: sandbox, settings: { state_file: DIR/keys.json, latency: 1ms } }\n";

fn steps(lab: &Lab, run: &Value, credential: &str) -> Vec<(String, bool)> {
    let j = rekey::journal::Journal::open(&lab.path("journal.db")).unwrap();
    j.intents(run["run_id"].as_str().unwrap(), credential)
        .unwrap()
        .into_iter()
        .map(|i| {
            (
                i.step,
                matches!(
                    i.outcome.map(|o| o.outcome),
                    Some(rekey::journal::Outcome::Ok)
                ),
            )
        })
        .collect()
}

#[test]
fn vault_and_file_sinks_receive_the_promoted_value_and_the_reload_command_runs() {
    let lab = Lab::new();
    std::fs::create_dir(lab.path("app")).unwrap();
    std::fs::write(lab.path("app/api.key"), "old-value").unwrap();
    let pb = lab.playbook(
        "breach",
        &format!(
            "{KEYS}credentials:
  - id: api
    provider: keys
    account: a
    vault_path: PREFIX/api
    sinks:
      - {{ type: vault, path: PREFIX/mirror/api }}
      - {{ type: file, path: DIR/app/api.key, reload: [touch, DIR/reloaded] }}
"
        ),
    );
    let run = lab.rekey(&["run", pb.to_str().unwrap()], None, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.outcome("api"), "rotated");
    let value = lab.vault("api")["data"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(lab.vault("mirror/api")["data"]["value"], value.as_str());
    let file = lab.path("app/api.key");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), value);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_dir(lab.path("app")).unwrap().count(),
        1,
        "no temporary file is left beside it"
    );
    assert!(lab.path("reloaded").exists(), "the reload command ran");
    let steps = steps(&lab, &run.json(), "api");
    let sink_steps: Vec<_> = steps
        .iter()
        .filter(|(s, _)| s.starts_with("sink"))
        .collect();
    assert_eq!(sink_steps.len(), 3, "{steps:?}");
    assert!(sink_steps.iter().all(|(_, ok)| *ok), "{steps:?}");
    let promote = steps.iter().position(|(s, _)| s == "promote").unwrap();
    let first_sink = steps.iter().position(|(s, _)| s == "sink").unwrap();
    let revoke = steps.iter().position(|(s, _)| s == "revoke");
    assert!(promote < first_sink, "sinks run after promotion: {steps:?}");
    assert!(
        revoke.is_none_or(|r| first_sink < r),
        "and before the old key goes: {steps:?}"
    );
    assert!(!lab.journal_holds(&value));
    assert!(!run.stdout.contains(&value) && !run.stderr.contains(&value));
}

#[test]
fn a_failing_sink_quarantines_the_credential_but_the_rotation_completes() {
    let lab = Lab::new();
    let pb = lab.playbook(
        "breach",
        &format!(
            "{KEYS}credentials:
  - id: api
    provider: keys
    account: a
    vault_path: PREFIX/api
    sinks:
      - {{ type: file, path: DIR/missing-dir/api.key }}
      - {{ type: vault, path: PREFIX/mirror/api }}
"
        ),
    );
    let first = lab.rekey(&["run", pb.to_str().unwrap()], None, &[]);
    assert_eq!(first.code, 3, "{}", first.stderr);
    assert_eq!(first.outcome("api"), "quarantined");
    let reason = first.json()["results"][0]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("missing-dir/api.key"), "{reason}");
    assert!(reason.contains("1 sink(s) failed"), "{reason}");
    // The rotation itself went through: promoted, later sinks still served, the
    // old key retired (breach mode keeps nothing compromised alive for a sink).
    let value = lab.vault("api")["data"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(lab.vault("mirror/api")["data"]["value"], value.as_str());
    let state: Value =
        serde_json::from_slice(&std::fs::read(lab.path("keys.json")).unwrap()).unwrap();
    assert_eq!(state["accounts"]["a"]["keys"].as_array().unwrap().len(), 1);
    let status = lab.rekey(&["status"], None, &[]);
    assert!(
        status.stdout.contains("to do: copy the value from Vault"),
        "{}",
        status.stdout
    );
}

/// A stateful stub of the GitHub REST API's Actions secrets endpoints
/// (https://docs.github.com/en/rest/actions/secrets): repository and environment
/// public keys, create-or-update (201 created, 204 updated), 401 for a wrong token,
/// 404 for an unknown repository or environment. Stopped when dropped.
struct GithubStub {
    addr: String,
    private: crypto_box::SecretKey,
    /// Secret name (with `env/` prefix for environment secrets) -> sealed value.
    secrets: Arc<Mutex<HashMap<String, Value>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GithubStub {
    fn start(repository: &str, environment: &str, token: &str) -> GithubStub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let private = crypto_box::SecretKey::generate(&mut crypto_box::aead::OsRng);
        let public =
            base64::engine::general_purpose::STANDARD.encode(private.public_key().as_bytes());
        let secrets: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (repo, env, token) = (
            repository.to_owned(),
            environment.to_owned(),
            token.to_owned(),
        );
        let (store, flag) = (secrets.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(s) = stream {
                    serve(s, &repo, &env, &token, &public, &store);
                }
            }
        });
        GithubStub {
            addr,
            private,
            secrets,
            stop,
            thread: Some(thread),
        }
    }

    /// Opens the sealed secret `name` with the stub's private key.
    fn open(&self, name: &str) -> Option<String> {
        let sealed = self.secrets.lock().unwrap().get(name)?["encrypted_value"]
            .as_str()?
            .to_owned();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .ok()?;
        String::from_utf8(self.private.unseal(&bytes).ok()?).ok()
    }
}

impl Drop for GithubStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    stream: TcpStream,
    repo: &str,
    env: &str,
    token: &str,
    public: &str,
    store: &Mutex<HashMap<String, Value>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.trim_end().split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let repo_base = format!("/repos/{repo}/actions/secrets/");
    let env_base = format!("/repos/{repo}/environments/{env}/secrets/");
    let key_json = json!({ "key_id": "568250167242549743", "key": public }).to_string();
    let (status, answer) = if headers.get("authorization") != Some(&format!("Bearer {token}")) {
        (401, json!({ "message": "Bad credentials", "documentation_url": "https://docs.github.com/rest" }).to_string())
    } else if headers.get("x-github-api-version").map(String::as_str) != Some("2022-11-28") {
        (
            400,
            json!({ "message": "unsupported API version" }).to_string(),
        )
    } else {
        let scoped = path
            .strip_prefix(&repo_base)
            .map(|n| n.to_owned())
            .or_else(|| path.strip_prefix(&env_base).map(|n| format!("{env}/{n}")));
        match (method, scoped) {
            ("GET", Some(n)) if n == "public-key" || n == format!("{env}/public-key") => {
                (200, key_json)
            }
            ("PUT", Some(name)) => {
                let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if parsed["key_id"] != "568250167242549743"
                    || !parsed["encrypted_value"].is_string()
                {
                    (422, json!({ "message": "Invalid request" }).to_string())
                } else {
                    let existed = store.lock().unwrap().insert(name, parsed).is_some();
                    (if existed { 204 } else { 201 }, String::new())
                }
            }
            _ => (404, json!({ "message": "Not Found" }).to_string()),
        }
    };
    let mut s = stream;
    let _ = write!(
        s,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
}

#[test]
fn github_sinks_write_sealed_secrets_that_the_repository_key_opens() {
    let stub = GithubStub::start("acme/deploy", "production", "gh-token-canary");
    let lab = Lab::new();
    let base = format!("http://{}", stub.addr);
    let pb = lab.playbook(
        "breach",
        &format!(
            "{KEYS}credentials:
  - id: api
    provider: keys
    account: a
    vault_path: PREFIX/api
    sinks:
      - {{ type: github, base_url: \"{base}\", repository: acme/deploy, secret_name: PARTNER_API_KEY, token: {{ env: GH_TOKEN }} }}
      - {{ type: github, base_url: \"{base}\", repository: acme/deploy, environment: production, secret_name: PARTNER_API_KEY, token: {{ env: GH_TOKEN }} }}
"
        ),
    );
    let env = [("GH_TOKEN", "gh-token-canary")];
    for round in 1..=2 {
        let run = lab.rekey(&["run", pb.to_str().unwrap()], None, &env);
        assert_eq!(run.code, 0, "round {round}: {}", run.stderr);
        let value = lab.vault("api")["data"]["value"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            stub.open("PARTNER_API_KEY").as_deref(),
            Some(value.as_str()),
            "round {round}"
        );
        assert_eq!(
            stub.open("production/PARTNER_API_KEY").as_deref(),
            Some(value.as_str()),
            "round {round}"
        );
        for out in [&run.stdout, &run.stderr] {
            assert!(!out.contains(&value) && !out.contains("gh-token-canary"));
        }
        assert!(!lab.journal_holds(&value) && !lab.journal_holds("gh-token-canary"));
    }

    // A wrong token is a fatal answer: the credential is quarantined, and says why.
    let run = lab.rekey(
        &["run", pb.to_str().unwrap()],
        None,
        &[("GH_TOKEN", "wrong")],
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    let reason = run.json()["results"][0]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains("401") && reason.contains("invalid or expired"),
        "{reason}"
    );
    assert!(!file_contains(&lab.path("journal.db"), "wrong\""));
}

#[test]
fn sinks_are_validated_with_every_problem_at_once() {
    let (code, _, stderr) = crate::support::plan_text(
        "version: 1
name: s
vault: { address: \"http://127.0.0.1:1\" }
credentials:
  - id: a
    provider: manual
    instructions: x
    vault_path: apps/a
    sinks:
      - { type: vault, path: apps/a }
      - { type: ftp, path: /x }
      - { type: file, path: /tmp/x, repository: a/b }
      - { type: github, repository: acme, secret_name: GITHUB_TOKEN }
",
        &[],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    for needle in [
        "this sink writes the credential's own vault_path",
        "unknown sink type `ftp`",
        "a `file` sink has no `repository`",
        "`acme` is not a GitHub repository",
        "`GITHUB_TOKEN` is not a valid GitHub Actions secret name",
        "a `github` sink needs `token`",
    ] {
        assert!(stderr.contains(needle), "missing `{needle}` in:\n{stderr}");
    }
}
