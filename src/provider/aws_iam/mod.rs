//! `aws_iam`: IAM user access keys (dual kind). A second key is created beside the
//! current one, verified with STS GetCallerIdentity signed with it, and the old one
//! is deactivated then deleted by the engine.
//!
//! IAM keeps no name on an access key, so rekey records its tag the way the AWS
//! console records a key's description: a user tag whose key is the access key id.
//! A crash between CreateAccessKey and that TagUser would leave a nameless key, so a
//! `rekey-pending` user tag is written first, naming the tag and the keys that
//! existed before: `list` attributes any other untagged key to that tag, and resume
//! finds the orphan.

pub mod client;
pub mod config;

use super::admin::Admin;
use super::{Issued, KeyInfo, LastUse, Provider, ProviderError, Target};
use crate::secret::Secret;
use async_trait::async_trait;
use client::{AccessKey, Answer, AwsError, QueryClient, Service};
use config::{AwsConfig, Credentials};
use indexmap::IndexMap;

const IAM_VERSION: &str = "2010-05-08";
const STS_VERSION: &str = "2011-06-15";
/// The user tag that marks a key creation in flight (see the module comment).
const PENDING_TAG: &str = "rekey-pending";
/// Access keys an IAM user may hold (IAM quotas).
const QUOTA: usize = 2;

pub struct AwsIam {
    config: AwsConfig,
    admin: Credentials,
    /// Where the admin credential came from, for error messages.
    origin: String,
    client: QueryClient,
    /// `path_prefix`: the IAM path whose users `list_accounts` names (`/` for all).
    path_prefix: String,
}

impl AwsIam {
    pub fn new(
        settings: &IndexMap<String, serde_json::Value>,
        admin: Option<&Admin>,
    ) -> Result<AwsIam, ProviderError> {
        Ok(AwsIam {
            config: AwsConfig::from_settings(settings)?,
            admin: Credentials::from_admin(admin)?,
            origin: admin.map(|a| a.origin.clone()).unwrap_or_default(),
            client: QueryClient::new()?,
            path_prefix: settings
                .get("path_prefix")
                .and_then(|v| v.as_str())
                .filter(|p| !p.trim().is_empty())
                .unwrap_or("/")
                .to_owned(),
        })
    }

