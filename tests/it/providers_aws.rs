//! `aws_iam` against moto with signature checking on: `scripts/test` starts moto
//! with `REKEY_MOTO_NO_AUTH_COUNT=3`, and the first test process to get here spends
//! those three unauthenticated calls creating an admin user, its policy and its
//! access key (under a file lock, recorded beside moto's data). From then on moto
//! checks every SigV4 signature and IAM policy: a wrong secret is
//! `SignatureDoesNotMatch`, a deleted key `InvalidClientTokenId`.
//!
//! Each test works on its own IAM users, so tests run in parallel and moto is
//! never reset. Moto accepts requests signed with an Inactive key (a gap in the
//! emulator), so deactivation is checked through ListAccessKeys' status.

use crate::infra_common::{Case, unique};
use rekey::provider::aws_iam::client::{QueryClient, Service, text_of};
use rekey::provider::aws_iam::config::Credentials;
use rekey::secret::Secret;
use std::io::Write;
use std::sync::OnceLock;

pub(crate) const ADMIN_VAR: &str = "REKEY_TEST_AWS_ADMIN";

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// moto's address and the admin credential the tests created in it.
pub(crate) struct Moto {
    pub(crate) url: url::Url,
    pub(crate) admin: Credentials,
}

pub(crate) fn creds(id: &str, secret: &str) -> Credentials {
    Credentials {
        access_key_id: id.to_owned(),
        secret_access_key: Secret::new(secret),
        session_token: None,
    }
}

/// Signs and sends one Query API call; the error is AWS's error code.
pub(crate) fn call(
    url: &url::Url,
    creds: &Credentials,
    service: &str,
    action: &str,
    params: &[(&str, &str)],
) -> Result<String, String> {
    let client = QueryClient::new().unwrap();
    let svc = Service {
        name: service,
        endpoint: url,
        region: "us-east-1",
        version: if service == "sts" {
            "2011-06-15"
        } else {
            "2010-05-08"
        },
    };
    block_on(client.call(&svc, creds, action, params))
        .map(|a| a.body.to_string())
        .map_err(|e| e.code().map(str::to_owned).unwrap_or_else(|| e.to_string()))
}

pub(crate) fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(bootstrap)
}

/// Creates the admin user once per moto instance (see the module comment).
fn bootstrap() -> Moto {
    let env = crate::infra_common::services();
    let url = url::Url::parse(
        env.get("REKEY_MOTO_URL")
            .expect("moto is not running; scripts/services up moto"),
    )
    .unwrap();
    let free: u32 = env
        .get("REKEY_MOTO_NO_AUTH_COUNT")
        .and_then(|n| n.parse().ok())
        .expect("moto runs without signature checking: restart it with `REKEY_MOTO_NO_AUTH_COUNT=3 scripts/services up moto` (scripts/test does)");
    assert!(
        free >= 3,
        "REKEY_MOTO_NO_AUTH_COUNT must be at least 3 (the admin user, its policy, its key)"
    );
    let data = crate::support::repo_root().join("target/services/moto/data");
    std::fs::create_dir_all(&data).unwrap();
    let lock = std::fs::File::create(data.join("rekey-admin.lock")).unwrap();
    lock.lock().unwrap();
    let record = data.join("rekey-admin.json");
    if let Ok(text) = std::fs::read_to_string(&record) {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        return Moto {
            url,
            admin: creds(v["id"].as_str().unwrap(), v["secret"].as_str().unwrap()),
        };
    }
    // Unauthenticated calls: moto looks at nothing but the count.
    let anyone = creds("AKIABOOTSTRAP0000000", "unused");
    let user = "rekey-test-admin";
    let first = call(&url, &anyone, "iam", "CreateUser", &[("UserName", user)]);
    assert!(
        first.is_ok(),
        "moto refused the bootstrap ({first:?}): its unauthenticated calls are spent; restart it with `scripts/services down moto; REKEY_MOTO_NO_AUTH_COUNT=3 scripts/services up moto`"
    );
    let policy =
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#;
    call(
        &url,
        &anyone,
        "iam",
        "PutUserPolicy",
        &[
            ("UserName", user),
            ("PolicyName", "all"),
            ("PolicyDocument", policy),
        ],
    )
    .unwrap();
    let body = call(
        &url,
        &anyone,
        "iam",
        "CreateAccessKey",
        &[("UserName", user)],
    )
    .unwrap();
    let doc = roxmltree::Document::parse(&body).unwrap();
    let id = text_of(doc.root(), "AccessKeyId").unwrap().to_owned();
    let secret = text_of(doc.root(), "SecretAccessKey").unwrap().to_owned();
    let admin = creds(&id, &secret);
    // Spend what is left of the free calls, so that every later call is checked.
    for _ in 3..free {
        call(&url, &admin, "iam", "GetUser", &[("UserName", user)]).unwrap();
    }
    let mut f = std::fs::File::create(&record).unwrap();
    write!(f, "{}", serde_json::json!({ "id": id, "secret": secret })).unwrap();
    Moto { url, admin }
}

