//! GitHub Actions secrets sink: reads the repository's (or environment's) public
//! key, seals the value for it (libsodium sealed box: X25519 + XSalsa20-Poly1305,
//! the `crypto_box` crate) and writes the secret.
//!
//! API (version 2022-11-28):
//! - https://docs.github.com/en/rest/actions/secrets#get-a-repository-public-key
//! - https://docs.github.com/en/rest/actions/secrets#create-or-update-a-repository-secret
//! - https://docs.github.com/en/rest/actions/secrets#get-an-environment-public-key
//! - https://docs.github.com/en/rest/actions/secrets#create-or-update-an-environment-secret
//!
//! Messages are built from statuses and headers, never from response bodies.

use crate::provider::ProviderError;
use crate::secret::Secret;
use base64::Engine as _;
use std::time::Duration;

/// Where the secret goes.
pub struct Target<'a> {
    /// `https://api.github.com`, without a trailing slash.
    pub base_url: &'a str,
    /// `owner/name`.
    pub repository: &'a str,
    pub environment: Option<&'a str>,
    pub secret_name: &'a str,
}

impl Target<'_> {
    /// `.../repos/{owner}/{repo}/actions/secrets/{last}` or
    /// `.../repos/{owner}/{repo}/environments/{environment}/secrets/{last}`, each
    /// value one percent-encoded path segment: GitHub requires an environment
    /// name URL-encoded (`prod/eu` is `prod%2Feu`), and an unencoded `/`, `?` or
    /// `#` would address another resource.
    fn secrets_url(&self, last: &str) -> Result<url::Url, ProviderError> {
        let bad = |why: &str| ProviderError::Fatal(format!("GitHub sink: {why}"));
        let mut url = url::Url::parse(self.base_url).map_err(|_| bad("base_url is not a URL"))?;
        let (owner, repo) = self
            .repository
            .split_once('/')
            .ok_or_else(|| bad("repository is not owner/name"))?;
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|_| bad("base_url cannot have a path"))?;
            path.pop_if_empty().extend(["repos", owner, repo]);
            match self.environment {
                Some(env) => path.extend(["environments", env, "secrets"]),
                None => path.extend(["actions", "secrets"]),
            };
            path.push(last);
        }
        Ok(url)
    }
}

#[derive(serde::Deserialize)]
struct PublicKey {
    key_id: String,
    key: String,
}

/// Seals `value` for the base64 public key `key` (a libsodium sealed box), base64.
pub fn seal(key: &str, value: &Secret) -> Result<String, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .map_err(|_| "the public key is not base64".to_owned())?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "the public key is not 32 bytes".to_owned())?;
    let public = crypto_box::PublicKey::from(bytes);
    let sealed = public
        .seal(&mut crypto_box::aead::OsRng, value.expose().as_bytes())
        .map_err(|_| "cannot seal the value".to_owned())?;
    Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
}

/// Creates or updates the secret at `target` with `value`.
pub async fn put_secret(
    target: &Target<'_>,
    token: &Secret,
    value: &Secret,
) -> Result<(), ProviderError> {
    let client = reqwest::Client::builder()
        .redirect(crate::net::redirect_policy())
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("rekey/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|_| ProviderError::Fatal("cannot build an HTTP client".into()))?;
    let where_ = match target.environment {
        Some(env) => format!("{} environment `{env}`", target.repository),
        None => target.repository.to_owned(),
    };
    let request = |method: reqwest::Method, url: url::Url| {
        client
            .request(method, url)
            .bearer_auth(token.expose())
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
    };
    let answer = request(reqwest::Method::GET, target.secrets_url("public-key")?)
        .send()
        .await
        .map_err(|e| unreachable_error(target.base_url, &e))?;
    check(&answer, &format!("reading the public key of {where_}"))?;
    let body = answer
        .bytes()
        .await
        .map_err(|e| unreachable_error(target.base_url, &e))?;
    let key: PublicKey = serde_json::from_slice(&body).map_err(|_| {
        ProviderError::Fatal(format!(
            "the public key of {where_} is not the JSON GitHub documents"
        ))
    })?;
    let sealed =
        seal(&key.key, value).map_err(|e| ProviderError::Fatal(format!("{where_}: {e}")))?;
    let body = serde_json::json!({ "encrypted_value": sealed, "key_id": key.key_id });
    let answer = request(
        reqwest::Method::PUT,
        target.secrets_url(target.secret_name)?,
    )
    .header("Content-Type", "application/json")
    .body(body.to_string())
    .send()
    .await
    .map_err(|e| unreachable_error(target.base_url, &e))?;
    check(
        &answer,
        &format!("writing secret {} of {where_}", target.secret_name),
    )
}

fn unreachable_error(base: &str, e: &reqwest::Error) -> ProviderError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    ProviderError::Transient(format!("GitHub API at {base}: {what}"))
}

