//! Each class of playbook mistake: exit code 2, a message naming file, line and
//! column, a snippet and a fix. And all of them at once.

use crate::support::{playbook_file, rekey};

const BASE: &str = "version: 1
name: t
vault: { address: 'http://127.0.0.1:8200' }
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
  - id: b
    provider: pg
    account: app_b
    vault_path: apps/b
    depends_on: [a]
";

/// Plans `text` and returns (exit code, stderr) with the temporary path replaced.
fn plan(text: &str) -> (i32, String) {
    plan_with_env(text, &[])
}

fn plan_with_env(text: &str, env: &[(&str, &str)]) -> (i32, String) {
    let (code, _, stderr) = crate::support::plan_text(text, &[], env);
    (code, stderr)
}

fn assert_invalid(text: &str, expected: &[&str]) -> String {
    let (code, stderr) = plan(text);
    assert_eq!(code, 2, "expected exit 2, got {code}:\n{stderr}");
    for e in expected {
        assert!(stderr.contains(e), "missing `{e}` in:\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn the_base_playbook_is_valid() {
    let (code, stderr) = plan(BASE);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn unknown_keys_get_a_did_you_mean() {
    let text = BASE.replace("    vault_path: apps/a", "    vault_pth: apps/a");
    assert_invalid(
        &text,
        &[
            "PLAYBOOK:13:5: unknown key `vault_pth` in `credentials[0]`",
            "did you mean `vault_path`?",
        ],
    );
    let text = BASE.replace("    depends_on: [a]", "    depend_on: [a]");
    assert_invalid(
        &text,
        &[
            "PLAYBOOK:18:5: unknown key `depend_on`",
            "did you mean `depends_on`?",
        ],
    );
    let text = BASE.replace("settings: { host: db }", "settings: { hots: db }");
    assert_invalid(
        &text,
        &[
            "PLAYBOOK:7:17: `postgres` has no setting `hots`",
            "did you mean `host`?",
            "`postgres` needs the setting `host`",
        ],
    );
}

#[test]
fn duplicate_ids_point_at_both_definitions() {
    let text = BASE
        .replace("id: b", "id: a")
        .replace("depends_on: [a]", "tags: [x]");
    let stderr = assert_invalid(
        &text,
        &[
            "PLAYBOOK:14:9: duplicate credential id `a`",
            "first defined here",
            "defined again here",
        ],
    );
    assert!(
        stderr.contains("10 │   - id: a") && stderr.contains("14 │   - id: a"),
        "{stderr}"
    );
}

#[test]
fn unknown_provider_instances_and_dependencies_are_named() {
    let text = BASE.replace(
        "    provider: pg\n    account: app_b",
        "    provider: pgg\n    account: app_b",
    );
    assert_invalid(
        &text,
        &[
            "PLAYBOOK:15:15: credential `b` uses unknown provider instance `pgg`",
            "did you mean `pg`?",
        ],
    );
    let text = BASE.replace("depends_on: [a]", "depends_on: [aa, zzz]");
    assert_invalid(
        &text,
        &[
            "PLAYBOOK:18:18: credential `b` depends on unknown credential `aa`",
            "did you mean `a`?",
            "PLAYBOOK:18:22: credential `b` depends on unknown credential `zzz`",
        ],
    );
    let text = BASE.replace("type: postgres", "type: postgress");
    assert_invalid(
        &text,
        &[
            "PLAYBOOK:6:11: unknown provider type `postgress`",
            "did you mean `postgres`?",
        ],
    );
}

#[test]
fn dependency_cycles_are_printed() {
    let text = BASE.replace(
        "    vault_path: apps/a\n",
        "    vault_path: apps/a\n    depends_on: [b]\n",
    );
    assert_invalid(&text, &["dependency cycle: a → b → a", "closes the cycle"]);
    let text = BASE.replace("depends_on: [a]", "depends_on: [b]");
    assert_invalid(&text, &["PLAYBOOK:18:18: credential `b` depends on itself"]);
}

#[test]
fn two_credentials_writing_one_vault_path_are_refused() {
    let text = BASE.replace("vault_path: apps/b", "vault_path: /apps//a/");
    assert_invalid(
        &text,
        &[
            "PLAYBOOK:17:17: credentials `a` and `b` both write the Vault path `apps/a`",
            "first written here",
        ],
    );
}

#[test]
fn bad_durations_and_rates_are_explained() {
    let text = BASE
        .replace(
            "    admin: { env: PG_ADMIN }",
            "    admin: { env: PG_ADMIN }\n    rate: { per_second: 0 }",
        )
        .replace("name: t", "name: t\ndefaults: { grace: 5 parsecs }");
    assert_invalid(
        &text,
        &[
            "PLAYBOOK:3:20: `5 parsecs` has an unknown unit `parsecs`",
            "`15m`",
            "`per_second` must be a positive number, not 0",
        ],
    );
    let text = BASE.replace(
        "    admin: { env: PG_ADMIN }",
        "    admin: { env: PG_ADMIN }\n    rate: { per_second: 5, per_minute: 100 }",
    );
    assert_invalid(
        &text,
        &[
            "PLAYBOOK:9:11: the rate limit sets 2 rates (per_second, per_minute)",
            "write exactly one of",
        ],
    );
    let text = BASE.replace(
        "    admin: { env: PG_ADMIN }",
        "    admin: { env: PG_ADMIN }\n    rate: { requests: 1200 }",
    );
    assert_invalid(&text, &["`requests` needs a `period`"]);
    let text = BASE.replace(
        "    admin: { env: PG_ADMIN }",
        "    admin: { env: PG_ADMIN }\n    rate: { per_hour: fast }",
    );
    assert_invalid(
        &text,
        &["PLAYBOOK:9:23: `providers.pg.rate.per_hour` must be a number, not a string"],
    );
}

#[test]
fn unset_environment_variables_are_named() {
    let text = BASE.replace("'http://127.0.0.1:8200'", "'${REKEY_TEST_VAULT}'");
    let (code, stderr) = plan(&text);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("PLAYBOOK:3:19: environment variable `REKEY_TEST_VAULT` is not set"),
        "{stderr}"
    );
    assert!(stderr.contains("export REKEY_TEST_VAULT=..."), "{stderr}");
    let (code, stderr) =
        plan_with_env(&text, &[("REKEY_TEST_VAULT", "https://vault.example:8200")]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _) = plan(&BASE.replace(
        "'http://127.0.0.1:8200'",
        "'${REKEY_TEST_VAULT:-http://127.0.0.1:8200}'",
    ));
    assert_eq!(code, 0);
}

#[test]
fn secrets_cannot_be_interpolated() {
    let text = BASE.replace(
        "settings: { host: db }",
        "settings: { host: '${DB_PASSWORD}' }",
    );
    let (code, stderr) = plan_with_env(&text, &[("DB_PASSWORD", "canary-Zq8PpX")]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("refusing to interpolate `DB_PASSWORD`"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("canary-Zq8PpX"),
        "the secret leaked into the message:\n{stderr}"
    );
}

#[test]
fn unsupported_versions_are_refused() {
    assert_invalid(
        &BASE.replace("version: 1", "version: 2"),
        &[
            "PLAYBOOK:1:10: unsupported playbook version 2",
            "write `version: 1`",
        ],
    );
    assert_invalid(
        &BASE.replace("version: 1\n", ""),
        &["the playbook is missing the key `version`"],
    );
}

#[test]
fn yaml_syntax_errors_have_positions() {
    assert_invalid(
        "version: 1\nname: [unclosed\n",
        &["invalid YAML", "PLAYBOOK:"],
    );
    assert_invalid(
        &BASE.replace("  - id: b", "  - id: b\n    id: c"),
        &["invalid YAML", "duplicate", "PLAYBOOK:15:"],
    );
    assert_invalid("", &["the file is empty"]);
    assert_invalid("- a\n- b\n", &["a playbook is a mapping"]);
    let (_dir, path) = playbook_file("version: 1\n");
    std::fs::write(&path, b"version: 1\nname: \xff\xfe\n").unwrap();
    let out = rekey().args(["plan", path.to_str().unwrap()]).run();
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("not UTF-8 text (invalid byte at line 2, column 7)"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_missing_file_is_invalid_input() {
    let out = rekey().args(["plan", "playbooks/nope.yaml"]).run();
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("playbooks/nope.yaml: cannot read the playbook"),
        "{}",
        out.stderr
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = "version: 1
name: everything-wrong
vault: { address: 'http://127.0.0.1:8200' }
incident: { compromised: [idp], mode: breach }
defaults: { grace: soon, concurrency: 0 }
providers:
  pg:
    type: postgres
    settings: { host: db }
    admin: { env: PG_ADMIN }
    rate: { per_minute: -3 }
credentials:
  - id: a
    provider: pg
    account: app
    vault_path: apps/shared
    depends_on: [c]
  - id: a
    provider: pgx
    vault_path: apps/shared
  - id: c
    provider: pg
    account: app_c
    vault_path: apps/c
    depends_on: [a, ghost]
  - id: d
    provider: manual
    vault_path: apps/d
";
    let (code, stderr) = plan(text);
    assert_eq!(code, 2);
    insta::assert_snapshot!("every_problem_at_once", stderr);
}

#[test]
fn plan_json_reports_diagnostics_on_stdout() {
    let (_dir, path) = playbook_file(&BASE.replace("vault_path: apps/a", "vault_pth: apps/a"));
    let out = rekey()
        .args(["plan", path.to_str().unwrap(), "--format", "json"])
        .run();
    assert_eq!(out.code, 2);
    let body: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(body["valid"], false);
    let d = &body["diagnostics"][0];
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(13), Some(5))
    );
    assert_eq!(d["help"], "did you mean `vault_path`?");
}

#[test]
fn warnings_do_not_fail_the_plan() {
    let text = BASE.replace(
        "name: t",
        "name: t\nincident: { compromised: [idp] }\ndefaults: { grace: 1h }",
    );
    let (code, stderr) = plan(&text);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("breach mode retires old credentials at once"),
        "{stderr}"
    );
    assert!(
        stderr.contains("no credential is tied to the compromised system `idp`"),
        "{stderr}"
    );
}

#[test]
fn unknown_keys_do_not_hide_the_problems_behind_them() {
    // A typo in one credential and a duplicate Vault path in another: one run shows both.
    let text = BASE
        .replace("    vault_path: apps/a", "    vault_pth: apps/a")
        .replace("vault_path: apps/b", "vault_path: apps/a")
        .replace("  - id: b", "  - id: b\n    colour: blue");
    assert_invalid(
        &text,
        &[
            "PLAYBOOK:13:5: unknown key `vault_pth` in `credentials[0]`",
            "did you mean `vault_path`?",
            "PLAYBOOK:15:5: unknown key `colour` in `credentials[1]`",
            "PLAYBOOK:18:17: credentials `a` and `b` both write the Vault path `apps/a`",
            "3 errors",
        ],
    );
}

/// An exec plugin's `env` cannot forward a secret: not the Vault token, not a
/// variable the playbook reads an admin credential or a token from, not rekey's
/// own secret variables, not a secret-looking name; each refused at its position
/// with the fix, like `${VAR}` refuses them.
#[test]
fn an_exec_plugins_env_refuses_variables_that_hold_secrets() {
    let text = "version: 1
name: t
vault: { address: 'http://127.0.0.1:8200', auth: { method: token, token_env: OPS_VAULT } }
providers:
  plug:
    type: exec
    admin: { env: KS_ADMIN }
    settings:
      command: /bin/true
      env: [PATH, VAULT_TOKEN, KS_ADMIN, OPS_VAULT, REKEY_AUDIT_AUTHORIZATION, STRIPE_API_KEY, LANG]
  other:
    type: exec
    admin: { env: OTHER_ADMIN }
    settings: { command: /bin/true, env: [OTHER_ADMIN] }
credentials:
  - { id: a, provider: plug, account: x, vault_path: apps/a }
  - { id: b, provider: other, account: y, vault_path: apps/b }
";
    let stderr = assert_invalid(
        text,
        &[
            "PLAYBOOK:10:19: exec instance `plug` may not pass `VAULT_TOKEN` to its plugin",
            "PLAYBOOK:10:32: exec instance `plug` may not pass `KS_ADMIN` to its plugin",
            "PLAYBOOK:10:42: exec instance `plug` may not pass `OPS_VAULT` to its plugin",
            "PLAYBOOK:10:53: exec instance `plug` may not pass `REKEY_AUDIT_AUTHORIZATION`",
            "PLAYBOOK:10:80: exec instance `plug` may not pass `STRIPE_API_KEY`",
            "PLAYBOOK:14:43: exec instance `other` may not pass `OTHER_ADMIN`",
            "the plugin gets its admin credential in the hello",
        ],
    );
    assert!(
        !stderr.contains("`PATH`") && !stderr.contains("`LANG`"),
        "{stderr}"
    );
}

/// `${REKEY_AUDIT_AUTHORIZATION}` (the audit collector's credential) is refused
/// like every other secret variable, though its name has no secret word.
#[test]
fn interpolating_rekeys_own_secret_variables_is_refused() {
    let text = BASE.replace("name: t", "name: t-${REKEY_AUDIT_AUTHORIZATION}");
    let (code, stderr) = plan_with_env(&text, &[("REKEY_AUDIT_AUTHORIZATION", "Splunk abc")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("refusing to interpolate `REKEY_AUDIT_AUTHORIZATION`"),
        "{stderr}"
    );
    assert!(!stderr.contains("Splunk abc"), "{stderr}");
}

/// An id longer than the limit gets a diagnostic of its own that says the limit,
/// and no diagnostic quotes a long value whole (a pasted blob must not come back
/// in full on a terminal or in CI logs).
#[test]
fn an_over_long_id_gets_its_own_diagnostic_with_the_limit_and_long_values_are_not_echoed() {
    for len in [300, 5000] {
        let long = "a".repeat(len);
        let text = BASE
            .replace("  - id: b\n", &format!("  - id: {long}\n"))
            .replace(
                "'http://127.0.0.1:8200'",
                &format!("'https://{long}.example'"),
            );
        let stderr = assert_invalid(
            &text,
            &[&format!(
                "PLAYBOOK:14:9: credential id is {len} characters long; the limit is 128"
            )],
        );
        let messages: Vec<&str> = stderr.lines().filter(|l| l.contains('×')).collect();
        assert!(
            messages.iter().all(|m| !m.contains(&long)),
            "{len}: a message quotes the whole value: {messages:?}"
        );
        if len > 400 {
            assert!(!stderr.contains(&long), "{len}: echoed in full");
        }
        let (_, stdout, _) = crate::support::plan_text(&text, &["--format", "json"], &[]);
        assert!(!stdout.contains(&long), "{len}: echoed in full in JSON");
    }
}

#[test]
fn end_sessions_is_a_boolean_of_types_that_end_sessions() {
    let text = BASE.replace(
        "settings: { host: db }",
        "settings: { host: db, end_sessions: sometimes }",
    );
    assert_invalid(
        &text,
        &[
            "`end_sessions` must be true or false",
            "leaves the sessions opened with an old credential open",
        ],
    );
    // A `${VAR}` gives text: "true" and "false" are read as booleans, and a
    // breach-mode plan shows the step only when it is on.
    let text = BASE
        .replace("name: t\n", "name: t\nincident: { mode: breach }\n")
        .replace(
            "settings: { host: db }",
            "settings: { host: db, end_sessions: \"${END}\" }",
        );
    for (end, shown) in [("true", true), ("false", false)] {
        let (code, stdout, stderr) = crate::support::plan_text(&text, &[], &[("END", end)]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(
            stdout.contains("promote > end_sessions > clear_staging"),
            shown,
            "{stdout}"
        );
    }
    // A type whose sessions rekey cannot end has no such setting.
    let text = BASE.replace("type: postgres", "type: ldap").replace(
        "settings: { host: db }",
        "settings: { url: 'ldaps://db', base_dn: 'dc=x', end_sessions: false }",
    );
    assert_invalid(&text, &["`ldap` has no setting `end_sessions`"]);
}

#[test]
fn a_zone_name_is_checked_where_it_is_written() {
    let good = BASE.replace(
        "    settings: { host: db }",
        "    settings: { host: db }\n    zone: prod-vpc.eu_1",
    );
    let (code, stderr) = plan(&good);
    assert_eq!(code, 0, "{stderr}");
    let bad = BASE.replace(
        "    settings: { host: db }",
        "    settings: { host: db }\n    zone: \"prod vpc/1\"",
    );
    assert_invalid(
        &bad,
        &[
            "PLAYBOOK:8:11: `prod vpc/1` is not a zone name",
            "a zone is 1 to 64 letters, digits",
        ],
    );
}
