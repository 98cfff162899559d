//! The shipped declarative HTTP definitions, end to end: the real `rekey` binary
//! rotates through each provider's local stateful stub (`http_stubs`), with the
//! real OpenBao from `scripts/services` as the store. Plus definition validation,
//! the base-URL fence and rate-limit classification as a user meets them.

use crate::http_stubs::{ADMIN_TOKEN, Api, DD_API_KEY, Stub, TWILIO_ACCOUNT, TWILIO_AUTH_TOKEN};
use crate::support::rekey;
use serde_json::{Value, json};
use std::collections::HashMap;

use crate::support::services;

/// OpenBao with the root token, through the tests' one client.
pub fn vault_http(
    env: &HashMap<String, String>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Value {
    crate::support::bao_env(env, method, path, body)
}

/// One provider instance and one credential, in a fresh temp dir and Vault prefix.
pub struct Case {
    pub dir: tempfile::TempDir,
    prefix: String,
    pub env: HashMap<String, String>,
    type_name: &'static str,
    instance_settings: String,
    credential: String,
    pub admin: String,
    mode: &'static str,
}

impl Case {
    pub fn new(type_name: &'static str, stub: &Stub, base_path: &str, admin: Value) -> Case {
        Case {
            dir: tempfile::tempdir().unwrap(),
            prefix: format!("http-{}", hex::encode(rand::random::<[u8; 5]>())),
            env: services(),
            type_name,
            instance_settings: format!("base_url: \"{}{base_path}\"", stub.url),
            credential: String::new(),
            admin: admin.to_string(),
            mode: "breach",
        }
    }

    /// Routine mode: only the key Vault names is retired (breach mode retires
    /// every key the account held before the run).
    pub fn routine(mut self) -> Case {
        self.mode = "routine";
        self
    }

    pub fn settings(mut self, extra: &str) -> Case {
        self.instance_settings.push_str(", ");
        self.instance_settings.push_str(extra);
        self
    }

    pub fn credential(mut self, extra: &str) -> Case {
        self.credential = extra.to_owned();
        self
    }

    pub fn playbook(&self) -> std::path::PathBuf {
        let text = format!(
            "version: 1\nname: http-test\nincident: {{ mode: {} }}\nvault: {{ address: \"{}\" }}\nproviders:\n  p:\n    type: {}\n    settings: {{ {} }}\n    admin: {{ env: REKEY_IT_PROVIDER_ADMIN }}\n    rate: {{ per_second: 50 }}\ncredentials:\n  - {{ id: c1, provider: p, vault_path: {}/c1{}{} }}\n",
            self.mode,
            self.env["VAULT_ADDR"],
            self.type_name,
            self.instance_settings,
            self.prefix,
            if self.credential.is_empty() { "" } else { ", " },
            self.credential,
        );
        let path = self.dir.path().join("playbook.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn journal(&self) -> String {
        self.dir.path().join("journal.db").display().to_string()
    }

    pub fn command(&self, args: &[&str]) -> crate::support::Rekey {
        rekey()
            .env("VAULT_TOKEN", &self.env["VAULT_TOKEN"])
            .env("REKEY_IT_PROVIDER_ADMIN", &self.admin)
            .args(args)
    }

    /// `rekey run`: (exit code, outcome of c1, stderr).
    pub fn run(&self) -> (i32, String, String) {
        let pb = self.playbook();
        let out = self
            .command(&[
                "run",
                pb.to_str().unwrap(),
                "--journal",
                &self.journal(),
                "--format",
                "json",
            ])
            .run();
        (out.code, outcome(&out.stdout), out.stderr)
    }

    /// Writes the credential's current value as consumers would find it.
    pub fn seed_vault(&self, value: &str, key_id: Option<&str>) {
        let mut data = json!({ "value": value });
        if let Some(k) = key_id {
            data["key_id"] = json!(k);
        }
        vault_http(
            &self.env,
            "POST",
            &format!("/v1/secret/data/{}/c1", self.prefix),
            Some(&json!({ "data": data })),
        );
    }

    pub fn vault(&self) -> Value {
        vault_http(
            &self.env,
            "GET",
            &format!("/v1/secret/data/{}/c1", self.prefix),
            None,
        )["data"]["data"]
            .clone()
    }
}

pub fn outcome(stdout: &str) -> String {
    let v: Value = serde_json::from_str(stdout).unwrap_or(Value::Null);
    v["results"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["id"] == "c1"))
        .and_then(|r| r["outcome"].as_str())
        .unwrap_or("")
        .to_owned()
}

/// Nothing rekey printed holds a secret the test knows.
pub fn assert_no_leak(stderr: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !s.is_empty() && !stderr.contains(s),
            "a secret leaked into stderr:\n{stderr}"
        );
    }
}

