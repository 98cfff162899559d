//! Credential ages and `max_age`: what a hygiene run rotates. Pure: the ages are
//! looked up elsewhere (`crate::hygiene::ages`, which reads Vault's metadata and
//! asks providers) and judged here, so `plan` stays offline.
//!
//! A credential's age is the time since its last rotation: the `created_time`
//! of its current Vault version when rekey wrote that version (the path carries
//! rekey's custom metadata naming the credential), else the provider's creation
//! date of the key Vault names, else unknown. Unknown counts as due, and says so:
//! a hygiene run must not skip what it cannot see.

use serde::Serialize;
use std::time::Duration;

/// Where an age came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgeSource {
    /// The current Vault version's `created_time`, on a path rekey wrote.
    VaultMetadata,
    /// The provider's creation date of the key the Vault entry names.
    Provider,
    /// Neither says.
    Unknown,
}

/// A credential's age as found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Age {
    /// When the credential was last rotated (seconds since the Unix epoch).
    pub rotated_at: Option<u64>,
    pub source: AgeSource,
    /// What was found, or why nothing was (never a value).
    pub detail: String,
    /// The Vault version current when it was looked up (0: none).
    pub vault_version: u64,
    /// The key id the Vault entry names, when it names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

impl Age {
    /// Unknown, with why.
    pub fn unknown(detail: impl Into<String>, vault_version: u64) -> Age {
        Age {
            rotated_at: None,
            source: AgeSource::Unknown,
            detail: detail.into(),
            vault_version,
            key_id: None,
        }
    }

    /// The age at `now` (seconds since the epoch); a clock behind the store's
    /// counts as zero.
    pub fn at(&self, now: u64) -> Option<Duration> {
        self.rotated_at
            .map(|t| Duration::from_secs(now.saturating_sub(t)))
    }
}

/// Whether a credential is due under its `max_age`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Older than `max_age`, or of unknown age: rotate it.
    Due,
    /// Younger than `max_age`: leave it.
    NotDue,
}

/// Judges `age` against `max_age` at `now`. Unknown ages are due.
pub fn judge(age: &Age, max_age: Duration, now: u64) -> Verdict {
    match age.at(now) {
        Some(a) if a < max_age => Verdict::NotDue,
        _ => Verdict::Due,
    }
}

/// The effective `max_age` of a credential: the command line's, else the
/// playbook's (the credential's own or `defaults.max_age`).
pub fn effective(credential: Option<Duration>, command_line: Option<Duration>) -> Option<Duration> {
    command_line.or(credential)
}

/// Seconds since the Unix epoch, now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A whole-unit age for people: `3d 4h`, `25m`, `12s`.
pub fn human(age: Duration) -> String {
    let s = age.as_secs();
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3_600, (s % 3_600) / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// An epoch time as RFC 3339 UTC, seconds.
pub fn timestamp(epoch: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(epoch))
        .to_string()
}

/// One line about a credential's age against its `max_age`, as `plan` and
/// `report` print it. `age` is `None` offline.
pub fn describe(age: Option<&Age>, max_age: Duration, now: u64) -> String {
    let policy = human(max_age);
    let Some(age) = age else {
        return format!(
            "max age {policy}: age unknown until --live (a run rotates it only if older)"
        );
    };
    match age.at(now) {
        Some(a) if a < max_age => {
            format!("age {} of max {policy}: not due ({})", human(a), age.detail)
        }
        Some(a) => format!("age {} of max {policy}: due ({})", human(a), age.detail),
        None => format!("age unknown: due, since rekey cannot tell ({})", age.detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aged(rotated_at: Option<u64>) -> Age {
        Age {
            rotated_at,
            source: if rotated_at.is_some() {
                AgeSource::VaultMetadata
            } else {
                AgeSource::Unknown
            },
            detail: "x".into(),
            vault_version: 1,
            key_id: None,
        }
    }

    #[test]
    fn unknown_ages_are_due_and_young_ones_are_not() {
        let day = Duration::from_secs(86_400);
        let now = 100 * 86_400;
        assert_eq!(judge(&aged(None), day, now), Verdict::Due);
        assert_eq!(judge(&aged(Some(now - 3_600)), day, now), Verdict::NotDue);
        assert_eq!(judge(&aged(Some(now - 86_400)), day, now), Verdict::Due);
        // A store clock ahead of this one: age zero, not a wrap-around.
        assert_eq!(judge(&aged(Some(now + 60)), day, now), Verdict::NotDue);
    }

    #[test]
    fn the_command_line_overrides_the_playbook() {
        let d = Duration::from_secs;
        assert_eq!(effective(Some(d(10)), Some(d(5))), Some(d(5)));
        assert_eq!(effective(Some(d(10)), None), Some(d(10)));
        assert_eq!(effective(None, None), None);
    }

    #[test]
    fn ages_read_in_whole_units() {
        let d = Duration::from_secs;
        assert_eq!(human(d(12)), "12s");
        assert_eq!(human(d(25 * 60)), "25m");
        assert_eq!(human(d(3 * 86_400 + 4 * 3_600 + 5)), "3d 4h");
        assert!(describe(None, d(90 * 86_400), 0).contains("age unknown until --live"));
    }
}
