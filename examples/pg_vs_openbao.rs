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

mod bench_support;

use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const CONCURRENCY: usize = 8;
const MOUNT: &str = "bench-db";

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

fn role(i: usize) -> String {
    format!("bench_r{i}")
}

/// CPU seconds used so far by the processes that do the work: PostgreSQL (the
/// postmaster, its live backends and the ones that exited), OpenBao, and this
/// process (the OpenBao round's HTTP client, or rekey running in process).
#[derive(Clone, Copy, Default)]
struct Cpu {
    postgres: f64,
    openbao: f64,
    client: f64,
}

/// utime + stime (+ cutime + cstime with `children`) of `pid`, in seconds.
fn cpu_of(pid: u32, children: bool) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    // (Every field is a number there; some, like tpgid, can be -1.)
    let fields: Vec<i64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(1) // the state, a letter
                .map(|f| f.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    // utime, stime, cutime, cstime are fields 14-17 of proc_pid_stat(5): 10-13 after
    // the state.
    let take = if children { 4 } else { 2 };
    let ticks: i64 = fields.iter().skip(10).take(take).sum();
    ticks as f64 / 100.0
}

struct Pids {
    postmaster: Option<u32>,
    openbao: Option<u32>,
}

impl Pids {
    fn find(env: &HashMap<String, String>) -> Pids {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let postmaster =
            std::fs::read_to_string(root.join("target/services/postgres/data/postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse().ok());
        let listen = env["VAULT_ADDR"].trim_start_matches("http://").to_owned();
        let openbao = std::fs::read_dir("/proc").ok().and_then(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .find(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                        let c = String::from_utf8_lossy(&c);
                        c.contains("bao") && c.contains("server") && c.contains(&listen)
                    })
                })
        });
        Pids {
            postmaster,
            openbao,
        }
    }

    fn sample(&self) -> Cpu {
        let postgres = self.postmaster.map_or(0.0, |pm| {
            // Exited backends are in the postmaster's cutime/cstime once reaped.
            let children = std::fs::read_to_string(format!("/proc/{pm}/task/{pm}/children"))
                .unwrap_or_default();
            cpu_of(pm, true)
                + children
                    .split_whitespace()
                    .filter_map(|c| c.parse().ok())
                    .map(|c| cpu_of(c, false))
                    .sum::<f64>()
        });
        Cpu {
            postgres,
            openbao: self.openbao.map_or(0.0, |p| cpu_of(p, false)),
            client: cpu_of(std::process::id(), false),
        }
    }
}

/// Runs `f`, returning its wall time and the CPU each side used meanwhile.
fn measured<T>(pids: &Pids, f: impl FnOnce() -> T) -> (T, Duration, Cpu) {
    let before = pids.sample();
    let t = Instant::now();
    let value = f();
    let wall = t.elapsed();
    // Let the postmaster reap the backends that just exited.
    std::thread::sleep(Duration::from_millis(300));
    let after = pids.sample();
    let cpu = Cpu {
        postgres: after.postgres - before.postgres,
        openbao: after.openbao - before.openbao,
        client: after.client - before.client,
    };
    (value, wall, cpu)
}

