//! Propagation sinks: the places a promoted value is copied to besides the
//! consumers' Vault path. The engine (`engine/rotate/sinks.rs`) runs them after
//! promotion, each as its own journaled step; Vault sinks go through the engine's
//! `SecretStore`, the others live here.
//!
//! Errors use the providers' classification (transient, rate limited, fatal) so the
//! engine retries them the same way; messages never hold a value or a token.

pub mod file;
pub mod github;
