//! A minimal client for the AWS Query API (IAM and STS): form-encoded POSTs signed
//! with Signature Version 4, XML answers. SigV4 is computed here with the hmac and
//! sha2 crates rekey already uses, which keeps the AWS SDK's build cost out; moto
//! checks every signature in the tests.

use super::config::Credentials;
use crate::provider::ProviderError;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime};
use zeroize::Zeroizing;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// An AWS answer that was not a success, by error code. Messages are built from
/// the code and rekey's own context, never from request bodies.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AwsError {
    #[error("cannot reach {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("{action} answered HTTP {status} with error code {code}")]
    Api {
        action: String,
        status: u16,
        code: String,
    },
    #[error("{action} answered HTTP {status} with a body rekey cannot read")]
    Unreadable { action: String, status: u16 },
}

impl AwsError {
    pub fn code(&self) -> Option<&str> {
        match self {
            AwsError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Throttling: the documented codes, or a bare 429.
    pub fn is_throttling(&self) -> bool {
        match self {
            AwsError::Api { code, status, .. } => {
                matches!(
                    code.as_str(),
                    "Throttling"
                        | "ThrottlingException"
                        | "RequestLimitExceeded"
                        | "TooManyRequestsException"
                ) || *status == 429
            }
            _ => false,
        }
    }

    /// Worth retrying as is: the network, 5xx, AWS's own "try again" codes.
    pub fn is_transient(&self) -> bool {
        match self {
            AwsError::Unreachable { .. } => true,
            AwsError::Api { status, code, .. } => {
                *status >= 500
                    || matches!(
                        code.as_str(),
                        "ServiceUnavailable"
                            | "InternalFailure"
                            | "InternalError"
                            | "RequestTimeout"
                    )
            }
            AwsError::Unreadable { status, .. } => *status >= 500,
        }
    }
}

/// Signs and sends Query API requests.
pub struct QueryClient {
    http: reqwest::Client,
}

/// Which service a request goes to: its endpoint, signing region and name.
pub struct Service<'a> {
    pub name: &'a str,
    pub endpoint: &'a url::Url,
    pub region: &'a str,
    pub version: &'a str,
}

/// A parsed success body. It may hold a secret (CreateAccessKey), so the text is
/// zeroized when dropped.
pub struct Answer {
    pub body: Zeroizing<String>,
    /// The server's `Date` header, when it sent one.
    pub date: Option<String>,
}

impl QueryClient {
    pub fn new() -> Result<QueryClient, ProviderError> {
        let http = reqwest::Client::builder()
            .redirect(crate::net::redirect_policy())
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| {
                ProviderError::Fatal(format!("aws_iam: cannot set up an HTTP client: {e}"))
            })?;
        Ok(QueryClient { http })
    }

    /// Calls `action` with `params`, signed with `creds`.
    pub async fn call(
        &self,
        service: &Service<'_>,
        creds: &Credentials,
        action: &str,
        params: &[(&str, &str)],
    ) -> Result<Answer, AwsError> {
        let body = form_body(action, service.version, params);
        let endpoint = service.endpoint;
        let host = match endpoint.port() {
            Some(p) => format!("{}:{p}", endpoint.host_str().unwrap_or_default()),
            None => endpoint.host_str().unwrap_or_default().to_owned(),
        };
        let amz_date = amz_date(SystemTime::now());
        let authorization = sign(&SigningInput {
            creds,
            service: service.name,
            region: service.region,
            host: &host,
            path: endpoint.path(),
            amz_date: &amz_date,
            body: &body,
        });
        let mut request = self
            .http
            .post(endpoint.clone())
            .header("content-type", CONTENT_TYPE)
            .header("host", &host)
            .header("x-amz-date", &amz_date)
            .header("authorization", authorization)
            .body(body);
        if let Some(token) = &creds.session_token {
            request = request.header("x-amz-security-token", token.expose());
        }
        let unreachable = |e: reqwest::Error| AwsError::Unreachable {
            endpoint: format!("{}://{host}", endpoint.scheme()),
            reason: if e.is_timeout() {
                "timed out".into()
            } else if e.is_connect() {
                "connection failed".into()
            } else {
                "request failed".into()
            },
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let date = response
            .headers()
            .get("date")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response.bytes().await.map_err(unreachable)?;
        let body = Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned());
        if (200..300).contains(&status) {
            return Ok(Answer { body, date });
        }
        match error_code(&body) {
            Some(code) => Err(AwsError::Api {
                action: action.to_owned(),
                status,
                code,
            }),
            None if status == 429 => Err(AwsError::Api {
                action: action.to_owned(),
                status,
                code: "Throttling".into(),
            }),
            None => Err(AwsError::Unreadable {
                action: action.to_owned(),
                status,
            }),
        }
    }
}

