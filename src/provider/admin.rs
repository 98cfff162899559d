//! The admin credential a provider instance rotates with, resolved at run time from
//! where the playbook says (a Vault KV entry or an environment variable), never from
//! the playbook text. Every field is a [`Secret`].

use crate::playbook::AdminSource;
use crate::secret::{Secret, SecretMap};
use crate::store::SecretStore;
use std::collections::BTreeMap;

use super::ProviderError;

/// The fields of an admin credential. From Vault: every field of the KV entry's
/// data (`value` included when present). From an environment variable: a JSON object
/// of string fields, or any other text as the single field `value`.
#[derive(Clone, Debug, Default)]
pub struct Admin {
    fields: SecretMap,
    /// Where it came from, for error messages (`vault:infra/pg-admin`, `env:PG_ADMIN`).
    pub origin: String,
}

impl Admin {
    pub fn from_fields(origin: impl Into<String>, fields: BTreeMap<String, Secret>) -> Admin {
        Admin {
            fields: SecretMap::from(fields),
            origin: origin.into(),
        }
    }

    /// Every field, for providers that hand the whole credential on (exec plugins).
    pub fn fields(&self) -> impl Iterator<Item = (&str, &Secret)> {
        self.fields.iter()
    }

    /// The fields as a map (what request templates see as `admin.<field>`).
    pub fn secrets(&self) -> &SecretMap {
        &self.fields
    }

    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.fields.get(name)
    }

    /// The first of `names` that is set, or a fatal error saying which fields the
    /// provider reads and where the credential came from.
    pub fn require(&self, names: &[&str]) -> Result<&Secret, ProviderError> {
        names.iter().find_map(|n| self.get(n)).ok_or_else(|| {
            ProviderError::Fatal(format!(
                "the admin credential from {} has no `{}` field; store it there (field names: {})",
                self.origin,
                names[0],
                names.join(" or ")
            ))
        })
    }

    /// Parses an environment variable's value (see the type's documentation).
    pub fn from_env_value(var: &str, value: &str) -> Admin {
        let origin = format!("environment variable `{var}`");
        let trimmed = value.trim();
        if trimmed.starts_with('{')
            && let Ok(serde_json::Value::Object(map)) = serde_json::from_str(trimmed)
        {
            let fields = map
                .into_iter()
                .filter_map(|(k, v)| match v {
                    serde_json::Value::String(s) => Some((k, Secret::new(s))),
                    serde_json::Value::Number(n) => Some((k, Secret::new(n.to_string()))),
                    _ => None,
                })
                .collect();
            return Admin::from_fields(origin, fields);
        }
        Admin::from_fields(
            origin,
            BTreeMap::from([("value".to_owned(), Secret::new(trimmed.to_owned()))]),
        )
    }
}

/// Reads the admin credential `source` names. Errors name the source and say what
/// to do; they never hold a value.
pub async fn resolve(source: &AdminSource, store: &dyn SecretStore) -> Result<Admin, String> {
    match source {
        AdminSource::Env(var) => match crate::harden::secret_env(var) {
            Some(v) if !v.trim().is_empty() => Ok(Admin::from_env_value(var, &v)),
            _ => Err(format!(
                "the admin credential variable `{var}` is not set; export it before running rekey"
            )),
        },
        AdminSource::Vault(path) => {
            let entry = store
                .read(path)
                .await
                .map_err(|e| format!("cannot read the admin credential at `{path}`: {e}"))?;
            if entry.version == 0 || (entry.value.is_none() && entry.fields.is_empty()) {
                return Err(format!(
                    "no admin credential at Vault path `{path}`; write it there (e.g. `bao kv put <mount>/{path} username=... password=...`)"
                ));
            }
            let mut fields: BTreeMap<String, Secret> = entry
                .fields
                .into_iter()
                .map(|(k, v)| (k, Secret::new(v)))
                .collect();
            if let Some(v) = entry.value {
                fields.insert("value".to_owned(), v);
            }
            Ok(Admin::from_fields(format!("Vault path `{path}`"), fields))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_env_value_is_json_fields_or_a_single_value() {
        let a = Admin::from_env_value("X", r#"{"username":"root","password":"pw","port":5432}"#);
        assert_eq!(a.get("username").unwrap().expose(), "root");
        assert_eq!(a.get("port").unwrap().expose(), "5432");
        let b = Admin::from_env_value("X", " tok-123 \n");
        assert_eq!(b.require(&["value"]).unwrap().expose(), "tok-123");
        let err = b.require(&["password", "value2"]).unwrap_err().to_string();
        assert!(err.contains("`password`") && err.contains("`X`"), "{err}");
    }
}
