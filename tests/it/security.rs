//! Security fixes of issue 12, each through the real binary: plain-http
//! endpoints, redirects that would carry the Vault token elsewhere, process
//! hardening, the files rekey keeps (journal, trail, head, keys), a trail
//! deleted or cut beside its journal, and playbooks that are not plain files.

use crate::support::{rekey, services};
use serde_json::json;
use std::path::{Path, PathBuf};

/// A playbook in a fresh directory whose `providers:` and `credentials:` are
/// `body`; `VAULT` becomes the OpenBao address.
fn playbook(dir: &Path, name: &str, body: &str) -> PathBuf {
    let env = services();
    let text = format!(
        "version: 1\nname: sec\nincident: {{ mode: breach }}\nvault: {{ address: \"VAULT\" }}\n{body}"
    )
    .replace("VAULT", &env["VAULT_ADDR"]);
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

// ------------------------------------------------------------ plain http

/// `vault_approle`, `vault_userpass` and `aws_iam` send an admin credential to
/// the address their settings name: https, or plain http to a loopback address
/// only, judged on the parsed host (`127.0.0.1.example.com` is not loopback).
#[test]
fn providers_refuse_plain_http_to_a_host_that_is_not_loopback() {
    let env = services();
    let dir = tempfile::tempdir().unwrap();
    let pb = playbook(
        dir.path(),
        "p.yaml",
        "providers:
  ar: { type: vault_approle, admin: { env: SEC_BAO_ADMIN }, settings: { address: \"http://vault.example.com:8200\" } }
  up: { type: vault_userpass, admin: { env: SEC_BAO_ADMIN }, settings: { address: \"http://127.0.0.1.example.com:8200\" } }
  aws: { type: aws_iam, admin: { env: SEC_AWS_ADMIN }, settings: { endpoint_url: \"http://10.0.0.7:5000\" } }
credentials:
  - { id: a, provider: ar, vault_path: sec/a, settings: { role_name: r } }
  - { id: b, provider: up, account: u, vault_path: sec/b }
  - { id: c, provider: aws, account: u, vault_path: sec/c }
",
    );
    let journal = dir.path().join("journal.db");
    let out = rekey()
        .env("VAULT_TOKEN", &env["VAULT_TOKEN"])
        .env("SEC_BAO_ADMIN", &env["VAULT_TOKEN"])
        .env(
            "SEC_AWS_ADMIN",
            &json!({ "access_key_id": "AKIAEXAMPLE", "secret_access_key": "sec-aws-secret" })
                .to_string(),
        )
        .args([
            "run",
            pb.to_str().unwrap(),
            "--journal",
            journal.to_str().unwrap(),
        ])
        .run();
    assert_ne!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for (instance, host) in [
        ("ar", "vault.example.com"),
        ("up", "127.0.0.1.example.com"),
        ("aws", "10.0.0.7"),
    ] {
        assert!(
            out.stderr
                .contains(&format!("provider instance `{instance}`"))
                && out.stderr.contains(host),
            "{instance}: {}",
            out.stderr
        );
    }
    assert_eq!(
        out.stderr
            .matches("plain http only to a loopback address")
            .count(),
        3,
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("nothing was changed"), "{}", out.stderr);
}

/// The Vault store and the HTTP audit sink follow the same rule: the playbook's
/// Vault address and `--audit-sink` are refused over plain http to another host,
/// where they used to get a warning (or, for a host that merely starts with
/// `127.`, nothing at all).
#[test]
fn the_vault_store_and_the_audit_sink_refuse_plain_http_to_a_host_that_is_not_loopback() {
    let env = services();
    let dir = tempfile::tempdir().unwrap();
    let body = "providers:
  keys: { type: sandbox, settings: { state_file: DIR/keys.json } }
credentials:
  - { id: a, provider: keys, account: a, vault_path: sec/a }
"
    .replace("DIR", &dir.path().display().to_string());
    let pb = playbook(dir.path(), "p.yaml", &body);
    let journal = dir.path().join("journal.db");
    let remote = std::fs::read_to_string(&pb)
        .unwrap()
        .replace(&env["VAULT_ADDR"], "http://vault.example.com:8200");
    let remote_pb = dir.path().join("remote.yaml");
    std::fs::write(&remote_pb, remote).unwrap();
    let out = rekey()
        .env("VAULT_TOKEN", &env["VAULT_TOKEN"])
        .args(["plan", remote_pb.to_str().unwrap()])
        .run();
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("remote.yaml:4:")
            && out.stderr.contains("plain http only to a loopback address"),
        "{}",
        out.stderr
    );
    let out = rekey()
        .env("VAULT_TOKEN", &env["VAULT_TOKEN"])
        .args([
            "run",
            pb.to_str().unwrap(),
            "--journal",
            journal.to_str().unwrap(),
            "--audit-sink",
            "http://127.0.0.1.example.com:9/collect",
        ])
        .run();
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("127.0.0.1.example.com")
            && out.stderr.contains("plain http only to a loopback address"),
        "{}",
        out.stderr
    );
    assert!(
        !dir.path().join("keys.json").exists(),
        "nothing ran: {}",
        out.stderr
    );
}

// ------------------------------------------------------------ redirects

/// Two loopback servers: the redirector answers every request with `307` to
/// the same path on the recorder, which answers `200 {}` and records the head
/// (request line and headers) of every request it gets. They serve until the
/// test process ends.
struct Redirect {
    redirector: u16,
    recorded: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

fn serve(listener: std::net::TcpListener, answer: impl Fn(&str) -> String + Send + 'static) {
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            use std::io::{BufRead, Write};
            let mut reader = std::io::BufReader::new(&stream);
            let mut head = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            let _ = std::io::Read::read_exact(&mut reader, &mut body);
            let _ = (&stream).write_all(answer(&head).as_bytes());
        }
    });
}

fn redirect_servers() -> Redirect {
    let recorder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let redirector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = recorder.local_addr().unwrap().port();
    let port = redirector.local_addr().unwrap().port();
    let recorded = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = recorded.clone();
    serve(recorder, move |head| {
        log.lock().unwrap().push(head.to_owned());
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".into()
    });
    serve(redirector, move |head| {
        let path = head.split_whitespace().nth(1).unwrap_or("/");
        format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{target}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    });
    Redirect {
        redirector: port,
        recorded,
    }
}

impl Redirect {
    fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.redirector)
    }

    /// Whether a request that reached the recorder carried `needle`.
    fn saw(&self, needle: &str) -> bool {
        self.recorded
            .lock()
            .unwrap()
            .iter()
            .any(|head| head.contains(needle))
    }
}

/// A token of the services' OpenBao with a recognisable id (root policy).
fn canary_token(env: &std::collections::HashMap<String, String>) -> String {
    let token = format!("CANARYredirect{}", hex::encode(rand::random::<[u8; 6]>()));
    crate::canary::http(
        &env["VAULT_ADDR"],
        "POST",
        "/v1/auth/token/create",
        &env["VAULT_TOKEN"],
        Some(&json!({ "id": token, "policies": ["root"], "ttl": "10m" })),
    );
    token
}

/// A Vault address that redirects (307) to another port: the Vault store does
/// not follow it with the token; it stops and says why.
#[test]
fn the_vault_store_does_not_follow_a_redirect_to_another_origin_with_the_token() {
    let env = services();
    let servers = redirect_servers();
    let token = canary_token(&env);
    let dir = tempfile::tempdir().unwrap();
    let pb = dir.path().join("p.yaml");
    std::fs::write(
        &pb,
        format!(
            "version: 1\nname: sec\nvault: {{ address: \"{}\" }}\nproviders:\n  keys: {{ type: sandbox, settings: {{ state_file: memory }} }}\ncredentials:\n  - {{ id: a, provider: keys, account: a, vault_path: sec/a }}\n",
            servers.address()
        ),
    )
    .unwrap();
    let out = rekey()
        .env("VAULT_TOKEN", &token)
        .args(["plan", pb.to_str().unwrap(), "--live"])
        .run();
    assert_ne!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(!servers.saw(&token), "the token followed the redirect");
    assert!(
        out.stdout.contains("redirect (HTTP 307)"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
}

/// `vault_approle` whose `address` redirects (307) to another port: its admin
/// token does not follow.
#[test]
fn vault_providers_do_not_follow_a_redirect_to_another_origin_with_the_token() {
    let env = services();
    let servers = redirect_servers();
    let token = canary_token(&env);
    let dir = tempfile::tempdir().unwrap();
    let pb = playbook(
        dir.path(),
        "p.yaml",
        &format!(
            "providers:\n  ar: {{ type: vault_approle, admin: {{ env: SEC_BAO_ADMIN }}, settings: {{ address: \"{}\" }} }}\ncredentials:\n  - {{ id: a, provider: ar, vault_path: sec/a, settings: {{ role_name: r }} }}\n",
            servers.address()
        ),
    );
    let out = rekey()
        .env("VAULT_TOKEN", &env["VAULT_TOKEN"])
        .env("SEC_BAO_ADMIN", &token)
        .args(["plan", pb.to_str().unwrap(), "--live"])
        .run();
    assert_ne!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        !servers.saw(&token),
        "the admin token followed the redirect"
    );
    assert!(
        out.stdout.contains("redirect (HTTP 307)"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
}

// ------------------------------------------------------------ process hardening

/// Kills (SIGKILL) and reaps a child when dropped, even when the test fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `rekey run` (its credential held up by a slow sandbox) has no
/// secret left in its environment (`/proc/PID/environ` shows the block the
/// process started with, so the values must be wiped there, not only unset),
/// may not dump core, and is not dumpable (other processes of its user cannot
/// read its memory or environment). As root, the test runs rekey as `nobody`:
/// /proc files of a process that is not dumpable belong to root.
#[test]
fn a_running_rekey_keeps_no_secret_in_its_environment_and_cannot_be_dumped() {
    use std::io::BufRead;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let env = services();
    let token = canary_token(&env);
    let admin = format!(
        "CANARYsandboxadmin{}",
        hex::encode(rand::random::<[u8; 6]>())
    );
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&admin));
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: geteuid(2) has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    const NOBODY: u32 = 65534;
    if as_root {
        std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let body = format!(
        "providers:\n  keys: {{ type: sandbox, admin: {{ env: SEC_SANDBOX_ADMIN }}, settings: {{ state_file: DIR/keys.json, latency: 20s, admin_sha256: {digest} }} }}\ncredentials:\n  - {{ id: a, provider: keys, account: a, vault_path: sec/hardening-{} }}\n",
        hex::encode(rand::random::<[u8; 4]>())
    )
    .replace("DIR", &dir.path().display().to_string());
    let pb = playbook(dir.path(), "p.yaml", &body);
    let journal = dir.path().join("journal.db");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rekey"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("VAULT_TOKEN", &token)
        .env("SEC_SANDBOX_ADMIN", &admin)
        .env("SEC_HARMLESS", "stays-visible")
        .current_dir(dir.path())
        .args([
            "-v",
            "run",
            pb.to_str().unwrap(),
            "--journal",
            journal.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if as_root {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    let pid = child.0.id();
    // Wait until the run is under way: the playbook is loaded, Vault logged in,
    // the admin credential read.
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(line) if line.contains("Intent recorded") => break,
            Ok(line) => seen.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => panic!("rekey ended before the run started: {seen:?}"),
        }
        assert!(std::time::Instant::now() < deadline, "{seen:?}");
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let limits = std::fs::read_to_string(proc_dir.join("limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap()
        .split_whitespace()
        .skip(4)
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(core, ["0", "0"], "{limits}");
    if as_root {
        let owner = std::fs::metadata(proc_dir.join("status")).unwrap().uid();
        assert_eq!(
            owner, 0,
            "rekey (uid {NOBODY}) is dumpable: its /proc files are its own"
        );
        let environ = std::fs::read(proc_dir.join("environ")).unwrap();
        let text = String::from_utf8_lossy(&environ);
        for secret in [&token, &admin] {
            assert!(
                !text.contains(secret.as_str()),
                "a secret in /proc/{pid}/environ"
            );
        }
        for name in ["VAULT_TOKEN=", "SEC_SANDBOX_ADMIN="] {
            assert!(!text.contains(name), "{name} still in /proc/{pid}/environ");
        }
        assert!(text.contains("SEC_HARMLESS=stays-visible"), "{text}");
    } else {
        // Not dumpable: another process of the same user may not read it.
        let read = std::fs::read(proc_dir.join("environ"));
        assert!(
            read.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied),
            "rekey's environment is readable by its user"
        );
    }
}

// ------------------------------------------------------------ private files

/// `rekey run` of a one-credential sandbox playbook in `dir` with `extra`
/// arguments (journal, trail): (exit code, stderr).
fn run_in(dir: &Path, extra: &[&str]) -> (i32, String) {
    let env = services();
    let body = "providers:\n  keys: { type: sandbox, settings: { state_file: memory } }\ncredentials:\n  - { id: a, provider: keys, account: a, vault_path: sec/files-NAME }\n"
        .replace("NAME", &hex::encode(rand::random::<[u8; 4]>()));
    let pb = playbook(dir, "p.yaml", &body);
    let out = rekey()
        .env("VAULT_TOKEN", &env["VAULT_TOKEN"])
        .args(["run", pb.to_str().unwrap()])
        .args(extra)
        .run();
    (out.code, out.stderr)
}

fn private_dir(parent: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    let dir = parent.join(name);
    std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
    dir
}

/// A journal, trail, head or key file that is a symbolic link is refused (it
/// would be followed to whatever it points at), naming the link and the fix;
/// nothing is written through it.
#[test]
fn journal_trail_head_and_key_files_that_are_symbolic_links_are_refused() {
    use std::os::unix::fs::OpenOptionsExt;
    let top = tempfile::tempdir().unwrap();
    for (name, file) in [
        ("journal", "journal.db"),
        ("key", "journal.key"),
        ("trail", "audit.jsonl"),
        ("head", "audit.jsonl.head"),
        ("trailkey", "audit.jsonl.key"),
    ] {
        let dir = private_dir(top.path(), name);
        let target = dir.join("elsewhere");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&target)
            .unwrap();
        std::os::unix::fs::symlink(&target, dir.join(file)).unwrap();
        let journal = dir.join("journal.db");
        let (code, stderr) = run_in(&dir, &["--journal", journal.to_str().unwrap()]);
        assert_ne!(code, 0, "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("{} is a symbolic link", dir.join(file).display())),
            "{name}: {stderr}"
        );
        assert_eq!(
            std::fs::metadata(&target).unwrap().len(),
            0,
            "{name}: rekey wrote through the link"
        );
    }
}

/// The directory of the journal and trail must be writable by its owner only:
/// whoever else can write it can swap the files. Refused with the fix.
#[test]
fn a_journal_or_trail_directory_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let top = tempfile::tempdir().unwrap();
    let open = private_dir(top.path(), "open");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let journal = open.join("journal.db");
    let (code, stderr) = run_in(&open, &["--journal", journal.to_str().unwrap()]);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} is writable by group or others",
            open.display()
        )) && stderr.contains(&format!("chmod go-w {}", open.display())),
        "{stderr}"
    );
    assert!(!journal.exists(), "nothing is created there");
    let private = private_dir(top.path(), "private");
    let trail = open.join("audit.jsonl");
    let (code, stderr) = run_in(
        &private,
        &[
            "--journal",
            private.join("journal.db").to_str().unwrap(),
            "--audit-file",
            trail.to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} is writable by group or others",
            open.display()
        )),
        "{stderr}"
    );
    assert!(!trail.exists(), "nothing is created there");
}