/// A dual rotation: the stub holds exactly one key of `scope` afterwards, it is
/// the one Vault holds (id and value), it carries rekey's tag, and the old one is gone.
pub fn assert_rotated_dual(
    case: &Case,
    stub: &Stub,
    scope: &str,
    old_id: &str,
    old_secret: &str,
) -> Value {
    let data = case.vault();
    let keys = stub.with(|s| s.live(scope).into_iter().cloned().collect::<Vec<_>>());
    assert_eq!(keys.len(), 1, "one key left at the provider: {keys:?}");
    assert_ne!(keys[0].id, old_id, "the old key was retired");
    assert_eq!(
        data["key_id"].as_str(),
        Some(keys[0].id.as_str()),
        "Vault names the live key"
    );
    assert_ne!(data["value"].as_str(), Some(old_secret));
    assert!(
        keys[0].name.starts_with("rekey:") && keys[0].name.ends_with(":c1"),
        "tagged: {}",
        keys[0].name
    );
    data
}

fn rotate_api_key(
    api: Api,
    type_name: &'static str,
    scope: &str,
    base_path: &str,
    admin: Value,
    settings: &str,
    credential: &str,
) {
    let stub = Stub::start(api);
    let old = format!("old-secret-{}", hex::encode(rand::random::<[u8; 8]>()));
    let old_id = stub.seed_key(scope, &old, "consumer key");
    let mut case = Case::new(type_name, &stub, base_path, admin).credential(credential);
    if !settings.is_empty() {
        case = case.settings(settings);
    }
    case.seed_vault(&old, Some(&old_id));
    let (code, outcome, stderr) = case.run();
    assert_eq!((code, outcome.as_str()), (0, "rotated"), "{stderr}");
    let data = assert_rotated_dual(&case, &stub, scope, &old_id, &old);
    let key = stub.with(|s| s.live(scope)[0].secret.clone());
    assert_eq!(
        data["value"].as_str(),
        Some(key.as_str()),
        "Vault holds the value the provider issued"
    );
    assert_no_leak(&stderr, &[&old, &key, ADMIN_TOKEN]);
}

#[test]
fn sendgrid_api_key_rotates_through_its_stub() {
    rotate_api_key(
        Api::SendGrid,
        "sendgrid_api_key",
        "sendgrid",
        "",
        json!({ "token": ADMIN_TOKEN }),
        "",
        "settings: { scopes: [mail.send] }",
    );
}

#[test]
fn datadog_api_key_rotates_through_its_stub() {
    rotate_api_key(
        Api::Datadog,
        "datadog_api_key",
        "dd-api",
        "",
        json!({ "api_key": DD_API_KEY, "app_key": ADMIN_TOKEN }),
        "",
        "",
    );
}

#[test]
fn datadog_app_key_rotates_through_its_stub() {
    rotate_api_key(
        Api::Datadog,
        "datadog_app_key",
        "dd-app",
        "",
        json!({ "api_key": DD_API_KEY, "app_key": ADMIN_TOKEN }),
        "",
        "",
    );
}

#[test]
fn twilio_api_key_rotates_through_its_stub_across_pages() {
    let stub = Stub::start(Api::Twilio);
    // 60 other keys: the list (PageSize 50) must follow next_page_uri to see them all.
    for i in 0..60 {
        stub.seed_key("twilio", &format!("other-{i}"), &format!("other {i}"));
    }
    let old = "twilio-old-secret-0123";
    let old_id = stub.seed_key("twilio", old, "consumer key");
    let case = Case::new(
        "twilio_api_key",
        &stub,
        "",
        json!({ "password": TWILIO_AUTH_TOKEN }),
    )
    // The account's other keys belong to other applications: routine mode leaves
    // them (breach mode retires every key the account held).
    .routine()
    .settings(&format!("account_sid: {TWILIO_ACCOUNT}"));
    case.seed_vault(old, Some(&old_id));
    let (code, outcome, stderr) = case.run();
    assert_eq!((code, outcome.as_str()), (0, "rotated"), "{stderr}");
    let data = case.vault();
    let keys = stub.with(|s| s.live("twilio").into_iter().cloned().collect::<Vec<_>>());
    assert_eq!(keys.len(), 61, "60 others kept, the old one replaced");
    assert!(!keys.iter().any(|k| k.id == old_id));
    let new = keys
        .iter()
        .find(|k| Some(k.id.as_str()) == data["key_id"].as_str())
        .expect("Vault names a live key");
    assert_eq!(data["value"].as_str(), Some(new.secret.as_str()));
    let pages = stub.with(|s| {
        s.seen
            .iter()
            .filter(|r| r.starts_with("GET") && r.contains("Keys.json"))
            .count()
    });
    assert!(
        pages >= 2,
        "the list followed next_page_uri ({pages} pages)"
    );
    assert_no_leak(&stderr, &[old, &new.secret, TWILIO_AUTH_TOKEN]);
}

