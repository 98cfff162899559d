//! Rate-limited servers rekey did not write, for the rate-limit tests and the
//! `rate_limits` benchmark (which includes this file): nginx's `limit_req` (a real
//! server's leaky bucket with burst, answering 429 with `Retry-After: 1`), and a
//! small Python server on the `limits` library (`rate_servers/limits_server.py`: a
//! moving window like GitHub's hourly limit, or a fixed window with Okta's
//! `X-Rate-Limit-Remaining` / `X-Rate-Limit-Reset` headers). Each test starts its
//! own on a port the OS picks, with its files under `target/rate-servers/`, and
//! stops it when the handle drops (also when the test fails). `scripts/services up`
//! installs nginx and `limits`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A running server: its base URL; stopped and its files removed on drop.
pub struct RateServer {
    child: Child,
    pub url: String,
    dir: PathBuf,
}

impl Drop for RateServer {
    fn drop(&mut self) {
        // nginx's master stops its worker on SIGTERM; kill() is SIGKILL, which
        // would leave the worker running: send TERM first.
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child, by its pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The test provider type that reaches these servers: `--providers` this.
pub fn providers_dir() -> PathBuf {
    root().join("tests/it/rate_servers/providers")
}

fn fresh_dir(kind: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = root().join("target/rate-servers").join(format!(
        "{kind}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tmp")).expect("target/rate-servers is writable");
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn wait_for_port(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

const NGINX: &str = "/usr/sbin/nginx";

/// nginx with `limit_req` at `rate` requests a second and `burst` (nodelay: a
/// request over the burst is refused at once, with 429 and `Retry-After: 1`).
/// Every method and path shares the one bucket and is answered `{"ok":true}`.
pub fn nginx(rate: u32, burst: u32) -> RateServer {
    assert!(
        Path::new(NGINX).exists(),
        "{NGINX} not found: run scripts/services up (it installs nginx; scripts/test does)"
    );
    let mut last = String::new();
    for _ in 0..3 {
        let dir = fresh_dir("nginx");
        let port = free_port();
        std::fs::write(dir.join("ok.json"), "{\"ok\":true}\n").unwrap();
        // As root, the worker would run as `nobody`, which may not read the tree.
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root;"
        } else {
            ""
        };
        let d = dir.display();
        let conf = format!(
            r#"{user}
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 512; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  keepalive_requests 100000;
  limit_req_zone $server_port zone=api:1m rate={rate}r/s;
  server {{
    listen 127.0.0.1:{port};
    root {d};
    default_type application/json;
    location / {{
      limit_req zone=api burst={burst} nodelay;
      limit_req_status 429;
      error_page 429 @limited;
      # PUT and POST to a static file are 405: answer them like the GETs.
      error_page 405 =200 /ok.json;
      try_files /ok.json =404;
    }}
    location = /ok.json {{ }}
    location @limited {{
      add_header Retry-After 1 always;
      return 429 '{{"message":"Too Many Requests"}}';
    }}
  }}
}}
"#
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let mut child = Command::new(NGINX)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nginx starts");
        if wait_for_port(port, &mut child) {
            return RateServer {
                child,
                url: format!("http://127.0.0.1:{port}"),
                dir,
            };
        }
        last = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }
    panic!("nginx did not start: {last}");
}

/// How the `limits` server counts.
#[derive(Clone, Copy, Debug)]
pub enum Window {
    /// At most `limit` requests in any `seconds` (429 with Retry-After).
    Moving,
    /// `limit` requests per fixed window of `seconds`, Okta's headers on every answer.
    FixedWithHeaders,
}

/// The Python server on the `limits` library; `block`: (after, for) seconds from
/// its first request during which it refuses everything.
pub fn limits(window: Window, limit: u32, seconds: u32, block: Option<(f64, f64)>) -> RateServer {
    let python = root().join("target/services/venv/bin/python");
    assert!(
        python.exists(),
        "{} not found: run scripts/services up (it installs the `limits` library; scripts/test does)",
        python.display()
    );
    let dir = fresh_dir("limits");
    let mut cmd = Command::new(&python);
    cmd.arg(root().join("tests/it/rate_servers/limits_server.py"))
        .args([
            "--strategy",
            match window {
                Window::Moving => "moving",
                Window::FixedWithHeaders => "fixed",
            },
            "--limit",
            &limit.to_string(),
            "--window",
            &seconds.to_string(),
        ])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap());
    if let Some((after, lasting)) = block {
        cmd.args([
            "--block-after",
            &after.to_string(),
            "--block-for",
            &lasting.to_string(),
        ]);
    }
    let mut child = cmd.spawn().expect("the limits server starts");
    let mut line = String::new();
    let read = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    let port: Option<u16> = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok());
    match (read, port) {
        (Ok(_), Some(port)) => RateServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        },
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            let err = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            let _ = std::fs::remove_dir_all(&dir);
            panic!("the limits server did not start: {err}");
        }
    }
}

/// A playbook of `credentials` passwords of the `rate_limited_api` test type at
/// `server`, `rate` (per second) and `burst`, concurrency 32, stored under `prefix`
/// in the Vault at `vault_addr`.
pub fn playbook(
    vault_addr: &str,
    prefix: &str,
    server: &RateServer,
    rate: f64,
    burst: u32,
    credentials: usize,
) -> String {
    let mut pb = format!(
        "version: 1\nname: rate-limits\nincident: {{ id: RL, compromised: [idp], mode: breach }}\nvault: {{ address: '{vault_addr}', mount: secret, staging_prefix: {prefix}/staging }}\ndefaults: {{ concurrency: 32 }}\nproviders:\n  api:\n    type: rate_limited_api\n    settings: {{ base_url: '{}' }}\n    rate: {{ per_second: {rate}, burst: {burst} }}\n    concurrency: 32\ncredentials:\n",
        server.url
    );
    for i in 0..credentials {
        pb += &format!(
            "  - {{ id: c{i}, provider: api, account: u{i}, vault_path: {prefix}/c{i} }}\n"
        );
    }
    pb
}
