//! How close the engine comes to what Vault can take, in one run against the
//! OpenBao `scripts/services up` started:
//!
//!     cargo run --release --example engine_vs_vault -- [CREDENTIALS] [LARGE] [ROUNDS]
//!
//! (it builds the release `rekey` binary first and drives it as a user would).
//!
//! 1. The yardstick: raw KV v2 writes per second to the same OpenBao, from one
//!    pooled HTTP client at concurrency 32 (`POST secret/data/...`).
//! 2. `rekey run` of CREDENTIALS (default 2,000) `sandbox_password` credentials
//!    with no latency, concurrency 32, verify off: rotations per second, against
//!    the goal 0.8 x (raw KV requests/s / Vault requests per rotation), where
//!    Vault requests per rotation is what `rekey plan --format json` counts for
//!    the same playbook. rekey's own CPU per rotation comes from wait4's rusage.
//!    Three rounds (ROUNDS) of raw writes and the two runs below side by side;
//!    the table shows each figure's median, each ratio against its own round.
//! 3. The same CREDENTIALS spread over 4 sandbox instances (a breach playbook
//!    names several providers): one poller task per instance, so the instances
//!    work on both threads of the runtime.
//! 4. `rekey run` of LARGE (default 10,000) such credentials: peak RSS (goal
//!    under 150 MB).
//!
//! Journals go to /dev/shm when it exists (fsync latency is not what this
//! measures). Prints a Markdown table; README.md records it. Not a test: figures
//! depend on the machine.

mod bench_support;

use futures::StreamExt;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const CONCURRENCY: usize = 32;

/// Raw KV v2 writes per second: `writes` writes at concurrency 32.
fn raw_kv_writes(env: &HashMap<String, String>, writes: usize) -> f64 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let addr = env["VAULT_ADDR"].clone();
        let token = env["VAULT_TOKEN"].clone();
        let write = |i: usize| {
            let request = client
                .post(format!("{addr}/v1/secret/data/rekey-bench/raw/k{i}"))
                .header("X-Vault-Token", &token)
                .body(format!(r#"{{"data":{{"value":"v{i}"}}}}"#));
            async move {
                let answer = request.send().await.expect("OpenBao answers");
                assert!(
                    answer.status().is_success(),
                    "raw write: {}",
                    answer.status()
                );
            }
        };
        // Warm the pool and the paths, then measure.
        futures::stream::iter(0..CONCURRENCY)
            .map(write)
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<()>>()
            .await;
        let t = Instant::now();
        futures::stream::iter(0..writes)
            .map(write)
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<()>>()
            .await;
        writes as f64 / t.elapsed().as_secs_f64()
    })
}

struct Measured {
    seconds: f64,
    cpu_seconds: f64,
    max_rss_mb: f64,
    stdout: String,
}

/// Runs a command to completion and reads its CPU time and peak RSS from wait4's
/// rusage.
fn measure(mut cmd: Command) -> Measured {
    let start = Instant::now();
    // Reaped below with wait4, which also gives the rusage.
    #[allow(clippy::zombie_processes)]
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(r, pid, "wait4 failed");
    assert!(libc::WIFEXITED(status), "command died: {cmd:?}");
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Measured {
        seconds,
        cpu_seconds: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_mb: usage.ru_maxrss as f64 / 1024.0,
        stdout,
    }
}