/// A journal, trail or key file owned by another user is refused (as root the
/// test hands rekey's files to `nobody`): that user could have written them.
#[test]
fn files_owned_by_another_user_are_refused() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Only root can give a file away; the check itself runs for everyone.
        eprintln!("not root: files of another user cannot be made here");
        return;
    }
    let top = tempfile::tempdir().unwrap();
    let dir = private_dir(top.path(), "d");
    let journal = dir.join("journal.db");
    let (code, stderr) = run_in(&dir, &["--journal", journal.to_str().unwrap()]);
    assert_eq!(code, 0, "a first run creates them: {stderr}");
    for file in [
        "journal.db",
        "journal.key",
        "audit.jsonl",
        "audit.jsonl.head",
        "audit.jsonl.key",
    ] {
        let path = dir.join(file);
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let (code, stderr) = run_in(&dir, &["--journal", journal.to_str().unwrap()]);
        assert_ne!(code, 0, "{file}: {stderr}");
        assert!(
            stderr.contains(&format!("{} belongs to uid 65534", path.display())),
            "{file}: {stderr}"
        );
        std::os::unix::fs::chown(&path, Some(0), None).unwrap();
    }
}

// ------------------------------------------------------------ the trail beside its journal

/// Cuts `trail` to its first `keep` lines and writes a head record that agrees,
/// as someone with write access to the directory could: the chain still holds.
fn cut_trail(trail: &Path, keep: usize) {
    let text = std::fs::read_to_string(trail).unwrap();
    let lines: Vec<&str> = text.lines().take(keep).collect();
    std::fs::write(trail, lines.join("\n") + "\n").unwrap();
    let last = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(lines[keep - 1]));
    let head = format!("{{\"lines\":{keep},\"last\":\"{last}\"}}");
    std::fs::write(trail.with_extension("jsonl.head"), format!("{head:<127}\n")).unwrap();
}