#[test]
fn okta_client_secret_rotates_deactivating_then_deleting_the_old_one() {
    let stub = Stub::start(Api::Okta);
    let old = "okta-old-client-secret-4242";
    let old_id = stub.seed_key("0oaAPP1", old, "console");
    let case = Case::new(
        "okta_client_secret",
        &stub,
        "",
        json!({ "token": ADMIN_TOKEN }),
    )
    .settings("domain: example.okta.com")
    .credential("settings: { app_id: 0oaAPP1, scope: rekey.test }");
    case.seed_vault(old, Some(&old_id));
    let (code, outcome, stderr) = case.run();
    assert_eq!((code, outcome.as_str()), (0, "rotated"), "{stderr}");
    let data = case.vault();
    let keys = stub.with(|s| s.live("0oaAPP1").into_iter().cloned().collect::<Vec<_>>());
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].active);
    assert_eq!(data["value"].as_str(), Some(keys[0].secret.as_str()));
    // The stub refuses to delete an active secret: the old one was deactivated first.
    let seen = stub.with(|s| s.seen.clone());
    let deactivate = seen
        .iter()
        .position(|r| r.contains(&format!("{old_id}/lifecycle/deactivate")))
        .expect("deactivated");
    let delete = seen
        .iter()
        .position(|r| r.starts_with("DELETE") && r.contains(&old_id))
        .expect("deleted");
    assert!(deactivate < delete);
    assert_no_leak(&stderr, &[old, &keys[0].secret, ADMIN_TOKEN]);
}

#[test]
fn github_deploy_key_rotates_with_a_generated_key_pair() {
    let stub = Stub::start(Api::GitHub);
    for i in 0..120 {
        // More keys than one page (per_page 100): the list follows the Link header.
        stub.seed_key(
            "acme/infra",
            &format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIother{i}"),
            &format!("other {i}"),
        );
    }
    let old_pub = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOLDOLDOLD";
    let old_id = stub.seed_key("acme/infra", old_pub, "ci deploy key");
    let case = Case::new(
        "github_deploy_key",
        &stub,
        "",
        json!({ "token": ADMIN_TOKEN }),
    )
    // The repository's other deploy keys belong to other systems: routine mode
    // leaves them (breach mode retires every key the account held).
    .routine()
    .credential("settings: { owner: acme, repo: infra }");
    case.seed_vault(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nold\n-----END OPENSSH PRIVATE KEY-----\n",
        Some(&old_id),
    );
    let (code, outcome, stderr) = case.run();
    assert_eq!((code, outcome.as_str()), (0, "rotated"), "{stderr}");
    let data = case.vault();
    let keys = stub.with(|s| {
        s.live("acme/infra")
            .into_iter()
            .cloned()
            .collect::<Vec<_>>()
    });
    assert_eq!(
        keys.len(),
        121,
        "the 120 others kept, the old key replaced by the new one"
    );
    assert!(!keys.iter().any(|k| k.id == old_id));
    let new = keys
        .iter()
        .find(|k| Some(k.id.as_str()) == data["key_id"].as_str())
        .expect("Vault names a live key");
    assert_public_key_of(data["value"].as_str().unwrap(), &new.secret, &case);
    assert!(
        stub.with(|s| s.seen.iter().any(|r| r.contains("page=2"))),
        "followed the Link header"
    );
    assert_no_leak(&stderr, &[ADMIN_TOKEN, data["value"].as_str().unwrap()]);
}

