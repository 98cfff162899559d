//! `rekey watch` against moto: a breach run deactivates the old access key
//! (its admin may not delete keys, so the key stays, inactive, and the
//! credential is quarantined); someone then signs a request with the old key.
//! moto records that use (it marks every request's signing key as used,
//! `GetAccessKeyLastUsed` answers it, even for an inactive key), and watch says
//! so loudly: exit 11 and a `retired_key_used` webhook.

use crate::infra_common::{Case, unique};
use crate::notify::receiver;
use crate::providers_aws::{call, creds, moto};
use serde_json::Value;

#[test]
fn watch_flags_a_moto_access_key_used_after_a_breach_run_deactivated_it() {
    let case = Case::new();
    let moto = moto();
    // An admin that may do everything but delete access keys (`NotAction` and
    // `NotResource`, no `*` in the document: moto checks the signature over the form body it
    // encodes again, and encodes `*` where the signer, rightly, did not).
    let (user, old_id, old_secret) = moto.user_with_key("watched");
    let admin_user = unique("watch-admin");
    moto.iam("CreateUser", &[("UserName", &admin_user)])
        .unwrap();
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","NotAction":"iam:DeleteAccessKey","NotResource":"arn:aws:iam::000000000000:user/nobody"}]}"#;
    moto.iam(
        "PutUserPolicy",
        &[
            ("UserName", &admin_user),
            ("PolicyName", "all-but-delete"),
            ("PolicyDocument", policy),
        ],
    )
    .unwrap();
    let (admin_id, admin_secret) = moto.create_key(&admin_user);
    let admin = serde_json::json!({ "access_key_id": admin_id, "secret_access_key": admin_secret })
        .to_string();

    case.seed("aws", &old_secret, Some(&old_id));
    let (hook, heard) = receiver(0);
    let pb = case.playbook(
        "watch.yaml",
        &format!(
            "version: 1\nname: watch-PREFIX\nincident: {{ mode: breach }}\nvault: {{ address: \"VAULT\", staging_prefix: PREFIX/staging }}\nproviders:\n  aws:\n    type: aws_iam\n    admin: {{ env: WATCH_ADMIN }}\n    settings: {{ endpoint_url: \"{}\", region: us-east-1 }}\ncredentials:\n  - {{ id: aws, provider: aws, account: {user}, vault_path: PREFIX/aws }}\nnotify:\n  - {{ name: soc, url: \"{hook}/watch\", events: [retired_key_used] }}\n",
            moto.url
        ),
    );
    let rekey = |args: &[&str]| {
        crate::support::rekey()
            .env("VAULT_TOKEN", &case.env["VAULT_TOKEN"])
            .env("WATCH_ADMIN", &admin)
            .args(args)
            .run()
    };
    let journal = case.journal();
    let journal = journal.to_str().unwrap();
    let ran = rekey(&[
        "run",
        pb.to_str().unwrap(),
        "--journal",
        journal,
        "--format",
        "json",
    ]);
    assert_eq!(
        ran.code, 3,
        "quarantined: the old key could not be deleted\n{}\n{}",
        ran.stdout, ran.stderr
    );
    let keys = moto.keys(&user);
    assert!(
        keys.contains(&(old_id.clone(), "Inactive".to_owned())),
        "the old key is deactivated, not deleted: {keys:?}"
    );

    // Nobody used it since: watch is quiet.
    let quiet = rekey(&["watch", "--journal", journal, "--format", "json"]);
    assert_eq!(quiet.code, 0, "{}\n{}", quiet.stdout, quiet.stderr);
    let doc: Value = serde_json::from_str(&quiet.stdout).unwrap();
    let finding = |doc: &Value| {
        doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["key_id"] == old_id.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{old_id} is not watched: {doc}"))
    };
    assert_eq!(finding(&doc)["how"], "deactivated", "{doc}");
    assert_eq!(finding(&doc)["verdict"], "never_used", "{doc}");
    assert!(heard.lock().unwrap().is_empty());

    // Someone still holds the old key and signs a request with it (moto's
    // last-use dates have whole seconds: wait past the retirement's second).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // (moto even answers it: unlike AWS, it does not refuse an inactive key;
    // what matters here is that it records the use, as AWS records last use.)
    let _ = call(
        &moto.url,
        &creds(&old_id, &old_secret),
        "sts",
        "GetCallerIdentity",
        &[],
    );

    let loud = rekey(&["watch", "--journal", journal, "--format", "json"]);
    assert_eq!(loud.code, 11, "{}\n{}", loud.stdout, loud.stderr);
    let doc: Value = serde_json::from_str(&loud.stdout).unwrap();
    assert_eq!(finding(&doc)["verdict"], "used_after_retirement", "{doc}");
    assert!(finding(&doc)["last_used"].is_string(), "{doc}");
    let text = rekey(&["watch", "--journal", journal]);
    assert_eq!(text.code, 11);
    assert!(
        text.stdout.contains(&old_id) && text.stdout.to_lowercase().contains("used after"),
        "{}",
        text.stdout
    );
    let got = heard.lock().unwrap().clone();
    assert!(!got.is_empty(), "the webhook heard it");
    let event: Value = serde_json::from_str(&got[0].2).unwrap();
    assert_eq!(event["event"], "retired_key_used", "{event}");
    assert_eq!(event["credential"], "aws", "{event}");
    for (_, _, body) in &got {
        assert!(!body.contains(&old_secret) && !body.contains(&admin_secret));
    }
    for out in [&ran, &quiet, &loud, &text] {
        assert!(!out.stdout.contains(&old_secret) && !out.stderr.contains(&old_secret));
        assert!(!out.stdout.contains(&admin_secret) && !out.stderr.contains(&admin_secret));
    }
}
