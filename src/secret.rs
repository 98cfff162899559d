//! Secret values as a type: no `Display`, a redacted `Debug`, zeroized on drop, and
//! an explicit, greppable `expose()` wherever the value must leave.

use hmac::{KeyInit, Mac};
use std::collections::BTreeMap;
use std::fmt;
use zeroize::Zeroizing;

/// A secret string (a password, an API key, a token).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(Zeroizing::new(value.into()))
    }

    /// The value itself. Every call site is a place where a secret leaves rekey's
    /// control (to a provider, to Vault): keep them few and obvious.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// HMAC-SHA256 of the value under `key`, hex: lets records refer to a value
    /// (and lets someone who holds a value check it against them) without holding it.
    pub fn fingerprint(&self, key: &[u8]) -> String {
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
            .expect("HMAC takes keys of any length");
        mac.update(self.0.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// A random password drawn from `alphabet` with the OS generator.
    pub fn generate(length: usize, alphabet: &str) -> Secret {
        use rand::RngExt;
        let chars: Vec<char> = alphabet.chars().collect();
        let mut rng = rand::rng();
        let mut value = Zeroizing::new(String::with_capacity(length));
        for _ in 0..length {
            value.push(chars[rng.random_range(0..chars.len())]);
        }
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Named secrets: the fields of an admin credential, as providers and request
/// templates read them. Its `Debug` redacts every value (each is a [`Secret`]).
#[derive(Clone, Debug, Default)]
pub struct SecretMap(BTreeMap<String, Secret>);

impl SecretMap {
    /// The field `name`, unless it is missing or empty.
    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.0.get(name).filter(|s| !s.is_empty())
    }

    /// Every field, empty ones included, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Secret)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl From<BTreeMap<String, Secret>> for SecretMap {
    fn from(fields: BTreeMap<String, Secret>) -> SecretMap {
        SecretMap(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value_and_fingerprints_are_keyed() {
        let s = Secret::new("canary-7Hq2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_ne!(s.fingerprint(b"k1"), s.fingerprint(b"k2"));
        assert_eq!(
            s.fingerprint(b"k1"),
            Secret::new("canary-7Hq2").fingerprint(b"k1")
        );
        assert_eq!(s.fingerprint(b"k1").len(), 64);
    }

    /// Autoref probe: the inherent method exists only when `T: Display` (or
    /// `Serialize`); otherwise the trait's fallback answers.
    struct Probe<'a, T>(#[allow(dead_code)] &'a T);
    trait Fallback {
        fn displays(&self) -> bool {
            false
        }
        fn serializes(&self) -> bool {
            false
        }
    }
    impl<T> Fallback for Probe<'_, T> {}
    impl<T: std::fmt::Display> Probe<'_, T> {
        fn displays(&self) -> bool {
            true
        }
    }
    struct SerProbe<'a, T>(#[allow(dead_code)] &'a T);
    impl<T> Fallback for SerProbe<'_, T> {}
    impl<T: serde::Serialize> SerProbe<'_, T> {
        fn serializes(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_secret_cannot_be_displayed_or_serialized() {
        let s = Secret::new("canary-7Hq2");
        assert!(!Probe(&s).displays());
        assert!(!SerProbe(&s).serializes());
        // The probes do see the traits where they exist.
        assert!(Probe(&"text").displays());
        assert!(SerProbe(&"text").serializes());
        // Admin credentials are maps of secrets: their Debug is redacted too.
        let admin = SecretMap::from(BTreeMap::from([(
            "password".to_owned(),
            Secret::new("canary-admin-9"),
        )]));
        assert!(!format!("{admin:?}").contains("canary-admin-9"));
        assert_eq!(
            admin.get("password").map(Secret::expose),
            Some("canary-admin-9")
        );
    }

    #[test]
    fn generated_passwords_use_the_alphabet() {
        let p = Secret::generate(40, "ab");
        assert_eq!(p.expose().len(), 40);
        assert!(p.expose().chars().all(|c| c == 'a' || c == 'b'));
        assert_ne!(
            Secret::generate(32, "abcdefghij0123456789").expose(),
            Secret::generate(32, "abcdefghij0123456789").expose()
        );
    }
}
