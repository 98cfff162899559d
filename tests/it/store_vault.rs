//! `VaultStore` against the real OpenBao that `scripts/services up openbao` starts
//! (dev mode: KV version 2 at `secret/`, root token `root`). Every test works under
//! its own random prefix, so tests run in parallel and again on the same server.

use rekey::secret::Secret;
use rekey::store::{SecretStore, StoreError, VaultConfig, VaultLogin, VaultStore};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

/// A value no error message may ever contain.
const CANARY: &str = "CANARY-9d41e7-must-never-be-printed";

/// OpenBao's address, from the file `scripts/services` writes.
fn vault_addr() -> String {
    let path = crate::support::repo_root().join("target/services/env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; start OpenBao with `scripts/services up openbao`",
            path.display()
        )
    });
    text.lines()
        .filter_map(|l| l.strip_prefix("export VAULT_ADDR="))
        .map(|v| v.trim_matches('\'').trim_matches('"').to_owned())
        .next()
        .unwrap_or_else(|| {
            panic!(
                "{} has no VAULT_ADDR: start OpenBao with `scripts/services up openbao`",
                path.display()
            )
        })
}

/// A path prefix no other test (or earlier run) uses.
fn unique(name: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "it-store/{name}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn config(address: &str, mount: &str, token: &str) -> VaultConfig {
    VaultConfig {
        address: address.to_owned(),
        mount: mount.to_owned(),
        namespace: None,
        ca_file: None,
        auth: VaultLogin::Token(Secret::new(token)),
    }
}

async fn root_store() -> VaultStore {
    VaultStore::connect(&config(&vault_addr(), "secret", "root"))
        .await
        .expect("connect with the root token")
}

