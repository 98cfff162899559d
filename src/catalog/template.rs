//! Request templates (minijinja) and the fence around the base URL.
//!
//! A secret reaches a template only as an opaque object (`secret.new`,
//! `admin.<field>`) that prints a marker instead of its value; the `expose` filter
//! is the one way to get the value, and validation allows it only in the body of a
//! `change` call. A rendered text that still holds the marker is refused, so a
//! definition cannot send (or log) a secret by accident.

use super::ProviderType;
use crate::secret::{Secret, SecretMap};
use minijinja::value::{Object, Value};
use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// What an unexposed secret prints as. Never a plausible value.
const MARKER: &str = "\u{1}rekey-unexposed-secret\u{1}";

/// A secret inside a template: prints the marker; `| expose` gives the value.
#[derive(Clone)]
pub struct SecretValue(pub Secret);

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(..)")
    }
}

impl Object for SecretValue {
    fn repr(self: &Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Plain
    }
    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MARKER)
    }
}

/// The admin credential's fields, each a [`SecretValue`].
#[derive(Debug)]
struct AdminValues(Option<SecretMap>);

impl Object for AdminValues {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let name = key.as_str()?;
        match &self.0 {
            Some(a) => a
                .get(name)
                .map(|s| Value::from_object(SecretValue(s.clone()))),
            // Validation: any field name is acceptable.
            None => Some(Value::from_object(SecretValue(Secret::new("x")))),
        }
    }
    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MARKER)
    }
}

/// `found.<name>` during validation: every name exists.
#[derive(Debug)]
struct AnyName;

impl Object for AnyName {
    fn get_value(self: &Arc<Self>, _key: &Value) -> Option<Value> {
        Some(Value::from("x"))
    }
}

fn expose(v: Value) -> Result<Value, minijinja::Error> {
    match v.downcast_object_ref::<SecretValue>() {
        Some(s) => Ok(Value::from(s.0.expose())),
        None => Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "`expose` applies to secrets only (secret.new, admin.<field>)",
        )),
    }
}

/// `days_from_now(90)`: the date that many days ahead, `YYYY-MM-DD` (GitLab's
/// `expires_at`). A string like "90d" is read too. `days_from_now(90, 365)`
/// refuses more than 365 days (a provider's maximum lifetime) instead of sending
/// a date the provider would refuse after the lookups.
fn days_from_now(v: Value, max: Option<i64>) -> Result<Value, minijinja::Error> {
    let days = match v.as_i64() {
        Some(d) => d,
        None => v
            .as_str()
            .and_then(|s| s.trim().trim_end_matches('d').parse::<i64>().ok())
            .ok_or_else(|| {
                minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "days_from_now takes a number of days",
                )
            })?,
    };
    if days < 1 {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("a lifetime of {days} days is not in the future"),
        ));
    }
    if let Some(max) = max
        && days > max
    {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("a lifetime of {days} days is beyond the provider's maximum of {max} days"),
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let t = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs((now + days.clamp(0, 3650) * 86_400) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    Ok(Value::from(&s[..10]))
}

/// `urlencode_segment`: a value made into exactly one path segment: everything
/// but RFC 3986 unreserved characters is percent-encoded, `/` included (GitLab's
/// `group%2Fproject`, GitHub's environment names). minijinja's `urlencode` keeps
/// `/`, which splits a namespaced id into two segments.
fn urlencode_segment(v: Value) -> Result<Value, minijinja::Error> {
    if v.is_undefined() || v.is_none() {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "urlencode_segment got no value (an unset setting?)",
        ));
    }
    let text = match v.as_str() {
        Some(s) => s.to_owned(),
        None => v.to_string(),
    };
    Ok(Value::from(encode_segment(&text)))
}

/// Percent-encodes every byte but `A-Z a-z 0-9 - . _ ~`.
pub fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `fail("why")`: stops the request with that message. For a value a request
/// must not go without (`{{ settings.scopes or old.scopes or fail("...") }}`).
fn fail(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.add_filter("expose", expose);
        env.add_filter("days_from_now", days_from_now);
        env.add_filter("urlencode_segment", urlencode_segment);
        env.add_function("fail", fail);
        env
    })
}

