//! `${VAR}` interpolation from the environment, in string values (never in keys).
//!
//! Syntax: `${NAME}` (must be set), `${NAME:-fallback}` (fallback when unset or
//! empty), `$${` for a literal `${`. Variables whose names look like secrets are
//! refused: a secret interpolated into the playbook could end up in a plan, a log or
//! a report. Secrets are referenced by name instead (`admin: { env: NAME }`).

use super::diagnostic::Diagnostic;
use super::yaml::Node;

/// Names that look like they hold a secret value.
const SECRET_MARKERS: &[&str] =
    &["TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "PRIVATE", "CREDENTIAL", "API_KEY", "APIKEY", "ACCESS_KEY"];

/// Suffixes that name something about a secret rather than the secret itself
/// (`GITLAB_TOKEN_ID`, `API_KEY_NAME`). `SECRET_ID` stays a secret: it is AppRole's.
const NOT_SECRET_SUFFIXES: &[&str] = &["_ID", "_NAME", "_URL", "_ADDR", "_HOST", "_PORT", "_PATH", "_FILE", "_USER", "_ENV"];

pub fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    if upper.ends_with("SECRET_ID") {
        return true;
    }
    SECRET_MARKERS.iter().any(|m| upper.contains(m)) && !NOT_SECRET_SUFFIXES.iter().any(|s| upper.ends_with(s))
}

/// Replaces `${...}` in every string of the tree; returns one diagnostic per problem.
pub fn interpolate(root: &mut Node<'_>, env: &dyn Fn(&str) -> Option<String>) -> Vec<Diagnostic> {
    let mut problems = Vec::new();
    root.for_each_string_mut(&mut |text, pos| {
        if !text.contains('$') {
            return;
        }
        match expand(text, env) {
            Ok(expanded) => *text = std::borrow::Cow::Owned(expanded),
            Err(problem) => problems.push(problem.into_diagnostic(Some(pos))),
        }
    });
    problems
}

#[derive(Debug, PartialEq)]
pub enum Problem {
    Unset(String),
    Secret(String),
    Unterminated,
    BadName(String),
}

impl Problem {
    fn into_diagnostic(self, pos: Option<super::yaml::Pos>) -> Diagnostic {
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
            Problem::Unterminated => Diagnostic::error("`${` without a closing `}`", pos)
                .help("close it (`${NAME}`), or write `$${` for a literal `${`"),
            Problem::BadName(name) => Diagnostic::error(format!("`{name}` is not a valid environment variable name"), pos)
                .help("names are letters, digits and `_`, not starting with a digit: `${VAULT_ADDR}`"),
        }
    }
}

pub fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Problem> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(literal) = after.strip_prefix("${") {
            out.push_str("${");
            rest = literal;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').ok_or(Problem::Unterminated)?;
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
                (None, Some(fallback)) => out.push_str(fallback),
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
        assert_eq!(expand("pg://${HOST}:5432", &env).unwrap(), "pg://db.internal:5432");
        assert_eq!(expand("${MISSING:-x}${EMPTY:-y}", &env).unwrap(), "xy");
        assert_eq!(expand("cost $5 and $${HOST}", &env).unwrap(), "cost $5 and ${HOST}");
    }

    #[test]
    fn reports_unset_unterminated_bad_and_secret_names() {
        assert_eq!(expand("${NOPE}", &env), Err(Problem::Unset("NOPE".into())));
        assert_eq!(expand("${HOST", &env), Err(Problem::Unterminated));
        assert_eq!(expand("${1X}", &env), Err(Problem::BadName("1X".into())));
        assert_eq!(expand("${VAULT_TOKEN}", &env), Err(Problem::Secret("VAULT_TOKEN".into())));
        assert_eq!(expand("${DB_PASSWORD:-x}", &env), Err(Problem::Secret("DB_PASSWORD".into())));
        assert_eq!(expand("${VAULT_SECRET_ID:-x}", &env), Err(Problem::Secret("VAULT_SECRET_ID".into())));
        assert_eq!(expand("${GITLAB_TOKEN_ID:-7}", &env).unwrap(), "7");
    }
}
