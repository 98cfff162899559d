//! The log subscriber: `-v`/`-q` set rekey's level, `RUST_LOG` overrides it, and a
//! ceiling per third-party crate that no `RUST_LOG` can lift.
//!
//! rekey's own events never hold a secret (fields are ids, versions and HMACs; every
//! span skips its arguments). The libraries under it were not written with that
//! promise: `tokio_postgres` logs every statement at `debug` (`ALTER ROLE ...
//! PASSWORD 'SCRAM-SHA-256$...'` holds the verifier), and the HTTP, TLS and SSH
//! stacks trace headers, frames and channel data. An operator debugging a failed
//! rotation at `RUST_LOG=trace` must not print the very values rekey protects, so
//! each crate's events are cut at the level where it still says only what
//! happened (connection lost, handshake failed), never what was sent.
//!
//! Invariant: no event or span of a third-party crate above its ceiling reaches
//! stderr, whatever `RUST_LOG` says (`tests/it/canary.rs` and the providers'
//! canary tests run at `RUST_LOG=trace`).

use tracing::Metadata;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The most a crate may log, by target prefix (its crate name, as `tracing` and
/// `log` name targets). Decided per crate by reading what it logs:
const CEILINGS: &[(&str, LevelFilter)] = &[
    // `debug`: every statement (ALTER ROLE ... PASSWORD with the SCRAM verifier);
    // `info`: server notices, which can quote a statement. Nothing below is safe.
    ("tokio_postgres", LevelFilter::OFF),
    ("postgres_protocol", LevelFilter::OFF),
    ("tokio_postgres_rustls", LevelFilter::WARN),
    // Errors only (with its `tracing` feature, off here, spans would carry SQL).
    ("mysql_async", LevelFilter::WARN),
    ("mysql_common", LevelFilter::WARN),
    // `debug` prints errors and connection state with `{:?}`.
    ("redis", LevelFilter::WARN),
    // `warn` names socket and protocol errors; results carry no password.
    ("ldap3", LevelFilter::WARN),
    ("lber", LevelFilter::WARN),
    // `debug` prints channel messages (`msg = {:?}`, data included).
    ("russh", LevelFilter::WARN),
    ("ssh_key", LevelFilter::WARN),
    ("ssh_encoding", LevelFilter::WARN),
    // HTTP stacks: `trace` shows headers (X-Vault-Token, Authorization) and frames.
    ("reqwest", LevelFilter::WARN),
    ("hyper", LevelFilter::WARN),
    ("hyper_util", LevelFilter::WARN),
    ("h2", LevelFilter::WARN),
    ("http", LevelFilter::WARN),
    ("tower", LevelFilter::WARN),
    // Vault client: `trace` names paths and headers it adds, its `error` events
    // repeat Vault's error list; spans hold request URIs.
    ("vaultrs", LevelFilter::WARN),
    ("rustify", LevelFilter::WARN),
    // TLS: handshake messages at `debug` and `trace`, never application data or
    // keys, and what a TLS failure needs to be understood: allowed to `debug`.
    ("rustls", LevelFilter::DEBUG),
    ("tokio_rustls", LevelFilter::DEBUG),
];

/// Crates outside this list and not rekey's own: at most `warn`. A library added
/// later starts safe; raising it means reading what it logs and adding it above.
const DEFAULT_CEILING: LevelFilter = LevelFilter::WARN;

/// The most `target` may log.
pub fn ceiling(target: &str) -> LevelFilter {
    let krate = target.split("::").next().unwrap_or(target);
    if krate == "rekey" {
        return LevelFilter::TRACE;
    }
    CEILINGS
        .iter()
        .find(|(name, _)| *name == krate)
        .map_or(DEFAULT_CEILING, |(_, level)| *level)
}

fn under_ceiling(meta: &Metadata<'_>) -> bool {
    *meta.level() <= ceiling(meta.target())
}

/// Installs the subscriber on stderr: `level` for rekey unless `RUST_LOG` says
/// otherwise, and the ceilings above in every case. Events of crates that use
/// `log` go through the same filter (`tracing-log` gives them their real target).
pub fn init(level: &str, color: bool) {
    use tracing_subscriber::Layer;
    let filter = EnvFilter::try_from_env(crate::env_vars::RUST_LOG)
        .unwrap_or_else(|_| EnvFilter::new(format!("rekey={level}")));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .with_target(false)
        .with_filter(filter.and(filter_fn(under_ceiling)));
    tracing_subscriber::registry().with(layer).init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_and_headers_stay_below_every_ceiling() {
        assert_eq!(ceiling("tokio_postgres::query"), LevelFilter::OFF);
        assert_eq!(ceiling("hyper::proto::h1::io"), LevelFilter::WARN);
        assert_eq!(ceiling("some_new_crate"), LevelFilter::WARN);
        assert_eq!(ceiling("rekey::engine"), LevelFilter::TRACE);
        assert_eq!(ceiling("rekey"), LevelFilter::TRACE);
        // A crate whose name merely starts like rekey's is someone else's.
        assert_eq!(ceiling("rekeyish"), LevelFilter::WARN);
    }
}
