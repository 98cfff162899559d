//! `rekey plan`, `rekey schema` and `rekey providers` through the binary.

use crate::support::{rekey, relative, shipped_playbooks};
use serde_json::Value;

#[test]
fn plan_accepts_every_shipped_playbook_in_every_format() {
    let files = shipped_playbooks();
    assert!(
        files.len() >= 3,
        "playbooks/ holds the demo, breach and hygiene playbooks"
    );
    for file in files {
        let name = relative(&file);
        for format in ["text", "json", "markdown"] {
            let out = rekey()
                .playbook_env()
                .args(["plan", &name, "--format", format])
                .run();
            assert_eq!(out.code, 0, "{name} --format {format}: {}", out.stderr);
            assert!(
                !out.stdout.trim().is_empty(),
                "{name} --format {format} printed nothing"
            );
        }
        let json: Value = serde_json::from_str(
            &rekey()
                .playbook_env()
                .args(["plan", &name, "--format", "json"])
                .run()
                .stdout,
        )
        .unwrap();
        assert_eq!(json["format_version"], 1);
        assert!(
            json["totals"]["credentials"].as_u64().unwrap() > 0,
            "{name} selects credentials"
        );
    }
}

#[test]
fn shipped_playbooks_point_to_the_schema() {
    for file in shipped_playbooks() {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains("$schema=../docs/playbook.schema.json"),
            "{} has no schema modeline",
            file.display()
        );
    }
    let shipped: Value = serde_json::from_str(
        &std::fs::read_to_string(crate::support::repo_root().join("docs/playbook.schema.json"))
            .unwrap(),
    )
    .unwrap();
    let printed: Value = serde_json::from_str(&rekey().args(["schema"]).run().stdout).unwrap();
    assert_eq!(
        shipped, printed,
        "docs/playbook.schema.json is stale: run `cargo run -q -- schema > docs/playbook.schema.json`"
    );
}

#[test]
fn schema_validates_the_shipped_playbooks() {
    let schema: Value = serde_json::from_str(&rekey().args(["schema"]).run().stdout).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    for file in shipped_playbooks() {
        let doc: Value = serde_saphyr::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", file.display());
    }
}

#[test]
fn plan_orders_dependencies_into_waves() {
    let out = rekey()
        .playbook_env()
        .args([
            "plan",
            "playbooks/idp-breach-jumpcloud.yaml",
            "--format",
            "json",
        ])
        .run();
    let plan: Value = serde_json::from_str(&out.stdout).unwrap();
    let wave_of = |id: &str| -> u64 {
        plan["waves"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| {
                w["credentials"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["id"] == id)
            })
            .map(|w| w["index"].as_u64().unwrap())
            .unwrap()
    };
    assert_eq!(wave_of("jumpcloud-ldap-sync"), 1);
    assert_eq!(wave_of("deploy-bot-aws"), 2);
    assert_eq!(wave_of("ci-deployer-approle"), 3);
    assert!(wave_of("exchange-a-trading-key") > wave_of("hot-wallet-signer-aws"));
}

#[test]
fn plan_selection_narrows_by_tag_id_and_compromised_system() {
    let count = |args: &[&str]| -> u64 {
        let mut all = vec![
            "plan",
            "playbooks/idp-breach-jumpcloud.yaml",
            "--format",
            "json",
        ];
        all.extend_from_slice(args);
        let out = rekey().playbook_env().args(all).run();
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        let plan: Value = serde_json::from_str(&out.stdout).unwrap();
        plan["totals"]["credentials"].as_u64().unwrap()
    };
    assert_eq!(count(&[]), 18);
    assert_eq!(count(&["--compromised", "jumpcloud"]), 18);
    assert_eq!(count(&["--tag", "trading"]), 4);
    assert_eq!(count(&["--tag", "trading", "--tag", "ci"]), 8);
    assert_eq!(count(&["--tag", "tier0", "--tag", "aws"]), 12);
    assert_eq!(
        count(&["--only", "ledger-db", "--only", "session-cache"]),
        2
    );
    assert_eq!(count(&["--tag", "aws", "--only", "ledger-db"]), 0);
}

#[test]
fn plan_reports_dependencies_left_out_of_the_selection() {
    let out = rekey()
        .playbook_env()
        .args([
            "plan",
            "playbooks/idp-breach-jumpcloud.yaml",
            "--only",
            "deploy-bot-aws",
        ])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(
            "Not selected but depended on (not rotated by this run): jumpcloud-ldap-sync"
        ),
        "{}",
        out.stdout
    );
}