impl Moto {
    pub(crate) fn iam(&self, action: &str, params: &[(&str, &str)]) -> Result<String, String> {
        call(&self.url, &self.admin, "iam", action, params)
    }

    pub(crate) fn admin_json(&self) -> String {
        serde_json::json!({
            "access_key_id": self.admin.access_key_id,
            "secret_access_key": self.admin.secret_access_key.expose(),
        })
        .to_string()
    }

    /// A fresh IAM user with one access key: (user, key id, secret).
    pub(crate) fn user_with_key(&self, prefix: &str) -> (String, String, String) {
        let user = unique(prefix);
        self.iam("CreateUser", &[("UserName", &user)]).unwrap();
        let (id, secret) = self.create_key(&user);
        (user, id, secret)
    }

    pub(crate) fn create_key(&self, user: &str) -> (String, String) {
        let body = self.iam("CreateAccessKey", &[("UserName", user)]).unwrap();
        let doc = roxmltree::Document::parse(&body).unwrap();
        (
            text_of(doc.root(), "AccessKeyId").unwrap().to_owned(),
            text_of(doc.root(), "SecretAccessKey").unwrap().to_owned(),
        )
    }

    /// The user's keys: (id, status), sorted by id.
    pub(crate) fn keys(&self, user: &str) -> Vec<(String, String)> {
        let body = self.iam("ListAccessKeys", &[("UserName", user)]).unwrap();
        let doc = roxmltree::Document::parse(&body).unwrap();
        let mut keys: Vec<(String, String)> = doc
            .descendants()
            .filter(|n| n.has_tag_name("member"))
            .map(|m| {
                (
                    text_of(m, "AccessKeyId").unwrap().to_owned(),
                    text_of(m, "Status").unwrap().to_owned(),
                )
            })
            .collect();
        keys.sort();
        keys
    }

    /// STS GetCallerIdentity with a key pair: the ARN, or AWS's error code.
    pub(crate) fn caller(&self, id: &str, secret: &str) -> Result<String, String> {
        let body = call(
            &self.url,
            &creds(id, secret),
            "sts",
            "GetCallerIdentity",
            &[],
        )?;
        let doc = roxmltree::Document::parse(&body).unwrap();
        Ok(text_of(doc.root(), "Arn").unwrap_or_default().to_owned())
    }
}

fn playbook(
    case: &Case,
    moto: &Moto,
    mode: &str,
    extra_settings: &str,
    credentials: &str,
) -> std::path::PathBuf {
    case.playbook(
        "aws.yaml",
        &format!(
            "version: 1\nname: aws-test\nincident: {{ mode: {mode} }}\nvault: {{ address: \"VAULT\", staging_prefix: PREFIX/staging }}\nproviders:\n  aws:\n    type: aws_iam\n    admin: {{ env: {ADMIN_VAR} }}\n    settings: {{ endpoint_url: \"{}\", region: us-east-1{extra_settings} }}\ncredentials:\n{credentials}",
            moto.url
        ),
    )
}

fn case_with_admin(admin_json: String) -> Case {
    let mut case = Case::new();
    case.vars.push((ADMIN_VAR.to_owned(), admin_json));
    case
}

#[test]
fn moto_checks_signatures_so_the_tests_can_prove_them() {
    let moto = moto();
    let (user, id, secret) = moto.user_with_key("sig");
    assert!(
        moto.caller(&id, &secret)
            .unwrap()
            .ends_with(&format!(":user/{user}"))
    );
    assert_eq!(
        moto.caller(&id, "not-the-secret").unwrap_err(),
        "SignatureDoesNotMatch"
    );
    moto.iam(
        "DeleteAccessKey",
        &[("UserName", &user), ("AccessKeyId", &id)],
    )
    .unwrap();
    assert_eq!(
        moto.caller(&id, &secret).unwrap_err(),
        "InvalidClientTokenId"
    );
}

