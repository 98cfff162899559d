//! `vault_approle` and `vault_userpass` against the OpenBao from `scripts/services`.
//! Each test enables its own AppRole or userpass mount (a fresh path), so tests run
//! in parallel and never see each other's roles or users; the rotated values are
//! stored in the same OpenBao's KV mount, under the test's own prefix.

use crate::infra_common::{Case, bao, bao_as, unique};
use serde_json::{Value, json};
use std::collections::HashMap;

const ADMIN_VAR: &str = "REKEY_TEST_BAO_ADMIN";

fn case() -> Case {
    let mut case = Case::new();
    let token = case.env["VAULT_TOKEN"].clone();
    case.vars.push((ADMIN_VAR.to_owned(), token));
    case
}

fn ok(status: u16, body: &Value, what: &str) {
    assert!((200..300).contains(&status), "{what}: HTTP {status} {body}");
}

/// Enables a fresh auth mount of `kind` and returns its path.
fn mount(env: &HashMap<String, String>, kind: &str) -> String {
    let path = unique(kind);
    let (s, b) = bao(
        env,
        "POST",
        &format!("sys/auth/{path}"),
        Some(&json!({ "type": kind })),
    );
    ok(s, &b, "enable auth mount");
    path
}

struct Role<'a> {
    env: &'a HashMap<String, String>,
    mount: String,
    name: String,
}

impl Role<'_> {
    fn create<'a>(env: &'a HashMap<String, String>, options: Value) -> Role<'a> {
        let role = Role {
            env,
            mount: mount(env, "approle"),
            name: unique("role"),
        };
        let mut body = json!({ "token_policies": ["default"], "token_ttl": "5m" });
        body.as_object_mut()
            .unwrap()
            .extend(options.as_object().unwrap().clone());
        let (s, b) = bao(
            env,
            "POST",
            &format!("auth/{}/role/{}", role.mount, role.name),
            Some(&body),
        );
        ok(s, &b, "create role");
        role
    }

    fn role_id(&self) -> String {
        let (s, b) = bao(
            self.env,
            "GET",
            &format!("auth/{}/role/{}/role-id", self.mount, self.name),
            None,
        );
        ok(s, &b, "role-id");
        b["data"]["role_id"].as_str().unwrap().to_owned()
    }

    /// A new secret-id: (accessor, secret-id).
    fn secret_id(&self) -> (String, String) {
        let (s, b) = bao(
            self.env,
            "POST",
            &format!("auth/{}/role/{}/secret-id", self.mount, self.name),
            None,
        );
        ok(s, &b, "secret-id");
        (
            b["data"]["secret_id_accessor"].as_str().unwrap().to_owned(),
            b["data"]["secret_id"].as_str().unwrap().to_owned(),
        )
    }

    fn accessors(&self) -> Vec<String> {
        let (_, b) = bao(
            self.env,
            "LIST",
            &format!("auth/{}/role/{}/secret-id", self.mount, self.name),
            None,
        );
        let mut keys: Vec<String> = b["data"]["keys"]
            .as_array()
            .map(|k| k.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        keys.sort();
        keys
    }

    /// Whether an AppRole login with `secret_id` succeeds.
    fn login(&self, secret_id: &str) -> bool {
        let (s, _) = bao_as(
            self.env,
            "",
            "POST",
            &format!("auth/{}/login", self.mount),
            Some(&json!({ "role_id": self.role_id(), "secret_id": secret_id })),
        );
        s == 200
    }

    fn playbook(&self, case: &Case, mode: &str, rate: &str) -> std::path::PathBuf {
        case.playbook(
            "approle.yaml",
            &format!(
                "version: 1\nname: approle-test\nincident: {{ mode: {mode} }}\nvault: {{ address: \"VAULT\", staging_prefix: PREFIX/staging }}\nproviders:\n  bao:\n    type: vault_approle\n    admin: {{ env: {ADMIN_VAR} }}\n{rate}    settings: {{ address: \"VAULT\", mount: {} }}\ncredentials:\n  - {{ id: ci, provider: bao, vault_path: PREFIX/ci, settings: {{ role_name: {} }} }}\n",
                self.mount, self.name
            ),
        )
    }
}

