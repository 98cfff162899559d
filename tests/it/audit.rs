//! The audit trail through the real binary: a real run's trail verifies; any one
//! flipped byte, deleted line or swapped pair is named at the right line by
//! `rekey audit verify`; the reader survives arbitrary bytes; show/export render
//! timelines; the HTTP sink delivers with retries; a broken trail is never
//! extended.

use crate::canary::Lab;
use crate::support::rekey;
use proptest::prelude::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

/// A trail from a real run: a dual and a single credential, one failing verify.
fn real_trail(lab: &mut Lab, extra: &[&str]) -> Vec<u8> {
    let pb = lab.playbook(
        "tamper",
        "breach",
        "  keys: { type: sandbox, settings: { state_file: DIR/keys.json, latency: 1ms } }\n  pw: { type: sandbox_password, settings: { state_file: DIR/pw.json, latency: 1ms } }",
        "  - { id: api, provider: keys, account: a, vault_path: PREFIX/api }\n  - { id: db, provider: pw, account: b, vault_path: PREFIX/db }\n  - { id: bad, provider: keys, account: c, vault_path: PREFIX/bad, settings: { fail: verify } }\n",
    );
    let journal = lab.journal().display().to_string();
    let mut args = vec!["run", pb.as_str(), "--journal", journal.as_str()];
    args.extend_from_slice(extra);
    let (code, out, err) = lab.rekey(&args, &[]);
    assert_eq!(code, 1, "one credential rolls back: {out}\n{err}");
    assert!(
        err.contains("audit trail "),
        "the run names its trail and last hash: {err}"
    );
    std::fs::read(lab.trail()).unwrap()
}

fn verify(file: &Path) -> (i32, String, String) {
    let out = rekey()
        .args(["audit", "verify", file.to_str().unwrap()])
        .run();
    (out.code, out.stdout, out.stderr)
}

fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split_inclusive(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

#[test]
fn a_real_trail_verifies_and_every_flip_deletion_and_swap_is_named_at_its_line() {
    let mut lab = Lab::new();
    let bytes = real_trail(&mut lab, &[]);
    let trail = lab.trail();
    let (code, out, err) = verify(&trail);
    assert_eq!(code, 0, "{out}{err}");
    let original = lines(&bytes);
    let n = original.len();
    assert!(n > 30, "a real run writes many lines: {n}");
    assert!(out.contains(&format!("{n} lines verified")), "{out}");

    // Each case rewrites the trail (its head record stays as rekey left it) and
    // expects `rekey audit verify` to fail naming `line`.
    let check = |content: Vec<u8>, line: usize, what: &str| {
        std::fs::write(&trail, &content).unwrap();
        let (code, _, err) = verify(&trail);
        assert_eq!(code, 1, "{what}: not detected");
        assert!(
            err.contains(&format!("line {line}:")),
            "{what}: expected line {line} named: {err}"
        );
    };
    for i in 0..n {
        // One flipped bit in the middle of the line, and one in its first byte.
        for pos in [original[i].len() / 2, 0] {
            let mut changed = original.clone();
            changed[i][pos] ^= 0x01;
            check(
                changed.concat(),
                i + 1,
                &format!("flip at line {} byte {pos}", i + 1),
            );
        }
        // Deleted: the line after takes its place (the last is missed by the head).
        let mut deleted = original.clone();
        deleted.remove(i);
        check(
            deleted.concat(),
            i + 1,
            &format!("deletion of line {}", i + 1),
        );
        // Swapped with the next line.
        if i + 1 < n {
            let mut swapped = original.clone();
            swapped.swap(i, i + 1);
            check(
                swapped.concat(),
                i + 1,
                &format!("swap of lines {} and {}", i + 1, i + 2),
            );
        }
    }
    // Every byte of the first, a middle and the last line, through the library
    // (the CLI above samples each line; this covers every position of some).
    let head =
        rekey::audit::chain::parse_head(&std::fs::read(rekey::audit::head_path(&trail)).unwrap());
    let starts: Vec<usize> = std::iter::once(0)
        .chain(original.iter().scan(0, |at, l| {
            *at += l.len();
            Some(*at)
        }))
        .collect();
    for i in [0, n / 2, n - 1] {
        for pos in starts[i]..starts[i + 1] {
            let mut changed = bytes.clone();
            changed[pos] ^= 0x5a;
            let verdict = rekey::audit::chain::verify(&changed, head.as_ref(), |_, _| {});
            assert_eq!(
                verdict.problem.map(|p| p.line),
                Some(i as u64 + 1),
                "byte {pos}"
            );
        }
    }
    std::fs::write(&trail, &bytes).unwrap();
    assert_eq!(verify(&trail).0, 0);
}

#[test]
fn rekey_refuses_to_extend_a_trail_that_does_not_verify() {
    let mut lab = Lab::new();
    let bytes = real_trail(&mut lab, &[]);
    let mut changed = bytes.clone();
    let at = changed.len() / 2;
    changed[at] ^= 0x01;
    std::fs::write(lab.trail(), &changed).unwrap();
    let pb = lab.dir.path().join("tamper.yaml").display().to_string();
    let journal = lab.journal().display().to_string();
    let (code, out, err) = lab.rekey(&["run", &pb, "--journal", &journal], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("is broken at line") && err.contains("will not extend it"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(lab.trail()).unwrap(),
        changed,
        "not one byte added"
    );
}

#[test]
fn trail_files_are_private_and_a_readable_trail_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mut lab = Lab::new();
    real_trail(&mut lab, &[]);
    for file in [
        lab.trail(),
        rekey::audit::head_path(&lab.trail()),
        rekey::audit::key_path(&lab.trail()),
    ] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    std::fs::set_permissions(lab.trail(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let pb = lab.dir.path().join("tamper.yaml").display().to_string();
    let journal = lab.journal().display().to_string();
    let (code, _, err) = lab.rekey(&["run", &pb, "--journal", &journal], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("accessible by group or others") && err.contains("chmod 600"),
        "{err}"
    );
}

#[test]
fn show_and_export_render_a_per_credential_timeline() {
    let mut lab = Lab::new();
    real_trail(&mut lab, &[]);
    let file = lab.trail().display().to_string();
    let text = rekey()
        .args(["audit", "show", &file, "--credential", "bad"])
        .run();
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout.contains("bad (provider keys)"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("rollback_revoke_new"),
        "{}",
        text.stdout
    );
    assert!(
        !text.stdout.contains("\napi ("),
        "filtered to one credential"
    );

    let json = rekey().args(["audit", "export", &file]).run();
    let body: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(body["verified"], true);
    let entries = body["entries"].as_array().unwrap();
    let promoted = entries
        .iter()
        .find(|e| e["credential"] == "api" && e["action"] == "promoted")
        .expect("the promotion is in the trail");
    assert!(
        promoted["key_ids"]["new"]
            .as_str()
            .unwrap()
            .starts_with("sbx-")
    );
    assert!(promoted["vault_version"].as_u64().unwrap() >= 1);
    let staged = entries
        .iter()
        .find(|e| e["credential"] == "db" && e["action"] == "stage" && e["event"] == "intent")
        .unwrap();
    assert!(
        staged["secret_hmac"]
            .as_str()
            .unwrap()
            .starts_with("hmac-sha256:")
    );
    assert!(
        staged["vault_path"]
            .as_str()
            .unwrap()
            .starts_with("rekey/staging/")
    );
    assert!(
        entries
            .iter()
            .all(|e| !e["actor"].as_str().unwrap().is_empty())
    );

    let csv = rekey()
        .args([
            "audit",
            "export",
            &file,
            "--format",
            "csv",
            "--run",
            "no-such-run",
        ])
        .run();
    assert_eq!(csv.stdout.lines().count(), 1, "header only: {}", csv.stdout);
    let csv = rekey()
        .args(["audit", "export", &file, "--format", "csv"])
        .run();
    assert_eq!(csv.stdout.lines().count(), entries.len() + 1);
    assert!(csv.stdout.starts_with("seq,ts,run,actor,credential"));
}

/// A collector that answers 503 to its first `fail` requests, then 200, and
/// keeps every body it accepted.
fn collector(fail: usize) -> (String, std::sync::mpsc::Receiver<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ingest", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = 0;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            let mut authorized = false;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("authorization:")
                    && line.trim_end().ends_with(": Bearer CANARYsinktoken7")
                {
                    authorized = true;
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            seen += 1;
            let status = if seen <= fail || !authorized {
                "503 Service Unavailable"
            } else {
                let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
                "200 OK"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (url, rx)
}

#[test]
fn the_http_sink_delivers_every_line_after_failures_and_the_file_keeps_them_all() {
    let mut lab = Lab::new();
    let (url, received) = collector(2);
    lab.canaries.push("CANARYsinktoken7".into());
    let pb = lab.playbook(
        "sink",
        "breach",
        "  keys: { type: sandbox, settings: { state_file: DIR/keys.json, latency: 1ms } }",
        "  - { id: api, provider: keys, account: a, vault_path: PREFIX/api }\n",
    );
    let journal = lab.journal().display().to_string();
    let (code, out, err) = lab.rekey(
        &["run", &pb, "--journal", &journal, "--audit-sink", &url],
        &[("REKEY_AUDIT_AUTHORIZATION", "Bearer CANARYsinktoken7")],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let file = std::fs::read_to_string(lab.trail()).unwrap();
    let mut delivered = String::new();
    while let Ok(body) = received.try_recv() {
        delivered.push_str(&body);
    }
    assert_eq!(
        delivered, file,
        "the collector got exactly the file's lines, in order"
    );
    let places = lab
        .outputs
        .iter()
        .map(|(n, t)| (n.clone(), t.clone().into_bytes()))
        .collect::<Vec<_>>();
    assert!(
        crate::canary::leaks(&lab.canaries, &places).is_empty(),
        "the sink's token is not printed"
    );
}

#[test]
fn a_dead_collector_never_stops_the_run_and_is_reported() {
    let mut lab = Lab::new();
    // A port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pb = lab.playbook(
        "dead-sink",
        "breach",
        "  keys: { type: sandbox, settings: { state_file: DIR/keys.json, latency: 1ms } }",
        "  - { id: api, provider: keys, account: a, vault_path: PREFIX/api }\n",
    );
    let journal = lab.journal().display().to_string();
    let sink = format!("http://127.0.0.1:{port}/x");
    let (code, out, err) = lab.rekey(
        &["run", &pb, "--journal", &journal, "--audit-sink", &sink],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("not delivered") || err.contains("did not answer"),
        "{err}"
    );
    assert_eq!(verify(&lab.trail()).0, 0, "the file copy is whole");
}

#[test]
fn audit_hmac_reads_the_value_from_stdin_and_finds_nothing_for_an_unknown_one() {
    let mut lab = Lab::new();
    real_trail(&mut lab, &[]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rekey"))
        .args(["audit", "hmac", lab.trail().to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"not-a-value-it-saw\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("hmac-sha256:"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no line"));
}

#[test]
fn verify_names_a_missing_file_and_a_cut_short_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.jsonl");
    let (code, _, err) = verify(&missing);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read the audit trail"), "{err}");
    let cut = dir.path().join("cut.jsonl");
    std::fs::write(&cut, b"{\"seq\":1").unwrap();
    let (code, _, err) = verify(&cut);
    assert_eq!(code, 1);
    assert!(
        err.contains("line 1:") && err.contains("no newline"),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic the reader, and never verify unless empty.
    #[test]
    fn the_reader_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let verdict = rekey::audit::chain::verify(&bytes, None, |_, map| {
            let _ = rekey::audit::report::Entry::from_line(&map);
        });
        prop_assert!(verdict.ok() == bytes.is_empty());
        let _ = rekey::audit::chain::parse_head(&bytes);
    }

    /// Lines that look like trail lines (JSON objects with the right fields, some
    /// sealed) never panic the reader, the report or the CSV writer.
    #[test]
    fn the_reader_and_reports_never_panic_on_plausible_lines(
        fields in proptest::collection::vec(("[a-z_]{1,8}", prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            ".{0,20}".prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
            Just(serde_json::json!({"kind": 1, "message": ["x"]})),
        ]), 0..12),
        seal in any::<bool>(),
    ) {
        let mut map = serde_json::Map::new();
        map.insert("seq".into(), 1.into());
        for (k, v) in fields {
            map.insert(k, v);
        }
        map.insert("prev".into(), rekey::audit::chain::GENESIS.into());
        let body = serde_json::Value::Object(map).to_string();
        let line = if seal { rekey::audit::chain::seal(&body) } else { body };
        let bytes = format!("{line}\n").into_bytes();
        let mut entries = Vec::new();
        let verdict = rekey::audit::chain::verify(&bytes, None, |_, map| {
            entries.push(rekey::audit::report::Entry::from_line(&map));
        });
        prop_assert_eq!(verdict.ok(), seal);
        let mut out = Vec::new();
        rekey::audit::report::write_text(&entries, &mut out).unwrap();
        rekey::audit::report::write_csv(&entries, &mut out).unwrap();
        rekey::audit::report::write_json(&entries, &verdict, &mut out).unwrap();
    }
}

/// Spans never record arguments: every `instrument` in the sources skips them
/// all (and names the fields it wants), so a secret argument cannot reach a log.
#[test]
fn every_tracing_span_skips_its_arguments() {
    let mut stack = vec![crate::support::repo_root().join("src")];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for (i, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("#[") && line.contains("instrument(") {
                    seen += 1;
                    assert!(
                        line.contains("skip_all"),
                        "{}:{}: `instrument` without `skip_all`",
                        path.display(),
                        i + 1
                    );
                }
            }
        }
    }
    assert!(seen > 0, "the scan found the spans");
}

/// A token with a Vault identity (a userpass login) is named on every line: entity
/// id and display name beside the OS user.
#[test]
fn the_trail_names_the_vault_entity_behind_the_token() {
    use crate::canary::http;
    let mut lab = Lab::new();
    let addr = lab.env["VAULT_ADDR"].clone();
    let root = lab.env["VAULT_TOKEN"].clone();
    // Enabling twice answers 400 (already enabled by an earlier test): fine.
    http(
        &addr,
        "POST",
        "/v1/sys/auth/userpass",
        &root,
        Some(&serde_json::json!({ "type": "userpass" })),
    );
    http(
        &addr,
        "PUT",
        "/v1/sys/policies/acl/rekey-audit-test",
        &root,
        Some(
            &serde_json::json!({ "policy": "path \"*\" { capabilities = [\"create\", \"read\", \"update\", \"delete\", \"list\", \"patch\"] }" }),
        ),
    );
    let user = format!("alice{}", &lab.prefix[7..13]);
    http(
        &addr,
        "POST",
        &format!("/v1/auth/userpass/users/{user}"),
        &root,
        Some(
            &serde_json::json!({ "password": "CANARYuserpass8", "token_policies": "rekey-audit-test" }),
        ),
    );
    let login = http(
        &addr,
        "POST",
        &format!("/v1/auth/userpass/login/{user}"),
        "",
        Some(&serde_json::json!({ "password": "CANARYuserpass8" })),
    );
    let token = login["auth"]["client_token"]
        .as_str()
        .expect("userpass login")
        .to_owned();
    let entity = login["auth"]["entity_id"].as_str().unwrap().to_owned();
    assert!(!entity.is_empty());
    lab.token = token.clone();
    lab.canaries.push(token);
    let pb = lab.playbook(
        "entity",
        "breach",
        "  keys: { type: sandbox, settings: { state_file: DIR/keys.json, latency: 1ms } }",
        "  - { id: api, provider: keys, account: a, vault_path: PREFIX/api }\n",
    );
    let journal = lab.journal().display().to_string();
    let (code, out, err) = lab.rekey(&["run", &pb, "--journal", &journal], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    let text = std::fs::read_to_string(lab.trail()).unwrap();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["actor"]["vault_entity_id"], entity.as_str(), "{line}");
        assert_eq!(v["actor"]["vault_display_name"], format!("userpass-{user}"));
        assert!(!v["actor"]["user"].as_str().unwrap().is_empty());
    }
    let places = lab
        .outputs
        .iter()
        .map(|(n, t)| (n.clone(), t.clone().into_bytes()))
        .chain(lab.written_files())
        .collect::<Vec<_>>();
    assert!(crate::canary::leaks(&lab.canaries, &places).is_empty());
}

/// Two runs writing one trail at the same time (two journals, one `--audit-file`)
/// take turns under the file lock: the chain holds and both runs are in it.
#[test]
fn two_processes_appending_to_one_trail_keep_the_chain_whole() {
    let lab = Lab::new();
    let trail = lab.trail().display().to_string();
    let mut children = Vec::new();
    for n in 0..2 {
        let pb = lab.playbook(
            &format!("concurrent{n}"),
            "breach",
            &format!("  keys: {{ type: sandbox, settings: {{ state_file: DIR/keys{n}.json, latency: 1ms }} }}"),
            &format!("  - {{ id: a{n}, provider: keys, account: a, vault_path: PREFIX/c{n}/a }}\n  - {{ id: b{n}, provider: keys, account: b, vault_path: PREFIX/c{n}/b }}\n"),
        );
        let journal = lab.dir.path().join(format!("journal{n}.db"));
        children.push(
            std::process::Command::new(env!("CARGO_BIN_EXE_rekey"))
                .args([
                    "run",
                    &pb,
                    "--journal",
                    journal.to_str().unwrap(),
                    "--audit-file",
                    &trail,
                ])
                .env("VAULT_TOKEN", &lab.token)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (code, out, err) = verify(&lab.trail());
    assert_eq!(code, 0, "{out}{err}");
    let text = std::fs::read_to_string(lab.trail()).unwrap();
    let runs: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l).ok()?["run"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(runs.len(), 2, "both runs are in the trail");
    assert_eq!(text.matches("\"action\":\"finish\"").count(), 2);
}
