//! `${VAR}` interpolation from the environment, in string values (never in keys).
//!
//! Syntax: `${NAME}` (must be set), `${NAME:-fallback}` (fallback when unset or
//! empty), `$${` for a literal `${`. Variables whose names look like secrets are
//! refused: a secret interpolated into the playbook could end up in a plan, a log or
//! a report. Secrets are referenced by name instead (`admin: { env: NAME }`).

use crate::doc::diagnostic::Diagnostic;
use crate::doc::yaml::Node;

/// Words that mark a variable as holding a secret, matched against the
/// `_`-separated words of its name (`MYSQL_PWD`, `STRIPE_KEY`, `GITHUB_PAT`).
const SECRET_WORDS: &[&str] = &[
    "TOKEN",
    "TOKENS",
    "SECRET",
    "SECRETS",
    "PASSWORD",
    "PASSWD",
    "PWD",
    "PASS",
    "PASSPHRASE",
    "PRIVATE",
    "CREDENTIAL",
    "CREDENTIALS",
    "CREDS",
    "KEY",
    "APIKEY",
    "PAT",
    "AUTH",
    "COOKIE",
    "SESSION",
    "SIGNATURE",
    "CERT",
    "DSN",
];
/// Substrings that mark a secret even inside a longer word (`APITOKEN`, `DBPASSWORD`).
const SECRET_MARKERS: &[&str] = &[
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "PASSPHRASE",
    "PRIVATE",
    "CREDENTIAL",
    "APIKEY",
];
/// Last words that name something *about* a secret rather than the secret itself
/// (`GITLAB_TOKEN_ID`, `KMS_KEY_NAME`). `SECRET_ID` stays a secret: it is AppRole's.
const NOT_SECRET_SUFFIXES: &[&str] = &[
    "ID", "NAME", "URL", "ADDR", "HOST", "PORT", "PATH", "FILE", "USER", "ENV", "TYPE",
];

/// Whether variable `name` holds a secret by its name alone: a secret word in it,
/// or one of rekey's own secret variables (`REKEY_AUDIT_AUTHORIZATION` has no
/// secret word).
pub fn looks_secret(name: &str) -> bool {
    if crate::env_vars::SECRETS.contains(&name) {
        return true;
    }
    let upper = name.to_ascii_uppercase();
    if upper.ends_with("SECRET_ID") {
        return true;
    }
    let words: Vec<&str> = upper.split('_').filter(|w| !w.is_empty()).collect();
    if words
        .last()
        .is_some_and(|w| NOT_SECRET_SUFFIXES.contains(w))
    {
        return false;
    }
    words.iter().any(|w| SECRET_WORDS.contains(w))
        || SECRET_MARKERS.iter().any(|m| upper.contains(m))
}

/// Replaces `${...}` in every string of the tree; returns one diagnostic per problem.
///
/// A variable the playbook itself names as holding a secret (`token_env`,
/// `secret_id_env`, an admin credential's `env`) is refused whatever its name:
/// `admin: { env: STRIPE_ADMIN }` makes `${STRIPE_ADMIN}` a secret too.
pub fn interpolate(root: &mut Node<'_>, env: &dyn Fn(&str) -> Option<String>) -> Vec<Diagnostic> {
    let mut problems = Vec::new();
    let sources = secret_sources(root);
    root.for_each_string_mut(&mut |text, pos| {
        if !text.contains('$') {
            return;
        }
        let asked: std::cell::RefCell<Option<String>> = std::cell::RefCell::new(None);
        let guarded = |name: &str| {
            if sources.iter().any(|s| s == name) {
                asked.borrow_mut().get_or_insert_with(|| name.to_owned());
                return None;
            }
            env(name)
        };
        let result = expand(text, &guarded);
        if let Some(name) = asked.into_inner() {
            problems.push(Problem::SecretSource(name).into_diagnostic(Some(pos)));
            return;
        }
        match result {
            Ok(expanded) => *text = std::borrow::Cow::Owned(expanded),
            Err(problem) => problems.push(problem.into_diagnostic(Some(pos))),
        }
    });
    problems
}

/// The variables the playbook names as secret sources: the string values of
/// `token_env`, `secret_id_env` and `env` keys anywhere in the tree.
fn secret_sources(root: &Node<'_>) -> Vec<String> {
    let mut names = Vec::new();
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        match &node.value {
            crate::doc::yaml::Value::Seq(items) => stack.extend(items.iter()),
            crate::doc::yaml::Value::Map(entries) => {
                for (key, value) in entries {
                    if let crate::doc::yaml::Value::Str(s) = &value.value
                        && matches!(
                            key.name.as_ref(),
                            "token_env" | "secret_id_env" | "env" | "url_env" | "authorization_env"
                        )
                        && !s.contains('$')
                    {
                        names.push(s.to_string());
                    }
                    stack.push(value);
                }
            }
            _ => {}
        }
    }
    names
}

#[derive(Debug, PartialEq)]
pub enum Problem {
    Unset(String),
    Secret(String),
    /// Named by the playbook as a secret source (`token_env`, `secret_id_env`, `env`).
    SecretSource(String),
    Unterminated,
    BadName(String),
}