struct User<'a> {
    env: &'a HashMap<String, String>,
    mount: String,
    name: String,
}

impl User<'_> {
    fn create<'a>(env: &'a HashMap<String, String>, password: &str, options: Value) -> User<'a> {
        let user = User {
            env,
            mount: mount(env, "userpass"),
            name: unique("user"),
        };
        let mut body =
            json!({ "password": password, "token_policies": ["default"], "token_ttl": "5m" });
        body.as_object_mut()
            .unwrap()
            .extend(options.as_object().unwrap().clone());
        let (s, b) = bao(
            env,
            "POST",
            &format!("auth/{}/users/{}", user.mount, user.name),
            Some(&body),
        );
        ok(s, &b, "create user");
        user
    }

    /// The HTTP status of a login with `password` (200: accepted).
    fn login(&self, password: &str) -> u16 {
        bao_as(
            self.env,
            "",
            "POST",
            &format!("auth/{}/login/{}", self.mount, self.name),
            Some(&json!({ "password": password })),
        )
        .0
    }

    fn playbook(&self, case: &Case, mode: &str, rate: &str) -> std::path::PathBuf {
        case.playbook(
            "userpass.yaml",
            &format!(
                "version: 1\nname: userpass-test\nincident: {{ mode: {mode} }}\nvault: {{ address: \"VAULT\", staging_prefix: PREFIX/staging }}\nproviders:\n  bao:\n    type: vault_userpass\n    admin: {{ env: {ADMIN_VAR} }}\n{rate}    settings: {{ address: \"VAULT\", mount: {} }}\ncredentials:\n  - {{ id: svc, provider: bao, account: {}, vault_path: PREFIX/svc }}\n",
                self.mount, self.name
            ),
        )
    }
}

const SLOW: &str = "    rate: { per_second: 4, burst: 1 }\n";

#[test]
fn vault_approle_rotation_issues_a_working_secret_id_and_destroys_the_old_one() {
    let case = case();
    let role = Role::create(&case.env, json!({}));
    let (old_accessor, old_secret) = role.secret_id();
    case.seed("ci", &old_secret, Some(&old_accessor));

    let ran = case.run(&role.playbook(&case, "breach", ""));
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.outcome("ci"), "rotated", "{}", ran.summary);
    let entry = case.vault("ci");
    let accessor = entry["data"]["key_id"].as_str().unwrap().to_owned();
    let secret = entry["data"]["value"].as_str().unwrap().to_owned();
    assert_ne!(accessor, old_accessor);
    assert!(role.login(&secret), "the new secret-id logs in");
    assert!(!role.login(&old_secret), "the old secret-id is destroyed");
    assert_eq!(role.accessors(), vec![accessor.clone()]);
    // The secret-id carries rekey's tag, which is how resume recognises it.
    let (_, lookup) = bao(
        &case.env,
        "POST",
        &format!(
            "auth/{}/role/{}/secret-id-accessor/lookup",
            role.mount, role.name
        ),
        Some(&json!({ "secret_id_accessor": accessor })),
    );
    let run_id = ran.summary["run_id"].as_str().unwrap();
    assert_eq!(
        lookup["data"]["metadata"]["rekey_tag"],
        format!("rekey:{run_id}:ci")
    );
    ran.assert_no_leak(&[&secret, &old_secret]);
    case.assert_journal_clean(&[&secret, &old_secret]);
}

/// First adoption during a breach: the role has the secret-id consumers use (in
/// Vault by hand, no `key_id`) and a second one an attacker minted. After the run
/// only the new secret-id logs in, as OpenBao itself answers.
#[test]
fn vault_approle_first_adoption_during_a_breach_destroys_every_earlier_secret_id() {
    let case = case();
    let role = Role::create(&case.env, json!({}));
    let (_, used) = role.secret_id();
    let (_, minted) = role.secret_id();
    case.seed("ci", &used, None);
    let ran = case.run(&role.playbook(&case, "breach", ""));
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.outcome("ci"), "rotated", "{}", ran.summary);
    let entry = case.vault("ci");
    let accessor = entry["data"]["key_id"].as_str().unwrap().to_owned();
    let secret = entry["data"]["value"].as_str().unwrap().to_owned();
    assert!(role.login(&secret), "the new secret-id logs in");
    assert!(
        !role.login(&used),
        "the secret-id consumers used still logs in"
    );
    assert!(
        !role.login(&minted),
        "the attacker's secret-id still logs in"
    );
    assert_eq!(role.accessors(), vec![accessor]);
}

