//! The `vault:` block and Vault paths.

use super::{Ctx, valid_env_name};
use crate::doc::diagnostic::{Diagnostic, did_you_mean};
use crate::playbook::model::RawPlaybook;
use crate::playbook::{Vault, VaultAuth};
use std::borrow::Cow;

/// Normalises a KV path (`/apps//billing/` → `apps/billing`), or says what is wrong.
/// Borrows when the path is already normal (the common case).
pub fn normalize_vault_path(path: &str) -> Result<Cow<'_, str>, String> {
    let mut parts = 0;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        parts += 1;
        if part == "." || part == ".." {
            return Err(format!("the Vault path `{path}` contains `{part}`"));
        }
        if part.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '*' | '+' | '#' | '?' | '%')
        }) {
            return Err(format!(
                "the Vault path `{path}` contains a character Vault paths cannot hold"
            ));
        }
    }
    if parts == 0 {
        return Err("the Vault path is empty".into());
    }
    if !path.starts_with('/') && !path.ends_with('/') && !path.contains("//") {
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(
        path.split('/')
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("/"),
    ))
}

pub(super) fn validate_vault(cx: &mut Ctx, raw: &RawPlaybook) -> Vault {
    let v = &raw.vault;
    let address = v.address.trim().trim_end_matches('/').to_owned();
    if let Err(why) = crate::net::parse_endpoint(&address) {
        cx.push(
            Diagnostic::error(format!("`{}` is not a Vault address rekey may send a token to: {why}", v.address), cx.at("/vault/address"))
                .help("write the URL with its scheme, e.g. `https://vault.example.com:8200` or `${VAULT_ADDR}` (plain http only to a loopback address)"),
        );
    }
    let mount = v
        .mount
        .clone()
        .unwrap_or_else(|| "secret".into())
        .trim_matches('/')
        .to_owned();
    if mount.is_empty() || mount.contains(char::is_whitespace) {
        cx.push(
            Diagnostic::error(
                format!("`{mount}` is not a mount path"),
                cx.at("/vault/mount"),
            )
            .help("the KV v2 mount, e.g. `secret`"),
        );
    }
    let staging_prefix =
        match normalize_vault_path(v.staging_prefix.as_deref().unwrap_or("rekey/staging")) {
            Ok(p) => p.into_owned(),
            Err(message) => {
                cx.push(
                    Diagnostic::error(message, cx.at("/vault/staging_prefix"))
                        .help("a KV path such as `rekey/staging`"),
                );
                String::new()
            }
        };
    let auth = match &v.auth {
        None => VaultAuth::Token {
            env: crate::env_vars::VAULT_TOKEN.into(),
        },
        Some(a) => {
            let check_env = |cx: &mut Ctx, name: &str, field: &str| {
                if !valid_env_name(name) {
                    cx.push(
                        Diagnostic::error(
                            format!("`{name}` is not an environment variable name"),
                            cx.at(&format!("/vault/auth/{field}")),
                        )
                        .help("write the variable's name, not its value, e.g. `VAULT_TOKEN`"),
                    );
                }
            };
            match a.method.as_str() {
                "token" => {
                    let env = a
                        .token_env
                        .clone()
                        .unwrap_or_else(|| crate::env_vars::VAULT_TOKEN.into());
                    check_env(cx, &env, "token_env");
                    for field in ["role_id", "secret_id_env"] {
                        let set = if field == "role_id" {
                            a.role_id.is_some()
                        } else {
                            a.secret_id_env.is_some()
                        };
                        if set {
                            cx.push(
                                Diagnostic::error(
                                    format!("`{field}` only applies to `method: approle`"),
                                    cx.key_at(&format!("/vault/auth/{field}")),
                                )
                                .help("remove it, or set `method: approle`"),
                            );
                        }
                    }
                    VaultAuth::Token { env }
                }
                "approle" => {
                    let secret_id_env = a
                        .secret_id_env
                        .clone()
                        .unwrap_or_else(|| crate::env_vars::VAULT_SECRET_ID.into());
                    check_env(cx, &secret_id_env, "secret_id_env");
                    let role_id = a.role_id.clone().unwrap_or_default();
                    if role_id.trim().is_empty() {
                        cx.push(Diagnostic::error("AppRole login needs a `role_id`", cx.key_at("/vault/auth/method")).help("add `role_id: <the role's role-id>` (not a secret; the secret-id comes from `secret_id_env`)"));
                    }
                    VaultAuth::AppRole {
                        role_id,
                        secret_id_env,
                        mount: a.mount.clone().unwrap_or_else(|| "approle".into()),
                    }
                }
                other => {
                    let mut d = Diagnostic::error(
                        format!("unknown Vault auth method `{other}`"),
                        cx.at("/vault/auth/method"),
                    );
                    d = match did_you_mean(other, ["token", "approle"]) {
                        Some(m) => d.help(format!("did you mean `{m}`?")),
                        None => d.help("use `token` or `approle`"),
                    };
                    cx.push(d);
                    VaultAuth::Token {
                        env: crate::env_vars::VAULT_TOKEN.into(),
                    }
                }
            }
        }
    };
    Vault {
        address,
        mount,
        staging_prefix,
        namespace: v.namespace.clone(),
        ca_file: v.ca_file.clone(),
        auth,
    }
}