    fn iam(&self) -> Service<'_> {
        Service {
            name: "iam",
            endpoint: &self.config.iam_endpoint,
            region: &self.config.iam_region,
            version: IAM_VERSION,
        }
    }

    fn user<'t>(&self, target: &Target<'t>) -> Result<&'t str, ProviderError> {
        target
            .account
            .filter(|a| !a.trim().is_empty())
            .ok_or_else(|| {
                ProviderError::Fatal(format!(
                    "credential `{}` names no IAM user; set `account: <user name>`",
                    target.credential
                ))
            })
    }

    /// Turns an AWS error of an admin call into the engine's classification with a
    /// message that says what to do.
    fn classify(&self, e: AwsError, action: &str, user: &str) -> ProviderError {
        if e.is_throttling() {
            return ProviderError::RateLimited {
                retry_after: None,
                message: format!("aws_iam: {e}"),
            };
        }
        if e.is_transient() {
            return ProviderError::Transient(format!("aws_iam: {e}"));
        }
        let message = match e.code().unwrap_or_default() {
            "InvalidClientTokenId"
            | "SignatureDoesNotMatch"
            | "UnrecognizedClientException"
            | "InvalidAccessKeyId"
            | "ExpiredToken"
            | "IncompleteSignature" => format!(
                "AWS rejected the admin credential from {} ({} on {action}): check its access_key_id and secret_access_key, and that the key is active",
                self.origin,
                e.code().unwrap_or_default()
            ),
            "AccessDenied" | "AccessDeniedException" => format!(
                "the admin credential from {} may not call iam:{action} (AccessDenied); allow it in the admin user's IAM policy",
                self.origin
            ),
            "NoSuchEntity" => format!(
                "IAM user `{user}` does not exist ({action}: NoSuchEntity); check the credential's `account`"
            ),
            "LimitExceeded" => quota_full(user),
            _ => format!("aws_iam: {e}"),
        };
        ProviderError::Fatal(message)
    }

    async fn iam_call(
        &self,
        action: &str,
        user: &str,
        params: &[(&str, &str)],
    ) -> Result<Answer, ProviderError> {
        self.client
            .call(&self.iam(), &self.admin, action, params)
            .await
            .map_err(|e| self.classify(e, action, user))
    }

    async fn list_keys(&self, user: &str) -> Result<Vec<AccessKey>, ProviderError> {
        let mut keys = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut params = vec![("UserName", user), ("MaxItems", "100")];
            if let Some(m) = &marker {
                params.push(("Marker", m));
            }
            let answer = self.iam_call("ListAccessKeys", user, &params).await?;
            let page = client::access_keys_page(&answer.body)?;
            keys.extend(page.keys);
            marker = page.next_marker;
            if marker.is_none() {
                return Ok(keys);
            }
        }
    }

    async fn user_tags(&self, user: &str) -> Result<Vec<(String, String)>, ProviderError> {
        let answer = self
            .iam_call(
                "ListUserTags",
                user,
                &[("UserName", user), ("MaxItems", "100")],
            )
            .await?;
        client::user_tags(&answer.body)
    }

    async fn tag_user(&self, user: &str, key: &str, value: &str) -> Result<(), ProviderError> {
        self.iam_call(
            "TagUser",
            user,
            &[
                ("UserName", user),
                ("Tags.member.1.Key", key),
                ("Tags.member.1.Value", value),
            ],
        )
        .await
        .map(drop)
    }

    async fn untag_user(&self, user: &str, key: &str) -> Result<(), ProviderError> {
        self.iam_call(
            "UntagUser",
            user,
            &[("UserName", user), ("TagKeys.member.1", key)],
        )
        .await
        .map(drop)
    }

    /// Deletes a key and its tag; a key already gone counts as deleted.
    async fn delete_key(&self, user: &str, key_id: &str) -> Result<(), ProviderError> {
        match self
            .client
            .call(
                &self.iam(),
                &self.admin,
                "DeleteAccessKey",
                &[("UserName", user), ("AccessKeyId", key_id)],
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Some("NoSuchEntity") => {}
            Err(e) => return Err(self.classify(e, "DeleteAccessKey", user)),
        }
        if let Err(e) = self.untag_user(user, key_id).await {
            tracing::warn!(
                user,
                key_id,
                "Deleted the key, but not its description tag: {e}"
            );
        }
        Ok(())
    }
}

fn quota_full(user: &str) -> String {
    format!(
        "IAM user `{user}` already holds {QUOTA} active access keys, the most IAM allows; rekey never deletes an active key: deactivate and delete the one no consumer uses (aws iam update-access-key / delete-access-key), then run again"
    )
}

#[async_trait]
impl Provider for AwsIam {
    /// Read-only: GetUser proves the admin credential and the user, ListAccessKeys
    /// that a slot is free or can be freed (an inactive key rekey may delete).
    async fn preflight(&self, target: Target<'_>) -> Result<(), ProviderError> {
        let user = self.user(&target)?;
        self.iam_call("GetUser", user, &[("UserName", user)])
            .await?;
        let keys = self.list_keys(user).await?;
        if keys.len() >= QUOTA && keys.iter().all(|k| k.active) {
            return Err(ProviderError::Fatal(quota_full(user)));
        }
        Ok(())
    }

    async fn list(&self, target: Target<'_>) -> Result<Vec<KeyInfo>, ProviderError> {
        let user = self.user(&target)?;
        let keys = self.list_keys(user).await?;
        let tags = self.user_tags(user).await?;
        let pending: Option<(&str, Vec<&str>)> = tags
            .iter()
            .find(|(k, _)| k == PENDING_TAG)
            .and_then(|(_, v)| {
                let mut words = v.split_whitespace();
                Some((words.next()?, words.collect()))
            });
        Ok(keys
            .into_iter()
            .map(|k| {
                let tag = tags
                    .iter()
                    .find(|(key, _)| *key == k.id)
                    .map(|(_, v)| v.clone())
                    .or_else(|| {
                        pending
                            .as_ref()
                            .filter(|(_, before)| !before.contains(&k.id.as_str()))
                            .map(|(tag, _)| (*tag).to_owned())
                    });
                KeyInfo {
                    id: k.id,
                    active: k.active,
                    created_at: k.created_at,
                    tag,
                }
            })
            .collect())
    }