#[test]
fn aws_iam_rotation_creates_verifies_promotes_and_deletes_the_old_key() {
    let moto = moto();
    let (user, old_id, old_secret) = moto.user_with_key("rot");
    let case = case_with_admin(moto.admin_json());
    case.seed("deploy", &old_secret, Some(&old_id));
    let pb = playbook(
        &case,
        moto,
        "breach",
        "",
        &format!(
            "  - {{ id: deploy, provider: aws, account: {user}, vault_path: PREFIX/deploy }}\n"
        ),
    );

    let ran = case.run(&pb);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.outcome("deploy"), "rotated", "{}", ran.summary);
    let entry = case.vault("deploy");
    let new_id = entry["data"]["key_id"].as_str().unwrap().to_owned();
    let new_secret = entry["data"]["value"].as_str().unwrap().to_owned();
    assert_ne!(new_id, old_id);
    assert_eq!(entry["metadata"]["version"], 2);
    // The new key signs requests as the user; the old one is gone for good.
    assert!(
        moto.caller(&new_id, &new_secret)
            .unwrap()
            .ends_with(&format!(":user/{user}"))
    );
    assert_eq!(
        moto.caller(&old_id, &old_secret).unwrap_err(),
        "InvalidClientTokenId"
    );
    assert_eq!(
        moto.keys(&user),
        vec![(new_id.clone(), "Active".to_owned())]
    );
    ran.assert_no_leak(&[
        &new_secret,
        &old_secret,
        moto.admin.secret_access_key.expose(),
    ]);
    case.assert_journal_clean(&[
        &new_secret,
        &old_secret,
        moto.admin.secret_access_key.expose(),
    ]);
    // The key's description tag is removed with the key; the new one carries the run's.
    let tags = moto.iam("ListUserTags", &[("UserName", &user)]).unwrap();
    assert!(!tags.contains(&old_id) && tags.contains(&new_id), "{tags}");
    assert!(!tags.contains("rekey-pending"), "{tags}");
}

/// The provider contract directly: deactivate marks the key Inactive (moto still
/// accepts an Inactive key, so the status is what is checked), and `list` sees it.
#[test]
fn aws_iam_deactivate_marks_the_key_inactive_and_list_reports_it() {
    let moto = moto();
    let (user, id, _secret) = moto.user_with_key("deact");
    let provider = provider_for(moto, moto.url.as_str());
    let no_settings = indexmap::IndexMap::new();
    let target = rekey::provider::Target {
        credential: "c",
        account: Some(&user),
        settings: &no_settings,
    };
    use rekey::provider::Provider;
    block_on(provider.deactivate(target, &id)).unwrap();
    assert_eq!(moto.keys(&user), vec![(id.clone(), "Inactive".to_owned())]);
    let listed = block_on(provider.list(target)).unwrap();
    assert_eq!(listed.len(), 1);
    assert!(!listed[0].active && listed[0].id == id && listed[0].created_at.is_some());
    // Deactivating or deleting a key that is already gone is not an error.
    block_on(provider.revoke(target, &id)).unwrap();
    block_on(provider.revoke(target, &id)).unwrap();
    block_on(provider.deactivate(target, &id)).unwrap();
    assert!(moto.keys(&user).is_empty());
}

