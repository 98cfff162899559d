//! The shipped HTTP definitions and the GitHub Actions sink against the vendors'
//! published API descriptions (`tests/contracts/`): the real `rekey` binary runs
//! every variant of each definition's settings against the vendor's stub, which
//! checks every request and every answer against the description (`contract.rs`,
//! `http_stubs.rs`), and each variant must reach its outcome. Then one test per
//! mismatch the vendor review found (issue 13), each written to fail before its fix.

use crate::contract::{Contract, Request};
use crate::http_providers::{
    Case, assert_no_leak, assert_public_key_of, assert_rotated_dual, outcome,
};
use crate::http_stubs::{
    ADMIN_TOKEN, Api, CLOUDFLARE_ACCOUNT, DD_API_KEY, Stub, TWILIO_ACCOUNT, TWILIO_AUTH_TOKEN,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

const OLD: &str = "old-secret-the-consumers-use";
const OLD_PUBLIC: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOLDOLDOLD";

/// A case for `stub`, its instance at the stub's API root.
fn case(type_name: &'static str, stub: &Stub, admin: Value) -> Case {
    Case::new(type_name, stub, stub.api.base_path(), admin)
}

fn token_admin() -> Value {
    json!({ "token": ADMIN_TOKEN })
}

fn datadog_admin() -> Value {
    json!({ "api_key": DD_API_KEY, "app_key": ADMIN_TOKEN })
}

/// Runs `case` and checks its outcome; returns the stderr.
fn expect(case: &Case, want: (i32, &str), what: &str) -> String {
    let pb = case.playbook();
    let out = case
        .command(&[
            "run",
            pb.to_str().unwrap(),
            "--journal",
            &case.journal(),
            "--format",
            "json",
        ])
        .run();
    assert_eq!(
        (out.code, outcome(&out.stdout).as_str()),
        want,
        "{what}: {}\n{}",
        out.stdout,
        out.stderr
    );
    out.stderr
}

/// The operations of the vendor's description `stub` saw.
fn seen(stub: &Stub) -> BTreeSet<String> {
    stub.with(|s| s.operations.clone())
}

fn ops(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

// ---- every variant of every definition --------------------------------------

fn sendgrid_variants() -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    // Scopes given, scopes copied from the old key, and a refused new key.
    for (what, credential, refuse) in [
        ("scopes set", "settings: { scopes: [mail.send] }", false),
        ("scopes copied", "", false),
        ("rollback", "", true),
    ] {
        let stub = Stub::start(Api::SendGrid);
        let old_id =
            stub.seed_scoped_key("sendgrid", OLD, "consumer", &["mail.send", "stats.read"]);
        stub.with(|s| s.refuse_new = refuse);
        let c = case("sendgrid_api_key", &stub, token_admin()).credential(credential);
        c.seed_vault(OLD, Some(&old_id));
        if refuse {
            expect(&c, (1, "rolled_back"), what);
        } else {
            expect(&c, (0, "rotated"), what);
            assert_rotated_dual(&c, &stub, "sendgrid", &old_id, OLD);
        }
        used.extend(seen(&stub));
    }
    used
}

fn datadog_api_variants() -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (what, others, refuse) in [("two pages", 105, false), ("rollback", 0, true)] {
        let stub = Stub::start(Api::Datadog);
        for i in 0..others {
            stub.seed_key(
                "dd-api",
                &format!("other-agent-key-{i:04}"),
                &format!("agents {i}"),
            );
        }
        let old_id = stub.seed_key("dd-api", OLD, "agents");
        stub.with(|s| s.refuse_new = refuse);
        // Routine mode: the org's other keys stay (breach mode retires them all).
        let c = case("datadog_api_key", &stub, datadog_admin()).routine();
        c.seed_vault(OLD, Some(&old_id));
        if refuse {
            expect(&c, (1, "rolled_back"), what);
        } else {
            expect(&c, (0, "rotated"), what);
            let keys = stub.keys("dd-api");
            assert_eq!(keys.len(), others + 1, "{what}");
            assert!(!stub.exists(&old_id), "{what}");
            let pages = stub.with(|s| {
                s.seen
                    .iter()
                    .filter(|r| r.starts_with("GET /api/v2/api_keys?"))
                    .count()
            });
            assert!(pages >= 2, "{what}: followed the pages ({pages})");
        }
        used.extend(seen(&stub));
    }
    used
}