/// The form-encoded request body of `action`.
fn form_body(action: &str, version: &str, params: &[(&str, &str)]) -> String {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("Action", action);
    form.append_pair("Version", version);
    for (k, v) in params {
        form.append_pair(k, v);
    }
    form.finish()
}

/// `Code` of an AWS XML error document (`<ErrorResponse><Error><Code>`). Only a
/// word of at most 64 ASCII letters, digits, `.`, `_` or `-` is a code (AWS's are
/// like `Throttling` or `AccessDenied`); any other text is not one, so a body
/// (maybe echoing something) never reaches a message or the journal through it.
pub fn error_code(body: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(body).ok()?;
    let code = doc
        .descendants()
        .find(|n| n.has_tag_name("Code"))
        .and_then(|n| n.text())?
        .trim();
    let is_code = (1..=64).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    is_code.then(|| code.to_owned())
}

/// `YYYYMMDDTHHMMSSZ`, the SigV4 timestamp.
fn amz_date(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

struct SigningInput<'a> {
    creds: &'a Credentials,
    service: &'a str,
    region: &'a str,
    host: &'a str,
    path: &'a str,
    amz_date: &'a str,
    body: &'a str,
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The `Authorization` header of Signature Version 4 for a form POST: the signed
/// headers are content-type, host, x-amz-date (and x-amz-security-token).
fn sign(input: &SigningInput<'_>) -> String {
    let date = &input.amz_date[..8];
    let mut headers = vec![
        ("content-type", CONTENT_TYPE.to_owned()),
        ("host", input.host.to_owned()),
        ("x-amz-date", input.amz_date.to_owned()),
    ];
    if let Some(token) = &input.creds.session_token {
        headers.push(("x-amz-security-token", token.expose().to_owned()));
    }
    let canonical_headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.trim()))
        .collect();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(";");
    let path = if input.path.is_empty() {
        "/"
    } else {
        input.path
    };
    let canonical_request = format!(
        "POST\n{path}\n\n{canonical_headers}\n{signed_headers}\n{}",
        hex::encode(Sha256::digest(input.body.as_bytes()))
    );
    let scope = format!("{date}/{}/{}/aws4_request", input.region, input.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        input.amz_date,
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let secret = Zeroizing::new(format!("AWS4{}", input.creds.secret_access_key.expose()));
    let k_date = Zeroizing::new(hmac(secret.as_bytes(), date));
    let k_region = Zeroizing::new(hmac(&k_date, input.region));
    let k_service = Zeroizing::new(hmac(&k_region, input.service));
    let k_signing = Zeroizing::new(hmac(&k_service, "aws4_request"));
    let signature = hex::encode(hmac(&k_signing, &string_to_sign));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        input.creds.access_key_id
    )
}

/// Text of the first element named `name` under `node`.
pub fn text_of<'a>(node: roxmltree::Node<'a, '_>, name: &str) -> Option<&'a str> {
    node.descendants()
        .find(|n| n.has_tag_name(name))
        .and_then(|n| n.text())
        .map(str::trim)
}

/// Parses an XML answer; an unreadable one is a transient failure (a proxy's
/// error page, a truncated body).
pub fn parse<'a>(body: &'a str, action: &str) -> Result<roxmltree::Document<'a>, ProviderError> {
    roxmltree::Document::parse(body).map_err(|_| {
        ProviderError::Transient(format!("aws_iam: {action} answered with unreadable XML"))
    })
}

/// One access key of a ListAccessKeys answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub id: String,
    pub active: bool,
    pub created_at: Option<u64>,
}

/// One page of a ListAccessKeys answer.
#[derive(Debug, PartialEq, Eq)]
pub struct KeysPage {
    pub keys: Vec<AccessKey>,
    /// The marker of the next page, when the answer is truncated and names one.
    pub next_marker: Option<String>,
}