/// `ssh-keygen -y` (OpenSSH itself) derives `public` from the private key Vault holds.
pub fn assert_public_key_of(private: &str, public: &str, case: &Case) {
    use std::os::unix::fs::PermissionsExt;
    let file = case.dir.path().join("id_check");
    std::fs::write(&file, private).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = std::process::Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&file)
        .output()
        .expect("ssh-keygen runs");
    std::fs::remove_file(&file).unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen reads the key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let derived = String::from_utf8_lossy(&out.stdout);
    let derived: Vec<&str> = derived.split_whitespace().take(2).collect();
    assert_eq!(
        derived.join(" "),
        public,
        "the provider holds the public half of Vault's private key"
    );
}

#[test]
fn jumpcloud_ssh_key_rotates_for_the_user_found_by_name() {
    let stub = Stub::start(Api::JumpCloud);
    stub.with(|s| {
        s.users
            .insert("5f1user0001".into(), ("alice".into(), "pw-alice-1".into()));
        s.users
            .insert("5f1user0002".into(), ("bob".into(), "pw-bob-1".into()));
    });
    let old_id = stub.seed_key(
        "5f1user0002",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBOBOLD",
        "laptop",
    );
    let case = Case::new(
        "jumpcloud_ssh_key",
        &stub,
        "/api",
        json!({ "token": ADMIN_TOKEN }),
    )
    .credential("account: bob");
    case.seed_vault("old private key", Some(&old_id));
    let (code, outcome, stderr) = case.run();
    assert_eq!((code, outcome.as_str()), (0, "rotated"), "{stderr}");
    let data = assert_rotated_dual(&case, &stub, "5f1user0002", &old_id, "old private key");
    let public = stub.with(|s| s.live("5f1user0002")[0].secret.clone());
    assert_public_key_of(data["value"].as_str().unwrap(), &public, &case);
    assert!(
        stub.with(|s| s.live("5f1user0001").is_empty()),
        "alice untouched"
    );
}

#[test]
fn jumpcloud_password_changes_in_place() {
    let stub = Stub::start(Api::JumpCloud);
    stub.with(|s| {
        s.users
            .insert("5f1user0002".into(), ("bob".into(), "pw-bob-old".into()));
    });
    let case = Case::new(
        "jumpcloud_user_password",
        &stub,
        "/api",
        json!({ "token": ADMIN_TOKEN }),
    )
    .credential("account: bob, verify: false");
    case.seed_vault("pw-bob-old", None);
    let (code, outcome, stderr) = case.run();
    assert_eq!((code, outcome.as_str()), (0, "rotated"), "{stderr}");
    let password = stub.with(|s| s.users["5f1user0002"].1.clone());
    assert_ne!(password, "pw-bob-old");
    assert_eq!(case.vault()["value"].as_str(), Some(password.as_str()));
    assert_no_leak(&stderr, &[&password]);
}

#[test]
fn gitlab_token_rotates_in_place_and_the_old_token_is_revoked() {
    let stub = Stub::start(Api::GitLab);
    let old = "glpat-old-release-token";
    let old_id = stub.seed_key("gitlab", old, "release-bot");
    stub.seed_key("gitlab", "glpat-other", "other-bot");
    let case = Case::new(
        "gitlab_token",
        &stub,
        "/api/v4",
        json!({ "token": ADMIN_TOKEN }),
    )
    .credential("settings: { token_name: release-bot }");
    case.seed_vault(old, Some(&old_id));
    let (code, outcome, stderr) = case.run();
    assert_eq!((code, outcome.as_str()), (0, "rotated"), "{stderr}");
    let data = case.vault();
    let (old_key, new_key) = stub.with(|s| {
        let old_key = s.keys.iter().find(|k| k.id == old_id).cloned().unwrap();
        let new_key = s
            .keys
            .iter()
            .find(|k| k.active && k.name == "release-bot")
            .cloned()
            .unwrap();
        (old_key, new_key)
    });
    assert!(!old_key.active, "rotate revoked the old token");
    assert_eq!(data["value"].as_str(), Some(new_key.secret.as_str()));
    assert_eq!(data["key_id"].as_str(), Some(new_key.id.as_str()));
    let rotated = stub.with(|s| {
        s.seen
            .iter()
            .any(|r| r == &format!("POST /api/v4/personal_access_tokens/{old_id}/rotate"))
    });
    assert!(rotated, "the token found by name was rotated");
    assert_no_leak(&stderr, &[old, &new_key.secret, ADMIN_TOKEN]);
}