    async fn create(&self, target: Target<'_>, tag: &str) -> Result<Issued, ProviderError> {
        let user = self.user(&target)?;
        let mut keys = self.list_keys(user).await?;
        if keys.len() >= QUOTA {
            // Make room with the oldest inactive key; an active one may be in use.
            let stray = keys
                .iter()
                .filter(|k| !k.active)
                .min_by_key(|k| k.created_at)
                .map(|k| k.id.clone())
                .ok_or_else(|| ProviderError::Fatal(quota_full(user)))?;
            tracing::info!(credential = %target.credential, user, key_id = %stray, "Deleting an inactive access key to make room.");
            self.delete_key(user, &stray).await?;
            keys.retain(|k| k.id != stray);
        }
        let before: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
        let marker = format!("{tag} {}", before.join(" "));
        self.tag_user(user, PENDING_TAG, marker.trim()).await?;

        let answer = self
            .iam_call("CreateAccessKey", user, &[("UserName", user)])
            .await?;
        let issued = client::created_key(&answer.body).map(|(id, secret)| Issued::new(id, secret));
        let Some(issued) = issued else {
            // A key was created but its secret is unknown: it can never be used,
            // and the engine will not know of it, so delete it now.
            let before: Vec<String> = before.iter().map(|k| (*k).to_owned()).collect();
            for k in self.list_keys(user).await? {
                if !before.contains(&k.id) {
                    self.delete_key(user, &k.id).await?;
                }
            }
            return Err(ProviderError::Transient(
                "aws_iam: CreateAccessKey answered without a readable key; the key it created was deleted".into(),
            ));
        };
        // From here the key exists: failures to tag are logged, never returned, or
        // the engine would believe no key was created.
        if let Err(e) = self.tag_user(user, &issued.key_id, tag).await {
            tracing::warn!(credential = %target.credential, key_id = %issued.key_id, "Could not tag the new key (the pending tag still names it): {e}");
        } else if let Err(e) = self.untag_user(user, PENDING_TAG).await {
            tracing::warn!(credential = %target.credential, "Could not remove the pending tag: {e}");
        }
        tracing::info!(credential = %target.credential, user, key_id = %issued.key_id, "Created access key.");
        Ok(issued)
    }

    /// STS GetCallerIdentity signed with the new key. IAM is eventually
    /// consistent: a key STS does not know yet is a transient failure, retried by
    /// the engine; a wrong signature means the secret is wrong.
    async fn verify(
        &self,
        target: Target<'_>,
        key_id: Option<&str>,
        secret: &Secret,
    ) -> Result<bool, ProviderError> {
        let user = self.user(&target)?;
        let key_id = key_id.ok_or_else(|| {
            ProviderError::Fatal("aws_iam verifies an access key id with its secret".into())
        })?;
        let creds = Credentials {
            access_key_id: key_id.to_owned(),
            secret_access_key: secret.clone(),
            session_token: None,
        };
        let sts = Service {
            name: "sts",
            endpoint: &self.config.sts_endpoint,
            region: &self.config.region,
            version: STS_VERSION,
        };
        match self
            .client
            .call(&sts, &creds, "GetCallerIdentity", &[])
            .await
        {
            Ok(answer) => {
                let is_user = client::caller_is_user(&answer.body, user)?;
                if !is_user {
                    tracing::warn!(credential = %target.credential, key_id, "The new key authenticates as another identity than the IAM user.");
                }
                Ok(is_user)
            }
            Err(e) if e.is_throttling() => Err(ProviderError::RateLimited {
                retry_after: None,
                message: format!("aws_iam: {e}"),
            }),
            Err(e) if e.is_transient() => Err(ProviderError::Transient(format!("aws_iam: {e}"))),
            Err(e)
                if matches!(
                    e.code(),
                    Some("InvalidClientTokenId" | "UnrecognizedClientException")
                ) =>
            {
                Err(ProviderError::Transient(format!(
                    "STS does not accept the new key {key_id} yet (IAM is eventually consistent)"
                )))
            }
            Err(e)
                if matches!(
                    e.code(),
                    Some("SignatureDoesNotMatch" | "IncompleteSignature")
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(ProviderError::Fatal(format!("aws_iam: {e}"))),
        }
    }

    fn lists_accounts(&self) -> bool {
        true
    }

    /// ListUsers under `path_prefix`, every page.
    async fn list_accounts(&self) -> Result<Vec<String>, ProviderError> {
        let mut users = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut params = vec![
                ("PathPrefix", self.path_prefix.as_str()),
                ("MaxItems", "100"),
            ];
            if let Some(m) = &marker {
                params.push(("Marker", m));
            }
            let answer = self.iam_call("ListUsers", "*", &params).await?;
            let doc = client::parse(&answer.body, "ListUsers")?;
            users.extend(
                doc.descendants()
                    .filter(|n| n.has_tag_name("member"))
                    .filter_map(|m| client::text_of(m, "UserName").map(str::to_owned)),
            );
            let truncated = client::text_of(doc.root(), "IsTruncated") == Some("true");
            marker = client::text_of(doc.root(), "Marker").map(str::to_owned);
            if !truncated || marker.is_none() {
                return Ok(users);
            }
        }
    }

