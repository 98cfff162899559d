//! What a secret looks like, without keeping it: field names and value shapes
//! (an AWS access key id, a `postgres://` URL, a GitLab `glpat-` token...) map a
//! Vault entry or a scanner finding to a provider type and a vendor. Only the
//! shape's name, the field's name and non-secret parts (an access key id, a
//! URL's host, port and user) come out; values are looked at in place and
//! never copied.

/// What a shape says about a secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// The rekey provider type that rotates it, when there is one.
    pub type_name: Option<&'static str>,
    /// Who issued it (matched by `--compromised`).
    pub vendor: &'static str,
    /// What it is, for comments ("an AWS access key id").
    pub what: &'static str,
    /// The account (user) when the value names it (a URL's user).
    pub account: Option<String>,
    /// Non-secret settings the value names (a URL's host and port).
    pub settings: Vec<(&'static str, serde_json::Value)>,
    /// An access key id seen beside the secret (not secret itself).
    pub key_id: Option<String>,
}

/// An AWS access key id (long-term `AKIA`, temporary `ASIA`).
pub fn aws_key_id(text: &str) -> Option<&str> {
    let t = text.trim();
    let ok = t.len() == 20
        && (t.starts_with("AKIA") || t.starts_with("ASIA"))
        && t.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    ok.then_some(t)
}

/// Finds the first AWS access key id inside `text` (a scanner's match line).
pub fn find_aws_key_id(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(19)).find_map(|i| {
        let candidate = text.get(i..i + 20)?;
        let before_ok = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        let after_ok = bytes.get(i + 20).is_none_or(|b| !b.is_ascii_alphanumeric());
        (before_ok && after_ok)
            .then(|| aws_key_id(candidate).map(str::to_owned))
            .flatten()
    })
}

/// A database or cache URL: its scheme's type, and host, port and user (the
/// password is skipped, never parsed out).
fn url_shape(value: &str) -> Option<Shape> {
    let (scheme, rest) = value.trim().split_once("://")?;
    let (type_name, vendor, what, port) = match scheme {
        "postgres" | "postgresql" => (
            "postgres",
            "postgres",
            "the password of a PostgreSQL URL",
            5432,
        ),
        "mysql" | "mariadb" => (
            "mysql",
            "mysql",
            "the password of a MySQL/MariaDB URL",
            3306,
        ),
        "redis" | "rediss" => ("redis", "redis", "the password of a Redis URL", 6379),
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    // `user:password`: only the part before the first `:` is looked at.
    let user = userinfo
        .map(|u| u.split(':').next().unwrap_or_default())
        .filter(|u| !u.is_empty())
        .map(percent_decode);
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || p.parse::<u16>().is_ok() => {
            (h, p.parse::<u16>().unwrap_or(port))
        }
        _ => (hostport, port),
    };
    let mut settings = Vec::new();
    if !host.is_empty() {
        settings.push(("host", serde_json::json!(host.trim_matches(['[', ']']))));
        settings.push(("port", serde_json::json!(port)));
    }
    Some(Shape {
        type_name: Some(type_name),
        vendor,
        what,
        account: user,
        settings,
        key_id: None,
    })
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_owned())
}

