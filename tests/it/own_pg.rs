//! A PostgreSQL cluster a test owns (not the suite's shared one): `initdb` under a
//! temporary directory, its own loopback port, trust authentication, so a test
//! can stop and start the whole server under rekey's feet. As root the server
//! runs as the `postgres` OS user (PostgreSQL refuses root). Stopped (immediate)
//! and removed when dropped, even when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct OwnPg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

/// The newest `/usr/lib/postgresql/*/bin` with `initdb` and `pg_ctl`.
fn bindir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (scripts/services installs it)")
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().expect("an initdb").1
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|u| u.split_whitespace().next().map(|u| u == "0"))
            .unwrap_or(false)
    })
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl OwnPg {
    pub fn new() -> OwnPg {
        let dir = tempfile::Builder::new()
            .prefix("rekey-own-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown the cluster's directory to postgres");
        }
        let pg = OwnPg {
            dir,
            bin: bindir(),
            port: free_port(),
        };
        let data = pg.data();
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "rekey",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--auth=trust",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.start();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `prog` of the PostgreSQL bin directory, as `postgres` when we are root.
    fn command(&self, prog: &str) -> Command {
        let path = self.bin.join(prog);
        let mut c = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        c.current_dir(self.dir.path());
        c
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        self.command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    pub fn start(&self) {
        let log = self.dir.path().join("postgres.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let started = self.pg_ctl(&[
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-t",
            "30",
            "-o",
            &options,
            "start",
        ]);
        assert!(started, "pg_ctl start: {}", tail(&log));
    }

    /// Stops the server (fast: sessions are ended, as on a restart).
    pub fn stop(&self) {
        assert!(
            self.pg_ctl(&["-m", "fast", "-w", "-t", "30", "stop"]),
            "pg_ctl stop"
        );
    }

    /// The journal URL (`--journal`): no password, trust on loopback.
    pub fn url(&self) -> String {
        format!(
            "postgres://rekey@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

impl Drop for OwnPg {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "-t", "10", "stop"]);
    }
}
