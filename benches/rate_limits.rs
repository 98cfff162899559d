//! Benchmark: does a run go as fast as the provider allows, and no faster?
//!
//! Three runs of the real `rekey run` binary (release build) against the real
//! OpenBao from `scripts/services`, each rotating N sandbox passwords (2 provider
//! requests each: change and verify) whose simulated server admits REAL requests
//! per second and answers 429 with Retry-After beyond that:
//!
//! 1. `rate` in the playbook equal to the real limit: the achieved rate against the
//!    limit (goal: at least 0.97) and the 429s (goal: none);
//! 2. `rate` five times the real limit: the run's time against the ideal time
//!    (requests / real limit; goal: within 1.25) and the 429s it took to learn;
//! 3. the limit right, and the provider blocking everything (429) for 30 s in the
//!    middle of the run: credentials failed (goal: none) and the time against
//!    ideal + 30 s (1.0 means full speed before and after the block).
//!
//! Run: `scripts/services up`, then `cargo bench --bench rate_limits`
//! (`-- 2000 200` sets N and REAL). The journal lives on /dev/shm when it exists,
//! so that disk syncs do not blur what is measured: the rate limiter.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn service_env(root: &Path) -> Vec<(String, String)> {
    let path = root.join("target/services/env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        eprintln!(
            "{}: {e}\nstart the services first: scripts/services up",
            path.display()
        );
        std::process::exit(1)
    });
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.to_owned(),
                v.trim_matches('\'').trim_matches('"').to_owned(),
            )
        })
        .collect()
}

struct Measured {
    seconds: f64,
    requests: u64,
    rate_limited: u64,
    rotated: usize,
    failed: usize,
    learned: Option<f64>,
}

#[allow(clippy::too_many_arguments)]
fn scenario(
    root: &Path,
    env: &[(String, String)],
    work: &Path,
    name: &str,
    credentials: usize,
    configured: f64,
    real: f64,
    outage: Option<(u64, u64)>,
) -> Measured {
    let addr = &env
        .iter()
        .find(|(k, _)| k == "VAULT_ADDR")
        .expect("VAULT_ADDR")
        .1;
    let run = format!("{name}-{}", std::process::id());
    let mut pb = format!(
        "version: 1\nname: bench-{name}\nincident: {{ id: BENCH, compromised: [idp], mode: breach }}\nvault: {{ address: '{addr}', mount: secret, staging_prefix: rekey-bench/staging }}\ndefaults: {{ concurrency: 32 }}\nproviders:\n  api:\n    type: sandbox_password\n    settings:\n      state_file: memory\n      latency: 2ms\n      server_rate: {real}\n"
    );
    if let Some((after, lasting)) = outage {
        pb += &format!("      outage: {{ after: {after}s, for: {lasting}s }}\n");
    }
    pb += &format!(
        "    rate: {{ per_second: {configured}, burst: 10 }}\n    concurrency: 32\ncredentials:\n"
    );
    for i in 0..credentials {
        pb += &format!(
            "  - {{ id: c{i}, provider: api, account: a{i}, vault_path: rekey-bench/{run}/c{i} }}\n"
        );
    }
    let file = work.join(format!("{name}.yaml"));
    std::fs::write(&file, pb).unwrap();
    let journal = work.join(format!("{name}.db"));
    let start = Instant::now();
    let out = Command::new(root.join("target/release/rekey"))
        .args([
            "run",
            file.to_str().unwrap(),
            "--format",
            "json",
            "--journal",
        ])
        .arg(&journal)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "error")
        .output()
        .expect("rekey runs");
    let seconds = start.elapsed().as_secs_f64();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{name}: no JSON summary ({e}); exit {:?}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let results = summary["results"].as_array().unwrap();
    let instance = &summary["instances"][0];
    Measured {
        seconds,
        requests: instance["requests"].as_u64().unwrap_or(0),
        rate_limited: instance["rate_limited"].as_u64().unwrap_or(0),
        rotated: results.iter().filter(|r| r["outcome"] == "rotated").count(),
        failed: results.iter().filter(|r| r["outcome"] != "rotated").count(),
        learned: instance["learned_per_second"].as_f64(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let credentials: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let real: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200.0);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("cargo")
        .args(["build", "--release", "--quiet", "--bin", "rekey"])
        .current_dir(root)
        .status()
        .expect("cargo builds rekey");
    assert!(status.success());
    let env = service_env(root);
    let shm = Path::new("/dev/shm");
    let tmp = std::env::temp_dir();
    let work = tempfile_dir(if shm.is_dir() { shm } else { &tmp });

    println!("{credentials} credentials, 2 provider requests each, provider admits {real}/s");
    let ideal = (credentials * 2) as f64 / real;

    let m = scenario(root, &env, &work, "equal", credentials, real, real, None);
    let achieved = m.requests as f64 / m.seconds;
    println!(
        "1. limit = real:        {:>6.1} s, {} requests, {:.1}/s achieved = {:.3} of the limit, {} 429s, {} rotated, {} failed",
        m.seconds,
        m.requests,
        achieved,
        achieved / real,
        m.rate_limited,
        m.rotated,
        m.failed
    );

    let m = scenario(
        root,
        &env,
        &work,
        "five-times",
        credentials,
        real * 5.0,
        real,
        None,
    );
    println!(
        "2. limit = 5 x real:    {:>6.1} s = {:.3} x ideal ({ideal:.1} s), {} 429s ({:.1}% of {} requests), learned {}, {} rotated, {} failed",
        m.seconds,
        m.seconds / ideal,
        m.rate_limited,
        100.0 * m.rate_limited as f64 / m.requests as f64,
        m.requests,
        m.learned
            .map(|l| format!("{l:.1}/s"))
            .unwrap_or_else(|| "nothing".into()),
        m.rotated,
        m.failed
    );

    let block = 30;
    let after = (ideal / 3.0).round() as u64;
    let m = scenario(
        root,
        &env,
        &work,
        "outage",
        credentials,
        real,
        real,
        Some((after, block)),
    );
    let expected = ideal + block as f64;
    println!(
        "3. 30 s of 429s at {after} s: {:>6.1} s = {:.3} x (ideal + 30 s = {expected:.1} s), {} 429s, {} rotated, {} failed",
        m.seconds,
        m.seconds / expected,
        m.rate_limited,
        m.rotated,
        m.failed
    );
    let _ = std::fs::remove_dir_all(&work);
}

fn tempfile_dir(base: &Path) -> std::path::PathBuf {
    let dir = base.join(format!("rekey-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