/// A playbook of `n` zero-latency `sandbox_password` credentials, spread over
/// `instances` provider instances.
fn playbook(
    env: &HashMap<String, String>,
    dir: &Path,
    name: &str,
    n: usize,
    instances: usize,
) -> String {
    let mut text = format!(
        "version: 1\nname: engine-bench\nincident: {{ mode: breach }}\nvault: {{ address: \"{}\" }}\ndefaults: {{ verify: false, concurrency: {CONCURRENCY} }}\nproviders:\n",
        env["VAULT_ADDR"]
    );
    for k in 0..instances {
        text.push_str(&format!(
            "  noop{k}: {{ type: sandbox_password, concurrency: {CONCURRENCY}, rate: {{ per_second: 1000000, burst: 10000 }}, settings: {{ state_file: memory, latency: 0ms }} }}\n"
        ));
    }
    text.push_str("credentials:\n");
    for i in 0..n {
        text.push_str(&format!(
            "  - {{ id: {name}{i}, provider: noop{}, account: a{i}, vault_path: rekey-bench/{name}/c{i} }}\n",
            i % instances
        ));
    }
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// `rekey run` of `n` credentials: (measured, rotated).
fn rekey_run(
    rekey: &Path,
    env: &HashMap<String, String>,
    dir: &Path,
    name: &str,
    n: usize,
    instances: usize,
) -> Measured {
    let playbook = playbook(env, dir, name, n, instances);
    let journal = bench_support::run_dir(dir, name).join("journal.db");
    let mut cmd = Command::new(rekey);
    cmd.args(["run", &playbook, "--format", "json", "--journal"])
        .arg(&journal)
        .env("VAULT_TOKEN", &env["VAULT_TOKEN"]);
    let m = measure(cmd);
    let summary: serde_json::Value = serde_json::from_str(&m.stdout).unwrap_or_default();
    let rotated = summary["results"]
        .as_array()
        .map(|r| r.iter().filter(|x| x["outcome"] == "rotated").count())
        .unwrap_or(0);
    assert_eq!(rotated, n, "rekey run rotated {rotated} of {n}");
    m
}

/// Vault requests per rotation, as `rekey plan` counts them for the playbook.
fn vault_requests_per_rotation(rekey: &Path, env: &HashMap<String, String>, dir: &Path) -> f64 {
    let playbook = playbook(env, dir, "plan", 10, 1);
    let out = Command::new(rekey)
        .args(["plan", &playbook, "--format", "json"])
        .output()
        .expect("rekey plan");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    plan["totals"]["vault_requests"]
        .as_f64()
        .expect("vault_requests")
        / 10.0
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(|a| a.parse::<usize>().expect("a number"));
    let n = args.next().unwrap_or(2_000);
    let large = args.next().unwrap_or(10_000);
    let rounds = args.next().unwrap_or(3).max(1);
    let rekey = bench_support::release_rekey();
    let env = bench_support::services();
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    // Paths no earlier run wrote: every rotation is a first one, with the Vault
    // requests `rekey plan` counts (a path rekey rotated before skips one).
    let tag = format!(
        "{}x{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    );
    let per_rotation = vault_requests_per_rotation(&rekey, &env, dir.path());
    // Rounds of (raw writes, one instance, 4 instances) side by side; each ratio
    // is against the raw writes of its own round, the median of the rounds shown.
    let (mut raws, mut runs, mut spreads) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ratio_one, mut ratio_four) = (Vec::new(), Vec::new());
    let (mut cpu_one, mut cpu_four) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        eprintln!("round {}: raw KV v2 writes...", round + 1);
        let raw = raw_kv_writes(&env, n * 2);
        eprintln!("round {}: rekey run of {n} credentials...", round + 1);
        let run = rekey_run(&rekey, &env, dir.path(), &format!("one{tag}r{round}"), n, 1);
        eprintln!(
            "round {}: rekey run of {n} credentials over 4 instances...",
            round + 1
        );
        let spread = rekey_run(
            &rekey,
            &env,
            dir.path(),
            &format!("four{tag}r{round}"),
            n,
            4,
        );
        let limit = raw / per_rotation;
        let (rate, spread_rate) = (n as f64 / run.seconds, n as f64 / spread.seconds);
        eprintln!(
            "round {}: raw {raw:.0}/s (limit {limit:.0}/s), one instance {rate:.0}/s ({:.2}), 4 instances {spread_rate:.0}/s ({:.2})",
            round + 1,
            rate / limit,
            spread_rate / limit
        );
        raws.push(raw);
        runs.push(rate);
        spreads.push(spread_rate);
        ratio_one.push(rate / limit);
        ratio_four.push(spread_rate / limit);
        cpu_one.push(run.cpu_seconds * 1000.0 / n as f64);
        cpu_four.push(spread.cpu_seconds * 1000.0 / n as f64);
    }
    eprintln!("rekey run of {large} credentials...");
    let big = rekey_run(&rekey, &env, dir.path(), &format!("large{tag}"), large, 1);
    let raw = bench_support::median(raws);
    let limit = raw / per_rotation;
    let big_rate = large as f64 / big.seconds;
    println!(
        "OpenBao at {}, concurrency {CONCURRENCY}, median of {rounds} rounds (each ratio against its own round's raw writes)",
        env["VAULT_ADDR"]
    );
    println!();
    println!("| measure | figure | yardstick (same run) | ratio | goal |");
    println!("|---|---:|---:|---:|---:|");
    println!("| raw KV v2 writes/s ({} writes) | {raw:.0} | | | |", n * 2);
    println!(
        "| `rekey run`, {n} zero-latency sandbox rotations/s | {:.0} | raw / {per_rotation:.0} Vault requests per rotation = {limit:.0}/s | **{:.2}** | >= 0.8 |",
        bench_support::median(runs),
        bench_support::median(ratio_one)
    );
    println!(
        "| rekey CPU per rotation (user + system) | {:.2} ms | | | |",
        bench_support::median(cpu_one)
    );
    println!(
        "| `rekey run`, {n} rotations over 4 sandbox instances/s | {:.0} | {limit:.0}/s | **{:.2}** | >= 0.8 |",
        bench_support::median(spreads),
        bench_support::median(ratio_four)
    );
    println!(
        "| rekey CPU per rotation, 4 instances | {:.2} ms | | | |",
        bench_support::median(cpu_four)
    );
    println!(
        "| `rekey run`, {large} credentials: peak RSS | {:.0} MB | 150 MB | **{:.2}** | <= 1 |",
        big.max_rss_mb,
        big.max_rss_mb / 150.0
    );
    println!(
        "| `rekey run`, {large} credentials: rotations/s | {big_rate:.0} | {limit:.0}/s | {:.2} | |",
        big_rate / limit
    );
}