impl Problem {
    fn into_diagnostic(self, pos: Option<crate::doc::yaml::Pos>) -> Diagnostic {
        match self {
            Problem::Unset(name) => Diagnostic::error(format!("environment variable `{name}` is not set"), pos)
                .label(format!("uses ${{{name}}}"))
                .help(format!("export {name}=... before running rekey, or write ${{{name}:-fallback}} to give a default")),
            Problem::Secret(name) => Diagnostic::error(
                format!("refusing to interpolate `{name}`: its name says it holds a secret"),
                pos,
            )
            .help(format!(
                "secrets never go into playbook text; reference the variable by name instead, e.g. `admin: {{ env: {name} }}` or `auth: {{ token_env: {name} }}`"
            )),
            Problem::SecretSource(name) => Diagnostic::error(
                format!("refusing to interpolate `{name}`: this playbook reads a secret from it"),
                pos,
            )
            .help(format!(
                "`{name}` is named as a secret source (`token_env`, `secret_id_env` or an admin `env`); its value must never be copied into playbook text"
            )),
            Problem::Unterminated => Diagnostic::error("`${` without a closing `}`", pos)
                .help("close it (`${NAME}`), or write `$${` for a literal `${`"),
            Problem::BadName(name) => Diagnostic::error(format!("`{name}` is not a valid environment variable name"), pos)
                .help("names are letters, digits and `_`, not starting with a digit: `${VAULT_ADDR}`"),
        }
    }
}

pub fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Problem> {
    expand_depth(text, env, 0)
}

/// Index of the `}` closing a `${` whose body starts at `body`, minding nested `${`.
fn closing_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn expand_depth(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    depth: usize,
) -> Result<String, Problem> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(literal) = after.strip_prefix("${") {
            out.push_str("${");
            rest = literal;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = closing_brace(inner).ok_or(Problem::Unterminated)?;
            let body = &inner[..end];
            let (name, fallback) = match body.find(":-") {
                Some(j) => (&body[..j], Some(&body[j + 2..])),
                None => (body, None),
            };
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(Problem::BadName(name.to_owned()));
            }
            if looks_secret(name) {
                return Err(Problem::Secret(name.to_owned()));
            }
            match (env(name).filter(|v| !v.is_empty()), fallback) {
                (Some(value), _) => out.push_str(&value),
                // A fallback may itself use variables: `${A:-${B}}`.
                (None, Some(fallback)) if depth < 8 => {
                    out.push_str(&expand_depth(fallback, env, depth + 1)?)
                }
                (None, Some(_)) => return Err(Problem::Unterminated),
                (None, None) => return Err(Problem::Unset(name.to_owned())),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.internal".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_fallbacks_and_escapes() {
        assert_eq!(
            expand("pg://${HOST}:5432", &env).unwrap(),
            "pg://db.internal:5432"
        );
        assert_eq!(expand("${MISSING:-x}${EMPTY:-y}", &env).unwrap(), "xy");
        assert_eq!(
            expand("cost $5 and $${HOST}", &env).unwrap(),
            "cost $5 and ${HOST}"
        );
        assert_eq!(
            expand("${MISSING:-${HOST}}/x", &env).unwrap(),
            "db.internal/x"
        );
        assert_eq!(
            expand("${MISSING:-${ALSO_MISSING:-deep}}", &env).unwrap(),
            "deep"
        );
        assert_eq!(
            expand("${MISSING:-${NOPE}}", &env),
            Err(Problem::Unset("NOPE".into()))
        );
    }

    #[test]
    fn variables_named_as_secret_sources_are_never_interpolated() {
        let text = "a: { env: STRIPE_ADMIN }\nvault: { auth: { token_env: MY_VT } }\nb: \"${STRIPE_ADMIN}\"\nc: \"x${NOPE:-${MY_VT}}\"\nd: \"${HOST}\"\n";
        let mut root = crate::doc::yaml::parse(text).unwrap();
        let env = |name: &str| (name != "NOPE").then(|| format!("value-of-{name}"));
        let problems = interpolate(&mut root, &env);
        let messages: Vec<String> = problems.iter().map(|d| d.message.clone()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(
            messages.iter().any(|m| m.contains("`STRIPE_ADMIN`")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains("`MY_VT`")),
            "{messages:?}"
        );
        assert!(!root.to_json().to_string().contains("value-of-STRIPE_ADMIN"));
        assert!(!root.to_json().to_string().contains("value-of-MY_VT"));
        assert!(root.to_json().to_string().contains("value-of-HOST"));
    }

    #[test]
    fn reports_unset_unterminated_bad_and_secret_names() {
        assert_eq!(expand("${NOPE}", &env), Err(Problem::Unset("NOPE".into())));
        assert_eq!(expand("${HOST", &env), Err(Problem::Unterminated));
        assert_eq!(expand("${1X}", &env), Err(Problem::BadName("1X".into())));
        assert_eq!(
            expand("${VAULT_TOKEN}", &env),
            Err(Problem::Secret("VAULT_TOKEN".into()))
        );
        assert_eq!(
            expand("${DB_PASSWORD:-x}", &env),
            Err(Problem::Secret("DB_PASSWORD".into()))
        );
        assert_eq!(
            expand("${VAULT_SECRET_ID:-x}", &env),
            Err(Problem::Secret("VAULT_SECRET_ID".into()))
        );
        assert_eq!(expand("${GITLAB_TOKEN_ID:-7}", &env).unwrap(), "7");
        for name in [
            "MYSQL_PWD",
            "DB_PASS",
            "STRIPE_KEY",
            "GITHUB_PAT",
            "APITOKEN",
            "SESSION_COOKIE",
            "NPM_AUTH",
        ] {
            assert_eq!(
                expand(&format!("${{{name}:-x}}"), &env),
                Err(Problem::Secret(name.into())),
                "{name}"
            );
        }
        for name in [
            "PATH_PREFIX",
            "KEYCLOAK_URL",
            "SSH_KEY_PATH",
            "PASSENGER_COUNT",
        ] {
            assert!(
                expand(&format!("${{{name}:-x}}"), &env).is_ok(),
                "{name} is not a secret"
            );
        }
    }
}