/// A trail deleted beside a journal that has runs is noticed: `run` refuses
/// (naming what the journal last recorded of it) unless `--new-trail` says to
/// start a new one.
#[test]
fn a_trail_deleted_beside_a_journal_with_runs_is_refused_unless_a_new_one_is_asked_for() {
    let top = tempfile::tempdir().unwrap();
    let dir = private_dir(top.path(), "d");
    let journal = dir.join("journal.db");
    let args = ["--journal", journal.to_str().unwrap()];
    let (code, stderr) = run_in(&dir, &args);
    assert_eq!(code, 0, "{stderr}");
    for file in ["audit.jsonl", "audit.jsonl.head", "audit.jsonl.key"] {
        std::fs::remove_file(dir.join(file)).unwrap();
    }
    let (code, stderr) = run_in(&dir, &args);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} does not exist",
            dir.join("audit.jsonl").display()
        )) && stderr.contains("--new-trail")
            && stderr.contains("lines, last line sha256"),
        "{stderr}"
    );
    assert!(!dir.join("audit.jsonl").exists(), "no trail was started");
    let (code, stderr) = run_in(&dir, &[args[0], args[1], "--new-trail"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("new audit trail"), "{stderr}");
    assert!(dir.join("audit.jsonl").exists());
}

/// The journal records the trail's length and last hash: a trail cut back (its
/// head rewritten to agree) or replaced by another valid trail is refused.
#[test]
fn a_trail_cut_or_replaced_beside_its_journal_is_refused() {
    let top = tempfile::tempdir().unwrap();
    let dir = private_dir(top.path(), "d");
    let journal = dir.join("journal.db");
    let args = ["--journal", journal.to_str().unwrap()];
    for _ in 0..2 {
        let (code, stderr) = run_in(&dir, &args);
        assert_eq!(code, 0, "{stderr}");
    }
    let trail = dir.join("audit.jsonl");
    let saved: Vec<(PathBuf, Vec<u8>)> = ["audit.jsonl", "audit.jsonl.head", "audit.jsonl.key"]
        .iter()
        .map(|f| (dir.join(f), std::fs::read(dir.join(f)).unwrap()))
        .collect();
    let total = String::from_utf8_lossy(&saved[0].1).lines().count();
    // Cut back to the first run: the chain and head agree, the journal does not.
    cut_trail(&trail, total / 2);
    let out = rekey()
        .args(["audit", "verify", trail.to_str().unwrap()])
        .run();
    assert_eq!(
        out.code, 0,
        "the cut trail verifies on its own: {}",
        out.stderr
    );
    let (code, stderr) = run_in(&dir, &args);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!("{} has {} lines", trail.display(), total / 2))
            && stderr.contains(&format!("recorded {total}")),
        "{stderr}"
    );
    // Replaced by another trail of the same length: the recorded hash differs.
    let other = private_dir(top.path(), "other");
    let other_journal = other.join("journal.db");
    for _ in 0..2 {
        let (code, stderr) = run_in(&other, &["--journal", other_journal.to_str().unwrap()]);
        assert_eq!(code, 0, "{stderr}");
    }
    for file in ["audit.jsonl", "audit.jsonl.head", "audit.jsonl.key"] {
        std::fs::copy(other.join(file), dir.join(file)).unwrap();
    }
    let (code, stderr) = run_in(&dir, &args);
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("was replaced"), "{stderr}");
    // Restored as it was: accepted.
    for (path, bytes) in &saved {
        std::fs::write(path, bytes).unwrap();
    }
    let (code, stderr) = run_in(&dir, &args);
    assert_eq!(code, 0, "{stderr}");
}