#[test]
fn plan_refuses_a_selection_that_matches_nothing() {
    let out = rekey()
        .playbook_env()
        .args([
            "plan",
            "playbooks/idp-breach-jumpcloud.yaml",
            "--compromised",
            "jumpclod",
        ])
        .run();
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains(
            "--compromised `jumpclod` matches nothing in the playbook (did you mean `jumpcloud`?)"
        ),
        "{}",
        out.stderr
    );
    let out = rekey()
        .playbook_env()
        .args([
            "plan",
            "playbooks/demo.yaml",
            "--only",
            "nope",
            "--tag",
            "tier9",
        ])
        .run();
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("--only `nope`") && out.stderr.contains("--tag `tier9`"),
        "{}",
        out.stderr
    );
}

#[test]
fn detailed_exitcode_says_whether_there_is_work() {
    let out = rekey()
        .playbook_env()
        .args(["plan", "playbooks/demo.yaml", "--detailed-exitcode"])
        .run();
    assert_eq!(out.code, 10, "{}", out.stderr);
    let out = rekey()
        .playbook_env()
        .args([
            "plan",
            "playbooks/demo.yaml",
            "--detailed-exitcode",
            "--tag",
            "tier0",
            "--only",
            "session-cache",
        ])
        .run();
    assert_eq!(
        out.code, 0,
        "an empty selection has no work: {}",
        out.stderr
    );
    let out = rekey()
        .playbook_env()
        .args(["plan", "playbooks/demo.yaml"])
        .run();
    assert_eq!(out.code, 0);
}

#[test]
fn plan_eta_follows_the_rate_limit() {
    // 40 sandbox keys at 10 requests/s, 5 requests each: 200 requests, ~20 s.
    let mut text = String::from(
        "version: 1\nname: eta\nvault: { address: 'http://127.0.0.1:8200' }\nproviders:\n  s: { type: sandbox, rate: { per_second: 10 }, concurrency: 64 }\ndefaults: { concurrency: 64 }\ncredentials:\n",
    );
    for i in 0..40 {
        text.push_str(&format!(
            "  - {{ id: k{i}, provider: s, account: a{i}, vault_path: p/{i} }}\n"
        ));
    }
    let (_dir, path) = crate::support::playbook_file(&text);
    let out = rekey()
        .args(["plan", path.to_str().unwrap(), "--format", "json"])
        .run();
    let plan: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(plan["totals"]["provider_requests"], 200);
    let eta = plan["totals"]["eta_seconds"].as_f64().unwrap();
    assert!((19.0..=20.5).contains(&eta), "eta {eta}");
    // Concurrency 1 at 5 ms per request bounds it instead when the rate is generous.
    let slow = text.replace(
        "rate: { per_second: 10 }, concurrency: 64",
        "rate: { per_second: 10000 }, concurrency: 1",
    );
    let (_dir2, path2) = crate::support::playbook_file(&slow);
    let plan: Value = serde_json::from_str(
        &rekey()
            .args(["plan", path2.to_str().unwrap(), "--format", "json"])
            .run()
            .stdout,
    )
    .unwrap();
    let eta = plan["totals"]["eta_seconds"].as_f64().unwrap();
    // 40 credentials one at a time, each 5 requests x 5 ms + 7 Vault requests x 5 ms.
    assert!((2.3..=2.5).contains(&eta), "eta {eta}");
}