fn datadog_app_variants() -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (what, scopes, credential, want) in [
        ("unscoped", None, "", (0, "rotated")),
        (
            "scoped",
            Some(vec!["user_app_keys", "dashboards_read"]),
            "",
            (0, "rotated"),
        ),
        (
            "scoped, no self read, verify off",
            Some(vec!["dashboards_read"]),
            "verify: false",
            (0, "rotated"),
        ),
        (
            "made unscoped",
            Some(vec!["user_app_keys"]),
            "settings: { scopes: unscoped }",
            (0, "rotated"),
        ),
    ] {
        let stub = Stub::start(Api::Datadog);
        let old_id = match &scopes {
            Some(sc) => stub.seed_scoped_key("dd-app", OLD, "ci", sc),
            None => stub.seed_key("dd-app", OLD, "ci"),
        };
        let c = case("datadog_app_key", &stub, datadog_admin()).credential(credential);
        c.seed_vault(OLD, Some(&old_id));
        expect(&c, want, what);
        let new = assert_rotated_dual(&c, &stub, "dd-app", &old_id, OLD);
        let key = stub.key(new["key_id"].as_str().unwrap()).unwrap();
        let wanted = if credential.contains("unscoped") {
            None
        } else {
            scopes.map(|sc| sc.iter().map(|s| s.to_string()).collect())
        };
        assert_eq!(key.scopes, wanted, "{what}: the new key's scopes");
        used.extend(seen(&stub));
    }
    used
}

fn twilio_variants() -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (what, main_key, refuse) in [
        ("auth token", false, false),
        ("main key", true, false),
        ("rollback", false, true),
    ] {
        let stub = Stub::start(Api::Twilio);
        for i in 0..60 {
            stub.seed_key("twilio", &format!("other-{i}"), &format!("other {i}"));
        }
        let old_id = stub.seed_key("twilio", OLD, "consumer key");
        let admin = if main_key {
            let main = stub.seed_main_key("main-key-secret-5");
            json!({ "username": main, "password": "main-key-secret-5" })
        } else {
            json!({ "password": TWILIO_AUTH_TOKEN })
        };
        stub.with(|s| s.refuse_new = refuse);
        // Routine mode: the other keys (and a Main key used as admin) stay.
        let c = case("twilio_api_key", &stub, admin)
            .settings(&format!("account_sid: {TWILIO_ACCOUNT}"))
            .routine();
        c.seed_vault(OLD, Some(&old_id));
        if refuse {
            expect(&c, (1, "rolled_back"), what);
        } else {
            expect(&c, (0, "rotated"), what);
            assert!(!stub.exists(&old_id), "{what}");
        }
        used.extend(seen(&stub));
    }
    used
}

fn okta_variants() -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (what, method, stray, refuse) in [
        ("client_secret_basic", "client_secret_basic", false, false),
        ("client_secret_post", "client_secret_post", false, false),
        (
            "quota full, inactive stray",
            "client_secret_basic",
            true,
            false,
        ),
        ("rollback", "client_secret_basic", false, true),
    ] {
        let stub = Stub::start(Api::Okta);
        let old_id = stub.seed_key("0oaAPP1", OLD, "console");
        let stray_id =
            stray.then(|| stub.seed_inactive_key("0oaAPP1", "inactive-old-secret", "console"));
        stub.with(|s| {
            s.okta_auth_method.insert("0oaAPP1".into(), method.into());
            s.refuse_new = refuse;
        });
        let c = case("okta_client_secret", &stub, token_admin())
            .settings("domain: example.okta.com")
            .credential(&format!(
                "settings: {{ app_id: 0oaAPP1, scope: rekey.test, token_auth: {method} }}"
            ));
        c.seed_vault(OLD, Some(&old_id));
        if refuse {
            expect(&c, (1, "rolled_back"), what);
        } else {
            expect(&c, (0, "rotated"), what);
            // Okta secrets have no name: the one left is the one Vault names.
            let keys = stub.keys("0oaAPP1");
            assert_eq!(keys.len(), 1, "{what}: {keys:?}");
            assert!(keys[0].active && keys[0].id != old_id, "{what}");
            assert_eq!(
                c.vault()["key_id"].as_str(),
                Some(keys[0].id.as_str()),
                "{what}"
            );
            if let Some(id) = stray_id {
                assert!(!stub.exists(&id), "{what}: the inactive stray made room");
            }
        }
        used.extend(seen(&stub));
    }
    used
}

fn github_variants() -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (what, credential, refuse) in [
        (
            "read-only, two pages",
            "settings: { owner: acme, repo: infra }",
            false,
        ),
        (
            "read-write",
            "settings: { owner: acme, repo: infra, read_only: false }",
            false,
        ),
        ("rollback", "settings: { owner: acme, repo: infra }", true),
    ] {
        let stub = Stub::start(Api::GitHub);
        for i in 0..120 {
            stub.seed_key(
                "acme/infra",
                &format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIother{i}"),
                &format!("other {i}"),
            );
        }
        let old_id = stub.seed_key("acme/infra", OLD_PUBLIC, "ci deploy key");
        stub.with(|s| s.disable_new = refuse);
        let c = case("github_deploy_key", &stub, token_admin())
            .credential(credential)
            .routine();
        c.seed_vault(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nold\n-----END OPENSSH PRIVATE KEY-----\n",
            Some(&old_id),
        );
        if refuse {
            expect(&c, (1, "rolled_back"), what);
        } else {
            expect(&c, (0, "rotated"), what);
            assert!(!stub.exists(&old_id), "{what}");
        }
        used.extend(seen(&stub));
    }
    used
}