#[test]
fn aws_iam_full_quota_deletes_an_inactive_stray_but_never_an_active_key() {
    let moto = moto();
    let case = case_with_admin(moto.admin_json());

    // One current key (in Vault) and one inactive stray: the stray makes room.
    let (user, old_id, old_secret) = moto.user_with_key("quota");
    let (stray, _) = moto.create_key(&user);
    moto.iam(
        "UpdateAccessKey",
        &[
            ("UserName", &user),
            ("AccessKeyId", &stray),
            ("Status", "Inactive"),
        ],
    )
    .unwrap();
    case.seed("stray", &old_secret, Some(&old_id));

    // Two active keys: nothing may be deleted, the run must stop and say why.
    let (full, full_old, full_secret) = moto.user_with_key("full");
    let (other_active, _) = moto.create_key(&full);
    case.seed("full", &full_secret, Some(&full_old));

    // Routine mode: an active key is never deleted before the new one is promoted.
    let pb = playbook(
        &case,
        moto,
        "routine",
        "",
        &format!(
            "  - {{ id: stray, provider: aws, account: {user}, vault_path: PREFIX/stray }}\n  - {{ id: full, provider: aws, account: {full}, vault_path: PREFIX/full }}\n"
        ),
    );
    let live = case.plan_live(&pb);
    assert_eq!(live.code, 1, "{}", live.stdout);
    assert!(
        live.stdout.contains("ok   stray provider"),
        "{}",
        live.stdout
    );
    assert!(
        live.stdout.contains("FAIL full provider")
            && live.stdout.contains("already holds 2 active access keys"),
        "{}",
        live.stdout
    );

    let ran = case.run(&pb);
    assert_eq!(ran.outcome("stray"), "rotated", "{}", ran.summary);
    let new_id = case.vault("stray")["data"]["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        moto.keys(&user),
        vec![(new_id, "Active".to_owned())],
        "the stray and the old key are gone"
    );

    assert_eq!(ran.outcome("full"), "rolled_back", "{}", ran.summary);
    let reason = ran.result("full")["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("already holds 2 active access keys")
            && reason.contains("never deletes an active key"),
        "{reason}"
    );
    let mut both = vec![
        (full_old.clone(), "Active".to_owned()),
        (other_active, "Active".to_owned()),
    ];
    both.sort();
    assert_eq!(moto.keys(&full), both, "no active key was touched");
    assert_eq!(case.vault("full")["data"]["key_id"], full_old.as_str());
    assert_ne!(ran.code, 0);
}

/// The first day rekey is used is usually a breach day: the user holds the key
/// the attacker copied (Vault's value, written by hand without `key_id`) and a
/// second active key nobody tracks (the quota is full). After a breach run only
/// the new key exists, as IAM itself lists it.
#[test]
fn aws_iam_first_adoption_during_a_breach_retires_the_copied_key_and_the_stray() {
    let moto = moto();
    let case = case_with_admin(moto.admin_json());
    let (user, copied, copied_secret) = moto.user_with_key("adopt");
    let (stray, _) = moto.create_key(&user);
    case.seed("adopt", &copied_secret, None);
    let pb = playbook(
        &case,
        moto,
        "breach",
        "",
        &format!("  - {{ id: adopt, provider: aws, account: {user}, vault_path: PREFIX/adopt }}\n"),
    );
    let ran = case.run(&pb);
    assert_eq!(ran.outcome("adopt"), "rotated", "{}", ran.summary);
    assert_eq!(ran.code, 0, "{}", ran.summary);
    let new_id = case.vault("adopt")["data"]["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(new_id != copied && new_id != stray);
    assert_eq!(
        moto.keys(&user),
        vec![(new_id, "Active".to_owned())],
        "the copied key and the stray are deleted"
    );
}

#[test]
fn aws_iam_preflight_names_a_wrong_secret_a_deleted_key_a_missing_user_and_an_unreachable_endpoint()
{
    let moto = moto();
    let (user, _, _) = moto.user_with_key("pre");
    let cred = format!(
        "  - {{ id: deploy, provider: aws, account: {user}, vault_path: PREFIX/deploy }}\n"
    );

    let wrong = serde_json::json!({ "access_key_id": moto.admin.access_key_id, "secret_access_key": "wrong-secret-0123" }).to_string();
    let case = case_with_admin(wrong);
    let out = case.plan_live(&playbook(&case, moto, "breach", "", &cred));
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("AWS rejected the admin credential from environment variable `REKEY_TEST_AWS_ADMIN` (SignatureDoesNotMatch"),
        "{}",
        out.stdout
    );
    out.assert_no_leak(&["wrong-secret-0123"]);

    // A deleted admin key: create a second admin key, delete it, use it.
    let (gone_id, gone_secret) = moto.create_key("rekey-test-admin");
    moto.iam(
        "DeleteAccessKey",
        &[("UserName", "rekey-test-admin"), ("AccessKeyId", &gone_id)],
    )
    .unwrap();
    let case = case_with_admin(
        serde_json::json!({ "access_key_id": gone_id, "secret_access_key": gone_secret })
            .to_string(),
    );
    let out = case.plan_live(&playbook(&case, moto, "breach", "", &cred));
    assert!(
        out.stdout.contains("(InvalidClientTokenId on GetUser)"),
        "{}",
        out.stdout
    );

    let case = case_with_admin(moto.admin_json());
    let missing = cred.replace(&user, "no-such-user-x1");
    let out = case.plan_live(&playbook(&case, moto, "breach", "", &missing));
    assert!(
        out.stdout
            .contains("IAM user `no-such-user-x1` does not exist"),
        "{}",
        out.stdout
    );

    let unreachable = case.playbook(
        "down.yaml",
        &format!(
            "version: 1\nname: aws-down\nincident: {{ mode: breach }}\nvault: {{ address: \"VAULT\", staging_prefix: PREFIX/staging }}\nproviders:\n  aws:\n    type: aws_iam\n    admin: {{ env: {ADMIN_VAR} }}\n    settings: {{ endpoint_url: \"http://127.0.0.1:1\" }}\ncredentials:\n{cred}"
        ),
    );
    let out = case.plan_live(&unreachable);
    assert!(
        out.stdout.contains("cannot reach http://127.0.0.1:1"),
        "{}",
        out.stdout
    );

    let out = case.plan_live(&playbook(&case, moto, "breach", "", &cred));
    assert_eq!(out.code, 0, "{}", out.stdout);
    out.assert_no_leak(&[moto.admin.secret_access_key.expose()]);
}

