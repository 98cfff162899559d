//! One runner against three, on the same zone-split shared run, against the
//! OpenBao and PostgreSQL `scripts/services up` started:
//!
//!     cargo run --release --example runners -- [PER_ZONE] [LATENCY] [--rekey PATH]
//!
//! (it builds the release `rekey` binary first unless `--rekey PATH` names one,
//! and drives it as a user would).
//!
//! The playbook: three `sandbox` instances in zones `a`, `b` and `c`, PER_ZONE
//! (default 60) credentials each, every provider call taking LATENCY (default
//! 50ms, the sandbox's simulated latency), `defaults.concurrency: 8` (so every
//! runner process is bounded the same way), breach mode. Each case records the
//! run in a fresh database (`rekey run --no-work`), then times the runners from
//! start to the last exit: one `rekey runner --zone a --zone b --zone c`, then
//! three, one per zone. Prints a Markdown table and the ratio of the two
//! wall-clock times; README.md and docs/shared-journal.md record it. Not a test:
//! figures depend on the machine.

mod bench_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const ZONES: [&str; 3] = ["a", "b", "c"];

/// Runs `sql` as the suite's PostgreSQL admin in database `db`.
fn admin_sql(env: &HashMap<String, String>, db: &str, sql: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = bench_support::pg_admin(env, db).await;
        client.batch_execute(sql).await.unwrap();
    });
}

fn playbook(dir: &Path, env: &HashMap<String, String>, per_zone: usize, latency: &str) -> PathBuf {
    let prefix = format!(
        "rekey-bench/runners-{}",
        hex::encode(rand::random::<[u8; 4]>())
    );
    let mut text = format!(
        "version: 1\nname: runners-bench\nincident: {{ mode: breach }}\nvault: {{ address: \"{}\" }}\ndefaults: {{ concurrency: 8 }}\nproviders:\n",
        env["VAULT_ADDR"]
    );
    for zone in ZONES {
        text += &format!(
            "  {zone}: {{ type: sandbox, zone: {zone}, settings: {{ state_file: {}/{zone}.json, latency: {latency} }} }}\n",
            dir.display()
        );
    }
    text += "credentials:\n";
    for zone in ZONES {
        for i in 0..per_zone {
            text += &format!(
                "  - {{ id: {zone}{i}, provider: {zone}, account: {zone}{i}, vault_path: {prefix}/{zone}{i} }}\n"
            );
        }
    }
    let path = dir.join(format!("runners-{}.yaml", rand::random::<u32>()));
    std::fs::write(&path, text).unwrap();
    path
}

/// Records a run of `playbook` in a fresh database, then runs `groups` runners
/// (each serving the zones of its group) until they all exit: wall-clock seconds.
fn case(
    rekey: &Path,
    env: &HashMap<String, String>,
    dir: &Path,
    playbook: &Path,
    groups: &[&[&str]],
) -> f64 {
    let db = format!("rekey_bench_{}", hex::encode(rand::random::<[u8; 4]>()));
    admin_sql(env, "postgres", &format!("CREATE DATABASE {db}"));
    let url = format!(
        "postgres://{}@{}:{}/{db}?sslmode=disable",
        env["REKEY_PG_ADMIN_USER"], env["REKEY_PG_HOST"], env["REKEY_PG_PORT"]
    );
    let command = || {
        let mut c = Command::new(rekey);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("VAULT_TOKEN", &env["VAULT_TOKEN"])
            .env("REKEY_JOURNAL_PASSWORD", &env["REKEY_PG_ADMIN_PASSWORD"])
            .args(["--quiet"]);
        c
    };
    let recorded = command()
        .arg("run")
        .arg(playbook)
        .args(["--no-work", "--journal", &url])
        .output()
        .expect("rekey runs");
    assert!(
        recorded.status.success(),
        "{}",
        String::from_utf8_lossy(&recorded.stderr)
    );
    let t = Instant::now();
    let mut children: Vec<_> = groups
        .iter()
        .map(|zones| {
            let mut c = command();
            c.args(["runner", "--once", "--journal", &url]);
            for z in *zones {
                c.args(["--zone", z]);
            }
            c.stdout(Stdio::null()).spawn().expect("runner starts")
        })
        .collect();
    for child in &mut children {
        assert!(child.wait().unwrap().success(), "a runner failed");
    }
    let seconds = t.elapsed().as_secs_f64();
    let status = command()
        .args(["status", "--journal", &url, "--format", "json"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(doc["run"]["status"], "succeeded", "{doc}");
    let _ = dir;
    admin_sql(env, "postgres", &format!("DROP DATABASE {db} WITH (FORCE)"));
    seconds
}

fn main() {
    let mut rekey_arg = None;
    let mut positional = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--rekey" {
            rekey_arg = args.next().map(PathBuf::from);
        } else if !a.starts_with("--") {
            positional.push(a);
        }
    }
    let per_zone: usize = positional
        .first()
        .map(|n| n.parse().expect("a number"))
        .unwrap_or(60);
    let latency = positional.get(1).cloned().unwrap_or_else(|| "50ms".into());
    let rekey = match rekey_arg {
        Some(p) => p,
        None => bench_support::release_rekey(),
    };
    let env = bench_support::services();
    let dir = tempfile::tempdir().unwrap();
    let total = per_zone * ZONES.len();
    eprintln!("1 runner, {total} credentials in 3 zones...");
    let one = case(
        &rekey,
        &env,
        dir.path(),
        &playbook(dir.path(), &env, per_zone, &latency),
        &[&ZONES],
    );
    eprintln!("3 runners, one per zone...");
    let three = case(
        &rekey,
        &env,
        dir.path(),
        &playbook(dir.path(), &env, per_zone, &latency),
        &[&["a"], &["b"], &["c"]],
    );
    println!("| runners | credentials | provider latency | seconds | rotations/s |");
    println!("|---|---|---|---|---|");
    for (n, s) in [(1, one), (3, three)] {
        println!(
            "| {n} | {total} | {latency} | {s:.1} | {:.1} |",
            total as f64 / s
        );
    }
    println!();
    println!(
        "3 runners finish in {:.2}x less time than 1 (each process at concurrency 8; binary {})",
        one / three,
        rekey.display()
    );
}
