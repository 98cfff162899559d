//! The dependency scheduler through the real binary and OpenBao: what starts
//! when, read from the order of the audit trail's lines (never from timings).

use crate::support::{rekey, services};
use serde_json::Value;

/// Runs `credentials` (YAML list items) with `providers` (YAML map items) and the
/// run-wide `concurrency`; returns the exit code and the audit trail's lines.
fn run(providers: &str, credentials: &str, concurrency: u32) -> (i32, Vec<Value>) {
    let env = services();
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("sched-{}", hex::encode(rand::random::<[u8; 5]>()));
    let d = dir.path().display();
    let playbook = format!(
        "version: 1\nname: schedule-test\nincident: {{ mode: breach }}\nvault: {{ address: \"{addr}\" }}\ndefaults: {{ concurrency: {concurrency} }}\nproviders:\n{providers}\ncredentials:\n{credentials}",
        addr = env["VAULT_ADDR"],
        providers = providers.replace("DIR", &d.to_string()),
        credentials = credentials.replace("PREFIX", &prefix),
    );
    let path = dir.path().join("playbook.yaml");
    std::fs::write(&path, playbook).unwrap();
    let journal = dir.path().join("journal.db");
    let out = rekey()
        .env("VAULT_TOKEN", &env["VAULT_TOKEN"])
        .args([
            "run",
            path.to_str().unwrap(),
            "--journal",
            journal.to_str().unwrap(),
            "--format",
            "json",
        ])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let trail = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let lines = trail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out.code, lines)
}

/// Position in the trail of `credential`'s first line of `event` / `action`
/// (`None`: any action); the first when `first`, else the last.
fn at(lines: &[Value], credential: &str, event: &str, action: Option<&str>, first: bool) -> usize {
    let mut found = lines.iter().enumerate().filter(|(_, l)| {
        l["credential"] == credential
            && l["event"] == event
            && action.is_none_or(|a| l["action"] == a)
    });
    let hit = if first {
        found.next()
    } else {
        found.next_back()
    };
    hit.unwrap_or_else(|| panic!("no {event} {action:?} line for {credential}"))
        .0
}

fn rotated_at(lines: &[Value], credential: &str) -> usize {
    at(lines, credential, "state", Some("rotated"), false)
}

fn password(id: &str, instance: &str, depends_on: &str) -> String {
    format!(
        "  - {{ id: {id}, provider: {instance}, account: {id}, vault_path: PREFIX/{id}{depends_on} }}\n"
    )
}

#[test]
fn a_dependent_starts_when_its_own_dependencies_are_done_not_a_whole_wave() {
    // `slow` and `root` have no dependency; the six dependents wait for `root`
    // alone. With waves they would wait for `slow` as well.
    let providers = "  slow: { type: sandbox_password, settings: { state_file: DIR/slow.json, latency: 700ms } }\n  fast: { type: sandbox_password, settings: { state_file: DIR/fast.json, latency: 1ms } }\n";
    let mut credentials = password("slow-1", "slow", "") + &password("root", "fast", "");
    let dependents: Vec<String> = (1..=6).map(|i| format!("dep-{i}")).collect();
    for d in &dependents {
        credentials += &password(d, "fast", ", depends_on: [root]");
    }
    let (_, lines) = run(providers, &credentials, 8);
    let root_done = rotated_at(&lines, "root");
    let slow_done = rotated_at(&lines, "slow-1");
    for d in &dependents {
        let started = at(&lines, d, "intent", None, true);
        assert!(
            started > root_done,
            "{d} started before its dependency ended"
        );
        assert!(
            rotated_at(&lines, d) < slow_done,
            "{d} waited for `slow-1`, which it does not depend on"
        );
    }
}

#[test]
fn a_dependency_on_another_instance_is_met_once_the_new_value_is_promoted() {
    // `child` (instance b) depends on `parent` (instance a): it may start once
    // `parent`'s new value is in Vault, before `parent` ends its old sessions.
    let providers = "  a: { type: sandbox_password, settings: { state_file: DIR/a.json, latency: 1ms } }\n  b: { type: sandbox_password, settings: { state_file: DIR/b.json, latency: 1ms } }\n";
    let credentials =
        password("parent", "a", "") + &password("child", "b", ", depends_on: [parent]");
    let (_, lines) = run(providers, &credentials, 8);
    let promoted = at(&lines, "parent", "outcome", Some("promote"), false);
    let started = at(&lines, "child", "intent", None, true);
    assert!(
        started > promoted,
        "child started before parent's value was promoted"
    );
}

#[test]
fn a_credential_waiting_for_its_rate_limit_leaves_its_slot_to_other_instances() {
    // Two global slots. `limited` sends 2 requests a second; its credentials come
    // first in the playbook and take both slots. Waiting for permits, they give
    // them back, so `free`'s credentials finish before any of `limited`'s (each
    // needs two permits, half a second apart).
    let providers = "  limited: { type: sandbox_password, rate: { per_second: 2, burst: 1 }, concurrency: 2, settings: { state_file: DIR/l.json, latency: 1ms } }\n  free: { type: sandbox_password, settings: { state_file: DIR/f.json, latency: 1ms } }\n";
    let mut credentials = String::new();
    for i in 1..=4 {
        credentials += &password(&format!("limited-{i}"), "limited", "");
    }
    for i in 1..=4 {
        credentials += &password(&format!("free-{i}"), "free", "");
    }
    let (_, lines) = run(providers, &credentials, 2);
    let first_limited = (1..=4)
        .map(|i| rotated_at(&lines, &format!("limited-{i}")))
        .min()
        .unwrap();
    for i in 1..=4 {
        let id = format!("free-{i}");
        assert!(
            rotated_at(&lines, &id) < first_limited,
            "{id} waited for the rate-limited instance"
        );
    }
}