/// STS unreachable while IAM answers (a real partial outage): the new key cannot
/// be verified, so it is deleted and the old one stays, untouched, in Vault.
#[test]
fn aws_iam_verify_failure_deletes_the_new_key_and_keeps_the_old_one() {
    let moto = moto();
    let (user, old_id, old_secret) = moto.user_with_key("verify");
    let case = case_with_admin(moto.admin_json());
    case.seed("deploy", &old_secret, Some(&old_id));
    let pb = playbook(
        &case,
        moto,
        "breach",
        ", sts_endpoint_url: \"http://127.0.0.1:1\"",
        &format!(
            "  - {{ id: deploy, provider: aws, account: {user}, vault_path: PREFIX/deploy }}\n"
        ),
    );
    let ran = case.run(&pb);
    assert_eq!(ran.outcome("deploy"), "rolled_back", "{}", ran.summary);
    let reason = ran.result("deploy")["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("verify failed") && reason.contains("cannot reach http://127.0.0.1:1"),
        "{reason}"
    );
    assert_ne!(ran.code, 0);
    assert_eq!(
        moto.keys(&user),
        vec![(old_id.clone(), "Active".to_owned())]
    );
    assert!(moto.caller(&old_id, &old_secret).is_ok());
    let entry = case.vault("deploy");
    assert_eq!(entry["metadata"]["version"], 1);
    assert_eq!(entry["data"]["key_id"], old_id.as_str());
}

/// SIGKILL at several points of the rotation (slowed by a low rate limit so the
/// points are inside it), then `rekey resume`: the user holds exactly the key
/// Vault holds, it works, and the old key is gone.
#[test]
fn aws_iam_run_killed_mid_rotation_is_finished_by_resume_without_orphans() {
    let moto = moto();
    for states in [&["creating"][..], &["staged"], &["verified", "promoted"]] {
        let (user, old_id, old_secret) = moto.user_with_key("kill");
        let case = case_with_admin(moto.admin_json());
        case.seed("deploy", &old_secret, Some(&old_id));
        let text = std::fs::read_to_string(playbook(
            &case,
            moto,
            "breach",
            "",
            &format!(
                "  - {{ id: deploy, provider: aws, account: {user}, vault_path: PREFIX/deploy }}\n"
            ),
        ))
        .unwrap()
        .replace(
            "    admin:",
            "    rate: { per_second: 4, burst: 1 }\n    admin:",
        );
        let pb = case.playbook("slow.yaml", &text);
        let mut child = case.spawn_run(&pb);
        case.wait_for_state("deploy", states);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();

        // The rate limit keeps the run going for seconds: the kill always lands
        // inside it, so there is always something to resume.
        let ran = case.resume();
        assert_eq!(ran.code, 0, "killed at {states:?}: {}", ran.stderr);
        assert_eq!(
            ran.outcome("deploy"),
            "rotated",
            "killed at {states:?}: {}",
            ran.summary
        );
        let entry = case.vault("deploy");
        let id = entry["data"]["key_id"].as_str().unwrap().to_owned();
        let secret = entry["data"]["value"].as_str().unwrap().to_owned();
        assert_ne!(id, old_id, "killed at {states:?}");
        assert_eq!(
            moto.keys(&user),
            vec![(id.clone(), "Active".to_owned())],
            "killed at {states:?}: orphan or old key left"
        );
        assert!(
            moto.caller(&id, &secret).is_ok(),
            "killed at {states:?}: Vault's key does not work"
        );
    }
}