/// `audit verify` of a trail rekey wrote (its key file beside it) whose head
/// record is gone fails: the end of the trail can no longer be checked. A copy
/// of the trail alone (from a collector) still verifies, with a note.
#[test]
fn audit_verify_fails_when_the_head_record_of_a_trail_rekey_wrote_is_missing() {
    let top = tempfile::tempdir().unwrap();
    let dir = private_dir(top.path(), "d");
    let journal = dir.join("journal.db");
    let (code, stderr) = run_in(&dir, &["--journal", journal.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let trail = dir.join("audit.jsonl");
    std::fs::remove_file(dir.join("audit.jsonl.head")).unwrap();
    let out = rekey()
        .args(["audit", "verify", trail.to_str().unwrap()])
        .run();
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("audit.jsonl.head is missing"),
        "{}",
        out.stderr
    );
    let copy_dir = private_dir(top.path(), "copy");
    let copy = copy_dir.join("collected.jsonl");
    std::fs::copy(&trail, &copy).unwrap();
    let out = rekey()
        .args(["audit", "verify", copy.to_str().unwrap()])
        .run();
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("no head record"), "{}", out.stderr);
}

// ------------------------------------------------------------ the playbook file

/// A playbook path that names a FIFO is refused at once (opening it used to
/// wait for a writer forever); `-` reads the playbook from stdin; a file over
/// the size limit is refused before it is read, with its size and the limit.
#[test]
fn playbooks_are_checked_for_type_and_size_before_they_are_read_and_dash_is_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pb.fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) on a path in our own temporary directory.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_rekey"))
        .args(["plan", fifo.to_str().unwrap()])
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rekey plan hangs on a FIFO"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a regular file"), "{stderr}");

    let text = "version: 1\nname: from-stdin\nvault: { address: 'http://127.0.0.1:8200' }\nproviders:\n  keys: { type: sandbox }\ncredentials:\n  - { id: a, provider: keys, account: a, vault_path: apps/a }\n";
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rekey"))
        .args(["plan", "-"])
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("from-stdin"), "{stdout}");
    // `run` needs a file: resume and rollback read it again.
    let out = rekey().args(["run", "-"]).run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("needs a playbook file"),
        "{}",
        out.stderr
    );

    let big = dir.path().join("big.yaml");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(65 << 20).unwrap();
    let out = rekey().args(["plan", big.to_str().unwrap()]).run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the playbook is 65.0 MiB; the limit is 64 MiB"),
        "{}",
        out.stderr
    );
}
