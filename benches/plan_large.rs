//! Benchmark: `rekey plan` of a generated 100,000-credential playbook.
//!
//! Goal (issue 2): under 2 s and under 300 MB peak RSS on the 2-core machine.
//! Run with `cargo bench --bench plan_large` (add `-- 20000` for another size).
//! Side by side in the same run, as a yardstick for the noisy machine: a bare YAML
//! parse of the same file into `serde_json::Value` (no positions, no checks), in
//! a child process too, so both figures include process start-up.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

fn generate(path: &Path, credentials: usize) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(out, "version: 1\nname: bench-{credentials}\nincident: {{ id: BENCH, compromised: [idp], mode: breach }}").unwrap();
    writeln!(
        out,
        "vault: {{ address: 'http://127.0.0.1:8200' }}\ndefaults: {{ concurrency: 64 }}\nproviders:"
    )
    .unwrap();
    for p in 0..20 {
        match p % 4 {
            0 => writeln!(out, "  pg-{p}: {{ type: postgres, settings: {{ host: db{p}.internal }}, admin: {{ vault_path: infra/pg-{p} }}, rate: {{ per_second: 200, burst: 20 }} }}"),
            1 => writeln!(out, "  aws-{p}: {{ type: aws_iam, admin: {{ vault_path: infra/aws-{p} }}, rate: {{ per_second: 10 }} }}"),
            2 => writeln!(out, "  redis-{p}: {{ type: redis, settings: {{ host: r{p}.internal }}, admin: {{ env: REDIS_ADMIN_{p} }} }}"),
            _ => writeln!(out, "  sandbox-{p}: {{ type: sandbox, rate: {{ requests: 1200, period: 5m, burst: 10 }} }}"),
        }
        .unwrap();
    }
    writeln!(out, "credentials:").unwrap();
    for i in 0..credentials {
        let p = i % 20;
        let provider = match p % 4 {
            0 => format!("pg-{p}"),
            1 => format!("aws-{p}"),
            2 => format!("redis-{p}"),
            _ => format!("sandbox-{p}"),
        };
        writeln!(out, "  - id: cred-{i}\n    provider: {provider}\n    account: account_{i}\n    vault_path: apps/team-{}/cred-{i}\n    tags: [tier{}, team-{}]\n    tied_to: [idp]", i % 97, i % 3, i % 97).unwrap();
        // Chains of dependencies, so the plan has several waves.
        if i % 10 != 0 {
            writeln!(out, "    depends_on: [cred-{}]", i - 1).unwrap();
        }
    }
}

struct Measured {
    seconds: f64,
    cpu_seconds: f64,
    max_rss_mb: f64,
}

/// Runs a command to completion and reads its peak RSS from wait4's rusage.
fn measure(mut cmd: Command) -> Measured {
    let start = Instant::now();
    // Reaped below with wait4, which also gives the rusage.
    #[allow(clippy::zombie_processes)]
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(r, pid, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "command failed: {cmd:?}"
    );
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Measured {
        seconds,
        cpu_seconds: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_mb: usage.ru_maxrss as f64 / 1024.0,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The baseline child: this same binary, re-run with REKEY_BENCH_BASELINE set.
fn bare_parse(path: &std::ffi::OsStr) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut options = serde_saphyr::Options::default();
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = usize::MAX;
    budget.max_nodes = usize::MAX;
    options.budget = Some(budget);
    let value: serde_json::Value = serde_saphyr::from_str_with_options(&text, options).unwrap();
    std::hint::black_box(&value);
}

fn main() {
    if let Some(path) = std::env::var_os("REKEY_BENCH_BASELINE") {
        bare_parse(&path);
        return;
    }
    // `cargo bench` passes `--bench`; a bare number sets the size.
    let credentials: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join(format!("plan-{credentials}.yaml"));
    generate(&file, credentials);
    let size_mb = std::fs::metadata(&file).unwrap().len() as f64 / 1e6;
    let rekey = env!("CARGO_BIN_EXE_rekey");
    let baseline = std::env::current_exe().unwrap();

    let runs = 5;
    let mut rows: Vec<(&str, Vec<Measured>)> = vec![
        ("rekey plan (text)", vec![]),
        ("rekey plan --format json", vec![]),
        ("bare YAML parse (baseline)", vec![]),
    ];
    for _ in 0..runs {
        // Interleave the three so machine noise hits them alike.
        for (name, results) in rows.iter_mut() {
            let cmd = match *name {
                "rekey plan (text)" => {
                    let mut c = Command::new(rekey);
                    c.args(["plan", file.to_str().unwrap()]);
                    c
                }
                "rekey plan --format json" => {
                    let mut c = Command::new(rekey);
                    c.args(["plan", file.to_str().unwrap(), "--format", "json"]);
                    c
                }
                _ => {
                    let mut c = Command::new(&baseline);
                    c.env("REKEY_BENCH_BASELINE", &file);
                    c
                }
            };
            results.push(measure(cmd));
        }
    }
    println!(
        "plan of {credentials} credentials ({size_mb:.1} MB of YAML), median of {runs} runs (goal: < 2 s, < 300 MB):"
    );
    let mut medians = Vec::new();
    for (name, results) in &rows {
        let wall = median(results.iter().map(|m| m.seconds).collect());
        let cpu = median(results.iter().map(|m| m.cpu_seconds).collect());
        let rss = median(results.iter().map(|m| m.max_rss_mb).collect());
        println!("  {name:<28} {wall:>6.3} s wall  {cpu:>6.3} s CPU  peak RSS {rss:>4.0} MB");
        medians.push((wall, rss));
    }
    let (base_wall, base_rss) = medians[2];
    for (i, (name, _)) in rows.iter().enumerate().take(2) {
        println!(
            "  ratio {name} / bare parse: {:.2}x time, {:.2}x memory",
            medians[i].0 / base_wall,
            medians[i].1 / base_rss
        );
    }
    let ok = medians[..2]
        .iter()
        .all(|(wall, rss)| *wall < 2.0 && *rss < 300.0);
    println!("  goal {}", if ok { "met" } else { "NOT met" });
}