/// A plain vaultrs client with the root token, for setting the server up the way
/// an operator would (and for doing what rekey itself never does, like soft deletes).
fn root_client() -> VaultClient {
    VaultClient::new(
        VaultClientSettingsBuilder::default()
            .address(vault_addr())
            .token("root")
            .build()
            .unwrap(),
    )
    .unwrap()
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn value_of(entry_value: &Option<Secret>) -> Option<&str> {
    entry_value.as_ref().map(Secret::expose)
}

#[tokio::test]
async fn store_vault_read_of_an_absent_path_is_version_zero_without_value() {
    let store = root_store().await;
    let entry = store
        .read(&format!("{}/nothing-here", unique("absent")))
        .await
        .unwrap();
    assert_eq!(entry.version, 0);
    assert!(entry.value.is_none() && entry.fields.is_empty() && entry.custom_metadata.is_empty());
    assert_eq!(
        store
            .read_version(&format!("{}/nothing-here", unique("absent")), 1)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn store_vault_write_cas_creates_updates_and_refuses_a_stale_version_without_overwriting() {
    let store = root_store().await;
    let path = format!("{}/db", unique("cas"));
    assert_eq!(
        store
            .write_cas(
                &path,
                &Secret::new("first"),
                &fields(&[("key_id", "k1"), ("account", "svc")]),
                0
            )
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .write_cas(
                &path,
                &Secret::new("second"),
                &fields(&[("key_id", "k2")]),
                1
            )
            .await
            .unwrap(),
        2
    );

    // Both a stale version and "must not exist" lose against version 2.
    for stale in [1, 0, 7] {
        match store
            .write_cas(&path, &Secret::new(CANARY), &BTreeMap::new(), stale)
            .await
        {
            Err(StoreError::CasConflict {
                path: reported,
                expected,
            }) => {
                assert_eq!(
                    (reported.as_str(), expected),
                    (format!("secret/{path}").as_str(), stale)
                );
            }
            other => panic!("cas {stale}: expected a CAS conflict, got {other:?}"),
        }
    }

    let entry = store.read(&path).await.unwrap();
    assert_eq!(entry.version, 2, "the refused writes made no version");
    assert_eq!(value_of(&entry.value), Some("second"));
    assert_eq!(
        entry.fields,
        fields(&[("key_id", "k2")]),
        "a write replaces the fields too"
    );
}

#[tokio::test]
async fn store_vault_read_version_returns_older_values_and_none_for_deleted_destroyed_or_missing_ones()
 {
    let store = root_store().await;
    let path = format!("{}/api-key", unique("versions"));
    for (cas, value) in ["v1", "v2", "v3", "v4"].iter().enumerate() {
        store
            .write_cas(&path, &Secret::new(*value), &BTreeMap::new(), cas as u64)
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .read_version(&path, 1)
            .await
            .unwrap()
            .as_ref()
            .map(Secret::expose),
        Some("v1")
    );
    assert_eq!(
        store
            .read_version(&path, 3)
            .await
            .unwrap()
            .as_ref()
            .map(Secret::expose),
        Some("v3")
    );
    assert_eq!(
        store.read_version(&path, 99).await.unwrap(),
        None,
        "a version that never existed"
    );
    // Vault reads `?version=0` as the latest; rekey must not hand back v4 as "version 0".
    assert_eq!(store.read_version(&path, 0).await.unwrap(), None);

    // What an operator (or an attacker cleaning up) might do out of band.
    let root = root_client();
    vaultrs::kv2::destroy_versions(&root, "secret", &path, vec![1])
        .await
        .unwrap();
    vaultrs::kv2::delete_versions(&root, "secret", &path, vec![2])
        .await
        .unwrap();
    vaultrs::kv2::delete_latest(&root, "secret", &path)
        .await
        .unwrap();
    assert_eq!(
        store.read_version(&path, 1).await.unwrap(),
        None,
        "destroyed"
    );
    assert_eq!(
        store.read_version(&path, 2).await.unwrap(),
        None,
        "soft-deleted"
    );
    assert_eq!(
        store
            .read_version(&path, 3)
            .await
            .unwrap()
            .as_ref()
            .map(Secret::expose),
        Some("v3")
    );

    // A soft-deleted latest version still counts for check-and-set: read says so.
    let entry = store.read(&path).await.unwrap();
    assert_eq!((entry.version, entry.value.is_none()), (4, true));
    assert!(matches!(
        store
            .write_cas(&path, &Secret::new("v5"), &BTreeMap::new(), 3)
            .await,
        Err(StoreError::CasConflict { expected: 3, .. })
    ));
    assert_eq!(
        store
            .write_cas(&path, &Secret::new("v5"), &BTreeMap::new(), 4)
            .await
            .unwrap(),
        5
    );

    vaultrs::kv2::destroy_versions(&root, "secret", &path, vec![5])
        .await
        .unwrap();
    let entry = store.read(&path).await.unwrap();
    assert_eq!(
        (entry.version, entry.value.is_none()),
        (5, true),
        "a destroyed latest version reads like a deleted one"
    );
}

#[tokio::test]
async fn store_vault_set_metadata_merges_keys_and_read_returns_them() {
    let store = root_store().await;
    let path = format!("{}/token", unique("metadata"));
    store
        .write_cas(&path, &Secret::new("t"), &BTreeMap::new(), 0)
        .await
        .unwrap();
    store
        .set_metadata(
            &path,
            &fields(&[("rekey_run", "run-1"), ("provider", "github")]),
        )
        .await
        .unwrap();
    store
        .set_metadata(
            &path,
            &fields(&[
                ("rekey_run", "run-2"),
                ("rotated_at", "2026-01-01T00:00:00Z"),
            ]),
        )
        .await
        .unwrap();
    let entry = store.read(&path).await.unwrap();
    assert_eq!(
        entry.custom_metadata,
        fields(&[
            ("provider", "github"),
            ("rekey_run", "run-2"),
            ("rotated_at", "2026-01-01T00:00:00Z")
        ])
    );
    assert_eq!(
        value_of(&entry.value),
        Some("t"),
        "metadata does not touch the data"
    );

    // On a path with no metadata yet, the keys are created.
    let fresh = format!("{}/fresh", unique("metadata"));
    store
        .set_metadata(&fresh, &fields(&[("owner", "rekey")]))
        .await
        .unwrap();
    assert_eq!(
        store.read(&fresh).await.unwrap().custom_metadata,
        BTreeMap::new(),
        "no version: read reports nothing"
    );
    let metadata = vaultrs::kv2::read_metadata(&root_client(), "secret", &fresh)
        .await
        .unwrap();
    assert_eq!(metadata.custom_metadata.unwrap()["owner"], "rekey");
}

#[tokio::test]
async fn store_vault_delete_all_removes_every_version_and_absent_paths_are_fine() {
    let store = root_store().await;
    let path = format!("{}/staged", unique("delete"));
    store
        .write_cas(&path, &Secret::new("a"), &BTreeMap::new(), 0)
        .await
        .unwrap();
    store
        .write_cas(&path, &Secret::new("b"), &BTreeMap::new(), 1)
        .await
        .unwrap();
    store
        .set_metadata(&path, &fields(&[("rekey_run", "r")]))
        .await
        .unwrap();
    store.delete_all(&path).await.unwrap();
    assert_eq!(store.read(&path).await.unwrap(), Default::default());
    assert_eq!(store.read_version(&path, 1).await.unwrap(), None);
    store.delete_all(&path).await.unwrap();
    store
        .delete_all(&format!("{}/never-written", unique("delete")))
        .await
        .unwrap();
    // The path starts over: "must not exist" holds again.
    assert_eq!(
        store
            .write_cas(&path, &Secret::new("c"), &BTreeMap::new(), 0)
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn store_vault_list_returns_keys_and_folders_directly_under_a_prefix() {
    let store = root_store().await;
    let prefix = unique("list");
    for name in ["b", "a", "sub/deeper/x", "sub/y"] {
        store
            .write_cas(
                &format!("{prefix}/{name}"),
                &Secret::new("v"),
                &BTreeMap::new(),
                0,
            )
            .await
            .unwrap();
    }
    assert_eq!(store.list(&prefix).await.unwrap(), ["a", "b", "sub/"]);
    assert_eq!(
        store.list(&format!("{prefix}/")).await.unwrap(),
        ["a", "b", "sub/"]
    );
    assert_eq!(
        store.list(&format!("{prefix}/sub")).await.unwrap(),
        ["deeper/", "y"]
    );
    assert!(
        store
            .list(&format!("{prefix}/nothing"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .list("")
            .await
            .unwrap()
            .contains(&"it-store/".to_owned()),
        "\"\" lists the top of the mount"
    );
}

#[tokio::test]
async fn store_vault_a_wrong_token_is_unauthorized_and_the_message_never_shows_it() {
    let token = format!("{CANARY}-token");
    let store = VaultStore::connect(&config(&vault_addr(), "secret", &token))
        .await
        .expect("connecting makes no request");
    let path = format!("{}/db", unique("wrong-token"));
    let errors = [
        store.preflight().await.unwrap_err(),
        store.read(&path).await.unwrap_err(),
        store
            .write_cas(&path, &Secret::new("v"), &BTreeMap::new(), 0)
            .await
            .unwrap_err(),
        store.list(&path).await.unwrap_err(),
    ];
    for error in &errors {
        assert!(matches!(error, StoreError::Unauthorized(_)), "{error:?}");
        assert!(!error.is_transient());
        let message = error.to_string();
        assert!(
            !message.contains(CANARY) && !format!("{error:?}").contains(CANARY),
            "{message}"
        );
        assert!(
            message.contains("HTTP 403") && message.contains("token"),
            "{message}"
        );
    }
    assert!(
        errors[1].to_string().contains(&format!("`secret/{path}`")),
        "the message names the path: {}",
        errors[1]
    );
}

#[tokio::test]
async fn store_vault_an_unreachable_server_is_unavailable_and_transient() {
    let store = VaultStore::connect(&config("http://127.0.0.1:1", "secret", "root"))
        .await
        .unwrap();
    let errors = [
        store.preflight().await.unwrap_err(),
        store.read("app/db").await.unwrap_err(),
        store
            .write_cas("app/db", &Secret::new(CANARY), &BTreeMap::new(), 0)
            .await
            .unwrap_err(),
    ];
    for error in &errors {
        assert!(
            matches!(error, StoreError::Unavailable(_)) && error.is_transient(),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("127.0.0.1:1") && message.contains("refused"),
            "{message}"
        );
        assert!(!message.contains(CANARY), "{message}");
    }
}

/// Enables AppRole (if no earlier test or run did), and makes a role whose tokens may
/// only use `secret/<prefix>/*`. Returns the role-id and a fresh secret-id.
async fn approle_for(prefix: &str) -> (String, String) {
    let root = root_client();
    let enabled = |auths: &std::collections::HashMap<String, _>| auths.contains_key("approle/");
    if !enabled(&vaultrs::sys::auth::list(&root).await.unwrap()) {
        // Another test process may enable it at the same moment: then it is enabled.
        if let Err(e) = vaultrs::sys::auth::enable(&root, "approle", "approle", None).await {
            assert!(
                enabled(&vaultrs::sys::auth::list(&root).await.unwrap()),
                "enabling AppRole failed: {e}"
            );
        }
    }
    let name = prefix.replace('/', "-");
    let policy = format!(
        r#"path "secret/data/{prefix}/*" {{ capabilities = ["create", "read", "update", "patch"] }}
           path "secret/metadata/{prefix}/*" {{ capabilities = ["read", "list", "patch", "delete"] }}"#
    );
    vaultrs::sys::policy::set(&root, &name, &policy)
        .await
        .unwrap();
    let mut role = vaultrs::api::auth::approle::requests::SetAppRoleRequest::builder();
    role.token_policies(vec![name.clone()]).token_ttl("10m");
    vaultrs::auth::approle::role::set(&root, "approle", &name, Some(&mut role))
        .await
        .unwrap();
    let role_id = vaultrs::auth::approle::role::read_id(&root, "approle", &name)
        .await
        .unwrap()
        .role_id;
    let secret_id = vaultrs::auth::approle::role::secret::generate(&root, "approle", &name, None)
        .await
        .unwrap()
        .secret_id;
    (role_id, secret_id)
}

#[tokio::test]
async fn store_vault_approle_login_gets_a_token_that_writes_inside_its_policy_only() {
    let prefix = unique("approle");
    let (role_id, secret_id) = approle_for(&prefix).await;
    let mut cfg = config(&vault_addr(), "secret", "unused");
    cfg.auth = VaultLogin::AppRole {
        mount: "approle".into(),
        role_id: role_id.clone(),
        secret_id: Secret::new(secret_id),
    };
    let store = VaultStore::connect(&cfg).await.expect("AppRole login");
    store
        .preflight()
        .await
        .expect("a token limited to one prefix still passes preflight");

    let path = format!("{prefix}/svc");
    assert_eq!(
        store
            .write_cas(
                &path,
                &Secret::new("from-approle"),
                &fields(&[("key_id", "k")]),
                0
            )
            .await
            .unwrap(),
        1
    );
    store
        .set_metadata(&path, &fields(&[("rekey_run", "r1")]))
        .await
        .unwrap();
    let entry = root_store().await.read(&path).await.unwrap();
    assert_eq!(
        (entry.version, value_of(&entry.value)),
        (1, Some("from-approle"))
    );
    assert_eq!(entry.custom_metadata["rekey_run"], "r1");

    // Outside its policy the token is refused, and the message names the policy path.
    let outside = format!("{}/svc", unique("approle-outside"));
    let error = store
        .write_cas(&outside, &Secret::new("x"), &BTreeMap::new(), 0)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Unauthorized(_)), "{error:?}");
    assert!(
        error
            .to_string()
            .contains(&format!("secret/data/{outside}")),
        "{error}"
    );

    // A wrong secret-id fails at connect, without showing it.
    cfg.auth = VaultLogin::AppRole {
        mount: "approle".into(),
        role_id,
        secret_id: Secret::new(CANARY),
    };
    let error = VaultStore::connect(&cfg).await.unwrap_err();
    assert!(matches!(error, StoreError::Unauthorized(_)), "{error:?}");
    assert!(!error.to_string().contains(CANARY), "{error}");
}

#[tokio::test]
async fn store_vault_preflight_accepts_kv2_and_refuses_kv1_and_missing_mounts_before_any_write() {
    root_store()
        .await
        .preflight()
        .await
        .expect("the dev server's `secret/` is KV version 2");

    let kv1 = unique("kv1").replace('/', "-");
    let mut options = vaultrs::api::sys::requests::EnableEngineRequest::builder();
    options.options(std::collections::HashMap::from([(
        "version".to_owned(),
        "1".to_owned(),
    )]));
    vaultrs::sys::mount::enable(&root_client(), &kv1, "kv", Some(&mut options))
        .await
        .unwrap();
    let store = VaultStore::connect(&config(&vault_addr(), &kv1, "root"))
        .await
        .unwrap();
    let error = store.preflight().await.unwrap_err();
    assert!(
        matches!(&error, StoreError::Invalid(m) if m.contains("KV version 1")),
        "{error:?}"
    );
    // On KV version 1 this write would have created a key named `data/app`: refused first.
    let error = store
        .write_cas("app", &Secret::new(CANARY), &BTreeMap::new(), 0)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::Invalid(m) if m.contains("KV version 1") && m.contains(&format!("`{kv1}/app`"))),
        "{error:?}"
    );
    let keys = vaultrs::kv1::list(&root_client(), &kv1, "").await;
    assert!(
        keys.is_err() || keys.unwrap().data.keys.is_empty(),
        "nothing was written to the KV version 1 mount"
    );
    vaultrs::sys::mount::disable(&root_client(), &kv1)
        .await
        .unwrap();

    // A missing mount must not read as "this path is absent" (version 0).
    let store = VaultStore::connect(&config(&vault_addr(), "no-such-mount", "root"))
        .await
        .unwrap();
    assert!(
        matches!(store.preflight().await, Err(StoreError::Unauthorized(m)) if m.contains("no mount `no-such-mount`"))
    );
    let error = store.read("app/db").await.unwrap_err();
    assert!(
        error.to_string().contains("`no-such-mount/app/db`"),
        "{error}"
    );

    // A folder inside a mount is not a mount.
    let store = VaultStore::connect(&config(&vault_addr(), "secret/app", "root"))
        .await
        .unwrap();
    assert!(
        matches!(store.preflight().await, Err(StoreError::Invalid(m)) if m.contains("set the mount to `secret`"))
    );
}

#[tokio::test]
async fn store_vault_refuses_bad_paths_bad_fields_and_bad_configuration_without_a_request() {
    let store = root_store().await;
    for path in ["", "/abs", "a//b", "a/../b", "a?version=1", "with space"] {
        assert!(
            matches!(store.read(path).await, Err(StoreError::Invalid(_))),
            "{path:?}"
        );
    }
    let path = format!("{}/x", unique("fields"));
    let error = store
        .write_cas(&path, &Secret::new("v"), &fields(&[("value", "shadow")]), 0)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::Invalid(m) if m.contains("`value`")),
        "{error:?}"
    );

    // An entry with a non-string field cannot be carried across a rotation.
    let odd = format!("{}/odd", unique("fields"));
    vaultrs::kv2::set(
        &root_client(),
        "secret",
        &odd,
        &serde_json::json!({"value": CANARY, "port": 5432, "nested": {"secret": CANARY}}),
    )
    .await
    .unwrap();
    let error = store.read(&odd).await.unwrap_err();
    assert!(
        matches!(&error, StoreError::Invalid(m) if m.contains("is a number") || m.contains("is an object")),
        "{error:?}"
    );
    assert!(!error.to_string().contains(CANARY), "{error}");

    let addr = vault_addr();
    for (cfg, expected) in [
        (config("vault.example.com:8200", "secret", "t"), "scheme"),
        (
            config("http://exa mple.com", "secret", "t"),
            "not an absolute URL",
        ),
        (config(&addr, "secret", "root\n"), "token"),
        (config(&addr, "", "root"), "mount"),
        (
            VaultConfig {
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..config("https://127.0.0.1:1", "secret", "t")
            },
            "/nonexistent/ca.pem",
        ),
        (
            VaultConfig {
                ca_file: Some("/etc/hostname".into()),
                ..config("https://127.0.0.1:1", "secret", "t")
            },
            "no PEM certificate",
        ),
        (
            VaultConfig {
                ca_file: Some("/etc/hostname".into()),
                ..config(&addr, "secret", "t")
            },
            "plain http",
        ),
    ] {
        match VaultStore::connect(&cfg).await {
            Err(StoreError::Invalid(m)) => assert!(m.contains(expected), "{m}"),
            other => panic!("{expected}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn store_vault_no_error_message_shows_the_canary_value_or_token() {
    let addr = vault_addr();
    let secret = Secret::new(CANARY);
    let mut messages = Vec::new();
    let mut collect = |result: Result<(), StoreError>| {
        let error = result.expect_err("every call here fails");
        messages.push(format!("{error} | {error:?}"));
    };

    let store = root_store().await;
    let path = format!("{}/x", unique("canary"));
    store
        .write_cas(&path, &secret, &fields(&[("note", CANARY)]), 0)
        .await
        .unwrap();
    collect(
        store
            .write_cas(&path, &secret, &BTreeMap::new(), 0)
            .await
            .map(drop),
    );
    collect(
        store
            .write_cas(&path, &secret, &fields(&[("value", CANARY)]), 1)
            .await
            .map(drop),
    );

    let canary_token = VaultStore::connect(&config(&addr, "secret", CANARY))
        .await
        .unwrap();
    collect(canary_token.preflight().await);
    collect(canary_token.read(&path).await.map(drop));
    collect(canary_token.read_version(&path, 1).await.map(drop));
    collect(
        canary_token
            .write_cas(&path, &secret, &BTreeMap::new(), 1)
            .await
            .map(drop),
    );
    collect(
        canary_token
            .set_metadata(&path, &fields(&[("k", CANARY)]))
            .await,
    );
    collect(canary_token.delete_all(&path).await);
    collect(canary_token.list(&path).await.map(drop));

    let unreachable = VaultStore::connect(&config("http://127.0.0.1:1", "secret", CANARY))
        .await
        .unwrap();
    collect(
        unreachable
            .write_cas(&path, &secret, &BTreeMap::new(), 0)
            .await
            .map(drop),
    );
    collect(unreachable.read(&path).await.map(drop));

    let mut approle = config(&addr, "secret", "unused");
    approle.auth = VaultLogin::AppRole {
        mount: "approle".into(),
        role_id: "no-such-role".into(),
        secret_id: secret.clone(),
    };
    collect(VaultStore::connect(&approle).await.map(drop));
    collect(
        VaultStore::connect(&config(&addr, "secret", &format!("{CANARY} ")))
            .await
            .map(drop),
    );

    assert_eq!(messages.len(), 13);
    for message in &messages {
        assert!(!message.contains(CANARY), "{message}");
    }
    // Nor do the store's and the configuration's own Debug forms.
    assert!(!format!("{canary_token:?} {approle:?}").contains(CANARY));
}

/// A second OpenBao in dev TLS mode on a free port, with its generated CA; killed on
/// drop.
struct TlsBao {
    child: Child,
    address: String,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for TlsBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tls_bao() -> TlsBao {
    let bao = crate::support::repo_root().join("target/services/venv/bin/bao");
    assert!(
        bao.exists(),
        "{}: install it with `scripts/services up openbao`",
        bao.display()
    );
    let dir = tempfile::tempdir().unwrap();
    // Dev mode also binds the next port (cluster traffic): take a port that is free
    // with its neighbour.
    let port = (0..50)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .find(|p| *p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok())
        .expect("a free pair of ports");
    let child = Command::new(bao)
        .args(["server", "-dev", "-dev-tls", "-dev-root-token-id=root"])
        .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
        .arg(format!("-dev-tls-cert-dir={}", dir.path().display()))
        .env("HOME", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ca_file = dir.path().join("vault-ca.pem");
    let started = Instant::now();
    while !(ca_file.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "bao -dev-tls did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    TlsBao {
        child,
        address: format!("https://127.0.0.1:{port}"),
        ca_file,
        _dir: dir,
    }
}

#[tokio::test]
async fn store_vault_tls_is_always_verified_and_the_ca_file_adds_trust() {
    let bao = start_tls_bao();
    // Without the CA: refused, not retryable, and the advice names the fix.
    let untrusted = VaultStore::connect(&config(&bao.address, "secret", "root"))
        .await
        .unwrap();
    let error = untrusted.preflight().await.unwrap_err();
    assert!(
        matches!(&error, StoreError::Invalid(m) if m.contains("TLS verification") && m.contains("ca_file")),
        "{error:?}"
    );
    assert!(!error.is_transient());

    let trusted = VaultStore::connect(&VaultConfig {
        ca_file: Some(bao.ca_file.clone()),
        ..config(&bao.address, "secret", "root")
    })
    .await
    .unwrap();
    let started = Instant::now();
    // The listener accepts before the server has mounted `secret/`.
    while let Err(e) = trusted.preflight().await {
        assert!(started.elapsed() < Duration::from_secs(20), "{e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        trusted
            .write_cas("tls/check", &Secret::new("over-tls"), &BTreeMap::new(), 0)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        value_of(&trusted.read("tls/check").await.unwrap().value),
        Some("over-tls")
    );
}