#[test]
fn cloudflare_token_is_rolled_and_keeps_its_id() {
    let stub = Stub::start(Api::Cloudflare);
    let old = "cf-old-dns-token";
    let id = stub.seed_key("cloudflare", old, "dns");
    let case = Case::new(
        "cloudflare_token",
        &stub,
        "/client/v4",
        json!({ "token": ADMIN_TOKEN }),
    )
    .credential(&format!("settings: {{ token_id: \"{id}\" }}"));
    case.seed_vault(old, Some(&id));
    let (code, outcome, stderr) = case.run();
    assert_eq!((code, outcome.as_str()), (0, "rotated"), "{stderr}");
    let data = case.vault();
    let keys = stub.with(|s| {
        s.live("cloudflare")
            .into_iter()
            .cloned()
            .collect::<Vec<_>>()
    });
    assert_eq!(keys.len(), 1, "rolling never deletes the token");
    assert_eq!(keys[0].id, id);
    assert_ne!(keys[0].secret, old);
    assert_eq!(data["value"].as_str(), Some(keys[0].secret.as_str()));
    assert_no_leak(&stderr, &[old, &keys[0].secret, ADMIN_TOKEN]);
}

#[test]
fn a_new_key_that_fails_verify_is_deleted_and_vault_keeps_the_old_one() {
    for (api, type_name, scope, admin, settings, credential) in [
        (
            Api::SendGrid,
            "sendgrid_api_key",
            "sendgrid",
            json!({ "token": ADMIN_TOKEN }),
            "",
            "settings: { scopes: [mail.send] }",
        ),
        (
            Api::Okta,
            "okta_client_secret",
            "0oaAPP1",
            json!({ "token": ADMIN_TOKEN }),
            "domain: example.okta.com",
            "settings: { app_id: 0oaAPP1, scope: s }",
        ),
    ] {
        let stub = Stub::start(api);
        stub.with(|s| s.refuse_new = true);
        let old = "old-secret-stays-9876";
        let old_id = stub.seed_key(scope, old, "console");
        let mut case = Case::new(type_name, &stub, "", admin).credential(credential);
        if !settings.is_empty() {
            case = case.settings(settings);
        }
        case.seed_vault(old, Some(&old_id));
        let (code, outcome, stderr) = case.run();
        assert_eq!(
            (code, outcome.as_str()),
            (1, "rolled_back"),
            "{type_name}: {stderr}"
        );
        let keys = stub.with(|s| s.live(scope).into_iter().cloned().collect::<Vec<_>>());
        assert_eq!(
            keys.len(),
            1,
            "{type_name}: the new key was deleted: {keys:?}"
        );
        assert_eq!(keys[0].id, old_id);
        assert!(keys[0].active, "{type_name}: the old key still works");
        assert_eq!(
            case.vault()["value"].as_str(),
            Some(old),
            "{type_name}: Vault unchanged"
        );
    }
}

