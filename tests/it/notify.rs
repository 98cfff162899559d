//! `notify:` webhooks against a local receiver (and one that is down): a run
//! tells them its start, each quarantine, each credential awaiting an operator
//! and its end; retries after refusals; a webhook that is down never changes
//! the run's outcome and is reported at the end, by name (its URL may be a
//! credential).

use crate::infra_common::Case;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};

/// What a receiver got: (path, Authorization header, body) of each accepted request.
pub type Received = Arc<Mutex<Vec<(String, String, String)>>>;

/// A webhook receiver on 127.0.0.1 that answers 503 to its first `refuse`
/// requests, then 200, keeping what it accepted. Returns its base URL.
pub fn receiver(refuse: usize) -> (String, Received) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got: Received = Arc::default();
    let keep = got.clone();
    std::thread::spawn(move || {
        let mut seen = 0;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            let (mut length, mut auth) = (0usize, String::new());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    match k.to_ascii_lowercase().as_str() {
                        "content-length" => length = v.trim().parse().unwrap_or(0),
                        "authorization" => auth = v.trim().to_owned(),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            seen += 1;
            let status = if seen <= refuse {
                "503 Service Unavailable"
            } else {
                keep.lock().unwrap().push((
                    path,
                    auth,
                    String::from_utf8_lossy(&body).into_owned(),
                ));
                "200 OK"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (url, got)
}

/// A loopback URL nobody listens on.
pub fn down_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// A breach playbook whose run quarantines `db` (verify fails, and a
/// compromised password is never restored), leaves `by-hand` to an operator
/// and rotates `api`; `notify` is appended as is.
fn playbook(case: &Case, notify: &str) -> std::path::PathBuf {
    let dir = case.dir.path().display().to_string();
    case.playbook(
        "notify.yaml",
        &format!(
            "version: 1\nname: notify-PREFIX\nincident: {{ mode: breach }}\nvault: {{ address: \"VAULT\", staging_prefix: PREFIX/staging }}\nproviders:\n  keys: {{ type: sandbox, settings: {{ state_file: {dir}/keys.json, latency: 1ms }} }}\n  pw: {{ type: sandbox_password, settings: {{ state_file: {dir}/pw.json, latency: 1ms }} }}\ncredentials:\n  - {{ id: api, provider: keys, account: a, vault_path: PREFIX/api }}\n  - {{ id: db, provider: pw, account: d, vault_path: PREFIX/db, settings: {{ fail: verify }} }}\n  - {{ id: by-hand, provider: manual, instructions: \"Rotate it in the console\", vault_path: PREFIX/by-hand }}\n{notify}"
        ),
    )
}

fn events(got: &Received) -> Vec<(String, Option<String>)> {
    got.lock()
        .unwrap()
        .iter()
        .map(|(_, _, body)| {
            let doc: Value = serde_json::from_str(body).unwrap();
            (
                doc["event"].as_str().unwrap_or_default().to_owned(),
                doc["credential"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[test]
fn webhooks_hear_start_quarantine_awaiting_operator_and_end_and_one_that_is_down_changes_nothing_but_a_warning()
 {
    let case = Case::new();
    case.seed("api", "CANARYnotifyoldkey1", None);
    case.seed("db", "CANARYnotifyoldpw2", None);

    // Without webhooks: the outcome to compare with.
    let plain = playbook(&case, "");
    let baseline = case.run(&plain);
    assert_eq!(baseline.code, 3, "{}\n{}", baseline.stdout, baseline.stderr);

    let case = Case::new();
    case.seed("api", "CANARYnotifyoldkey1", None);
    case.seed("db", "CANARYnotifyoldpw2", None);
    // The JSON receiver refuses twice first (retries with backoff); the
    // Slack-compatible one is down, and its URL (a credential) is never printed.
    let (json_url, json_got) = receiver(2);
    let down = format!("{}/services/CANARYslackpath3", down_url());
    let pb = playbook(
        &case,
        &format!(
            "notify:\n  - {{ name: ops, url: \"{json_url}/rekey\", authorization_env: HOOK_AUTH }}\n  - {{ name: chat, format: slack, url_env: SLACK_URL }}\n"
        ),
    );
    let out = crate::support::rekey()
        .env("VAULT_TOKEN", &case.env["VAULT_TOKEN"])
        .env("HOOK_AUTH", "Bearer CANARYhookauth4")
        .env("SLACK_URL", &down)
        .args([
            "run",
            pb.to_str().unwrap(),
            "--journal",
            case.journal().to_str().unwrap(),
            "--format",
            "json",
        ])
        .run();
    assert_eq!(
        out.code, baseline.code,
        "webhooks change no outcome: {}\n{}",
        out.stdout, out.stderr
    );
    let summary: Value = serde_json::from_str(&out.stdout).unwrap();
    for r in summary["results"].as_array().unwrap() {
        let id = r["id"].as_str().unwrap();
        assert_eq!(r["outcome"], baseline.result(id)["outcome"], "{id}");
    }
    // The down webhook is reported at the end, by its name only.
    assert!(
        out.stderr.contains("notification not delivered") && out.stderr.contains("chat"),
        "{}",
        out.stderr
    );
    for s in ["CANARYslackpath3", "CANARYhookauth4"] {
        assert!(
            !out.stdout.contains(s) && !out.stderr.contains(s),
            "{s} printed"
        );
    }

    // The receiver heard every event once, with the authorization. (Each
    // delivery retries on its own, so after the refusals the order of arrival
    // is not the order of events: the documents' times say when.)
    let mut heard = events(&json_got);
    heard.sort();
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        heard,
        [
            ("awaiting_operator".to_owned(), some("by-hand")),
            ("quarantined".to_owned(), some("db")),
            ("run_end".to_owned(), None),
            ("run_start".to_owned(), None),
        ],
    );
    let got = json_got.lock().unwrap().clone();
    assert!(
        got.iter()
            .all(|(path, auth, _)| path == "/rekey" && auth == "Bearer CANARYhookauth4")
    );
    let run_id = summary["run_id"].as_str().unwrap();
    for (_, _, body) in &got {
        let doc: Value = serde_json::from_str(body).unwrap();
        assert_eq!(doc["run_id"], run_id, "{body}");
        assert_eq!(doc["source"], "rekey");
        // No value in a payload: the old ones, and the new ones Vault holds now.
        for v in ["CANARYnotifyoldkey1", "CANARYnotifyoldpw2"] {
            assert!(!body.contains(v), "{body}");
        }
        for path in ["api", "db"] {
            let entry = case.vault(path);
            if let Some(v) = entry["data"]["value"].as_str() {
                assert!(!body.contains(v), "a new value in a payload");
            }
        }
    }
    let end: Value = serde_json::from_str(&got.last().unwrap().2).unwrap();
    assert_eq!(end["counts"]["quarantined"], 1, "{end}");
    assert_eq!(end["counts"]["awaiting_operator"], 1, "{end}");
}

#[test]
fn a_slack_compatible_webhook_gets_text_only() {
    let case = Case::new();
    case.seed("api", "CANARYslackold5", None);
    let (url, got) = receiver(0);
    let dir = case.dir.path().display().to_string();
    let pb = case.playbook(
        "slack.yaml",
        &format!(
            "version: 1\nname: slack-PREFIX\nincident: {{ mode: routine }}\nvault: {{ address: \"VAULT\", staging_prefix: PREFIX/staging }}\nproviders:\n  keys: {{ type: sandbox, settings: {{ state_file: {dir}/keys.json, latency: 1ms }} }}\ncredentials:\n  - {{ id: api, provider: keys, account: a, vault_path: PREFIX/api }}\nnotify:\n  - {{ name: chat, format: slack, url: \"{url}/hook\", events: [run_end] }}\n"
        ),
    );
    let ran = case.run(&pb);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "only run_end was asked for: {got:?}");
    let doc: Value = serde_json::from_str(&got[0].2).unwrap();
    let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["text"], "{doc}");
    assert!(
        doc["text"].as_str().unwrap().starts_with("rekey: "),
        "{doc}"
    );
    assert!(!got[0].2.contains("CANARYslackold5"));
}
