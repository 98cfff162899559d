//! Benchmark: does a run go as fast as the provider allows, and no faster, against
//! servers rekey did not write?
//!
//! Three runs of the real `rekey run` binary (release build) with the real OpenBao
//! from `scripts/services`, each rotating N passwords of the test HTTP provider
//! `rate_limited_api` (2 requests each: change and verify), in one go:
//!
//! 1. nginx `limit_req` at REAL requests/s, burst 5, answering 429 with
//!    `Retry-After: 1` (whole seconds, like GitHub, Cloudflare and Twilio), and
//!    `rate` in the playbook equal to it: the achieved rate against the limit
//!    (goal: at least 0.95) and the 429s (goal: under 1% of requests);
//! 2. the same nginx, `rate` five times its limit: the run's time against the ideal
//!    time (requests / REAL; goal: within 1.25) and what rekey learned;
//! 3. a server on the `limits` library that refuses everything (429,
//!    `Retry-After: 1`) for 30 s from a third of the way in, `rate` = REAL: failed
//!    credentials (goal: none) and the time against ideal + 30 s.
//!
//! The yardstick of every ratio is the server's limit in the same run. Run:
//! `scripts/services up`, then `cargo bench --bench rate_limits` (`-- N REAL` sets
//! N, default 1000, and REAL, default 40). The journal lives on /dev/shm when it
//! exists, so that disk syncs do not blur what is measured: the rate limiter.

#[path = "../examples/bench_support/mod.rs"]
mod bench_support;
#[path = "../tests/it/rate_servers.rs"]
mod rate_servers;

use rate_servers::{RateServer, Window};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

struct Measured {
    seconds: f64,
    requests: u64,
    rate_limited: u64,
    paused: f64,
    rotated: usize,
    failed: usize,
    learned: Option<f64>,
    learned_burst: Option<u64>,
}

fn scenario(
    rekey: &Path,
    env: &[(String, String)],
    work: &Path,
    name: &str,
    server: &RateServer,
    credentials: usize,
    configured: f64,
) -> Measured {
    let addr = &env
        .iter()
        .find(|(k, _)| k == "VAULT_ADDR")
        .expect("VAULT_ADDR")
        .1;
    let prefix = format!("rekey-bench/{name}-{}", std::process::id());
    let pb = rate_servers::playbook(addr, &prefix, server, configured, 5, credentials);
    let file = work.join(format!("{name}.yaml"));
    std::fs::write(&file, pb).unwrap();
    let journal = work.join(format!("{name}.db"));
    let start = Instant::now();
    let out = Command::new(rekey)
        .args([
            "run",
            file.to_str().unwrap(),
            "--format",
            "json",
            "--journal",
        ])
        .arg(&journal)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("REKEY_PROVIDERS", rate_servers::providers_dir())
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
        paused: instance["paused_seconds"].as_f64().unwrap_or(0.0),
        rotated: results.iter().filter(|r| r["outcome"] == "rotated").count(),
        failed: results.iter().filter(|r| r["outcome"] != "rotated").count(),
        learned: instance["learned_per_second"].as_f64(),
        learned_burst: instance["learned_burst"].as_u64(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let credentials: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let real: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(40);
    let rekey = bench_support::release_rekey();
    let env: Vec<(String, String)> = bench_support::services().into_iter().collect();
    let shm = Path::new("/dev/shm");
    let tmp = std::env::temp_dir();
    let work = tempfile_dir(if shm.is_dir() { shm } else { &tmp });
    let real_f = f64::from(real);
    let requests = (credentials * 2) as f64;
    let ideal = requests / real_f;

    println!(
        "{credentials} credentials, 2 provider requests each; nginx limit_req {real} r/s burst 5, 429 with Retry-After: 1"
    );

    let nginx = rate_servers::nginx(real, 5);
    let m = scenario(&rekey, &env, &work, "equal", &nginx, credentials, real_f);
    drop(nginx);
    let achieved = m.requests as f64 / m.seconds;
    println!(
        "1. rate = limit ({real}/s):    {:>6.1} s, {} requests, {achieved:.1}/s = {:.3} of the limit, {} 429s ({:.2}% of requests), learned {}, {} rotated, {} failed",
        m.seconds,
        m.requests,
        achieved / real_f,
        m.rate_limited,
        100.0 * m.rate_limited as f64 / m.requests.max(1) as f64,
        learned(&m),
        m.rotated,
        m.failed
    );

    let nginx = rate_servers::nginx(real, 5);
    let m = scenario(
        &rekey,
        &env,
        &work,
        "five-times",
        &nginx,
        credentials,
        real_f * 5.0,
    );
    drop(nginx);
    println!(
        "2. rate = 5 x limit ({}/s): {:>6.1} s = {:.3} x ideal ({ideal:.1} s), {} 429s ({:.2}% of {} requests), {:.1} s paused, learned {}, {} rotated, {} failed",
        real * 5,
        m.seconds,
        m.seconds / ideal,
        m.rate_limited,
        100.0 * m.rate_limited as f64 / m.requests.max(1) as f64,
        m.requests,
        m.paused,
        learned(&m),
        m.rotated,
        m.failed
    );

    let block = 30.0;
    let after = (ideal / 3.0).round();
    // A limit far above the rate: only the block refuses.
    let blocking = rate_servers::limits(Window::Moving, real * 100, 1, Some((after, block)));
    let m = scenario(&rekey, &env, &work, "block", &blocking, credentials, real_f);
    drop(blocking);
    let expected = ideal + block;
    println!(
        "3. 30 s of 429s at {after} s:  {:>6.1} s = {:.3} x (ideal + 30 s = {expected:.1} s), {} 429s, learned {}, {} rotated, {} failed",
        m.seconds,
        m.seconds / expected,
        m.rate_limited,
        learned(&m),
        m.rotated,
        m.failed
    );
    let _ = std::fs::remove_dir_all(&work);
}

fn learned(m: &Measured) -> String {
    match (m.learned, m.learned_burst) {
        (Some(r), Some(b)) => format!("{r:.1}/s burst {b}"),
        (Some(r), None) => format!("{r:.1}/s"),
        _ => "nothing".into(),
    }
}

fn tempfile_dir(base: &Path) -> std::path::PathBuf {
    let dir = base.join(format!("rekey-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