    /// GetAccessKeyLastUsed: when the key last signed a request. IAM keeps no
    /// record of a deleted key (NoSuchEntity): it can no longer be used.
    async fn last_used(&self, target: Target<'_>, key_id: &str) -> Result<LastUse, ProviderError> {
        let user = self.user(&target)?;
        let answer = match self
            .client
            .call(
                &self.iam(),
                &self.admin,
                "GetAccessKeyLastUsed",
                &[("AccessKeyId", key_id)],
            )
            .await
        {
            Ok(a) => a,
            Err(e) if e.code() == Some("NoSuchEntity") => return Ok(LastUse::Gone),
            Err(e) => return Err(self.classify(e, "GetAccessKeyLastUsed", user)),
        };
        let doc = client::parse(&answer.body, "GetAccessKeyLastUsed")?;
        Ok(
            match client::text_of(doc.root(), "LastUsedDate").and_then(client::parse_timestamp) {
                Some(at) => LastUse::At(at),
                None => LastUse::Never,
            },
        )
    }

    async fn deactivate(&self, target: Target<'_>, key_id: &str) -> Result<(), ProviderError> {
        let user = self.user(&target)?;
        match self
            .client
            .call(
                &self.iam(),
                &self.admin,
                "UpdateAccessKey",
                &[
                    ("UserName", user),
                    ("AccessKeyId", key_id),
                    ("Status", "Inactive"),
                ],
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("NoSuchEntity") => Ok(()),
            Err(e) => Err(self.classify(e, "UpdateAccessKey", user)),
        }
    }

    async fn revoke(&self, target: Target<'_>, key_id: &str) -> Result<(), ProviderError> {
        let user = self.user(&target)?;
        self.delete_key(user, key_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> AwsIam {
        let admin = Admin::from_env_value(
            "AWS_ADMIN",
            r#"{"access_key_id":"AKIAEXAMPLE","secret_access_key":"s3cr3t"}"#,
        );
        AwsIam::new(&IndexMap::new(), Some(&admin)).unwrap()
    }

    fn api(status: u16, code: &str) -> AwsError {
        AwsError::Api {
            action: "CreateAccessKey".into(),
            status,
            code: code.into(),
        }
    }

    #[test]
    fn throttling_codes_are_rate_limits_and_auth_codes_say_what_to_fix() {
        let p = provider();
        for (status, code) in [
            (400, "Throttling"),
            (400, "ThrottlingException"),
            (429, "Whatever"),
        ] {
            assert!(
                matches!(
                    p.classify(api(status, code), "CreateAccessKey", "u"),
                    ProviderError::RateLimited { .. }
                ),
                "{status} {code}"
            );
        }
        assert!(matches!(
            p.classify(api(503, "ServiceUnavailable"), "CreateAccessKey", "u"),
            ProviderError::Transient(_)
        ));
        let msg = p
            .classify(api(403, "SignatureDoesNotMatch"), "GetUser", "u")
            .to_string();
        assert!(
            msg.contains("AWS_ADMIN") && msg.contains("secret_access_key"),
            "{msg}"
        );
        assert!(!msg.contains("s3cr3t"));
        let msg = p
            .classify(api(404, "NoSuchEntity"), "GetUser", "bob")
            .to_string();
        assert!(msg.contains("`bob` does not exist"), "{msg}");
        let msg = p
            .classify(api(409, "LimitExceeded"), "CreateAccessKey", "bob")
            .to_string();
        assert!(msg.contains("never deletes an active key"), "{msg}");
    }

    #[test]
    fn a_missing_admin_field_is_named() {
        let admin = Admin::from_env_value("AWS_ADMIN", r#"{"access_key_id":"AKIAEXAMPLE"}"#);
        let err = AwsIam::new(&IndexMap::new(), Some(&admin))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("secret_access_key"), "{err}");
    }
}
