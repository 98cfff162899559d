//! Secret-scanner findings: gitleaks (`--report-format json`: one array) and
//! trufflehog (`--json`: one object a line). A finding's detector says what
//! kind of secret it is (→ a provider type and vendor); its location (file,
//! line, commit) goes into a comment. The secret itself is never kept: the
//! reports' `Secret`, `Match`, `Raw` and `RawV2` fields are read only to find
//! an AWS access key id (an identifier, not a secret) and dropped.

use super::shapes;
use serde::Deserialize;
use std::path::Path;

/// One finding, as much as rekey keeps of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// `gitleaks` or `trufflehog`.
    pub scanner: &'static str,
    /// The rule or detector (`aws-access-token`, `AWS`).
    pub detector: String,
    pub type_name: Option<&'static str>,
    pub vendor: &'static str,
    /// `file:line` (and `@ commit` when the finding is in git history).
    pub location: String,
    /// trufflehog: whether the detector verified the secret works.
    pub verified: Option<bool>,
    /// An AWS access key id, when the finding is one.
    pub key_id: Option<String>,
}

/// Detector name (lowercase, `-`/`_` removed) → (type, vendor).
fn classify(detector: &str) -> (Option<&'static str>, &'static str) {
    let d: String = detector
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let table: &[(&str, Option<&'static str>, &'static str)] = &[
        ("aws", Some("aws_iam"), "aws"),
        ("gitlab", Some("gitlab_token"), "gitlab"),
        ("github", None, "github"),
        ("sendgrid", Some("sendgrid_api_key"), "sendgrid"),
        ("twilio", Some("twilio_api_key"), "twilio"),
        ("datadog", Some("datadog_api_key"), "datadog"),
        ("cloudflare", Some("cloudflare_token"), "cloudflare"),
        ("okta", Some("okta_client_secret"), "okta"),
        ("jumpcloud", None, "jumpcloud"),
        ("slack", None, "slack"),
        ("postgres", Some("postgres"), "postgres"),
        ("jdbc", None, "database"),
        ("mysql", Some("mysql"), "mysql"),
        ("redis", Some("redis"), "redis"),
        ("privatekey", None, "ssh"),
        ("vault", None, "vault"),
    ];
    table
        .iter()
        .find(|(needle, _, _)| d.contains(needle))
        .map(|(_, t, v)| (*t, *v))
        .unwrap_or((None, "unknown"))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Gitleaks {
    #[serde(rename = "RuleID", default)]
    rule_id: String,
    #[serde(default)]
    file: String,
    #[serde(default)]
    start_line: u64,
    #[serde(default)]
    commit: String,
    /// Read only to find an AWS key id (see the module comment).
    #[serde(default)]
    secret: String,
}

/// The findings of a gitleaks JSON report.
pub fn gitleaks(path: &Path) -> Result<Vec<Finding>, String> {
    let text = read(path)?;
    let raw: Vec<Gitleaks> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not a gitleaks JSON report (an array of findings): line {} column {}",
            path.display(),
            e.line(),
            e.column()
        )
    })?;
    Ok(raw
        .into_iter()
        .map(|mut g| {
            let (type_name, vendor) = classify(&g.rule_id);
            let key_id = (vendor == "aws")
                .then(|| shapes::find_aws_key_id(&g.secret))
                .flatten();
            zeroize::Zeroize::zeroize(&mut g.secret);
            let mut location = format!("{}:{}", g.file, g.start_line);
            if !g.commit.is_empty() {
                location += &format!(" @ {}", short(&g.commit));
            }
            Finding {
                scanner: "gitleaks",
                detector: g.rule_id,
                type_name,
                vendor,
                location,
                verified: None,
                key_id,
            }
        })
        .collect())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Trufflehog {
    #[serde(default)]
    detector_name: String,
    #[serde(default)]
    verified: Option<bool>,
    #[serde(default)]
    source_metadata: serde_json::Value,
    /// Read only to find an AWS key id (see the module comment).
    #[serde(default)]
    raw: String,
}

/// The findings of a trufflehog JSON report (one object a line; lines that are
/// not findings, such as log lines, are skipped).
pub fn trufflehog(path: &Path) -> Result<Vec<Finding>, String> {
    let text = read(path)?;
    let mut findings = Vec::new();
    for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
        let Ok(mut t) = serde_json::from_str::<Trufflehog>(line) else {
            continue;
        };
        if t.detector_name.is_empty() {
            continue;
        }
        let (type_name, vendor) = classify(&t.detector_name);
        let key_id = (vendor == "aws")
            .then(|| shapes::find_aws_key_id(&t.raw))
            .flatten();
        zeroize::Zeroize::zeroize(&mut t.raw);
        findings.push(Finding {
            scanner: "trufflehog",
            detector: t.detector_name,
            type_name,
            vendor,
            location: trufflehog_location(&t.source_metadata),
            verified: t.verified,
            key_id,
        });
    }
    Ok(findings)
}

/// `file:line @ commit` from trufflehog's `SourceMetadata.Data.<source>`.
fn trufflehog_location(meta: &serde_json::Value) -> String {
    let Some(data) = meta.get("Data").and_then(|d| d.as_object()) else {
        return "unknown location".into();
    };
    let Some((source, fields)) = data.iter().next() else {
        return "unknown location".into();
    };
    let text = |k: &str| fields.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    let line = fields.get("line").and_then(|v| v.as_u64()).unwrap_or(0);
    let file = text("file");
    let mut location = if file.is_empty() {
        source.to_lowercase()
    } else {
        format!("{file}:{line}")
    };
    let repo = text("repository");
    if !repo.is_empty() {
        location = format!("{repo} {location}");
    }
    let commit = text("commit");
    if !commit.is_empty() {
        location += &format!(" @ {}", short(commit));
    }
    location
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

fn read(path: &Path) -> Result<String, String> {
    const MAX: u64 = 256 << 20;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX {
        return Err(format!(
            "{} is larger than {} MiB",
            path.display(),
            MAX >> 20
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn detectors_map_to_types_and_vendors() {
        assert_eq!(
            super::classify("aws-access-token"),
            (Some("aws_iam"), "aws")
        );
        assert_eq!(super::classify("GitLab"), (Some("gitlab_token"), "gitlab"));
        assert_eq!(super::classify("github-pat"), (None, "github"));
        assert_eq!(super::classify("generic-api-key"), (None, "unknown"));
    }
}