/// What a template may name, for one request.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// Instance settings overlaid with the credential's settings; every setting
    /// the catalog declares is present (null when unset).
    pub settings: serde_json::Map<String, serde_json::Value>,
    pub credential: String,
    pub account: Option<String>,
    pub tag: Option<String>,
    pub key_id: Option<String>,
    pub public_key: Option<String>,
    pub found: BTreeMap<String, serde_json::Value>,
    /// The key being replaced (create), when rekey knows it.
    pub old_key_id: Option<String>,
    /// What `read_old` bound from the key being replaced; `None` when it was not
    /// read (no old key known, or it is gone).
    pub old: Option<BTreeMap<String, serde_json::Value>>,
    pub new_secret: Option<Secret>,
    pub admin: Option<SecretMap>,
}

impl Context {
    fn value(&self, validating: bool) -> Value {
        let mut m: BTreeMap<&str, Value> = BTreeMap::new();
        m.insert(
            "settings",
            Value::from(minijinja::value::Serde(&self.settings)),
        );
        m.insert("credential", Value::from(self.credential.clone()));
        m.insert("account", opt(&self.account));
        m.insert("tag", opt(&self.tag));
        m.insert("key_id", opt(&self.key_id));
        m.insert("public_key", opt(&self.public_key));
        m.insert(
            "found",
            if validating {
                Value::from_object(AnyName)
            } else {
                Value::from(minijinja::value::Serde(&self.found))
            },
        );
        m.insert("old_key_id", opt(&self.old_key_id));
        m.insert(
            "old",
            match (&self.old, validating) {
                (_, true) => Value::from_object(AnyName),
                (Some(old), false) => Value::from(minijinja::value::Serde(old)),
                (None, false) => Value::from(()),
            },
        );
        let mut secret = BTreeMap::new();
        if let Some(s) = &self.new_secret {
            secret.insert("new", Value::from_object(SecretValue(s.clone())));
        }
        m.insert("secret", Value::from(secret));
        m.insert(
            "admin",
            Value::from_object(AdminValues(if validating {
                None
            } else {
                Some(self.admin.clone().unwrap_or_default())
            })),
        );
        Value::from(m)
    }
}

fn opt(v: &Option<String>) -> Value {
    match v {
        Some(s) => Value::from(s.clone()),
        None => Value::from(()),
    }
}

/// A template failure, described without values.
#[derive(Debug)]
pub enum DryError {
    Unexposed,
    Template { message: String, hint: String },
}

fn describe(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(d) => format!("{} ({d})", e.kind()),
        None => e.kind().to_string(),
    }
}

/// Renders one text template. Errors never hold values.
pub fn render(source: &str, cx: &Context) -> Result<String, String> {
    let out = env()
        .render_str(source, cx.value(false))
        .map_err(|e| describe(&e))?;
    if out.contains(MARKER) {
        return Err("the template prints a secret without `| expose`".into());
    }
    Ok(out)
}

/// Renders a JSON body: string leaves are templates; a leaf that is exactly one
/// `{{ expr }}` keeps the expression's type (a boolean, a list of policies).
pub fn render_json(body: &serde_json::Value, cx: &Context) -> Result<serde_json::Value, String> {
    let ctx = cx.value(false);
    render_json_with(body, &ctx)
}

fn render_json_with(body: &serde_json::Value, ctx: &Value) -> Result<serde_json::Value, String> {
    Ok(match body {
        serde_json::Value::String(s) => {
            if let Some(expr) = single_expression(s) {
                let e = env().compile_expression(expr).map_err(|e| describe(&e))?;
                let v = e.eval(ctx.clone()).map_err(|e| describe(&e))?;
                if v.downcast_object_ref::<SecretValue>().is_some() {
                    return Err("the template puts a secret in the body without `| expose`".into());
                }
                if v.is_undefined() {
                    return Err(format!("`{}` is undefined", expr.trim()));
                }
                serde_json::to_value(&v).map_err(|e| e.to_string())?
            } else {
                let out = env().render_str(s, ctx.clone()).map_err(|e| describe(&e))?;
                if out.contains(MARKER) {
                    return Err("the template prints a secret without `| expose`".into());
                }
                serde_json::Value::String(out)
            }
        }
        serde_json::Value::Array(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|v| render_json_with(v, ctx))
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                out.insert(k.clone(), render_json_with(v, ctx)?);
            }
            serde_json::Value::Object(out)
        }
        other => other.clone(),
    })
}

/// `{{ expr }}` and nothing else around it.
fn single_expression(s: &str) -> Option<&str> {
    let t = s.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}")).then_some(inner)
}

