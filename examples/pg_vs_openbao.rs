//! Side by side: rotating the same PostgreSQL role passwords with OpenBao's own
//! database secrets engine and with rekey's `postgres` provider, in one run,
//! against the services `scripts/services up` started (OpenBao, PostgreSQL):
//!
//!     cargo run --release --example pg_vs_openbao -- [ROLES] [ROUNDS]
//!
//! (a) OpenBao: the `database` engine at mount `bench-db`, one postgresql
//!     connection config, one static role per PostgreSQL role, and
//!     `POST bench-db/rotate-role/NAME` for every role from an HTTP client at
//!     concurrency 8 (OpenBao changes the password and stores it).
//! (b) rekey: `rekey run` (in process, through the library's command layer) of a
//!     playbook with one `postgres` credential per role, concurrency 8, with every
//!     Vault write of the protocol (read, stage, promote, metadata, clear), once
//!     with verify off and once with verify on (a fresh login per role).
//!
//! `REKEY_BENCH_DIR=/dev/shm` puts rekey's journals on tmpfs (see below).
//!
//! Prints rotations per second for each (median of ROUNDS rounds) and the ratios.
//! Not a test: figures depend on the machine; README.md records them.

use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const CONCURRENCY: usize = 8;
const MOUNT: &str = "bench-db";

fn services() -> HashMap<String, String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/services/env");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/services up first", path.display()));
    text.lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
}

/// A small HTTP/1.1 client for the OpenBao API (one connection per request).
async fn bao(
    addr: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = addr.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host)
        .await
        .expect("OpenBao answers");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} /v1/{path} HTTP/1.1\r\nHost: {host}\r\nX-Vault-Token: {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let json = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    // Chunked bodies are not parsed: the callers only need status codes.
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

async fn pg_admin(env: &HashMap<String, String>) -> tokio_postgres::Client {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&env["REKEY_PG_HOST"])
        .port(env["REKEY_PG_PORT"].parse().unwrap())
        .user(&env["REKEY_PG_ADMIN_USER"])
        .password(&env["REKEY_PG_ADMIN_PASSWORD"])
        .dbname("postgres");
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL answers");
    tokio::spawn(conn);
    client
}

fn role(i: usize) -> String {
    format!("bench_r{i}")
}

