//! rekey: credential rotation orchestrator for post-breach response.
//!
//! See ARCHITECTURE.md for the map of this crate.

pub mod audit;
pub mod catalog;
pub mod cli;
pub mod commands;
pub mod discover;
pub mod doc;
pub mod engine;
pub mod env_vars;
pub mod exit;
pub mod files;
pub mod harden;
pub mod hygiene;
pub mod journal;
pub mod logging;
pub mod net;
pub mod notify;
pub mod plan;
pub mod playbook;
pub mod progress;
pub mod protocol;
pub mod provider;
pub mod secret;
pub mod sink;
pub mod store;

pub use exit::ExitStatus;