/// A role whose secret-ids only log in from 10.0.0.0/8: issuing works, the login
/// from 127.0.0.1 does not, so verify fails and the new secret-id is destroyed.
#[test]
fn vault_approle_verify_failure_destroys_the_new_secret_id_and_keeps_the_old() {
    let case = case();
    let role = Role::create(
        &case.env,
        json!({ "secret_id_bound_cidrs": ["10.0.0.0/8"] }),
    );
    let (old_accessor, old_secret) = role.secret_id();
    case.seed("ci", &old_secret, Some(&old_accessor));

    let ran = case.run(&role.playbook(&case, "breach", ""));
    assert_eq!(ran.outcome("ci"), "rolled_back", "{}", ran.summary);
    let reason = ran.result("ci")["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("did not work when verified"), "{reason}");
    assert_ne!(ran.code, 0);
    assert_eq!(role.accessors(), vec![old_accessor.clone()]);
    let entry = case.vault("ci");
    assert_eq!(entry["metadata"]["version"], 1);
    assert_eq!(entry["data"]["key_id"], old_accessor.as_str());
}

#[test]
fn vault_approle_preflight_names_a_refused_token_a_missing_role_a_missing_capability_and_a_down_server()
 {
    let mut case = case();
    let role = Role::create(&case.env, json!({}));
    let pb = role.playbook(&case, "breach", "");
    let out = case.plan_live(&pb);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stdout.contains("ok   ci provider: bao ready"),
        "{}",
        out.stdout
    );

    // A token that may read the role-id but not issue secret-ids.
    let policy = format!(
        "path \"auth/{}/role/{}/role-id\" {{ capabilities = [\"read\"] }}",
        role.mount, role.name
    );
    let name = unique("ro");
    let (s, b) = bao(
        &case.env,
        "POST",
        &format!("sys/policies/acl/{name}"),
        Some(&json!({ "policy": policy })),
    );
    ok(s, &b, "policy");
    let (s, b) = bao(
        &case.env,
        "POST",
        "auth/token/create",
        Some(&json!({ "policies": [name], "ttl": "5m" })),
    );
    ok(s, &b, "token");
    let weak = b["auth"]["client_token"].as_str().unwrap().to_owned();
    case.vars = vec![(ADMIN_VAR.to_owned(), weak.clone())];
    let out = case.plan_live(&pb);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains(&format!(
            "may not issue secret-ids for role `{}`",
            role.name
        )),
        "{}",
        out.stdout
    );
    out.assert_no_leak(&[&weak]);

    case.vars = vec![(ADMIN_VAR.to_owned(), "not-a-token-123".to_owned())];
    let out = case.plan_live(&pb);
    assert!(
        out.stdout.contains(
            "the admin token from environment variable `REKEY_TEST_BAO_ADMIN` was refused"
        ),
        "{}",
        out.stdout
    );
    out.assert_no_leak(&["not-a-token-123"]);

    let case = self::case();
    let text = std::fs::read_to_string(&pb).unwrap();
    let missing = case.playbook(
        "missing.yaml",
        &text.replace(
            &format!("role_name: {}", role.name),
            "role_name: no-such-role",
        ),
    );
    let out = case.plan_live(&missing);
    assert!(
        out.stdout.contains("role `no-such-role` does not exist"),
        "{}",
        out.stdout
    );

    let down = case.playbook(
        "down.yaml",
        &text.replace(
            &format!("settings: {{ address: \"{}\"", case.env["VAULT_ADDR"]),
            "settings: { address: \"http://127.0.0.1:1\"",
        ),
    );
    let out = case.plan_live(&down);
    assert!(
        out.stdout.contains("cannot reach http://127.0.0.1:1/"),
        "{}",
        out.stdout
    );
}

