//! `rekey discover` against the real OpenBao (200 entries of mixed shapes and a
//! deep tree under a fresh prefix), moto (an IAM path with users and keys) and
//! the sample scanner reports in `tests/scanners/`. The draft must pass `rekey
//! plan`, and no value seen anywhere may reach it or rekey's output.

use crate::infra_common::{Case, bao, unique};
use crate::providers_aws::{ADMIN_VAR, moto};
use serde_json::json;

/// Writes one KV v2 entry (and its custom metadata) under the case's prefix.
fn put(case: &Case, path: &str, data: serde_json::Value, metadata: Option<serde_json::Value>) {
    let full = format!("{}/{path}", case.prefix);
    let (status, body) = bao(
        &case.env,
        "POST",
        &format!("secret/data/{full}"),
        Some(&json!({ "data": data })),
    );
    assert_eq!(status, 200, "seed {full}: {body}");
    if let Some(m) = metadata {
        let (status, body) = bao(
            &case.env,
            "POST",
            &format!("secret/metadata/{full}"),
            Some(&json!({ "custom_metadata": m })),
        );
        assert!(status == 204 || status == 200, "metadata {full}: {body}");
    }
}

#[test]
fn discover_maps_a_seeded_openbao_a_moto_account_and_scanner_reports_into_a_draft_that_plans_and_holds_no_value()
 {
    let case = Case::new();
    let moto = moto();
    let tag = unique("disc");
    let mut values: Vec<String> = Vec::new();
    let mut canary = |what: &str, i: usize| {
        let v = format!("CANARY{what}{i}{}", &tag[5..]);
        values.push(v.clone());
        v
    };

    // moto: two users under their own IAM path, with a key each.
    let path = format!("/{tag}/");
    let mut moto_keys = Vec::new();
    for u in ["svc-a", "svc-b"] {
        let user = format!("{tag}-{u}");
        moto.iam("CreateUser", &[("UserName", &user), ("Path", &path)])
            .unwrap();
        let (id, secret) = moto.create_key(&user);
        moto_keys.push((user, id, secret));
    }

    // 200 entries: AWS key pairs (two of them the moto keys), database URLs,
    // GitLab tokens and values of no known shape (110 in one folder: its list
    // takes two pages of 100), the documented convention, rekey's own
    // metadata, and a deep tree.
    let mut n = 0;
    for (i, (_, id, secret)) in moto_keys.iter().enumerate() {
        put(
            &case,
            &format!("apps/moto{i}/aws"),
            json!({ "access_key_id": id, "secret_access_key": secret }),
            None,
        );
        n += 1;
    }
    for i in 0..38 {
        let id = format!("AKIA{:016}", i);
        put(
            &case,
            &format!("apps/app{i}/aws"),
            json!({ "access_key_id": id, "secret_access_key": canary("awssecret", i) }),
            None,
        );
        n += 1;
    }
    for i in 0..40 {
        let url = format!(
            "postgres://app{i}:{}@db{i}.internal:5432/app",
            canary("pgpw", i)
        );
        put(
            &case,
            &format!("flat/db-svc{i}"),
            json!({ "url": url }),
            None,
        );
        n += 1;
    }
    for i in 0..40 {
        put(
            &case,
            &format!("flat/ci-project{i}"),
            json!({ "token": format!("glpat-{}", canary("gl", i)) }),
            None,
        );
        n += 1;
    }
    for i in 0..30 {
        put(
            &case,
            &format!("flat/misc-thing{i}"),
            json!({ "value": canary("opaque", i) }),
            None,
        );
        n += 1;
    }
    for i in 0..20 {
        put(
            &case,
            &format!("mail/sender{i}"),
            json!({ "value": canary("sg", i) }),
            Some(json!({ "provider": "sendgrid_api_key", "tied_to": "sendgrid" })),
        );
        n += 1;
    }
    for i in 0..20 {
        put(
            &case,
            &format!("rotated/cred{i}"),
            json!({ "value": canary("rekeyed", i) }),
            Some(json!({
                "rekey_credential": format!("cred-{i}"),
                "rekey_provider": "keys",
                "rekey_playbook": "hygiene-weekly",
            })),
        );
        n += 1;
    }
    // A deep tree: levels 1..=10; --max-depth 6 enters six folders below the
    // prefix (deep, l1 .. l5).
    let mut deep = String::from("deep");
    for level in 1..=10 {
        deep += &format!("/l{level}");
        put(
            &case,
            &format!("{deep}/secret"),
            json!({ "value": canary("deep", level) }),
            None,
        );
        n += 1;
    }
    assert_eq!(n, 200);

    let dir = case.dir.path();
    let draft = dir.join("draft.yaml");
    let scanners = crate::support::repo_root().join("tests/scanners");
    let discovered = crate::support::rekey()
        .env("VAULT_ADDR", &case.env["VAULT_ADDR"])
        .env("VAULT_TOKEN", &case.env["VAULT_TOKEN"])
        .env(ADMIN_VAR, &moto.admin_json())
        .args([
            "discover",
            "--from-vault",
            &case.prefix,
            "--max-depth",
            "6",
            "--vault-rate",
            "200",
            "--instance",
            "aws=aws_iam",
            "--setting",
            &format!("aws.endpoint_url={}", moto.url),
            "--setting",
            "aws.region=us-east-1",
            "--setting",
            &format!("aws.path_prefix={path}"),
            "--admin",
            &format!("aws=env:{ADMIN_VAR}"),
            "--gitleaks",
            scanners.join("gitleaks.json").to_str().unwrap(),
            "--trufflehog",
            scanners.join("trufflehog.jsonl").to_str().unwrap(),
            "--compromised",
            "sendgrid",
            "--name",
            "first-hour",
            "--output",
            draft.to_str().unwrap(),
        ])
        .run();
    assert_eq!(
        discovered.code, 0,
        "{}\n{}",
        discovered.stdout, discovered.stderr
    );
    let text = std::fs::read_to_string(&draft).unwrap();

    // No value reached the draft or the output: the seeded ones, moto's
    // secrets, and the secrets inside the scanner reports.
    let mut secrets: Vec<String> = values.clone();
    secrets.extend(moto_keys.iter().map(|(_, _, s)| s.clone()));
    secrets.extend(
        [
            "glpat-CANARYgitleaksGL1234",
            "CANARYgitleaksGenericKey0000000000",
            "CANARYtrufflehogAwsSecret0000000000000",
            "CANARYtrufflehogSendgrid",
            "CANARYtrufflehogPgPassword",
        ]
        .map(str::to_owned),
    );
    for s in &secrets {
        for place in [&text, &discovered.stdout, &discovered.stderr] {
            assert!(
                !place.contains(s.as_str()),
                "a value reached the draft or output"
            );
        }
    }
    assert!(
        !text.contains("CANARY"),
        "no canary of any kind in the draft"
    );

    // Every entry of the folder listed in two pages is in the draft.
    for i in 0..40 {
        for path in [format!("flat/db-svc{i}"), format!("flat/ci-project{i}")] {
            assert!(text.contains(&format!("/{path}")), "{path} is missing");
        }
    }
    for i in 0..30 {
        assert!(
            text.contains(&format!("/flat/misc-thing{i}")),
            "misc-thing{i}"
        );
    }
    // The walk was bounded and said so; the deep tree stopped at --max-depth.
    assert!(
        discovered
            .stderr
            .contains("not entered (deeper than --max-depth 6)"),
        "{}",
        discovered.stderr
    );
    assert!(text.contains("/l5/secret"), "entered level 5");
    assert!(!text.contains("/l7/secret"), "did not enter level 7");
    // moto's users were listed, and the Vault entries holding their keys map
    // to the instance, with the account.
    assert!(
        discovered
            .stderr
            .contains("instance `aws`: 2 account(s), 2 key(s)"),
        "{}",
        discovered.stderr
    );
    for (user, id, _) in &moto_keys {
        assert!(text.contains(&format!("account: {user}")), "{user}\n{text}");
        assert!(text.contains(id.as_str()), "the key id is named: {id}");
    }
    // Shapes, the convention, rekey's own metadata and the scanners each left
    // their mark; what is tied to the compromised vendor says so.
    for needle in [
        "the password of a PostgreSQL URL",
        "a GitLab personal access token",
        "metadata `provider: sendgrid_api_key`",
        "rekey rotated it before through instance `keys` of playbook `hygiene-weekly`",
        "gitleaks",
        "deploy/terraform.tfvars:12",
        "trufflehog",
        "scripts/backup.sh:7",
        "tied_to: [sendgrid]",
        "mode: breach",
    ] {
        assert!(text.contains(needle), "`{needle}` in the draft:\n{text}");
    }
    let credentials = text.matches("\n  - id: ").count();
    assert!(
        credentials >= 195 + 6,
        "every entry entered (levels 6 to 10 of the deep tree were not) and every finding became a credential: {credentials}"
    );

    // --max-entries stops the walk, and says so.
    let bounded = crate::support::rekey()
        .env("VAULT_ADDR", &case.env["VAULT_ADDR"])
        .env("VAULT_TOKEN", &case.env["VAULT_TOKEN"])
        .args([
            "discover",
            "--from-vault",
            &case.prefix,
            "--max-entries",
            "50",
        ])
        .run();
    assert_eq!(bounded.code, 0, "{}", bounded.stderr);
    assert!(
        bounded.stderr.contains(": 50 entries in ")
            && bounded.stderr.contains("(stopped at --max-entries 50)"),
        "{}",
        bounded.stderr
    );
    assert_eq!(bounded.stdout.matches("\n  - id: ").count(), 50);
    assert!(!bounded.stdout.contains("CANARY"));

    // The draft plans cleanly.
    let planned = crate::support::rekey()
        .env("VAULT_ADDR", &case.env["VAULT_ADDR"])
        .env(ADMIN_VAR, &moto.admin_json())
        .args(["plan", draft.to_str().unwrap()])
        .run();
    assert_eq!(
        planned.code, 0,
        "{}\n{}\n{text}",
        planned.stdout, planned.stderr
    );
    assert!(planned.stdout.contains("aws"), "{}", planned.stdout);
}