/// Renders against placeholders during validation: every declared setting is
/// `"x"`, ids and names are plausible strings, secrets are opaque.
pub fn dry_render(source: &str, t: &ProviderType, base_url: bool) -> Result<String, DryError> {
    let mut cx = Context {
        credential: "cred".into(),
        account: Some("acct".into()),
        tag: Some("rekey:run:cred".into()),
        key_id: Some("key1".into()),
        old_key_id: Some("key0".into()),
        public_key: Some("ssh-ed25519 AAAA".into()),
        new_secret: Some(Secret::new("x")),
        ..Context::default()
    };
    let declared: Vec<&String> = if base_url {
        t.settings.keys().collect()
    } else {
        t.settings
            .keys()
            .chain(t.credential_settings.keys())
            .collect()
    };
    for k in &declared {
        let default = t
            .settings
            .get(*k)
            .or_else(|| t.credential_settings.get(k))
            .and_then(|s| s.default.clone());
        cx.settings.insert(
            (*k).clone(),
            default.unwrap_or_else(|| serde_json::Value::String("x".into())),
        );
    }
    let ctx = cx.value(true);
    let rendered = match single_expression(source) {
        Some(expr) => env()
            .compile_expression(expr)
            .and_then(|e| e.eval(ctx.clone()))
            .and_then(|v| {
                if v.is_undefined() {
                    Err(minijinja::Error::new(
                        ErrorKind::UndefinedError,
                        "undefined value",
                    ))
                } else {
                    Ok(v)
                }
            })
            .map(|v| {
                if v.downcast_object_ref::<SecretValue>().is_some() {
                    MARKER.to_owned()
                } else {
                    v.to_string()
                }
            }),
        None => env().render_str(source, ctx),
    };
    match rendered {
        Ok(out) if out.contains(MARKER) => Err(DryError::Unexposed),
        Ok(out) => Ok(out),
        Err(e) => {
            let hint = match e.kind() {
                ErrorKind::UndefinedError => format!(
                    "a template may name settings.<name> ({}), credential, account, tag, key_id, old_key_id, old.<name>, public_key, found.<name>, secret.new, admin.<field>",
                    if declared.is_empty() {
                        "this file declares no settings".to_owned()
                    } else {
                        declared.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    }
                ),
                ErrorKind::UnknownFilter => {
                    "filters: expose, urlencode, urlencode_segment, days_from_now, default, lower, upper, tojson and minijinja's builtins; function fail(message)".into()
                }
                ErrorKind::SyntaxError => "fix the template syntax: `{{ name }}`, `{{ value | filter }}`".into(),
                _ => "see providers/README.md for what templates may use".into(),
            };
            Err(DryError::Template {
                message: describe(&e),
                hint,
            })
        }
    }
}

/// Checks an instance's base URL: absolute, http(s), no credentials, query or
/// fragment; plain http only to a loopback address (a local stub), so an admin
/// credential never crosses a network in clear.
pub fn parse_base_url(s: &str) -> Result<url::Url, String> {
    let u = crate::net::parse_endpoint(s)?;
    if !u.username().is_empty() || u.password().is_some() {
        return Err(
            "it holds a user name or password; credentials go in the admin credential".into(),
        );
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err("it has a query or fragment".into());
    }
    Ok(u)
}

/// The base path without its trailing slash.
fn base_path(base: &url::Url) -> &str {
    base.path().trim_end_matches('/')
}

/// Joins a rendered path to the base URL, refusing anything that could leave it:
/// absolute URLs, `//host`, `..` and `.` segments (also percent-encoded),
/// backslashes, queries smuggled into the path, control characters.
pub fn confine(
    base: &url::Url,
    path: &str,
    query: &[(String, String)],
) -> Result<url::Url, String> {
    if !path.starts_with('/') || path.starts_with("//") {
        return Err(format!(
            "the path `{}` does not start with a single `/`",
            shown(path)
        ));
    }
    if path.contains("://") || path.contains('\\') || path.contains('?') || path.contains('#') {
        return Err(format!(
            "the path `{}` is not a plain path under the base URL",
            shown(path)
        ));
    }
    if path.chars().any(|c| c.is_control() || c == ' ') {
        return Err("the path holds spaces or control characters".into());
    }
    for seg in path.split('/') {
        let decoded = percent_decode(seg);
        // An encoded `/` is a legitimate part of one segment (GitLab's
        // `group%2Fproject`), but never together with a dot segment.
        if decoded.split(['/', '\\']).any(|p| p == "." || p == "..") {
            return Err(format!(
                "the path `{}` tries to leave the base URL",
                shown(path)
            ));
        }
    }
    let mut u = base.clone();
    u.set_path(&format!("{}{}", base_path(base), path));
    if !query.is_empty() {
        let mut pairs = u.query_pairs_mut();
        for (k, v) in query {
            pairs.append_pair(k, v);
        }
    }
    inside(base, &u)?;
    Ok(u)
}