#[test]
fn a_run_killed_after_create_is_finished_by_resume_without_orphans() {
    let stub = Stub::start(Api::Datadog);
    stub.with(|s| s.verify_delay_ms = 30_000);
    let old = "dd-old-agent-key-0000";
    let old_id = stub.seed_key("dd-api", old, "agents");
    let case = Case::new(
        "datadog_api_key",
        &stub,
        "",
        json!({ "api_key": DD_API_KEY, "app_key": ADMIN_TOKEN }),
    );
    case.seed_vault(old, Some(&old_id));
    let pb = case.playbook();
    let journal = case.journal();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rekey"))
        .args([
            "run",
            pb.to_str().unwrap(),
            "--journal",
            &journal,
            "--format",
            "json",
        ])
        .env("VAULT_TOKEN", &case.env["VAULT_TOKEN"])
        .env("REKEY_IT_PROVIDER_ADMIN", &case.admin)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it while verify hangs: the new key exists and is staged, nothing promoted.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !stub.with(|s| s.seen.iter().any(|r| r.starts_with("GET /api/v1/validate"))) {
        assert!(
            std::time::Instant::now() < deadline,
            "rekey never reached verify"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        stub.with(|s| s.live("dd-api").len()),
        2,
        "killed with a new key outstanding"
    );
    assert_eq!(case.vault()["value"].as_str(), Some(old));

    stub.with(|s| s.verify_delay_ms = 0);
    let out = case
        .command(&["resume", "--journal", &journal, "--format", "json"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let data = case.vault();
    let keys = stub.with(|s| s.live("dd-api").into_iter().cloned().collect::<Vec<_>>());
    assert_eq!(keys.len(), 1, "no orphan and no old key left: {keys:?}");
    assert_eq!(data["key_id"].as_str(), Some(keys[0].id.as_str()));
    assert_eq!(data["value"].as_str(), Some(keys[0].secret.as_str()));
}

#[test]
fn a_429_with_retry_after_pauses_and_the_rotation_still_succeeds() {
    for (api, type_name, scope, admin, settings, credential, delay) in [
        (
            Api::Twilio,
            "twilio_api_key",
            "twilio",
            json!({ "password": TWILIO_AUTH_TOKEN }),
            format!("account_sid: {TWILIO_ACCOUNT}"),
            "",
            "retry after 1.0s",
        ),
        (
            Api::Okta,
            "okta_client_secret",
            "0oaAPP1",
            json!({ "token": ADMIN_TOKEN }),
            "domain: example.okta.com".to_owned(),
            "settings: { app_id: 0oaAPP1, scope: s }",
            "rate limited (retry after",
        ),
        (
            Api::GitHub,
            "github_deploy_key",
            "acme/infra",
            json!({ "token": ADMIN_TOKEN }),
            String::new(),
            "settings: { owner: acme, repo: infra }",
            "rate limited (retry after",
        ),
    ] {
        let stub = Stub::start(api);
        stub.with(|s| s.rate_limit_next = 1);
        let old_id = stub.seed_key(
            scope,
            if api == Api::GitHub {
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOLD"
            } else {
                "old-secret-429"
            },
            "console",
        );
        let mut case = Case::new(type_name, &stub, "", admin).credential(credential);
        if !settings.is_empty() {
            case = case.settings(&settings);
        }
        case.seed_vault("old-secret-429", Some(&old_id));
        let (code, outcome, stderr) = case.run();
        assert_eq!(
            (code, outcome.as_str()),
            (0, "rotated"),
            "{type_name}: {stderr}"
        );
        assert!(
            stderr.contains("rate_limited") && stderr.contains(delay),
            "{type_name}: the 429 was classified as a rate limit: {stderr}"
        );
    }
}

#[test]
fn a_request_that_would_leave_the_base_url_is_refused() {
    let stub = Stub::start(Api::SendGrid);
    let old_id = stub.seed_key("sendgrid", "sg-old", "console");
    let dir = tempfile::tempdir().unwrap();
    // An in-house definition whose revoke path comes from a credential setting.
    let shipped = std::fs::read_to_string(
        crate::support::repo_root().join("providers/sendgrid_api_key.yaml"),
    )
    .unwrap();
    let custom = shipped
        .replace("name: sendgrid_api_key", "name: inhouse_keys")
        .replace(
            "  scopes: { description:",
            "  area: { required: true, description: \"Key area.\" }\n  scopes: { description:",
        )
        .replace(
            "path: /v3/api_keys\n    query: { limit: \"100\" }",
            "path: \"/v3/{{ settings.area }}\"\n    query: { limit: \"100\" }",
        );
    assert!(custom.contains("settings.area"), "{custom}");
    std::fs::write(dir.path().join("inhouse_keys.yaml"), custom).unwrap();
    for area in [
        "../../admin/users",
        "%2e%2e/%2e%2e/admin",
        "..%2f..%2fadmin",
    ] {
        let case = Case::new("inhouse_keys", &stub, "", json!({ "token": ADMIN_TOKEN }))
            .credential(&format!(
                "settings: {{ scopes: [mail.send], area: \"{area}\" }}"
            ));
        case.seed_vault("sg-old", Some(&old_id));
        let pb = case.playbook();
        let out = case
            .command(&[
                "--providers",
                dir.path().to_str().unwrap(),
                "run",
                pb.to_str().unwrap(),
                "--journal",
                &case.journal(),
                "--format",
                "json",
            ])
            .run();
        assert_eq!(
            outcome(&out.stdout),
            "rolled_back",
            "{area}: {}",
            out.stderr
        );
        assert!(
            out.stdout.contains("refused") && out.stdout.contains("leave the base URL"),
            "{area}: {}",
            out.stdout
        );
    }
    let seen = stub.with(|s| s.seen.clone());
    assert!(
        seen.iter().all(|r| r.contains("/v3/")),
        "nothing outside the base path: {seen:?}"
    );
    assert!(
        seen.is_empty(),
        "the refused list call sent nothing: {seen:?}"
    );
}

#[test]
fn a_broken_definition_is_reported_with_file_line_column_and_hints() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"name: broken_keys
summary: A definition with mistakes.
kind: dual
implementation: http
available: true
default_rate: { per_second: 1 }
default_concurrency: 1
typical_latency: 100ms
requests: { create: 1 }
admin: required
account: none
settings:
  region: { description: "Region." }
http:
  base_url: "https://api.example.com"
  auth:
    - { scheme: bearer, secret: admin.token }
  create:
    method: POST
    path: "/keys/{{ settings.regoin }}"
    body: { name: "{{ tag }}", leaked: "{{ admin.token }}" }
    expect: [201]
    secret: data/key
    key_id: /id
  revoke:
    methd: DELETE
    path: "/keys/{{ key_id }}"
    expect: [204]
"#;
    std::fs::write(dir.path().join("broken_keys.yaml"), text).unwrap();
    let out = rekey()
        .args(["--providers", dir.path().to_str().unwrap(), "providers"])
        .run();
    assert_ne!(out.code, 0);
    let file = dir.path().join("broken_keys.yaml").display().to_string();
    // serde stops at the first structural error: the misspelt key, with a suggestion.
    assert!(
        out.stderr.contains(&format!("{file}:26:")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("unknown key `methd`") && out.stderr.contains("did you mean `method`?"),
        "{}",
        out.stderr
    );

    // With the structure fixed, every semantic mistake is reported at once.
    std::fs::write(
        dir.path().join("broken_keys.yaml"),
        text.replace("methd", "method"),
    )
    .unwrap();
    let out = rekey()
        .args(["--providers", dir.path().to_str().unwrap(), "providers"])
        .run();
    assert_ne!(out.code, 0);
    for expected in [
        format!("{file}:20:11: template error"),
        "settings.<name> (region)".to_owned(),
        format!("{file}:21:"),
        "this template prints a secret without `| expose`".to_owned(),
        format!("{file}:23:13: `data/key` is not a JSON pointer"),
        "a dual definition needs a `list` call".to_owned(),
    ] {
        assert!(
            out.stderr.contains(&expected),
            "missing `{expected}` in:\n{}",
            out.stderr
        );
    }
}

/// A provider whose create call retires the old value itself (Cloudflare's roll):
/// when the new value fails verification there is nothing to roll back to, so the
/// credential is quarantined with the new value kept in Vault staging, never lost.
#[test]
fn a_failed_in_place_roll_is_quarantined_with_the_new_value_kept() {
    let stub = Stub::start(Api::Cloudflare);
    let old = "cf-old-dns-token-q";
    let id = stub.seed_key("cloudflare", old, "dns");
    stub.with(|s| s.refuse_new = true);
    let case = Case::new(
        "cloudflare_token",
        &stub,
        "/client/v4",
        json!({ "token": ADMIN_TOKEN }),
    )
    .credential(&format!("settings: {{ token_id: \"{id}\" }}"));
    case.seed_vault(old, Some(&id));
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
    assert_eq!(out.code, 3, "quarantined: {}", out.stderr);
    let summary: Value = serde_json::from_str(&out.stdout).unwrap();
    let result = &summary["results"][0];
    assert_eq!(result["outcome"], "quarantined", "{summary}");
    let action = result["action"].as_str().unwrap();
    let staging = action
        .split('`')
        .nth(1)
        .unwrap_or_else(|| panic!("no staging path in: {action}"));
    // Consumers still read the old value; the live one waits in staging.
    assert_eq!(case.vault()["value"].as_str(), Some(old));
    let staged = vault_http(
        &case.env,
        "GET",
        &format!("/v1/secret/data/{staging}"),
        None,
    )["data"]["data"]["value"]
        .as_str()
        .map(str::to_owned);
    let live = stub.with(|s| {
        s.live("cloudflare")
            .into_iter()
            .map(|k| k.secret.clone())
            .collect::<Vec<_>>()
    });
    assert_eq!(live.len(), 1);
    assert_ne!(live[0], old, "the provider rolled the value");
    assert_eq!(
        staged.as_deref(),
        Some(live[0].as_str()),
        "the new value is kept in staging"
    );
    assert_no_leak(&out.stderr, &[old, &live[0], ADMIN_TOKEN]);
    assert_no_leak(&out.stdout, &[old, &live[0], ADMIN_TOKEN]);
}

/// The first day rekey is used is usually a breach day: the account holds the key
/// consumers use (its value in Vault, written by hand without `key_id`) and a
/// second one nobody tracks (the attacker's, or a stray). After a breach run only
/// the new key exists, as each stub's own state shows.
#[test]
fn first_adoption_during_a_breach_leaves_only_the_new_key_for_every_dual_definition() {
    type Adoption = (
        Api,
        &'static str,
        &'static str,
        Value,
        &'static str,
        &'static str,
    );
    let cases: Vec<Adoption> = vec![
        (
            Api::Okta,
            "okta_client_secret",
            "0oaAPP1",
            json!({ "token": ADMIN_TOKEN }),
            "domain: example.okta.com",
            "settings: { app_id: 0oaAPP1, scope: rekey.test }",
        ),
        (
            Api::Datadog,
            "datadog_api_key",
            "dd-api",
            json!({ "api_key": DD_API_KEY, "app_key": ADMIN_TOKEN }),
            "",
            "",
        ),
        (
            Api::Datadog,
            "datadog_app_key",
            "dd-app",
            json!({ "api_key": DD_API_KEY, "app_key": ADMIN_TOKEN }),
            "",
            // Without a key id rekey cannot read the old key's scopes; it refuses to
            // guess them, so a first adoption names them.
            "settings: { scopes: unscoped }",
        ),
        (
            Api::SendGrid,
            "sendgrid_api_key",
            "sendgrid",
            json!({ "token": ADMIN_TOKEN }),
            "",
            "settings: { scopes: [mail.send] }",
        ),
        (
            Api::Twilio,
            "twilio_api_key",
            "twilio",
            json!({ "password": TWILIO_AUTH_TOKEN }),
            "account_sid: AC0123456789abcdef0123456789abcdef",
            "",
        ),
    ];
    for (api, type_name, scope, admin, settings, credential) in cases {
        let stub = Stub::start(api);
        let used = format!("consumer-secret-{}", hex::encode(rand::random::<[u8; 8]>()));
        let used_id = stub.seed_key(scope, &used, "console");
        let stray_id = stub.seed_key(scope, "stray-secret-0123456789", "ci");
        let mut case = Case::new(type_name, &stub, "", admin).credential(credential);
        if !settings.is_empty() {
            case = case.settings(settings);
        }
        case.seed_vault(&used, None);
        let (code, outcome, stderr) = case.run();
        assert_eq!(
            (code, outcome.as_str()),
            (0, "rotated"),
            "{type_name}: {stderr}"
        );
        assert!(
            !stub.exists(&used_id),
            "{type_name}: the key consumers used is alive"
        );
        assert!(
            !stub.exists(&stray_id),
            "{type_name}: the stray key is alive"
        );
        if type_name == "okta_client_secret" {
            // Okta client secrets carry no name to tag: the live one is Vault's.
            let keys = stub.with(|s| s.live(scope).into_iter().cloned().collect::<Vec<_>>());
            assert_eq!(keys.len(), 1, "{keys:?}");
            assert_eq!(
                case.vault()["value"].as_str(),
                Some(keys[0].secret.as_str())
            );
        } else {
            assert_rotated_dual(&case, &stub, scope, &used_id, &used);
        }
    }
    // GitHub deploy keys: the secret is a private key; the stub holds public keys.
    let stub = Stub::start(Api::GitHub);
    let used_id = stub.seed_key(
        "acme/infra",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUSEDUSEDUSEDUSED",
        "ci deploy key",
    );
    let stray_id = stub.seed_key(
        "acme/infra",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAISTRAYSTRAYSTRAY",
        "laptop",
    );
    let case = Case::new(
        "github_deploy_key",
        &stub,
        "",
        json!({ "token": ADMIN_TOKEN }),
    )
    .credential("settings: { owner: acme, repo: infra }");
    case.seed_vault(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nby-hand\n-----END OPENSSH PRIVATE KEY-----\n",
        None,
    );
    let (code, outcome, stderr) = case.run();
    assert_eq!((code, outcome.as_str()), (0, "rotated"), "github: {stderr}");
    assert!(
        !stub.exists(&used_id) && !stub.exists(&stray_id),
        "github: old keys alive"
    );
}
