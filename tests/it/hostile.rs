//! Hostile and odd input found by adversarial testing: no panic, no hang, no
//! leak, a clear message.

use crate::support::rekey;

const BASE: &str = "version: 1
name: t
vault: { address: 'http://127.0.0.1:8200' }
incident: { mode: routine }
providers:
  pg:
    type: postgres
    settings: { host: db }
    admin: { env: PG_ADMIN }
credentials:
  - id: a
    provider: pg
    account: app_a
    vault_path: apps/a
";

/// `support::plan_text`, and never a panic.
fn plan_text(text: &str, extra: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let (code, stdout, stderr) = crate::support::plan_text(text, extra, env);
    assert_ne!(code, 101, "panicked:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    (code, stdout, stderr)
}

#[test]
fn extreme_rates_and_grace_periods_do_not_crash_the_estimate() {
    let (code, _, stderr) = plan_text(
        &BASE.replace(
            "admin: { env: PG_ADMIN }",
            "admin: { env: PG_ADMIN }\n    rate: { per_hour: 1e-300 }",
        ),
        &[],
        &[],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("out of range"), "{stderr}");
    let (code, _, stderr) = plan_text(
        &BASE.replace(
            "admin: { env: PG_ADMIN }",
            "admin: { env: PG_ADMIN }\n    rate: { requests: 1e308, period: 1ns }",
        ),
        &[],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    let (code, stdout, stderr) = plan_text(
        &BASE.replace(
            "vault_path: apps/a",
            "vault_path: apps/a\n    grace: 18446744073709551615s",
        ),
        &[],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("more than 100 years"), "{stdout}");
}

#[test]
fn errors_on_very_long_lines_render_without_a_snippet() {
    let text = format!(
        "{{version: 1, name: \"{}\", bogus: 1}}\n",
        "x".repeat(70_000)
    );
    let (code, _, stderr) = plan_text(&text, &[], &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("PLAYBOOK:1:70024: unknown key `bogus`"),
        "{}",
        &stderr[..stderr.len().min(500)]
    );
}

#[test]
fn thousands_of_bad_references_and_cycles_stay_fast_and_bounded() {
    let mut text = String::from(
        "version: 1\nname: t\nvault: { address: 'http://127.0.0.1:8200' }\ncredentials:\n",
    );
    for i in 0..3000 {
        text.push_str(&format!("  - {{ id: c{i}, provider: manual, instructions: x, vault_path: p/{i}, depends_on: [c{}, c0, ghost{i}] }}\n", i + 1));
    }
    let started = std::time::Instant::now();
    let (code, stdout, _) = plan_text(&text, &["--format", "json"], &[]);
    assert_eq!(code, 2);
    let body: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let cycles = body["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| {
            d["message"]
                .as_str()
                .unwrap()
                .starts_with("dependency cycle")
        })
        .count();
    assert!(cycles <= 20, "{cycles} cycles reported");
    // Not a timing test: a generous bound that only a quadratic blow-up would break.
    assert!(started.elapsed().as_secs() < 60);
}

#[test]
fn special_files_are_refused_not_read_forever() {
    for path in ["/dev/zero", "/dev/null", "/tmp"] {
        let out = rekey().args(["plan", path]).run();
        assert_eq!(out.code, 2, "{path}: {}", out.stderr);
        assert!(
            out.stderr.contains("not a regular file"),
            "{path}: {}",
            out.stderr
        );
    }
}

#[test]
fn nan_and_infinity_are_refused_where_numbers_are_expected() {
    for (from, to) in [
        ("account: app_a", "account: app_a\n    verify: .nan"),
        ("name: t", "name: t\ndefaults: { concurrency: .nan }"),
        (
            "admin: { env: PG_ADMIN }",
            "admin: { env: PG_ADMIN }\n    rate: { per_second: 5, burst: .inf }",
        ),
    ] {
        let (code, _, stderr) = plan_text(&BASE.replace(from, to), &[], &[]);
        assert_eq!(code, 2, "{to}: {stderr}");
    }
    let (code, _, stderr) = plan_text(
        &BASE.replace("name: t", "name: t\ndefaults: { concurrency: 4.0 }"),
        &[],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("must be a whole number, not a number with a decimal point"),
        "{stderr}"
    );
}

#[test]
fn merge_keys_must_merge_mappings_and_quoted_ones_are_plain_keys() {
    let (code, _, stderr) = plan_text(
        &BASE.replace("  - id: a\n", "  - <<: 5\n    id: a\n"),
        &[],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("a merge key `<<` takes a mapping"),
        "{stderr}"
    );
    let (code, _, stderr) = plan_text(
        &BASE.replace("  - id: a\n", "  - \"<<\": { grace: 1h }\n    id: a\n"),
        &[],
        &[],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown key `<<`"), "{stderr}");
}

#[test]
fn fallbacks_nest_and_secret_looking_variables_stay_out() {
    let (code, stdout, stderr) = plan_text(
        &BASE.replace("account: app_a", "account: \"${REKEY_T_A:-${REKEY_T_B}}\""),
        &[],
        &[("REKEY_T_B", "from-b")],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("account from-b"), "{stdout}");
    for name in ["MYSQL_PWD", "DB_PASS", "STRIPE_KEY"] {
        let (code, stdout, stderr) = plan_text(
            &BASE.replace("account: app_a", &format!("account: \"${{{name}}}\"")),
            &[],
            &[(name, "canary-hunter2")],
        );
        assert_eq!(code, 2, "{name}");
        assert!(
            !stdout.contains("canary-hunter2") && !stderr.contains("canary-hunter2"),
            "{name} leaked"
        );
    }
}

#[test]
fn control_characters_never_reach_the_terminal() {
    let (code, _, stderr) = plan_text(
        &BASE.replace(
            "name: t",
            "name: \"t\\e[31m\\e]0;owned\\a\"\nbogus: \"\\e[2J\"",
        ),
        &[],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\u{7}'),
        "{stderr:?}"
    );
}

#[test]
fn a_byte_order_mark_does_not_shift_positions() {
    let (code, _, stderr) = plan_text(
        &format!("\u{feff}{}", BASE.replace("name: t", "name: t\nbogus: 1")),
        &[],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("PLAYBOOK:3:1: unknown key `bogus`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("3 │ bogus: 1\n   · ──┬──"),
        "the underline covers `bogus`: {stderr}"
    );
}

#[test]
fn durations_take_a_bare_zero_but_no_other_bare_number() {
    let (code, _, stderr) = plan_text(
        &BASE.replace("name: t", "name: t\ndefaults: { grace: 0 }"),
        &[],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = plan_text(
        &BASE.replace("name: t", "name: t\ndefaults: { grace: 30 }"),
        &[],
        &[],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("`30` has no unit"), "{stderr}");
}

#[test]
fn selections_that_only_together_match_nothing_are_flagged() {
    let text = BASE.replace("vault_path: apps/a", "vault_path: apps/a\n    tags: [x]")
        + "  - id: b\n    provider: pg\n    account: app_b\n    vault_path: apps/b\n    tags: [y]\n";
    let (code, _, stderr) = plan_text(&text, &["--only", "a", "--tag", "y"], &[]);
    assert_eq!(code, 0);
    assert!(
        stderr.contains("together they select no credential"),
        "{stderr}"
    );
}
