//! Instance settings and the admin credential of an `aws_iam` provider instance.

use crate::provider::ProviderError;
use crate::provider::admin::Admin;
use crate::secret::Secret;
use indexmap::IndexMap;

/// Where IAM and STS answer, and the region requests are signed for.
#[derive(Debug, Clone)]
pub struct AwsConfig {
    pub region: String,
    /// IAM is global: `https://iam.amazonaws.com`, signed for us-east-1, unless
    /// `endpoint_url` points somewhere else (moto in tests, a proxy).
    pub iam_endpoint: url::Url,
    pub iam_region: String,
    /// STS answers per region: `https://sts.<region>.amazonaws.com`.
    pub sts_endpoint: url::Url,
}

/// An access key pair that signs requests.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

/// An endpoint setting: https, or plain http to a loopback address (moto in
/// tests): the admin key signs every request sent there.
fn parse_url(name: &str, text: &str) -> Result<url::Url, ProviderError> {
    crate::net::parse_endpoint(text)
        .map_err(|why| ProviderError::Fatal(format!("aws_iam setting `{name}` (`{text}`): {why}")))
}

impl AwsConfig {
    pub fn from_settings(
        settings: &IndexMap<String, serde_json::Value>,
    ) -> Result<AwsConfig, ProviderError> {
        let text = |k: &str| {
            settings
                .get(k)
                .and_then(|v| v.as_str())
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        let region = text("region").unwrap_or("us-east-1").to_owned();
        if !region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(ProviderError::Fatal(format!(
                "aws_iam setting `region` is not a region name: `{region}`"
            )));
        }
        let endpoint = text("endpoint_url")
            .map(|u| parse_url("endpoint_url", u))
            .transpose()?;
        let sts_override = text("sts_endpoint_url")
            .map(|u| parse_url("sts_endpoint_url", u))
            .transpose()?;
        let (iam_endpoint, iam_region) = match &endpoint {
            Some(u) => (u.clone(), region.clone()),
            None => (
                parse_url("endpoint_url", "https://iam.amazonaws.com/")?,
                "us-east-1".to_owned(),
            ),
        };
        let sts_endpoint = match (sts_override, &endpoint) {
            (Some(u), _) => u,
            (None, Some(u)) => u.clone(),
            (None, None) => parse_url(
                "sts_endpoint_url",
                &format!("https://sts.{region}.amazonaws.com/"),
            )?,
        };
        Ok(AwsConfig {
            region,
            iam_endpoint,
            iam_region,
            sts_endpoint,
        })
    }
}

impl Credentials {
    /// The admin key pair: fields `access_key_id` and `secret_access_key` (the names
    /// of the AWS CLI's credentials file are accepted too), `session_token` optional.
    pub fn from_admin(admin: Option<&Admin>) -> Result<Credentials, ProviderError> {
        let admin = admin.ok_or_else(|| {
            ProviderError::Fatal(
                "aws_iam needs an admin credential: add `admin: { vault_path: ... }` with fields access_key_id and secret_access_key".into(),
            )
        })?;
        let id = admin.require(&["access_key_id", "aws_access_key_id"])?;
        let secret = admin.require(&["secret_access_key", "aws_secret_access_key"])?;
        let token = admin
            .get("session_token")
            .or_else(|| admin.get("aws_session_token"))
            .cloned();
        Ok(Credentials {
            access_key_id: id.expose().trim().to_owned(),
            secret_access_key: secret.clone(),
            session_token: token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_default_to_aws_and_follow_an_override() {
        let c = AwsConfig::from_settings(&IndexMap::new()).unwrap();
        assert_eq!(c.iam_endpoint.as_str(), "https://iam.amazonaws.com/");
        assert_eq!(c.iam_region, "us-east-1");
        assert_eq!(
            c.sts_endpoint.as_str(),
            "https://sts.us-east-1.amazonaws.com/"
        );
        let mut s = IndexMap::new();
        s.insert("region".into(), serde_json::json!("eu-west-1"));
        s.insert(
            "endpoint_url".into(),
            serde_json::json!("http://127.0.0.1:5000"),
        );
        let c = AwsConfig::from_settings(&s).unwrap();
        assert_eq!(c.iam_endpoint.as_str(), "http://127.0.0.1:5000/");
        assert_eq!(c.sts_endpoint.as_str(), "http://127.0.0.1:5000/");
        assert_eq!(c.iam_region, "eu-west-1");
        s.insert("endpoint_url".into(), serde_json::json!("not a url"));
        let err = AwsConfig::from_settings(&s).unwrap_err().to_string();
        assert!(err.contains("endpoint_url"), "{err}");
    }
}