#[test]
fn vault_approle_run_killed_mid_rotation_is_finished_by_resume_without_orphans() {
    for states in [&["creating"][..], &["staged"], &["verified", "promoted"]] {
        let case = case();
        let role = Role::create(&case.env, json!({}));
        let (old_accessor, old_secret) = role.secret_id();
        case.seed("ci", &old_secret, Some(&old_accessor));
        let mut child = case.spawn_run(&role.playbook(&case, "breach", SLOW));
        case.wait_for_state("ci", states);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let ran = case.resume();
        assert_eq!(ran.code, 0, "killed at {states:?}: {}", ran.stderr);
        let entry = case.vault("ci");
        let accessor = entry["data"]["key_id"].as_str().unwrap().to_owned();
        assert_ne!(accessor, old_accessor, "killed at {states:?}");
        assert_eq!(
            role.accessors(),
            vec![accessor],
            "killed at {states:?}: orphan or old secret-id left"
        );
        assert!(
            role.login(entry["data"]["value"].as_str().unwrap()),
            "killed at {states:?}"
        );
    }
}

#[test]
fn vault_userpass_rotation_sets_a_new_password_that_logs_in_and_the_old_one_fails() {
    let case = case();
    let user = User::create(&case.env, "old-password-1", json!({}));
    case.seed("svc", "old-password-1", None);
    let ran = case.run(&user.playbook(&case, "breach", ""));
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.outcome("svc"), "rotated", "{}", ran.summary);
    let entry = case.vault("svc");
    let new = entry["data"]["value"].as_str().unwrap().to_owned();
    assert_eq!(entry["metadata"]["version"], 2);
    assert_ne!(new, "old-password-1");
    assert_eq!(user.login(&new), 200);
    assert_eq!(
        user.login("old-password-1"),
        400,
        "the old password is rejected"
    );
    ran.assert_no_leak(&[&new, "old-password-1"]);
    case.assert_journal_clean(&[&new, "old-password-1"]);
}

/// Logins only from 10.0.0.0/8: the change succeeds but the login from
/// 127.0.0.1 is refused, so verify fails and routine mode sets the old password
/// again (checked by lifting the restriction and logging in with it).
#[test]
fn vault_userpass_verify_failure_in_routine_mode_restores_the_old_password() {
    let case = case();
    let user = User::create(
        &case.env,
        "old-password-2",
        json!({ "token_bound_cidrs": ["10.0.0.0/8"] }),
    );
    case.seed("svc", "old-password-2", None);
    let ran = case.run(&user.playbook(&case, "routine", ""));
    assert_eq!(ran.outcome("svc"), "rolled_back", "{}", ran.summary);
    assert!(
        ran.result("svc")["reason"]
            .as_str()
            .unwrap()
            .contains("previous one was set again"),
        "{}",
        ran.summary
    );
    assert_eq!(case.vault("svc")["metadata"]["version"], 1);
    let (s, b) = bao(
        &case.env,
        "POST",
        &format!("auth/{}/users/{}", user.mount, user.name),
        Some(&json!({ "token_bound_cidrs": "" })),
    );
    ok(s, &b, "lift the CIDR restriction");
    assert_eq!(
        user.login("old-password-2"),
        200,
        "the old password works again"
    );
}

#[test]
fn vault_userpass_preflight_and_run_name_a_missing_user_and_a_refused_token() {
    let mut case = case();
    let user = User::create(&case.env, "pw-3", json!({}));
    let text = std::fs::read_to_string(user.playbook(&case, "breach", "")).unwrap();
    let missing = case.playbook(
        "missing.yaml",
        &text.replace(&format!("account: {}", user.name), "account: nobody-here"),
    );
    let out = case.plan_live(&missing);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("user `nobody-here` does not exist"),
        "{}",
        out.stdout
    );
    // A run against the missing user stops cleanly with the same message.
    let ran = case.run(&missing);
    assert_eq!(ran.outcome("svc"), "rolled_back", "{}", ran.summary);
    assert!(
        ran.result("svc")["reason"]
            .as_str()
            .unwrap()
            .contains("user `nobody-here` does not exist"),
        "{}",
        ran.summary
    );

    case.vars = vec![(ADMIN_VAR.to_owned(), "not-a-token-456".to_owned())];
    let pb = case.playbook("userpass.yaml", &text);
    let out = case.plan_live(&pb);
    assert!(
        out.stdout
            .contains("was refused (reading the user: HTTP 403)"),
        "{}",
        out.stdout
    );
    out.assert_no_leak(&["not-a-token-456"]);
}