fn jumpcloud_variants() -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut ssh, mut password) = (BTreeSet::new(), BTreeSet::new());
    for org in ["", "org_id: 5f0org"] {
        let stub = Stub::start(Api::JumpCloud);
        stub.with(|s| {
            s.users
                .insert("5f1user0001".into(), ("alice".into(), "pw-alice-1".into()));
            s.users
                .insert("5f1user0002".into(), ("bob".into(), "pw-bob-old".into()));
        });
        let old_id = stub.seed_key("5f1user0002", OLD_PUBLIC, "laptop");
        let mut c = case("jumpcloud_ssh_key", &stub, token_admin()).credential("account: bob");
        if !org.is_empty() {
            c = c.settings(org);
        }
        c.seed_vault("old private key", Some(&old_id));
        expect(&c, (0, "rotated"), "jumpcloud ssh key");
        let data = assert_rotated_dual(&c, &stub, "5f1user0002", &old_id, "old private key");
        assert_public_key_of(
            data["value"].as_str().unwrap(),
            &stub.keys("5f1user0002")[0].secret,
            &c,
        );
        ssh.extend(seen(&stub));

        let stub = Stub::start(Api::JumpCloud);
        stub.with(|s| {
            s.users
                .insert("5f1user0002".into(), ("bob".into(), "pw-bob-old".into()));
        });
        let mut c = case("jumpcloud_user_password", &stub, token_admin())
            .credential("account: bob, verify: false");
        if !org.is_empty() {
            c = c.settings(org);
        }
        c.seed_vault("pw-bob-old", None);
        expect(&c, (0, "rotated"), "jumpcloud password");
        password.extend(seen(&stub));
    }
    (ssh, password)
}

fn gitlab_variants() -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (what, credential) in [
        (
            "personal, two pages",
            "settings: { token_name: release-bot }",
        ),
        (
            "project by id",
            "settings: { token_type: project, project: 42, token_name: deploy-bot }",
        ),
        (
            "project by path",
            "settings: { token_type: project, project: group/app, token_name: deploy-bot }",
        ),
    ] {
        let stub = Stub::start(Api::GitLab);
        stub.with(|s| {
            s.projects.insert(42, "group/app".into());
        });
        for i in 0..120 {
            stub.seed_key(
                "gitlab",
                &format!("glpat-other-{i}"),
                &format!("release-bot-{i}"),
            );
        }
        let old_id = if credential.contains("project") {
            stub.seed_key("gitlab-project:42", OLD, "deploy-bot")
        } else {
            stub.seed_key("gitlab", OLD, "release-bot")
        };
        let c = case("gitlab_token", &stub, token_admin()).credential(credential);
        c.seed_vault(OLD, Some(&old_id));
        expect(&c, (0, "rotated"), what);
        assert!(
            !stub.key(&old_id).unwrap().active,
            "{what}: the old token was revoked"
        );
        // `rekey watch` reads the revoked token's record (`last_used_at`): the
        // rotation replaced it in place, and nothing used it since.
        let watched = c
            .command(&["watch", "--journal", &c.journal(), "--format", "json"])
            .run();
        assert_eq!(
            watched.code, 0,
            "{what}: {}\n{}",
            watched.stdout, watched.stderr
        );
        let findings: Value = serde_json::from_str(&watched.stdout).unwrap();
        assert_eq!(
            (
                findings["findings"][0]["key_id"].as_str(),
                findings["findings"][0]["how"].as_str(),
                findings["findings"][0]["verdict"].as_str()
            ),
            (Some(old_id.as_str()), Some("replaced"), Some("never_used")),
            "{what}: {findings}"
        );
        if what.contains("pages") {
            assert!(
                stub.with(|s| s.seen.iter().any(|r| r.contains("page=2"))),
                "{what}: followed the Link header"
            );
        }
        used.extend(seen(&stub));
    }
    used
}

fn cloudflare_variants() -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (what, account) in [("user token", false), ("account token", true)] {
        let stub = Stub::start(Api::Cloudflare);
        let scope = if account {
            format!("cloudflare-account:{CLOUDFLARE_ACCOUNT}")
        } else {
            "cloudflare".into()
        };
        let id = stub.seed_key(&scope, OLD, "dns");
        let mut c = case("cloudflare_token", &stub, token_admin())
            .credential(&format!("settings: {{ token_id: \"{id}\" }}"));
        if account {
            c = c.settings(&format!("account_id: \"{CLOUDFLARE_ACCOUNT}\""));
        }
        c.seed_vault(OLD, Some(&id));
        expect(&c, (0, "rotated"), what);
        assert_ne!(stub.key(&id).unwrap().secret, OLD, "{what}: rolled");
        used.extend(seen(&stub));
    }
    used
}