/// The shape of one value (and its field's name).
pub fn of_value(field: &str, value: &str) -> Option<Shape> {
    let v = value.trim();
    let shape = |type_name, vendor, what| Shape {
        type_name,
        vendor,
        what,
        ..Shape::default()
    };
    if let Some(url) = url_shape(v) {
        return Some(url);
    }
    if let Some(id) = aws_key_id(v) {
        return Some(Shape {
            key_id: Some(id.to_owned()),
            ..shape(Some("aws_iam"), "aws", "an AWS access key id")
        });
    }
    let prefixed: &[(&str, Option<&'static str>, &'static str, &'static str)] = &[
        (
            "glpat-",
            Some("gitlab_token"),
            "gitlab",
            "a GitLab personal access token",
        ),
        ("ghp_", None, "github", "a GitHub personal access token"),
        ("github_pat_", None, "github", "a GitHub fine-grained token"),
        (
            "SG.",
            Some("sendgrid_api_key"),
            "sendgrid",
            "a SendGrid API key",
        ),
        ("xoxb-", None, "slack", "a Slack bot token"),
        ("xoxp-", None, "slack", "a Slack user token"),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----",
            Some("ssh"),
            "ssh",
            "an OpenSSH private key",
        ),
        (
            "-----BEGIN RSA PRIVATE KEY-----",
            None,
            "ssh",
            "an RSA private key",
        ),
        ("hvs.", None, "vault", "a Vault token"),
        ("s.", None, "vault", "a Vault token"),
    ];
    for (prefix, type_name, vendor, what) in prefixed {
        if v.starts_with(prefix) && v.len() > prefix.len() + 8 {
            return Some(shape(*type_name, vendor, what));
        }
    }
    // Some secrets have no shape of their own, only a telling field name.
    let f = field.to_ascii_lowercase();
    let named: &[(&str, Option<&'static str>, &'static str, &'static str)] = &[
        (
            "datadog_app",
            Some("datadog_app_key"),
            "datadog",
            "a Datadog application key",
        ),
        (
            "dd_app",
            Some("datadog_app_key"),
            "datadog",
            "a Datadog application key",
        ),
        (
            "datadog",
            Some("datadog_api_key"),
            "datadog",
            "a Datadog API key",
        ),
        (
            "dd_api",
            Some("datadog_api_key"),
            "datadog",
            "a Datadog API key",
        ),
        (
            "twilio",
            Some("twilio_api_key"),
            "twilio",
            "a Twilio API key",
        ),
        (
            "cloudflare",
            Some("cloudflare_token"),
            "cloudflare",
            "a Cloudflare API token",
        ),
        (
            "okta",
            Some("okta_client_secret"),
            "okta",
            "an Okta client secret",
        ),
        ("jumpcloud", None, "jumpcloud", "a JumpCloud credential"),
        (
            "aws_secret_access_key",
            Some("aws_iam"),
            "aws",
            "an AWS secret access key",
        ),
    ];
    for (needle, type_name, vendor, what) in named {
        if f.contains(needle) {
            return Some(shape(*type_name, vendor, what));
        }
    }
    None
}

/// The vendor a provider type's credentials come from (matched by
/// `--compromised`).
pub fn vendor_of(type_name: &str) -> &str {
    match type_name {
        "aws_iam" => "aws",
        "gitlab_token" => "gitlab",
        "github_deploy_key" => "github",
        "cloudflare_token" => "cloudflare",
        "okta_client_secret" => "okta",
        "sendgrid_api_key" => "sendgrid",
        "twilio_api_key" => "twilio",
        "vault_approle" | "vault_userpass" => "vault",
        "postgres_alternating" => "postgres",
        t if t.starts_with("datadog_") => "datadog",
        t if t.starts_with("jumpcloud_") => "jumpcloud",
        t => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_and_user_never_the_password() {
        let s = of_value(
            "url",
            "postgres://billing_app:s3cret@db.internal:6432/billing",
        )
        .unwrap();
        assert_eq!(s.type_name, Some("postgres"));
        assert_eq!(s.account.as_deref(), Some("billing_app"));
        let text = format!("{s:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.contains("db.internal") && text.contains("6432"),
            "{text}"
        );
        let r = of_value("x", "redis://cache:6379").unwrap();
        assert_eq!(r.type_name, Some("redis"));
        assert_eq!(r.account, None);
    }

    #[test]
    fn key_shapes_and_field_names_map_to_types() {
        assert_eq!(
            of_value("key_id", "AKIAIOSFODNN7EXAMPLE").and_then(|s| s.key_id),
            Some("AKIAIOSFODNN7EXAMPLE".into())
        );
        assert_eq!(
            of_value("token", "glpat-abcdefghijklmnop").and_then(|s| s.type_name),
            Some("gitlab_token")
        );
        assert_eq!(
            of_value("DD_API_KEY", "0123456789abcdef0123456789abcdef").and_then(|s| s.type_name),
            Some("datadog_api_key")
        );
        assert_eq!(of_value("note", "hello world"), None);
        assert_eq!(
            find_aws_key_id("aws_access_key_id = AKIAIOSFODNN7EXAMPLE # x"),
            Some("AKIAIOSFODNN7EXAMPLE".into())
        );
        assert_eq!(find_aws_key_id("XAKIAIOSFODNN7EXAMPLE"), None);
    }
}
