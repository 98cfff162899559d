//! Rate limits against servers rekey did not write (`rate_servers`): nginx's
//! `limit_req` bucket with whole-second Retry-After, a moving window like GitHub's
//! hourly limit, and Okta-style remaining/reset headers, each reached through the
//! declarative HTTP provider `rate_limited_api`, with the real OpenBao as the store.
//! Small runs, a few seconds each: the figures are in `benches/rate_limits.rs`.

use crate::lab::Lab;
use crate::rate_servers::{self, RateServer, Window};
use serde_json::Value;

/// Rotates `credentials` passwords through `server` at `rate` and `burst`; returns
/// the run's JSON summary after checking that every credential rotated.
fn rotate(server: &RateServer, rate: f64, burst: u32, credentials: usize) -> Value {
    let lab = Lab::new();
    let text = rate_servers::playbook(
        &lab.env["VAULT_ADDR"],
        &lab.prefix,
        server,
        rate,
        burst,
        credentials,
    );
    let path = lab.path("playbook.yaml");
    std::fs::write(&path, text).unwrap();
    let providers = rate_servers::providers_dir();
    let run = lab.rekey(
        &["run", path.to_str().unwrap()],
        None,
        &[("REKEY_PROVIDERS", providers.to_str().unwrap())],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let summary = run.json();
    let rotated = summary["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "rotated")
        .count();
    assert_eq!(rotated, credentials, "{summary}");
    summary["instances"][0].clone()
}

/// The user's case in small: a strict bucket, `rate` set to exactly its limit, a
/// burst of 5 and a 429 that says `Retry-After: 1`. No refusal teaches rekey a
/// lower limit, and there are next to none.
#[test]
fn an_nginx_bucket_at_exactly_its_rate_is_not_mistaken_for_a_slower_one() {
    let server = rate_servers::nginx(40, 5);
    let stats = rotate(&server, 40.0, 5, 60);
    assert!(stats["rate_limited"].as_u64().unwrap() <= 2, "{stats}");
    assert!(stats["learned_per_second"].is_null(), "{stats}");
    assert!(
        stats["final_per_second"].as_f64().unwrap() >= 0.97 * 40.0,
        "{stats}"
    );
}

/// `rate` five times nginx's: rekey learns the real limit from a few refusals,
/// though each one pauses the instance a whole second.
#[test]
fn an_overstated_rate_learns_the_nginx_limit_despite_whole_second_pauses() {
    let server = rate_servers::nginx(20, 5);
    let stats = rotate(&server, 100.0, 5, 60);
    let learned = stats["learned_per_second"]
        .as_f64()
        .expect("a learned rate");
    // Within 20% of the real limit: on a loaded machine requests leave in bunches
    // and a fit from two or three refusals overshoots a little; the benchmark
    // (benches/rate_limits.rs) measures the convergence on an idle one.
    assert!((16.0..=24.0).contains(&learned), "{stats}");
    assert!(stats["rate_limited"].as_u64().unwrap() <= 12, "{stats}");
    assert!(
        stats["final_per_second"].as_f64().unwrap() <= 24.0,
        "{stats}"
    );
}

/// A moving window (40 requests in any 2 s, GitHub's hourly limit in small) at a
/// `rate` far above it: each window is used, then waited out; a refusal or two
/// per window, no storm.
#[test]
fn a_moving_window_is_used_and_waited_out_without_a_storm() {
    let server = rate_servers::limits(Window::Moving, 40, 2, None);
    let stats = rotate(&server, 100.0, 10, 50);
    let refused = stats["rate_limited"].as_u64().unwrap();
    assert!(refused <= 8, "{stats}");
    assert!(stats["paused_seconds"].as_f64().unwrap() >= 1.0, "{stats}");
}

/// Okta's headers (requests left in the window, its reset as Unix seconds): rekey
/// spreads the last requests of a window and waits for the reset instead of
/// earning 429s.
#[test]
fn okta_style_reset_headers_pace_the_instance_before_it_is_refused() {
    let server = rate_servers::limits(Window::FixedWithHeaders, 40, 2, None);
    let stats = rotate(&server, 100.0, 1, 40);
    assert!(stats["rate_limited"].as_u64().unwrap() <= 2, "{stats}");
    assert!(stats["learned_burst"].is_null(), "{stats}");
}

/// Everything refused for 2 s (a block, not a rate): nothing fails, the rate is
/// not lowered, one probe a second while it lasts.
#[test]
fn a_block_of_refusals_loses_nothing_and_teaches_no_rate() {
    let server = rate_servers::limits(Window::Moving, 1000, 1, Some((0.5, 2.0)));
    let stats = rotate(&server, 30.0, 5, 40);
    assert!(stats["learned_per_second"].is_null(), "{stats}");
    assert!(
        stats["final_per_second"].as_f64().unwrap() >= 0.97 * 30.0,
        "{stats}"
    );
    assert!(stats["rate_limited"].as_u64().unwrap() <= 8, "{stats}");
}