/// A rotation whose new value goes to GitHub Actions secrets of the repository and
/// of an environment whose name needs encoding.
fn github_sink_variants() -> BTreeSet<String> {
    let github = Stub::start(Api::GitHub);
    let datadog = Stub::start(Api::Datadog);
    let old_id = datadog.seed_key("dd-api", OLD, "agents");
    let sinks = format!(
        "sinks: [{{ type: github, base_url: \"{0}\", repository: acme/deploy, secret_name: DD_API_KEY, token: {{ env: REKEY_IT_GH_TOKEN }} }}, {{ type: github, base_url: \"{0}\", repository: acme/deploy, environment: \"prod/eu\", secret_name: DD_API_KEY, token: {{ env: REKEY_IT_GH_TOKEN }} }}]",
        github.url
    );
    let c = case("datadog_api_key", &datadog, datadog_admin()).credential(&sinks);
    c.seed_vault(OLD, Some(&old_id));
    let pb = c.playbook();
    let out = c
        .command(&[
            "run",
            pb.to_str().unwrap(),
            "--journal",
            &c.journal(),
            "--format",
            "json",
        ])
        .env("REKEY_IT_GH_TOKEN", ADMIN_TOKEN)
        .run();
    assert_eq!(
        (out.code, outcome(&out.stdout).as_str()),
        (0, "rotated"),
        "{}",
        out.stderr
    );
    let value = c.vault()["value"].as_str().unwrap().to_owned();
    assert_eq!(
        github
            .open_actions_secret("acme/deploy/DD_API_KEY")
            .as_deref(),
        Some(value.as_str())
    );
    assert_eq!(
        github
            .open_actions_secret("acme/deploy/prod/eu/DD_API_KEY")
            .as_deref(),
        Some(value.as_str()),
        "the environment `prod/eu` got the secret"
    );
    assert_no_leak(&out.stderr, &[&value, ADMIN_TOKEN]);
    seen(&github)
}

#[test]
fn every_request_of_every_definition_is_an_operation_of_its_vendors_description() {
    let (jumpcloud_ssh, jumpcloud_password) = jumpcloud_variants();
    let runs: Vec<(&str, &str, BTreeSet<String>, BTreeSet<String>)> = vec![
        (
            "sendgrid_api_key",
            "sendgrid",
            sendgrid_variants(),
            ops(&[
                "ListApiKey",
                "CreateApiKey",
                "GetApiKey",
                "ListScope",
                "DeleteApiKey",
            ]),
        ),
        (
            "datadog_api_key",
            "datadog",
            datadog_api_variants(),
            ops(&["ListAPIKeys", "CreateAPIKey", "Validate", "DeleteAPIKey"]),
        ),
        (
            "datadog_app_key",
            "datadog",
            datadog_app_variants(),
            ops(&[
                "ListCurrentUserApplicationKeys",
                "CreateCurrentUserApplicationKey",
                "GetCurrentUserApplicationKey",
                "DeleteCurrentUserApplicationKey",
            ]),
        ),
        (
            "twilio_api_key",
            "twilio",
            twilio_variants(),
            ops(&["ListKey", "CreateNewKey", "ListApplication", "DeleteKey"]),
        ),
        (
            "okta_client_secret",
            "okta",
            okta_variants(),
            ops(&[
                "listOAuth2ClientSecrets",
                "createOAuth2ClientSecret",
                "tokenCustomAS",
                "deactivateOAuth2ClientSecret",
                "deleteOAuth2ClientSecret",
            ]),
        ),
        (
            "github_deploy_key",
            "github",
            github_variants(),
            ops(&[
                "repos/list-deploy-keys",
                "repos/create-deploy-key",
                "repos/get-deploy-key",
                "repos/delete-deploy-key",
            ]),
        ),
        (
            "jumpcloud_ssh_key",
            "jumpcloud",
            jumpcloud_ssh,
            ops(&[
                "systemusers_list",
                "sshkey_list",
                "sshkey_post",
                "sshkey_delete",
            ]),
        ),
        (
            "jumpcloud_user_password",
            "jumpcloud",
            jumpcloud_password,
            ops(&["systemusers_list", "systemusers_put"]),
        ),
        (
            "gitlab_token",
            "gitlab",
            gitlab_variants(),
            ops(&[
                "personal_access_tokens/self",
                "personal_access_tokens/list",
                "personal_access_tokens/get",
                "personal_access_tokens/rotate",
                "project_access_tokens/list",
                "project_access_tokens/get",
                "project_access_tokens/rotate",
            ]),
        ),
        (
            "cloudflare_token",
            "cloudflare",
            cloudflare_variants(),
            ops(&[
                "user-api-tokens-roll-token",
                "user-api-tokens-verify-token",
                "account-api-tokens-roll-token",
                "account-api-tokens-verify-token",
            ]),
        ),
        (
            "the GitHub Actions sink",
            "github",
            github_sink_variants(),
            ops(&[
                "actions/get-repo-public-key",
                "actions/create-or-update-repo-secret",
                "actions/get-environment-public-key",
                "actions/create-or-update-environment-secret",
            ]),
        ),
    ];
    // Each definition made every request it can make, each a documented operation
    // (the stubs fail the test on any departure when dropped).
    let mut by_vendor: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (name, vendor, used, wanted) in runs {
        assert_eq!(used, wanted, "{name}: the operations its variants made");
        by_vendor.entry(vendor).or_default().extend(used);
    }
    // And every extracted operation is one rekey uses, or a documented refusal.
    for (vendor, used) in by_vendor {
        let contract = Contract::load(vendor);
        for op in &contract.operations {
            let refused_only = contract
                .refusals
                .iter()
                .any(|r| r.operations.contains(&op.id));
            assert!(
                used.contains(&op.id) || refused_only,
                "{vendor}: {} is extracted but nothing uses it",
                op.id
            );
        }
    }
}