#[test]
fn discover_refuses_without_a_source_and_from_vault_without_a_token() {
    let nothing = crate::support::rekey().args(["discover"]).run();
    assert_eq!(nothing.code, 2, "{}", nothing.stderr);
    assert!(
        nothing.stderr.contains("nothing to discover from"),
        "{}",
        nothing.stderr
    );
    let no_token = crate::support::rekey()
        .args([
            "discover",
            "--from-vault",
            "--vault-addr",
            "http://127.0.0.1:1",
        ])
        .run();
    assert_ne!(no_token.code, 0);
    assert!(
        no_token.stderr.contains("needs a Vault token"),
        "{}",
        no_token.stderr
    );
}

/// The breach admin's path of the README, end to end: discover what is tied
/// to the compromised vendor, plan the draft (offline, then live), run it,
/// check the status, and watch the retired keys.
#[test]
fn the_breach_admins_path_discover_plan_run_status_watch() {
    let case = Case::new();
    let dir = case.dir.path();
    let state = dir.join("keys.json");
    // The sandbox (the issuing system) holds a key for each of two accounts;
    // Vault holds them, tagged by the documented convention.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut accounts = serde_json::Map::new();
    for (account, id, value) in [
        ("a", "k-a", "CANARYbreachA1"),
        ("b", "k-b", "CANARYbreachB2"),
    ] {
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(value));
        accounts.insert(
            account.to_owned(),
            json!({ "keys": [{ "id": id, "secret_sha256": digest, "active": true, "created_at": now - 86_400, "tag": "console" }] }),
        );
        put(
            &case,
            &format!("partner/{account}"),
            json!({ "value": value, "key_id": id }),
            Some(json!({ "provider": "partner", "account": account, "tied_to": "acme" })),
        );
    }
    put(
        &case,
        "internal/db",
        json!({ "url": "postgres://app:CANARYbreachPg3@db.internal:5432/app" }),
        None,
    );
    std::fs::write(&state, json!({ "accounts": accounts }).to_string()).unwrap();

    let rekey = |args: &[&str]| {
        crate::support::rekey()
            .env("VAULT_ADDR", &case.env["VAULT_ADDR"])
            .env("VAULT_TOKEN", &case.env["VAULT_TOKEN"])
            .args(args)
            .run()
    };
    let draft = dir.join("breach.yaml");
    let draft_arg = draft.to_str().unwrap();
    let journal = case.journal();
    let journal = journal.to_str().unwrap();
    // 1. discover
    let found = rekey(&[
        "discover",
        "--from-vault",
        &case.prefix,
        "--instance",
        "partner=sandbox",
        "--setting",
        &format!("partner.state_file={}", state.display()),
        "--compromised",
        "acme",
        "--output",
        draft_arg,
    ]);
    assert_eq!(found.code, 0, "{}", found.stderr);
    assert!(
        found
            .stderr
            .contains("3 credential(s): 2 rotated by rekey, 1 manual step(s)"),
        "{}",
        found.stderr
    );
    let text = std::fs::read_to_string(&draft).unwrap();
    assert!(!text.contains("CANARY"), "{text}");
    // This OpenBao is shared by parallel tests: the run stages under the
    // test's own prefix (the one edit made to the draft).
    let text = text.replacen(
        "\n  mount: ",
        &format!("\n  staging_prefix: {}/staging\n  mount: ", case.prefix),
        1,
    );
    std::fs::write(&draft, &text).unwrap();
    // The reviewer rotates only what is tied to the compromised vendor.
    // 2. plan, offline and live
    let planned = rekey(&["plan", draft_arg, "--compromised", "acme"]);
    assert_eq!(
        planned.code, 0,
        "{}\n{}\n{text}",
        planned.stdout, planned.stderr
    );
    assert!(
        planned.stdout.contains("2 credentials"),
        "{}",
        planned.stdout
    );
    let live = rekey(&["plan", draft_arg, "--compromised", "acme", "--live"]);
    assert_eq!(live.code, 0, "{}\n{}", live.stdout, live.stderr);
    // 3. run, status
    let ran = rekey(&[
        "run",
        draft_arg,
        "--compromised",
        "acme",
        "--journal",
        journal,
        "--format",
        "json",
    ]);
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let outcomes: Vec<&str> = summary["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["rotated", "rotated"], "{summary}");
    let status = rekey(&["status", "--journal", journal]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    // 4. watch the retired keys: nobody used them since.
    let watched = rekey(&["watch", "--journal", journal, "--format", "json"]);
    assert_eq!(watched.code, 0, "{}\n{}", watched.stdout, watched.stderr);
    let doc: serde_json::Value = serde_json::from_str(&watched.stdout).unwrap();
    let mut keys: Vec<&str> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key_id"].as_str().unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys, ["k-a", "k-b"], "{doc}");
    for out in [&found, &planned, &live, &ran, &status, &watched] {
        assert!(!out.stdout.contains("CANARY") && !out.stderr.contains("CANARY"));
    }
}