#[test]
fn vault_userpass_run_killed_mid_rotation_is_finished_by_resume() {
    for states in [&["staged"][..], &["changed"]] {
        let case = case();
        let user = User::create(&case.env, "old-password-4", json!({}));
        case.seed("svc", "old-password-4", None);
        let mut child = case.spawn_run(&user.playbook(&case, "breach", SLOW));
        case.wait_for_state("svc", states);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let ran = case.resume();
        assert_eq!(ran.code, 0, "killed at {states:?}: {}", ran.stderr);
        let value = case.vault("svc")["data"]["value"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_ne!(value, "old-password-4", "killed at {states:?}");
        assert_eq!(
            user.login(&value),
            200,
            "killed at {states:?}: Vault's password does not log in"
        );
        assert_eq!(user.login("old-password-4"), 400, "killed at {states:?}");
    }
}

/// `vault_approle` and `vault_userpass` rotate at `RUST_LOG=trace` (the HTTP and
/// Vault client crates' logs too): no secret-id, password or token reaches
/// stdout, stderr, the journal or the audit trail, in any encoding.
#[test]
fn vault_providers_at_rust_log_trace_leak_no_secret_id_password_or_token() {
    let mut case = Case::new();
    let token = format!("CANARYbaotoken{}", hex::encode(rand::random::<[u8; 6]>()));
    let (s, b) = bao(
        &case.env,
        "POST",
        "auth/token/create",
        Some(&json!({ "id": token, "policies": ["root"], "ttl": "10m" })),
    );
    ok(s, &b, "canary token");
    for (k, v) in [
        (ADMIN_VAR, token.as_str()),
        ("VAULT_TOKEN", token.as_str()),
        ("RUST_LOG", "trace"),
    ] {
        case.vars.push((k.to_owned(), v.to_owned()));
    }
    let role = Role::create(&case.env, json!({}));
    let (old_accessor, old_secret) = role.secret_id();
    case.seed("ci", &old_secret, Some(&old_accessor));
    let old_password = format!("CANARYuserpass{}", hex::encode(rand::random::<[u8; 6]>()));
    let user = User::create(&case.env, &old_password, json!({}));
    case.seed("svc", &old_password, None);
    let pb = case.playbook(
        "both.yaml",
        &format!(
            "version: 1\nname: vault-trace\nincident: {{ mode: breach }}\nvault: {{ address: \"VAULT\", staging_prefix: PREFIX/staging }}\nproviders:\n  ar: {{ type: vault_approle, admin: {{ env: {ADMIN_VAR} }}, settings: {{ address: \"VAULT\", mount: {} }} }}\n  up: {{ type: vault_userpass, admin: {{ env: {ADMIN_VAR} }}, settings: {{ address: \"VAULT\", mount: {} }} }}\ncredentials:\n  - {{ id: ci, provider: ar, vault_path: PREFIX/ci, settings: {{ role_name: {} }} }}\n  - {{ id: svc, provider: up, account: {}, vault_path: PREFIX/svc }}\n",
            role.mount, user.mount, role.name, user.name
        ),
    );
    let ran = case.run(&pb);
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    assert!(ran.stderr.contains("DEBUG"), "verbose logging was on");
    let mut canaries = vec![token, old_secret, old_password];
    for path in ["ci", "svc"] {
        canaries.push(
            case.vault(path)["data"]["value"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let places = crate::canary::places_in(
        case.dir.path(),
        &[
            ("stdout".into(), ran.stdout.clone()),
            ("stderr".into(), ran.stderr.clone()),
        ],
    );
    let leaks = crate::canary::leaks(&canaries, &places);
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}