/// A next-page URL from a Link header or a body (absolute, or relative to the
/// host): followed only when it stays under the base URL.
pub fn confine_next(base: &url::Url, next: &str) -> Result<url::Url, String> {
    let u = base
        .join(next)
        .map_err(|_| "the next-page URL is not a URL".to_owned())?;
    if u.path().split('/').any(|s| {
        let d = percent_decode(s);
        d == ".." || d == "."
    }) {
        return Err("the next-page URL tries to leave the base URL".into());
    }
    inside(base, &u)?;
    Ok(u)
}

fn inside(base: &url::Url, u: &url::Url) -> Result<(), String> {
    let same_origin = u.scheme() == base.scheme()
        && u.host_str() == base.host_str()
        && u.port_or_known_default() == base.port_or_known_default()
        && u.username().is_empty()
        && u.password().is_none();
    let bp = base_path(base);
    let under = u.path() == bp || u.path().starts_with(&format!("{bp}/"));
    if same_origin && under {
        Ok(())
    } else {
        Err(format!(
            "a request to {}://{}{} would leave the base URL {}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.path(),
            base
        ))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(
                std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                16,
            )
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    // Decoded twice: `%252e` is `%2e` after one pass.
    let once = String::from_utf8_lossy(&out).into_owned();
    if once.contains('%') && once != s {
        percent_decode(&once)
    } else {
        once
    }
}

/// A path for an error message: short, and never a secret (paths cannot hold
/// exposed secrets: validation refuses `expose` there).
fn shown(path: &str) -> String {
    path.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(s: &str) -> url::Url {
        parse_base_url(s).unwrap()
    }

    #[test]
    fn paths_that_leave_the_base_url_are_refused() {
        let b = base("https://api.example.com/v1");
        assert_eq!(
            confine(&b, "/keys/abc", &[]).unwrap().as_str(),
            "https://api.example.com/v1/keys/abc"
        );
        for bad in [
            "https://evil.example/keys",
            "//evil.example/keys",
            "/../admin",
            "/keys/%2e%2e/%2e%2e/admin",
            "/keys/%252e%252e/x",
            "/keys\\..\\x",
            "/keys?x=1",
            "keys",
            "/a/./b",
            "/keys/a%2f..%2fb",
        ] {
            assert!(confine(&b, bad, &[]).is_err(), "{bad} was accepted");
        }
        assert!(confine_next(&b, "https://evil.example/v1/keys?page=2").is_err());
        assert!(confine_next(&b, "https://api.example.com/v2/keys").is_err());
        assert!(confine_next(&b, "/v1/keys?page=2").is_ok());
    }

    #[test]
    fn plain_http_is_only_for_loopback() {
        assert!(parse_base_url("http://127.0.0.1:8080/api").is_ok());
        assert!(parse_base_url("http://example.com/api").is_err());
        assert!(parse_base_url("https://user:pw@example.com").is_err());
        assert!(parse_base_url("ftp://example.com").is_err());
    }

    #[test]
    fn a_secret_is_sent_only_through_expose() {
        let cx = Context {
            new_secret: Some(Secret::new("s3cret-value")),
            ..Context::default()
        };
        let err = render("{{ secret.new }}", &cx).unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
        assert_eq!(
            render("{{ secret.new | expose }}", &cx).unwrap(),
            "s3cret-value"
        );
        let body = serde_json::json!({ "password": "{{ secret.new }}" });
        assert!(render_json(&body, &cx).is_err());
        let body = serde_json::json!({ "password": "{{ secret.new | expose }}", "n": "{{ 3 }}" });
        assert_eq!(
            render_json(&body, &cx).unwrap(),
            serde_json::json!({ "password": "s3cret-value", "n": 3 })
        );
    }
}