/// Classifies an answer by status and rate-limit headers.
fn check(answer: &reqwest::Response, doing: &str) -> Result<(), ProviderError> {
    let status = answer.status();
    if status.is_success() {
        return Ok(());
    }
    let header = |name: &str| {
        answer
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let retry_after = header("retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .or_else(|| {
            // Primary rate limit: wait until the reset time.
            let reset = header("x-ratelimit-reset")?.parse::<u64>().ok()?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_secs();
            Some(Duration::from_secs(reset.saturating_sub(now).max(1)))
        });
    // Primary limit: 403/429 with no requests left; secondary limits: 403/429
    // with retry-after while requests are left (GitHub's rate-limit docs).
    let limited = status.as_u16() == 429
        || (status.as_u16() == 403
            && (header("x-ratelimit-remaining").as_deref() == Some("0")
                || header("retry-after").is_some()));
    let code = status.as_u16();
    Err(if limited {
        ProviderError::RateLimited {
            retry_after,
            message: format!("GitHub rate limit while {doing} ({code})"),
        }
    } else if status.is_server_error() {
        ProviderError::Transient(format!("GitHub answered {code} while {doing}"))
    } else {
        let hint = match code {
            401 => ": the token is invalid or expired",
            403 => ": the token may not manage Actions secrets of this repository",
            404 => ": no such repository or environment, or the token cannot see it",
            422 => ": GitHub refused the request (secret name or key)",
            _ => "",
        };
        ProviderError::Fatal(format!("GitHub answered {code} while {doing}{hint}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_of_a_secret_url_is_one_encoded_segment() {
        let target = Target {
            base_url: "https://ghe.example.com/api/v3",
            repository: "acme/deploy",
            environment: Some("prod/eu #1"),
            secret_name: "API_KEY",
        };
        assert_eq!(
            target.secrets_url("public-key").unwrap().as_str(),
            "https://ghe.example.com/api/v3/repos/acme/deploy/environments/prod%2Feu%20%231/secrets/public-key"
        );
        let repo_level = Target {
            environment: None,
            base_url: "https://api.github.com",
            ..target
        };
        assert_eq!(
            repo_level.secrets_url("API_KEY").unwrap().as_str(),
            "https://api.github.com/repos/acme/deploy/actions/secrets/API_KEY"
        );
    }

    #[test]
    fn a_sealed_value_opens_with_the_matching_private_key_only() {
        let private = crypto_box::SecretKey::generate(&mut crypto_box::aead::OsRng);
        let public =
            base64::engine::general_purpose::STANDARD.encode(private.public_key().as_bytes());
        let sealed = seal(&public, &Secret::new("s3cret")).unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .unwrap();
        assert_eq!(private.unseal(&bytes).unwrap(), b"s3cret");
        let other = crypto_box::SecretKey::generate(&mut crypto_box::aead::OsRng);
        assert!(other.unseal(&bytes).is_err());
        assert!(seal("bm90IDMyIGJ5dGVz", &Secret::new("x")).is_err());
    }
}