/// Drops what an earlier run left, creates the roles and OpenBao's engine.
async fn setup(env: &HashMap<String, String>, roles: usize) {
    let (addr, token) = (&env["VAULT_ADDR"], &env["VAULT_TOKEN"]);
    let _ = bao(addr, token, "DELETE", &format!("sys/mounts/{MOUNT}"), None).await;
    let pg = bench_support::pg_admin(env, "postgres").await;
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
    let pg = bench_support::pg_admin(env, "postgres").await;
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
    let mut text = format!(
        "version: 1\nname: pg-bench\nincident: {{ mode: breach }}\nvault: {{ address: \"{}\" }}\ndefaults: {{ verify: {verify}, concurrency: {CONCURRENCY} }}\nproviders:\n  pg: {{ type: postgres, admin: {{ env: REKEY_BENCH_PG_ADMIN }}, concurrency: {CONCURRENCY}, rate: {{ per_second: 100000, burst: 1000 }}, settings: {{ host: \"{}\", port: {}, sslmode: disable, end_sessions: false }} }}\n  noop: {{ type: sandbox_password, concurrency: {CONCURRENCY}, rate: {{ per_second: 100000, burst: 1000 }}, settings: {{ state_file: memory, latency: 0ms }} }}\ncredentials:\n",
        env["VAULT_ADDR"], env["REKEY_PG_HOST"], env["REKEY_PG_PORT"],
    );
    for i in 0..roles {
        text.push_str(&format!("  - {{ id: r{i}, provider: {provider}, account: {}, vault_path: bench/{provider}/r{i} }}\n", role(i)));
    }
    let dir = bench_support::run_dir(dir, &format!("{provider}-{verify}-{round}"));
    let playbook = dir.join("playbook.yaml");
    std::fs::write(&playbook, text).unwrap();
    let journal = dir.join("journal.db");
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
    let catalog = rekey::catalog::Catalog::load(None).unwrap();
    let status = rekey::commands::run(args, &catalog, &mut io).expect("rekey run");
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

fn main() {
    let mut args = std::env::args().skip(1);
    let roles: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(300);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let env = bench_support::services();
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
    let pids = Pids::find(&env);
    // Per scenario: rates, and CPU seconds per side summed over the rounds.
    let mut rates: [Vec<f64>; 4] = Default::default();
    let mut cpu = [Cpu::default(); 4];
    let add = |rates: &mut [Vec<f64>; 4], cpu: &mut [Cpu; 4], i: usize, wall: Duration, c: Cpu| {
        rates[i].push(roles as f64 / wall.as_secs_f64());
        cpu[i].postgres += c.postgres;
        cpu[i].openbao += c.openbao;
        cpu[i].client += c.client;
    };
    for round in 0..rounds {
        let (wall, _, c) = measured(&pids, || runtime.block_on(openbao_round(&env, roles)));
        add(&mut rates, &mut cpu, 0, wall, c);
        let (wall, _, c) = measured(&pids, || rekey_round(&env, roles, false, dir.path(), round));
        add(&mut rates, &mut cpu, 1, wall, c);
        let (wall, _, c) = measured(&pids, || rekey_round(&env, roles, true, dir.path(), round));
        add(&mut rates, &mut cpu, 2, wall, c);
        eprintln!(
            "round {}: OpenBao {:.0}/s, rekey verify off {:.0}/s, verify on {:.0}/s",
            round + 1,
            rates[0][round],
            rates[1][round],
            rates[2][round]
        );
    }
    runtime.block_on(teardown(&env, roles));
    // The engine alone: the same run against a provider that costs nothing.
    let (wall, _, c) = measured(&pids, || {
        rekey_round_with(&env, roles, false, dir.path(), "noop", "noop")
    });
    add(&mut rates, &mut cpu, 3, wall, c);
    let runs = [rounds, rounds, rounds, 1];
    let [b, off, on, engine_only] = rates.map(bench_support::median);
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
    // Where the time goes: CPU per rotation on each side, and the rate the machine's
    // cores would allow if that CPU were the only limit.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!();
    println!(
        "CPU per rotation (ms), {cores} cores; \"CPU bound\" = cores / total CPU per rotation:"
    );
    println!();
    println!(
        "| scenario | PostgreSQL | OpenBao | client (rekey, or the HTTP client) | total | CPU bound (/s) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let names = [
        "OpenBao `rotate-role`",
        "rekey verify off",
        "rekey verify on",
        "rekey engine alone",
    ];
    for i in 0..4 {
        let n = (roles * runs[i]) as f64 / 1000.0;
        let (p, o, c) = (cpu[i].postgres / n, cpu[i].openbao / n, cpu[i].client / n);
        let total = p + o + c;
        println!(
            "| {} | {p:.1} | {o:.1} | {c:.1} | {total:.1} | {:.0} |",
            names[i],
            cores * 1000.0 / total
        );
    }
}