// ---- the mismatches of issue 13, each with the test that failed before its fix --

/// A minimal HTTP/1.0 request to a stub: (status, body).
fn raw(url: &str, method: &str, path: &str, headers: &[(&str, String)]) -> (u16, Value) {
    use std::io::{Read, Write};
    let host = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    write!(s, "{head}\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap_or(Value::Null);
    (status, body)
}

fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[test]
fn the_twilio_stub_refuses_a_standard_key_what_twilio_refuses_it() {
    let stub = Stub::start(Api::Twilio);
    let standard = stub.seed_key("twilio", "standard-secret", "app");
    let main = stub.seed_main_key("main-secret");
    let account = format!("/2010-04-01/Accounts/{TWILIO_ACCOUNT}.json");
    let keys = format!("/2010-04-01/Accounts/{TWILIO_ACCOUNT}/Keys.json");
    let apps = format!("/2010-04-01/Accounts/{TWILIO_ACCOUNT}/Applications.json");
    for path in [&account, &keys] {
        let (status, body) = raw(
            &stub.url,
            "GET",
            path,
            &[("Authorization", basic_auth(&standard, "standard-secret"))],
        );
        assert_eq!(
            (status, body["code"].as_u64()),
            (401, Some(20003)),
            "{path}"
        );
        let (status, _) = raw(
            &stub.url,
            "GET",
            path,
            &[("Authorization", basic_auth(&main, "main-secret"))],
        );
        assert_eq!(status, 200, "a Main key may call {path}");
    }
    let (status, _) = raw(
        &stub.url,
        "GET",
        &apps,
        &[("Authorization", basic_auth(&standard, "standard-secret"))],
    );
    assert_eq!(status, 200, "a Standard key may read applications");
}

#[test]
fn a_request_the_description_does_not_document_is_a_violation_and_answered_like_the_vendor() {
    let stub = Stub::start(Api::GitLab);
    stub.with(|s| {
        s.projects.insert(42, "group/app".into());
    });
    let auth = [("PRIVATE-TOKEN", ADMIN_TOKEN.to_owned())];
    // `/` left unencoded makes two segments: no GitLab operation has that path.
    let (status, _) = raw(
        &stub.url,
        "GET",
        "/api/v4/projects/group/app/access_tokens",
        &auth,
    );
    assert_eq!(status, 404);
    let (status, _) = raw(
        &stub.url,
        "GET",
        "/api/v4/projects/group%2Fapp/access_tokens",
        &auth,
    );
    assert_eq!(status, 200);
    let (status, _) = raw(
        &stub.url,
        "GET",
        "/api/v4/personal_access_tokens?colour=blue",
        &auth,
    );
    assert_eq!(status, 400, "an undocumented query parameter");
    let violations = stub.take_violations();
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert!(
        violations[0].contains("documents no such operation"),
        "{violations:?}"
    );
    assert!(
        violations[1].contains("`colour` is not documented"),
        "{violations:?}"
    );
}

#[test]
fn contract_checks_cover_bodies_credentials_and_answers() {
    let contract = Contract::load("datadog");
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("dd-api-key", "k".parse().unwrap());
    let body = json!({ "data": { "type": "application_keys", "attributes": { "name": "x", "scope": ["a"] } } }).to_string();
    let req = Request {
        method: "POST",
        path: "/api/v2/current_user/application_keys",
        query: "",
        headers: &headers,
        body: body.as_bytes(),
    };
    let (op, violations) = contract.check_request(&req).err().expect("refused");
    let text = violations.join("\n");
    assert!(text.contains("scope"), "a misspelt field: {text}");
    assert!(
        text.contains("no credential"),
        "the application key is missing: {text}"
    );
    let op = op.unwrap();
    assert!(
        contract
            .check_response(op, 201, br#"{"data": {"id": 5}}"#)
            .iter()
            .any(|v| v.contains("/data/id"))
    );
    assert!(
        contract
            .check_response(op, 418, b"")
            .iter()
            .any(|v| v.contains("no 418 answer"))
    );
}

#[test]
fn twilio_api_key_rotates_with_a_main_key_as_admin() {
    let stub = Stub::start(Api::Twilio);
    let main = stub.seed_main_key("main-key-secret-5");
    let old_id = stub.seed_key("twilio", OLD, "consumer key");
    let c = case(
        "twilio_api_key",
        &stub,
        json!({ "username": main, "password": "main-key-secret-5" }),
    )
    .settings(&format!("account_sid: {TWILIO_ACCOUNT}"))
    // Routine mode: breach mode retires every key the account held, the Main
    // key included (see the limitation in providers/twilio_api_key.yaml).
    .routine();
    c.seed_vault(OLD, Some(&old_id));
    let stderr = expect(&c, (0, "rotated"), "main key admin");
    assert!(!stub.exists(&old_id));
    assert!(stub.exists(&main), "the Main key itself is left alone");
    assert_no_leak(&stderr, &["main-key-secret-5", OLD]);
}

#[test]
fn cloudflare_account_token_is_rolled_and_verified_under_its_account() {
    let stub = Stub::start(Api::Cloudflare);
    let id = stub.seed_key(
        &format!("cloudflare-account:{CLOUDFLARE_ACCOUNT}"),
        OLD,
        "dns",
    );
    let c = case("cloudflare_token", &stub, token_admin())
        .settings(&format!("account_id: \"{CLOUDFLARE_ACCOUNT}\""))
        .credential(&format!("settings: {{ token_id: \"{id}\" }}"));
    c.seed_vault(OLD, Some(&id));
    expect(&c, (0, "rotated"), "account token");
    let token = stub.key(&id).unwrap();
    assert_eq!(c.vault()["value"].as_str(), Some(token.secret.as_str()));
    assert!(
        stub.with(|s| s
            .seen
            .iter()
            .any(|r| r == &format!("GET /client/v4/accounts/{CLOUDFLARE_ACCOUNT}/tokens/verify"))),
        "verified where the token is owned"
    );
}

#[test]
fn gitlab_project_token_is_found_by_its_path_as_one_segment() {
    let stub = Stub::start(Api::GitLab);
    stub.with(|s| {
        s.projects.insert(42, "group/app".into());
    });
    let old_id = stub.seed_key("gitlab-project:42", OLD, "deploy-bot");
    let c = case("gitlab_token", &stub, token_admin()).credential(
        "settings: { token_type: project, project: group/app, token_name: deploy-bot }",
    );
    c.seed_vault(OLD, Some(&old_id));
    expect(&c, (0, "rotated"), "project path");
    assert!(stub.with(|s| s.seen.iter().any(|r| r.starts_with(&format!(
        "POST /api/v4/projects/group%2Fapp/access_tokens/{old_id}/rotate"
    )))));
}

#[test]
fn gitlab_admin_token_rotates_the_named_users_token_never_the_first_name_match() {
    let stub = Stub::start(Api::GitLab);
    stub.with(|s| s.gitlab_admin_is_admin = true);
    // Listed first: another user's token with the same name.
    let theirs = stub.seed_gitlab_token(7, "glpat-user-7-token", "release-bot");
    let mine = stub.seed_key("gitlab", OLD, "release-bot");
    let c = case("gitlab_token", &stub, token_admin())
        .credential("settings: { token_name: release-bot }");
    c.seed_vault(OLD, Some(&mine));
    expect(&c, (0, "rotated"), "own token");
    assert!(
        !stub.key(&mine).unwrap().active,
        "the admin user's token was rotated"
    );
    assert!(
        stub.key(&theirs).unwrap().active,
        "user 7's token was left alone"
    );

    // With user_id, the other user's token, and only it.
    let c = case("gitlab_token", &stub, token_admin())
        .credential("settings: { token_name: release-bot, user_id: 7 }");
    c.seed_vault("glpat-user-7-token", Some(&theirs));
    expect(&c, (0, "rotated"), "user 7's token");
    assert!(!stub.key(&theirs).unwrap().active);
    let rotated_for_7 = stub
        .keys("gitlab")
        .into_iter()
        .find(|k| k.owner == 7 && k.active)
        .unwrap();
    assert_eq!(
        c.vault()["value"].as_str(),
        Some(rotated_for_7.secret.as_str())
    );

    // Two active tokens of one owner with the name: ambiguous, nothing rotated.
    stub.seed_gitlab_token(7, "glpat-user-7-second", "release-bot");
    let before = stub.with(|s| s.seen.iter().filter(|r| r.contains("/rotate")).count());
    let pb = c.playbook();
    let out = c
        .command(&[
            "run",
            pb.to_str().unwrap(),
            "--journal",
            &c.journal(),
            "--format",
            "json",
        ])
        .run();
    assert_eq!(
        (out.code, outcome(&out.stdout).as_str()),
        (1, "rolled_back"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("2 items match"), "{}", out.stdout);
    assert_eq!(
        stub.with(|s| s.seen.iter().filter(|r| r.contains("/rotate")).count()),
        before,
        "nothing rotated"
    );
}

#[test]
fn gitlab_token_lifetime_beyond_the_maximum_is_refused_before_any_change() {
    let stub = Stub::start(Api::GitLab);
    let old_id = stub.seed_key("gitlab", OLD, "release-bot");
    let c = case("gitlab_token", &stub, token_admin())
        .credential("settings: { token_name: release-bot, expires_in_days: 400 }");
    c.seed_vault(OLD, Some(&old_id));
    let pb = c.playbook();
    let out = c
        .command(&[
            "run",
            pb.to_str().unwrap(),
            "--journal",
            &c.journal(),
            "--format",
            "json",
        ])
        .run();
    assert_eq!(
        (out.code, outcome(&out.stdout).as_str()),
        (1, "rolled_back"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("maximum of 365 days"), "{}", out.stdout);
    assert!(
        stub.with(|s| !s.seen.iter().any(|r| r.contains("/rotate"))),
        "no rotate request"
    );
    assert!(
        stub.key(&old_id).unwrap().active,
        "the old token still works"
    );

    // Within the maximum, the date sent is that many days ahead.
    let c = case("gitlab_token", &stub, token_admin())
        .credential("settings: { token_name: release-bot, expires_in_days: 30 }");
    expect(&c, (0, "rotated"), "30 days");
    let new = stub.keys("gitlab").into_iter().find(|k| k.active).unwrap();
    let days = {
        let d = new.expires_at.unwrap();
        let t = humantime::parse_rfc3339(&format!("{d}T00:00:00Z")).unwrap();
        t.duration_since(std::time::SystemTime::now())
            .unwrap()
            .as_secs()
            / 86_400
    };
    assert!((29..=30).contains(&days), "{days}");
}

#[test]
fn datadog_app_key_keeps_the_old_keys_scopes() {
    let stub = Stub::start(Api::Datadog);
    let old_id = stub.seed_scoped_key("dd-app", OLD, "ci", &["user_app_keys", "dashboards_read"]);
    let c = case("datadog_app_key", &stub, datadog_admin());
    c.seed_vault(OLD, Some(&old_id));
    expect(&c, (0, "rotated"), "scoped key");
    let new = stub.keys("dd-app").pop().unwrap();
    assert_ne!(new.id, old_id);
    assert_eq!(
        new.scopes,
        Some(vec![
            "user_app_keys".to_owned(),
            "dashboards_read".to_owned()
        ])
    );

    // When rekey cannot tell which key Vault's value is, it makes no key at all
    // rather than one with every permission of the user.
    let stub = Stub::start(Api::Datadog);
    stub.seed_scoped_key("dd-app", OLD, "ci", &["dashboards_read"]);
    let c = case("datadog_app_key", &stub, datadog_admin());
    c.seed_vault("a-value-datadog-never-issued", None);
    let pb = c.playbook();
    let out = c
        .command(&[
            "run",
            pb.to_str().unwrap(),
            "--journal",
            &c.journal(),
            "--format",
            "json",
        ])
        .run();
    assert_eq!(outcome(&out.stdout), "rolled_back", "{}", out.stderr);
    assert!(
        out.stdout.contains("cannot copy the old key scopes"),
        "{}",
        out.stdout
    );
    assert_eq!(stub.keys("dd-app").len(), 1, "no key created");
}

#[test]
fn sendgrid_api_key_keeps_the_old_keys_scopes() {
    let stub = Stub::start(Api::SendGrid);
    let old_id = stub.seed_scoped_key("sendgrid", OLD, "mailer", &["mail.send", "stats.read"]);
    let c = case("sendgrid_api_key", &stub, token_admin());
    c.seed_vault(OLD, Some(&old_id));
    expect(&c, (0, "rotated"), "scopes copied");
    let new = stub.keys("sendgrid").pop().unwrap();
    assert_ne!(new.id, old_id);
    assert_eq!(
        new.scopes,
        Some(vec!["mail.send".to_owned(), "stats.read".to_owned()])
    );
}

#[test]
fn a_github_secondary_rate_limit_pauses_the_instance_instead_of_failing() {
    let stub = Stub::start(Api::GitHub);
    let old_id = stub.seed_key("acme/infra", OLD_PUBLIC, "ci");
    stub.with(|s| {
        s.rate_limit_next = 1;
        s.secondary_rate_limit = true;
    });
    let c = case("github_deploy_key", &stub, token_admin())
        .credential("settings: { owner: acme, repo: infra }");
    c.seed_vault(OLD, Some(&old_id));
    let stderr = expect(&c, (0, "rotated"), "secondary limit");
    assert!(
        stderr.contains("rate_limited") && stderr.contains("retry after 1.0s"),
        "{stderr}"
    );
}

#[test]
fn a_disabled_deploy_key_never_verifies() {
    let stub = Stub::start(Api::GitHub);
    let old_id = stub.seed_key("acme/infra", OLD_PUBLIC, "ci");
    stub.with(|s| s.disable_new = true);
    let c = case("github_deploy_key", &stub, token_admin())
        .credential("settings: { owner: acme, repo: infra }");
    c.seed_vault(OLD, Some(&old_id));
    expect(&c, (1, "rolled_back"), "disabled by policy");
    let keys = stub.keys("acme/infra");
    assert_eq!(keys.len(), 1, "the disabled new key was deleted: {keys:?}");
    assert_eq!(keys[0].id, old_id);
    assert_eq!(c.vault()["value"].as_str(), Some(OLD));
}

#[test]
fn okta_client_secret_verifies_the_way_the_app_authenticates() {
    let stub = Stub::start(Api::Okta);
    let old_id = stub.seed_key("0oaAPP1", OLD, "console");
    stub.with(|s| {
        s.okta_auth_method
            .insert("0oaAPP1".into(), "client_secret_post".into());
    });
    let c = case("okta_client_secret", &stub, token_admin())
        .settings("domain: example.okta.com")
        .credential("settings: { app_id: 0oaAPP1, scope: s, token_auth: client_secret_post }");
    c.seed_vault(OLD, Some(&old_id));
    let stderr = expect(&c, (0, "rotated"), "client_secret_post");
    let new = stub.keys("0oaAPP1").pop().unwrap();
    assert_no_leak(&stderr, &[OLD, &new.secret]);

    // A method rekey cannot verify with is refused before anything runs.
    let c = case("okta_client_secret", &stub, token_admin())
        .settings("domain: example.okta.com")
        .credential("settings: { app_id: 0oaAPP1, scope: s, token_auth: private_key_jwt }");
    let pb = c.playbook();
    let out = c.command(&["plan", pb.to_str().unwrap()]).run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("`token_auth` cannot be \"private_key_jwt\"")
            && out.stderr.contains("verify: false"),
        "{}",
        out.stderr
    );
}

#[test]
fn rate_limit_headers_pace_the_instance_before_the_vendor_refuses() {
    for (api, type_name, scope, admin, settings, credential) in [
        (
            Api::Okta,
            "okta_client_secret",
            "0oaAPP1",
            token_admin(),
            "domain: example.okta.com",
            "settings: { app_id: 0oaAPP1, scope: s }",
        ),
        (
            Api::GitLab,
            "gitlab_token",
            "gitlab",
            token_admin(),
            "",
            "settings: { token_name: release-bot }",
        ),
        (
            Api::Datadog,
            "datadog_api_key",
            "dd-api",
            datadog_admin(),
            "",
            "",
        ),
        (
            Api::SendGrid,
            "sendgrid_api_key",
            "sendgrid",
            token_admin(),
            "",
            "settings: { scopes: [mail.send] }",
        ),
    ] {
        let stub = Stub::start(api);
        let old_id = stub.seed_key(
            scope,
            OLD,
            if api == Api::GitLab {
                "release-bot"
            } else {
                "console"
            },
        );
        // The first answer says the window is used up and resets in 2 s.
        stub.with(|s| s.window_used_up = 1);
        let mut c = case(type_name, &stub, admin).credential(credential);
        if !settings.is_empty() {
            c = c.settings(settings);
        }
        c.seed_vault(OLD, Some(&old_id));
        expect(&c, (0, "rotated"), type_name);
        // Requests of one step follow each other; the next step waits for the reset.
        let gap = stub.with(|s| {
            s.seen_at
                .windows(2)
                .map(|w| w[1].duration_since(w[0]))
                .max()
                .unwrap_or_default()
        });
        assert!(
            gap >= std::time::Duration::from_millis(900),
            "{type_name}: a later request waited for the window's reset (longest gap {gap:?})"
        );
    }
}

#[test]
fn mistakes_in_the_new_definition_keys_are_reported_where_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"name: chained_keys
summary: A definition with mistakes in lookup chains, read_old and auth entries.
kind: dual
implementation: http
available: true
default_rate: { per_second: 1 }
default_concurrency: 1
typical_latency: 100ms
requests: { create: 1 }
admin: required
account: none
http:
  base_url: "https://api.example.com"
  auth:
    - { scheme: bearer, secret: admin.token, username_from: admin.user }
  lookup:
    - { method: GET, path: /me, expect: [200], items: "", bind: { me: /id } }
    - { method: GET, path: "/users/{{ found.me | urlencode_segment }}/keys", expect: [200], items: "" }
  read_old:
    method: GET
    path: "/keys/{{ old_key_id | urlencode_segment }}"
    expect: [200]
  list: { method: GET, path: /keys, expect: [200], items: "", key_id: /id, refused_when: { /enabled: "false" } }
  create:
    method: POST
    path: /keys
    body: { scopes: "{{ old.scopes or fail('no scopes') }}" }
    expect: [201]
    secret: /key
    key_id: /id
  verify:
    method: GET
    path: /me
    auth:
      - { scheme: form, name: secret, secret: new }
    expect: [200]
    refused: [401]
  revoke: { method: DELETE, path: "/keys/{{ key_id | urlencode_segment }}", expect: [204] }
"#;
    std::fs::write(dir.path().join("chained_keys.yaml"), text).unwrap();
    let out = crate::support::rekey()
        .args(["--providers", dir.path().to_str().unwrap(), "providers"])
        .run();
    assert_ne!(out.code, 0);
    let file = dir.path().join("chained_keys.yaml").display().to_string();
    for expected in [
        format!("{file}:15:"),
        "`username_from` names a field of the admin credential for a `basic` auth".to_owned(),
        format!("{file}:18:"),
        "a lookup that binds nothing is useless".to_owned(),
        format!("{file}:20:"),
        "read_old binds nothing".to_owned(),
        "`refused_when` does not apply to `list`".to_owned(),
        "a `form` auth needs the call to send a `form`".to_owned(),
    ] {
        assert!(
            out.stderr.contains(&expected),
            "missing `{expected}` in:\n{}",
            out.stderr
        );
    }
}
