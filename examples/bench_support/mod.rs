//! What the benchmark examples (`engine_vs_vault`, `pg_vs_openbao`, `runners`)
//! and `benches/rate_limits.rs` share: the services' environment, the release
//! `rekey` binary, an admin connection to the suite's PostgreSQL, a directory
//! per run, medians. Not an example
//! itself (Cargo takes `examples/*.rs` and `examples/*/main.rs`); each user
//! includes it with `mod bench_support;` (benches with a `#[path]`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The repository's root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/services/env` (written by `scripts/services up`) as a map.
pub fn services() -> HashMap<String, String> {
    let path = root().join("target/services/env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        eprintln!(
            "{}: {e}\nstart the services first: scripts/services up",
            path.display()
        );
        std::process::exit(1)
    });
    text.lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| {
            (
                k.to_owned(),
                v.trim_matches('\'').trim_matches('"').to_owned(),
            )
        })
        .collect()
}

/// Builds the release `rekey` binary and returns its path.
pub fn release_rekey() -> PathBuf {
    // Another build to measure beside this one (an earlier commit's binary, run
    // alternately with this one in the same session).
    if let Some(path) = std::env::var_os("REKEY_BENCH_REKEY") {
        return PathBuf::from(path);
    }
    let status = std::process::Command::new("cargo")
        .args(["build", "--release", "--quiet", "--bin", "rekey"])
        .current_dir(root())
        .status()
        .expect("cargo builds rekey");
    assert!(status.success());
    root().join("target/release/rekey")
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A directory of its own under `parent` for one `rekey run` (its journal and
/// the audit trail beside it): a run verifies the whole trail it extends, so a
/// trail shared by a benchmark's runs would make each run pay for the ones
/// before it (about 54 µs per rotation of history).
pub fn run_dir(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).expect("a run directory");
    dir
}

/// A connection to database `db` of the suite's PostgreSQL as its admin.
pub async fn pg_admin(env: &HashMap<String, String>, db: &str) -> tokio_postgres::Client {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&env["REKEY_PG_HOST"])
        .port(env["REKEY_PG_PORT"].parse().unwrap())
        .user(&env["REKEY_PG_ADMIN_USER"])
        .password(env["REKEY_PG_ADMIN_PASSWORD"].as_bytes())
        .dbname(db);
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL answers");
    tokio::spawn(conn);
    client
}