#[test]
fn markdown_plan_of_the_demo_is_stable() {
    let out = rekey()
        .playbook_env()
        .args(["plan", "playbooks/demo.yaml", "--format", "markdown"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    insta::assert_snapshot!("demo_plan_markdown", out.stdout);
}

#[test]
fn text_plan_of_the_demo_is_stable() {
    let out = rekey()
        .playbook_env()
        .args(["plan", "playbooks/demo.yaml"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    insta::assert_snapshot!("demo_plan_text", out.stdout);
}

#[test]
fn providers_lists_the_catalog() {
    let out = rekey().args(["providers"]).run();
    assert_eq!(out.code, 0);
    for name in [
        "postgres",
        "aws_iam",
        "redis",
        "manual",
        "sandbox",
        "cloudflare_token",
    ] {
        assert!(
            out.stdout.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{}",
            out.stdout
        );
    }
    let json: Value =
        serde_json::from_str(&rekey().args(["providers", "--format", "json"]).run().stdout)
            .unwrap();
    let aws = json
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "aws_iam")
        .unwrap();
    assert_eq!(aws["quota"], 2);
    assert_eq!(aws["kind"], "dual");
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(rekey().args(["plan"]).run().code, 2);
    assert_eq!(
        rekey()
            .args(["plan", "playbooks/demo.yaml", "--format", "yaml"])
            .run()
            .code,
        2
    );
    assert_eq!(rekey().args(["frobnicate"]).run().code, 2);
}

#[test]
fn plan_shows_the_critical_path_and_its_eta_does_not_wait_for_whole_waves() {
    // A chain c1 -> ... -> c6 and 30 keys beside it, in two waves: the chain is
    // the critical path, and the ETA is its length, not a sum over waves.
    let mut text = String::from(
        "version: 1\nname: cp\nvault: { address: 'http://127.0.0.1:8200' }\ndefaults: { concurrency: 64 }\nproviders:\n  chain: { type: sandbox_password, rate: { per_second: 10000 } }\n  quick: { type: sandbox, rate: { per_second: 10000 }, concurrency: 64 }\ncredentials:\n",
    );
    for i in 1..=6 {
        let dep = if i > 1 {
            format!(", depends_on: [c{}]", i - 1)
        } else {
            String::new()
        };
        text.push_str(&format!(
            "  - {{ id: c{i}, provider: chain, account: c{i}, vault_path: p/{i}{dep} }}\n"
        ));
    }
    for i in 0..30 {
        let dep = if i >= 15 { ", depends_on: [k0]" } else { "" };
        text.push_str(&format!(
            "  - {{ id: k{i}, provider: quick, account: k{i}, vault_path: q/{i}{dep} }}\n"
        ));
    }
    let (_dir, path) = crate::support::playbook_file(&text);
    let out = rekey()
        .args(["plan", path.to_str().unwrap(), "--format", "json"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let plan: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        plan["critical_path"]["credentials"],
        serde_json::json!(["c1", "c2", "c3", "c4", "c5", "c6"])
    );
    let critical = plan["critical_path"]["seconds"].as_f64().unwrap();
    let eta = plan["totals"]["eta_seconds"].as_f64().unwrap();
    let waves: f64 = plan["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["eta_seconds"].as_f64().unwrap())
        .sum();
    assert_eq!(eta, critical, "the chain bounds the run");
    assert!(eta < waves, "eta {eta} sums the waves ({waves})");
    let text = rekey().args(["plan", path.to_str().unwrap()]).run().stdout;
    assert!(
        text.contains("Critical path (6 credentials, ")
            && text.contains("): c1 > c2 > c3 > c4 > c5 > c6"),
        "{text}"
    );
}

/// Where the admin credential is itself a key of the account (Datadog here),
/// breach mode would retire it with the others: the plan says so, in JSON and in
/// words, and routine mode (which retires only the key Vault names) does not.
#[test]
fn breach_plan_cautions_where_the_admin_key_is_among_those_retired() {
    let credential = |playbook: &str, id: &str| -> (Value, String) {
        let json = rekey()
            .playbook_env()
            .args(["plan", playbook, "--format", "json"])
            .run();
        assert_eq!(json.code, 0, "{}", json.stderr);
        let plan: Value = serde_json::from_str(&json.stdout).unwrap();
        let mut found = None;
        let mut stack = vec![&plan];
        while let Some(v) = stack.pop() {
            match v {
                Value::Object(m) if m.get("id").and_then(Value::as_str) == Some(id) => {
                    found = Some(v.clone())
                }
                Value::Object(m) => stack.extend(m.values()),
                Value::Array(a) => stack.extend(a),
                _ => {}
            }
        }
        let text = rekey().playbook_env().args(["plan", playbook]).run();
        (found.expect("credential in the plan"), text.stdout)
    };
    let (dd, text) = credential("playbooks/idp-breach-jumpcloud.yaml", "datadog-api-key");
    assert_eq!(dd["retires"]["rule"], "every_existing_key", "{dd}");
    assert_eq!(dd["retires"]["may_include_admin_key"], true, "{dd}");
    assert!(
        text.contains("CAUTION: the admin credential's own key"),
        "{text}"
    );
    // A type whose admin is not a key of the account carries no caution.
    let (aws, _) = credential("playbooks/idp-breach-jumpcloud.yaml", "deploy-bot-aws");
    assert_eq!(aws["retires"]["rule"], "every_existing_key", "{aws}");
    assert!(
        aws["retires"].get("may_include_admin_key").is_none(),
        "{aws}"
    );
    // Routine mode retires only the key Vault names.
    let (routine, text) = credential("playbooks/hygiene-90d.yaml", "metrics-agent-key");
    assert_eq!(routine["retires"]["rule"], "key_vault_names", "{routine}");
    assert!(routine["retires"].get("may_include_admin_key").is_none());
    assert!(!text.contains("CAUTION"), "{text}");
}
