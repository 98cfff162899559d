//! Where a shared journal lives: `postgres://USER@HOST[:PORT]/DATABASE[?...]`.
//!
//! The URL never holds the password: process lists and shell histories show
//! command lines, so a password in `--journal` (or in `password=`) is refused, and
//! the password comes from `REKEY_JOURNAL_PASSWORD` (read once, then removed from
//! the environment). TLS is on and verified by default (`sslmode=verify-full`:
//! the system's roots plus `sslrootcert=FILE`, the host name checked); plain text
//! (`sslmode=disable`) is allowed to a loopback host only, the rule rekey applies
//! to every HTTP endpoint that gets a credential (`crate::net`).

use std::fmt;
use std::path::PathBuf;

/// How the connection is protected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tls {
    /// Plain text, to a loopback host only.
    Disable,
    /// TLS with the certificate chain and host name verified; `ca_file` adds
    /// trusted CAs to the system's.
    VerifyFull { ca_file: Option<PathBuf> },
}

/// A parsed `postgres://` journal URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgLocation {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    pub tls: Tls,
}

const HELP_PASSWORD: &str = "remove it from the URL and export REKEY_JOURNAL_PASSWORD instead: every local user can read a process's command line";

impl PgLocation {
    /// Whether `text` is meant as a PostgreSQL URL (rather than a file path).
    pub fn is_url(text: &str) -> bool {
        let lower = text.trim_start().to_ascii_lowercase();
        lower.starts_with("postgres://") || lower.starts_with("postgresql://")
    }

    /// Parses and checks a journal URL; the error says what to change.
    pub fn parse(text: &str) -> Result<PgLocation, String> {
        let url = url::Url::parse(text.trim())
            .map_err(|e| format!("the journal URL is not a valid postgres:// URL ({e})"))?;
        if url.password().is_some() {
            return Err(format!("the journal URL holds a password; {HELP_PASSWORD}"));
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => {
                d.trim_start_matches('[').trim_end_matches(']').to_owned()
            }
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => {
                return Err(
                    "the journal URL names no host: write postgres://USER@HOST[:PORT]/DATABASE"
                        .into(),
                );
            }
        };
        let user = percent(url.username())?;
        if user.is_empty() {
            return Err(
                "the journal URL names no user: write postgres://USER@HOST[:PORT]/DATABASE".into(),
            );
        }
        let database = percent(url.path().trim_start_matches('/'))?;
        if database.is_empty() || database.contains('/') {
            return Err(
                "the journal URL names no database: write postgres://USER@HOST[:PORT]/DATABASE"
                    .into(),
            );
        }
        let mut sslmode = None;
        let mut ca_file = None;
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "sslmode" => sslmode = Some(value.into_owned()),
                "sslrootcert" => ca_file = Some(PathBuf::from(value.as_ref())),
                "password" | "passfile" => {
                    return Err(format!("the journal URL holds a password; {HELP_PASSWORD}"));
                }
                other => {
                    return Err(format!(
                        "the journal URL has an unknown parameter `{other}`; rekey understands sslmode (verify-full or disable) and sslrootcert (a CA file)"
                    ));
                }
            }
        }
        let tls = match sslmode.as_deref() {
            None | Some("verify-full") => Tls::VerifyFull { ca_file },
            Some("disable") if is_loopback(&host) => {
                if ca_file.is_some() {
                    return Err("sslrootcert has no use with sslmode=disable".into());
                }
                Tls::Disable
            }
            Some("disable") => {
                return Err(format!(
                    "sslmode=disable sends the journal's password and records in plain text to `{host}`; rekey allows that only to a loopback address (127.0.0.0/8, ::1, localhost): use sslmode=verify-full (the default) with sslrootcert=CA-FILE if the server's CA is private"
                ));
            }
            Some(other) => {
                return Err(format!(
                    "sslmode={other} does not verify the server (or is unknown); rekey accepts verify-full (the default: TLS, certificate and host name checked) and, to a loopback host, disable"
                ));
            }
        };
        Ok(PgLocation {
            host,
            port: url.port().unwrap_or(5432),
            user,
            database,
            tls,
        })
    }
}

/// Whether `host` is this machine: an address in 127.0.0.0/8, `::1` (or an
/// IPv4-mapped loopback), or `localhost` (the rule of `crate::net`, on the host
/// of a URL whose scheme the `url` crate does not know, so leaves unparsed).
fn is_loopback(host: &str) -> bool {
    match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

fn percent(text: &str) -> Result<String, String> {
    percent_decode(text).ok_or_else(|| "the journal URL is not valid UTF-8 once decoded".into())
}

/// `%XX` decoding of a URL part.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// As messages show it: the URL without a password (it never has one).
impl fmt::Display for PgLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(
            f,
            "postgres://{}@{host}:{}/{}",
            self.user, self.port, self.database
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_a_password_is_refused_wherever_it_puts_it() {
        for url in [
            "postgres://rekey:hunter2@db.internal/rekey",
            "postgres://rekey@db.internal/rekey?password=hunter2",
        ] {
            let e = PgLocation::parse(url).unwrap_err();
            assert!(e.contains("REKEY_JOURNAL_PASSWORD"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn plain_text_is_for_loopback_hosts_only_and_tls_is_verified_by_default() {
        let local = PgLocation::parse("postgres://rekey@127.0.0.1:5433/j?sslmode=disable").unwrap();
        assert_eq!(local.tls, Tls::Disable);
        assert_eq!(local.port, 5433);
        assert_eq!(local.to_string(), "postgres://rekey@127.0.0.1:5433/j");
        let e = PgLocation::parse("postgres://rekey@db.internal/j?sslmode=disable").unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        for weak in ["require", "prefer", "verify-ca", "allow"] {
            let e = PgLocation::parse(&format!("postgres://rekey@db.internal/j?sslmode={weak}"))
                .unwrap_err();
            assert!(e.contains("verify-full"), "{e}");
        }
        let remote =
            PgLocation::parse("postgresql://rekey@db.internal/j?sslrootcert=/etc/ca.pem").unwrap();
        assert_eq!(
            remote.tls,
            Tls::VerifyFull {
                ca_file: Some(PathBuf::from("/etc/ca.pem"))
            }
        );
        assert_eq!(remote.port, 5432);
    }

    #[test]
    fn user_and_database_are_required_and_unknown_parameters_refused() {
        assert!(PgLocation::parse("postgres://db.internal/j").is_err());
        assert!(PgLocation::parse("postgres://rekey@db.internal/").is_err());
        let e = PgLocation::parse("postgres://rekey@db.internal/j?sslmod=disable").unwrap_err();
        assert!(e.contains("sslmod"), "{e}");
        let odd = PgLocation::parse("postgres://re%20key@db.internal/my%2Ddb").unwrap();
        assert!(
            PgLocation::parse("postgres://u@127.0.0.1.evil.example/j?sslmode=disable").is_err()
        );
        assert!(PgLocation::parse("postgres://u@[::1]:5432/j?sslmode=disable").is_ok());
        assert_eq!(
            (odd.user.as_str(), odd.database.as_str()),
            ("re key", "my-db")
        );
    }
}
