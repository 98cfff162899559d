//! A credential's propagation sinks.

use super::Ctx;
use super::providers::validate_admin;
use super::vault::normalize_vault_path;
use crate::catalog::Need;
use crate::doc::diagnostic::Diagnostic;
use crate::playbook::model::RawCredential;
use crate::playbook::{Sink, Vault};

/// Checks a credential's propagation sinks: each type's required fields, no field
/// of another type, paths that do not collide with what rekey writes itself.
pub(super) fn validate_sinks(
    cx: &mut Ctx,
    c: &RawCredential,
    base: &str,
    vault: &Vault,
) -> Vec<Sink> {
    let mut out = Vec::new();
    for (i, raw) in c.sinks.iter().enumerate() {
        let at = format!("{base}/sinks/{i}");
        let allowed: &[&str] = match raw.kind.as_str() {
            "vault" => &["path"],
            "file" => &["path", "reload"],
            "github" => &[
                "repository",
                "environment",
                "secret_name",
                "token",
                "base_url",
            ],
            other => {
                cx.push(
                    Diagnostic::error(
                        format!("unknown sink type `{other}`"),
                        cx.at(&format!("{at}/type")),
                    )
                    .help("sink types: `vault`, `file`, `github`"),
                );
                continue;
            }
        };
        let given = [
            ("path", raw.path.is_some()),
            ("reload", raw.reload.is_some()),
            ("repository", raw.repository.is_some()),
            ("environment", raw.environment.is_some()),
            ("secret_name", raw.secret_name.is_some()),
            ("token", raw.token.is_some()),
            ("base_url", raw.base_url.is_some()),
        ];
        let mut ok = true;
        for (field, _) in given.iter().filter(|(f, g)| *g && !allowed.contains(f)) {
            ok = false;
            cx.push(
                Diagnostic::error(
                    format!("a `{}` sink has no `{field}`", raw.kind),
                    cx.key_at(&format!("{at}/{field}")),
                )
                .help(format!(
                    "fields of a `{}` sink: type, {}",
                    raw.kind,
                    allowed.join(", ")
                )),
            );
        }
        let need = |cx: &mut Ctx, field: &str, value: Option<&String>, hint: &str| match value
            .filter(|v| !v.trim().is_empty())
        {
            Some(v) => Some(v.clone()),
            None => {
                cx.push(
                    Diagnostic::error(format!("a `{}` sink needs `{field}`", raw.kind), cx.at(&at))
                        .help(hint.to_owned()),
                );
                None
            }
        };
        let sink = match raw.kind.as_str() {
            "vault" => need(
                cx,
                "path",
                raw.path.as_ref(),
                "e.g. `path: mirror/billing/db` (inside the mount)",
            )
            .and_then(|p| match normalize_vault_path(&p) {
                Ok(p)
                    if p == c.vault_path.as_str()
                        || normalize_vault_path(&c.vault_path).is_ok_and(|v| v == p) =>
                {
                    cx.push(
                        Diagnostic::error(
                            "this sink writes the credential's own vault_path",
                            cx.at(&format!("{at}/path")),
                        )
                        .help(
                            "a sink copies the value to another path; remove it or change the path",
                        ),
                    );
                    None
                }
                Ok(p)
                    if !vault.staging_prefix.is_empty()
                        && (p == vault.staging_prefix
                            || p.starts_with(&format!("{}/", vault.staging_prefix))) =>
                {
                    cx.push(
                        Diagnostic::error(
                            format!(
                                "`{p}` lies under the staging prefix `{}`",
                                vault.staging_prefix
                            ),
                            cx.at(&format!("{at}/path")),
                        )
                        .help("sinks write outside `vault.staging_prefix`"),
                    );
                    None
                }
                Ok(p) => Some(Sink::Vault {
                    path: p.into_owned(),
                }),
                Err(message) => {
                    cx.push(
                        Diagnostic::error(message, cx.at(&format!("{at}/path")))
                            .help("a KV path inside the mount, e.g. `mirror/billing/db`"),
                    );
                    None
                }
            }),
            "file" => {
                let path = need(
                    cx,
                    "path",
                    raw.path.as_ref(),
                    "e.g. `path: /etc/billing/api-key`",
                );
                let reload = raw.reload.clone().unwrap_or_default();
                if raw.reload.is_some() && reload.first().is_none_or(|p| p.trim().is_empty()) {
                    ok = false;
                    cx.push(
                        Diagnostic::error(
                            "`reload` is a command as a list, starting with the program",
                            cx.at(&format!("{at}/reload")),
                        )
                        .help("e.g. `reload: [systemctl, reload, billing]` (no shell)"),
                    );
                }
                path.map(|p| Sink::File {
                    path: p.into(),
                    reload,
                })
            }
            _ => {
                let repository = need(
                    cx,
                    "repository",
                    raw.repository.as_ref(),
                    "e.g. `repository: acme/deploy`",
                );
                if let Some(r) = &repository {
                    let parts: Vec<&str> = r.split('/').collect();
                    if parts.len() != 2
                        || parts.iter().any(|p| {
                            p.is_empty()
                                || !p
                                    .chars()
                                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
                        })
                    {
                        ok = false;
                        cx.push(
                            Diagnostic::error(
                                format!("`{r}` is not a GitHub repository (`owner/name`)"),
                                cx.at(&format!("{at}/repository")),
                            )
                            .help("e.g. `acme/deploy`"),
                        );
                    }
                }
                let name = need(
                    cx,
                    "secret_name",
                    raw.secret_name.as_ref(),
                    "e.g. `secret_name: DEPLOY_API_KEY`",
                );
                if let Some(n) = &name
                    && (!n.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
                        || n.starts_with(|ch: char| ch.is_ascii_digit())
                        || n.to_ascii_uppercase().starts_with("GITHUB_"))
                {
                    ok = false;
                    cx.push(
                        Diagnostic::error(
                            format!("`{n}` is not a valid GitHub Actions secret name"),
                            cx.at(&format!("{at}/secret_name")),
                        )
                        .help("letters, digits and `_`, not starting with a digit or `GITHUB_`"),
                    );
                }
                // GitHub environment names may hold `/` (the sink encodes the name
                // as one path segment); an empty one or a control character cannot be.
                if let Some(e) = &raw.environment
                    && (e.trim().is_empty() || e.chars().any(char::is_control))
                {
                    ok = false;
                    cx.push(
                        Diagnostic::error(
                            format!("`{e}` is not an environment name"),
                            cx.at(&format!("{at}/environment")),
                        )
                        .help("the name of an environment of the repository, e.g. `production`"),
                    );
                }
                let base_url = raw
                    .base_url
                    .clone()
                    .unwrap_or_else(|| "https://api.github.com".into());
                if let Err(why) = crate::net::parse_endpoint(&base_url) {
                    ok = false;
                    cx.push(Diagnostic::error(format!("`{base_url}`: {why}"), cx.at(&format!("{at}/base_url"))).help("the token travels with every request: use https (plain http only to loopback, for tests)"));
                }
                let token = if raw.token.is_some() {
                    validate_admin(
                        cx,
                        &raw.token,
                        Need::Required,
                        &format!("{at}/token"),
                        "github sink",
                    )
                } else {
                    cx.push(Diagnostic::error("a `github` sink needs `token`", cx.at(&at)).help("`token: { env: GITHUB_TOKEN }` or `token: { vault_path: infra/github-token }`"));
                    None
                };
                match (repository, name, token) {
                    (Some(repository), Some(secret_name), Some(token)) => Some(Sink::Github {
                        base_url: base_url.trim_end_matches('/').to_owned(),
                        repository,
                        environment: raw.environment.clone(),
                        secret_name,
                        token,
                    }),
                    _ => None,
                }
            }
        };
        if let (Some(sink), true) = (sink, ok) {
            out.push(sink);
        }
    }
    out
}