// The readers below are pure functions of a success body (fuzzed by
// fuzz/fuzz_targets/aws_answer.rs, property-tested in tests/it/answer_props.rs).

/// A ListAccessKeys answer: every `member` with an `AccessKeyId`.
pub fn access_keys_page(body: &str) -> Result<KeysPage, ProviderError> {
    let doc = parse(body, "ListAccessKeys")?;
    let keys = doc
        .descendants()
        .filter(|n| n.has_tag_name("member"))
        .filter_map(|member| {
            Some(AccessKey {
                id: text_of(member, "AccessKeyId")?.to_owned(),
                active: text_of(member, "Status") == Some("Active"),
                created_at: text_of(member, "CreateDate").and_then(parse_timestamp),
            })
        })
        .collect();
    let truncated = text_of(doc.root(), "IsTruncated") == Some("true");
    let next_marker = truncated
        .then(|| text_of(doc.root(), "Marker").map(str::to_owned))
        .flatten();
    Ok(KeysPage { keys, next_marker })
}

/// A ListUserTags answer: `(Key, Value)` of every `member` with a `Key`.
pub fn user_tags(body: &str) -> Result<Vec<(String, String)>, ProviderError> {
    let doc = parse(body, "ListUserTags")?;
    Ok(doc
        .descendants()
        .filter(|n| n.has_tag_name("member"))
        .filter_map(|m| {
            Some((
                text_of(m, "Key")?.to_owned(),
                text_of(m, "Value").unwrap_or_default().to_owned(),
            ))
        })
        .collect())
}

/// A CreateAccessKey answer: the new key's id and secret, or `None` when the
/// answer does not hold both.
pub fn created_key(body: &str) -> Option<(String, crate::secret::Secret)> {
    let doc = roxmltree::Document::parse(body).ok()?;
    Some((
        text_of(doc.root(), "AccessKeyId")?.to_owned(),
        crate::secret::Secret::new(text_of(doc.root(), "SecretAccessKey")?),
    ))
}

/// Whether a GetCallerIdentity answer names the IAM user `user`
/// (`arn:aws:iam::123456789012:user/optional/path/name`).
pub fn caller_is_user(body: &str, user: &str) -> Result<bool, ProviderError> {
    let doc = parse(body, "GetCallerIdentity")?;
    let arn = text_of(doc.root(), "Arn").unwrap_or_default();
    Ok(arn.contains(":user/") && arn.rsplit('/').next() == Some(user))
}

/// Seconds since the Unix epoch of an ISO 8601 timestamp as IAM writes them
/// (`2026-11-28T09:50:00Z`, maybe with fractions or an offset of +00:00).
pub fn parse_timestamp(text: &str) -> Option<u64> {
    let normalized = text.trim().replace("+00:00", "Z");
    humantime::parse_rfc3339_weak(normalized.trim_end_matches('Z'))
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    /// The example key pair of the AWS documentation, signing an IAM ListUsers
    /// POST; the expected signature was computed with botocore's `SigV4Auth` (the
    /// signer moto checks with) for the same request.
    #[test]
    fn signature_matches_an_independent_computation() {
        let creds = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: None,
        };
        let auth = sign(&SigningInput {
            creds: &creds,
            service: "iam",
            region: "us-east-1",
            host: "iam.amazonaws.com",
            path: "/",
            amz_date: "20150830T123600Z",
            body: "Action=ListUsers&Version=2010-05-08",
        });
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d76d0de3e0ffe5a7a23cfce21b99d6f4e5060aad86bd9dc7c617f224e5b492a"
        );
        assert!(!auth.contains("wJalrXUtnFEMI"), "the secret leaked");
    }

    #[test]
    fn timestamps_and_error_codes_parse() {
        assert_eq!(parse_timestamp("1970-01-01T00:01:00Z"), Some(60));
        assert_eq!(
            parse_timestamp("1970-01-01T00:01:00.123456+00:00"),
            Some(60)
        );
        assert_eq!(
            error_code("<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error></ErrorResponse>").as_deref(),
            Some("Throttling")
        );
        assert_eq!(
            amz_date(std::time::UNIX_EPOCH + Duration::from_secs(60)),
            "19700101T000100Z"
        );
    }
}