fn provider_for(moto: &Moto, endpoint: &str) -> rekey::provider::aws_iam::AwsIam {
    let admin = rekey::provider::admin::Admin::from_env_value(ADMIN_VAR, &moto.admin_json());
    let mut settings = indexmap::IndexMap::new();
    settings.insert("endpoint_url".to_owned(), serde_json::json!(endpoint));
    rekey::provider::aws_iam::AwsIam::new(&settings, Some(&admin)).unwrap()
}

/// The crash window between CreateAccessKey and the TagUser that names the key:
/// the `rekey-pending` tag written before the call names the run's tag and the
/// keys that existed, so `list` attributes the nameless new key to the run (and
/// resume deletes it as an orphan), never the old one.
#[test]
fn aws_iam_list_attributes_a_key_created_just_before_a_crash_to_its_run() {
    use rekey::provider::Provider;
    let moto = moto();
    let (user, old_id, _) = moto.user_with_key("crash");
    moto.iam(
        "TagUser",
        &[
            ("UserName", &user),
            ("Tags.member.1.Key", "rekey-pending"),
            ("Tags.member.1.Value", &format!("rekey:r-1:deploy {old_id}")),
        ],
    )
    .unwrap();
    let (nameless, _) = moto.create_key(&user);
    let provider = provider_for(moto, moto.url.as_str());
    let no_settings = indexmap::IndexMap::new();
    let target = rekey::provider::Target {
        credential: "deploy",
        account: Some(&user),
        settings: &no_settings,
    };
    let mut listed = block_on(provider.list(target)).unwrap();
    listed.sort_by(|a, b| a.id.cmp(&b.id));
    let tag_of = |id: &str| listed.iter().find(|k| k.id == id).unwrap().tag.clone();
    assert_eq!(tag_of(&nameless).as_deref(), Some("rekey:r-1:deploy"));
    assert_eq!(
        tag_of(&old_id),
        None,
        "the old key is never taken for an orphan"
    );
}

/// Throttling answers, from a stub speaking the AWS Query API's error format
/// (moto never throttles): `Throttling` with HTTP 400 and a bare 429 are rate
/// limits the engine slows the instance down for; a 503 is transient.
#[test]
fn aws_iam_throttling_answers_are_rate_limits() {
    use rekey::provider::{Provider, ProviderError};
    use std::io::{Read, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let answers = [
        (
            "400 Bad Request",
            "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error></ErrorResponse>",
        ),
        ("429 Too Many Requests", ""),
        ("503 Service Unavailable", ""),
    ];
    let server = std::thread::spawn(move || {
        for (status, body) in answers {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 8192];
            let _ = s.read(&mut buf);
            write!(s, "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
        }
    });
    let moto = moto();
    let provider = provider_for(moto, &format!("http://{addr}"));
    let no_settings = indexmap::IndexMap::new();
    let target = rekey::provider::Target {
        credential: "c",
        account: Some("u"),
        settings: &no_settings,
    };
    for expected in ["rate_limited", "rate_limited", "transient"] {
        let err: ProviderError = block_on(provider.preflight(target)).unwrap_err();
        assert_eq!(err.kind(), expected, "{err}");
    }
    server.join().unwrap();
}

/// `aws_iam` rotates at `RUST_LOG=trace` (the HTTP crates' logs too): no secret
/// access key, old, new or the admin's, reaches stdout, stderr, the journal or
/// the audit trail, in any encoding (SigV4 signatures are HMACs of it, not it).
#[test]
fn aws_iam_at_rust_log_trace_leaks_no_secret_access_key() {
    let moto = moto();
    let (user, old_id, old_secret) = moto.user_with_key("trace");
    let mut case = case_with_admin(moto.admin_json());
    case.vars.push(("RUST_LOG".to_owned(), "trace".to_owned()));
    case.seed("deploy", &old_secret, Some(&old_id));
    let pb = playbook(
        &case,
        moto,
        "breach",
        "",
        &format!(
            "  - {{ id: deploy, provider: aws, account: {user}, vault_path: PREFIX/deploy }}\n"
        ),
    );
    let ran = case.run(&pb);
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    assert!(ran.stderr.contains("DEBUG"), "verbose logging was on");
    let new_secret = case.vault("deploy")["data"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let canaries = vec![
        new_secret,
        old_secret,
        moto.admin.secret_access_key.expose().to_owned(),
    ];
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