/// Drops what an earlier run left, creates the roles and OpenBao's engine.
async fn setup(env: &HashMap<String, String>, roles: usize) {
    let (addr, token) = (&env["VAULT_ADDR"], &env["VAULT_TOKEN"]);
    let _ = bao(addr, token, "DELETE", &format!("sys/mounts/{MOUNT}"), None).await;
    let pg = pg_admin(env).await;
    let mut sql = String::new();
    for i in 0..roles {
        let r = role(i);
        sql.push_str(&format!(
            "DROP ROLE IF EXISTS {r}; CREATE ROLE {r} LOGIN PASSWORD 'initial-{i}';"
        ));
    }
    pg.batch_execute(&sql).await.unwrap();
    let (s, _) = bao(
        addr,
        token,
        "POST",
        &format!("sys/mounts/{MOUNT}"),
        Some(json!({ "type": "database" })),
    )
    .await;
    assert!(
        s == 204 || s == 200,
        "enabling the database engine: HTTP {s}"
    );
    let url = format!(
        "postgresql://{{{{username}}}}:{{{{password}}}}@{}:{}/postgres?sslmode=disable",
        env["REKEY_PG_HOST"], env["REKEY_PG_PORT"]
    );
    let (s, v) = bao(
        addr,
        token,
        "POST",
        &format!("{MOUNT}/config/pg"),
        Some(json!({
            "plugin_name": "postgresql-database-plugin",
            "connection_url": url,
            "username": env["REKEY_PG_ADMIN_USER"],
            "password": env["REKEY_PG_ADMIN_PASSWORD"],
            "allowed_roles": ["*"],
        })),
    )
    .await;
    assert!(s == 204 || s == 200, "database config: HTTP {s} {v}");
    // Creating a static role rotates it once; done here, outside the timing.
    futures::stream::iter(0..roles)
        .map(|i| async move {
            let (s, v) = bao(
                addr,
                token,
                "POST",
                &format!("{MOUNT}/static-roles/{}", role(i)),
                Some(json!({ "db_name": "pg", "username": role(i), "rotation_period": "24h" })),
            )
            .await;
            assert!(
                s == 204 || s == 200,
                "static role {}: HTTP {s} {v}",
                role(i)
            );
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
}

async fn teardown(env: &HashMap<String, String>, roles: usize) {
    let _ = bao(
        &env["VAULT_ADDR"],
        &env["VAULT_TOKEN"],
        "DELETE",
        &format!("sys/mounts/{MOUNT}"),
        None,
    )
    .await;
    let pg = pg_admin(env).await;
    let sql: String = (0..roles)
        .map(|i| format!("DROP ROLE IF EXISTS {};", role(i)))
        .collect();
    let _ = pg.batch_execute(&sql).await;
}

/// (a) OpenBao rotates every static role; returns the wall time.
async fn openbao_round(env: &HashMap<String, String>, roles: usize) -> Duration {
    let (addr, token) = (&env["VAULT_ADDR"], &env["VAULT_TOKEN"]);
    let t = Instant::now();
    let failures: usize = futures::stream::iter(0..roles)
        .map(|i| async move {
            let (s, _) = bao(
                addr,
                token,
                "POST",
                &format!("{MOUNT}/rotate-role/{}", role(i)),
                None,
            )
            .await;
            usize::from(s != 204 && s != 200)
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .sum();
    let elapsed = t.elapsed();
    assert_eq!(failures, 0, "OpenBao rotations failed");
    elapsed
}

/// (b) `rekey run` of a playbook rotating every role; returns the wall time.
fn rekey_round(
    env: &HashMap<String, String>,
    roles: usize,
    verify: bool,
    dir: &std::path::Path,
    round: usize,
) -> Duration {
    rekey_round_with(env, roles, verify, dir, &format!("{round}"), "pg")
}

/// `provider` is `pg` (the real thing) or `noop`: a `sandbox_password` instance
/// with no latency, which measures what the engine itself costs (journal, Vault).
fn rekey_round_with(
    env: &HashMap<String, String>,
    roles: usize,
    verify: bool,
    dir: &std::path::Path,
    round: &str,
    provider: &str,
) -> Duration {
    let noop = dir.join(format!("noop-{round}.json"));
    let mut text = format!(
        "version: 1\nname: pg-bench\nincident: {{ mode: breach }}\nvault: {{ address: \"{}\" }}\ndefaults: {{ verify: {verify}, concurrency: {CONCURRENCY} }}\nproviders:\n  pg: {{ type: postgres, admin: {{ env: REKEY_BENCH_PG_ADMIN }}, concurrency: {CONCURRENCY}, rate: {{ per_second: 100000, burst: 1000 }}, settings: {{ host: \"{}\", port: {}, sslmode: disable }} }}\n  noop: {{ type: sandbox_password, concurrency: {CONCURRENCY}, rate: {{ per_second: 100000, burst: 1000 }}, settings: {{ state_file: {}, latency: 0ms }} }}\ncredentials:\n",
        env["VAULT_ADDR"],
        env["REKEY_PG_HOST"],
        env["REKEY_PG_PORT"],
        noop.display()
    );
    for i in 0..roles {
        text.push_str(&format!("  - {{ id: r{i}, provider: {provider}, account: {}, vault_path: bench/{provider}/r{i} }}\n", role(i)));
    }
    let playbook = dir.join(format!("bench-{provider}-{verify}-{round}.yaml"));
    std::fs::write(&playbook, text).unwrap();
    let journal = dir.join(format!("journal-{provider}-{verify}-{round}.db"));
    use clap::Parser;
    let cli = rekey::cli::Cli::parse_from([
        "rekey",
        "run",
        playbook.to_str().unwrap(),
        "--journal",
        journal.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let rekey::cli::Command::Run(args) = &cli.command else {
        unreachable!()
    };
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut io = rekey::commands::Io {
        stdout: &mut out,
        stderr: &mut err,
        color: false,
    };
    let t = Instant::now();
    let status = rekey::commands::run(args, &mut io).expect("rekey run");
    let elapsed = t.elapsed();
    let summary: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
    let rotated = summary["results"]
        .as_array()
        .map(|r| r.iter().filter(|x| x["outcome"] == "rotated").count())
        .unwrap_or(0);
    assert_eq!(
        rotated,
        roles,
        "rekey run: {status:?} {}",
        String::from_utf8_lossy(&err)
    );
    elapsed
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let roles: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(300);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let env = services();
    // rekey reads its Vault token and the admin credential from the environment.
    // SAFETY: set before any other thread starts.
    unsafe {
        std::env::set_var("VAULT_TOKEN", &env["VAULT_TOKEN"]);
        std::env::set_var(
            "REKEY_BENCH_PG_ADMIN",
            json!({ "username": env["REKEY_PG_ADMIN_USER"], "password": env["REKEY_PG_ADMIN_PASSWORD"] }).to_string(),
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    eprintln!("setting up {roles} roles and OpenBao's database engine...");
    runtime.block_on(setup(&env, roles));
    // Where the journals go: `REKEY_BENCH_DIR=/dev/shm` takes fsync latency (the
    // journal commits every record with synchronous=FULL) out of the figures.
    let dir = match std::env::var_os("REKEY_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let (mut bao_rates, mut off_rates, mut on_rates) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let rate = |d: Duration| roles as f64 / d.as_secs_f64();
        let b = rate(runtime.block_on(openbao_round(&env, roles)));
        let off = rate(rekey_round(&env, roles, false, dir.path(), round));
        let on = rate(rekey_round(&env, roles, true, dir.path(), round));
        eprintln!(
            "round {}: OpenBao {b:.0}/s, rekey verify off {off:.0}/s, verify on {on:.0}/s",
            round + 1
        );
        bao_rates.push(b);
        off_rates.push(off);
        on_rates.push(on);
    }
    runtime.block_on(teardown(&env, roles));
    // The engine alone: the same run against a provider that costs nothing.
    let engine_only = roles as f64
        / rekey_round_with(&env, roles, false, dir.path(), "noop", "noop").as_secs_f64();
    let (b, off, on) = (median(bao_rates), median(off_rates), median(on_rates));
    println!("{roles} PostgreSQL roles, concurrency {CONCURRENCY}, median of {rounds} rounds");
    println!();
    println!("| rotation of {roles} roles | rotations/s | vs OpenBao | goal |");
    println!("|---|---:|---:|---:|");
    println!("| OpenBao database engine (`rotate-role`) | {b:.0} | 1 | |");
    println!(
        "| rekey `postgres`, verify off | {off:.0} | {:.2}x | >= 1.5x |",
        off / b
    );
    println!(
        "| rekey `postgres`, verify on | {on:.0} | {:.2}x | >= 0.8x |",
        on / b
    );
    println!(
        "| rekey engine alone (`sandbox_password`, no latency, verify off) | {engine_only:.0} | {:.2}x | |",
        engine_only / b
    );
}
