//! The audit trail of a shared journal (PostgreSQL): one hash chain per run,
//! kept in the database. The journal asks for each record's line inside the
//! transaction that commits the record (`journal/postgres/worker.rs`), giving
//! the line's place in its run's chain (`seq`, and `prev`, the SHA-256 of the
//! line before it, read from the run's row under its lock); this mirror seals
//! the same line a file trail would write ([`super::trail::LineMaker`]) and, once
//! the transaction committed, copies it to the extra sinks.
//!
//! Invariant: like the file trail, no secret value reaches a line: the
//! journal's fingerprints are replaced by HMACs under the audit key every runner
//! of the database shares (`rekey.keys`).

use super::sink::Sink;
use super::trail::LineMaker;
use super::{Actor, CredentialInfo};
use crate::journal::{Event, Mirror};
use crate::secret::Secret;
use std::collections::HashMap;

/// Seals the lines of a shared journal's chains (see the module documentation).
pub struct ChainMirror {
    lines: LineMaker,
    sinks: Vec<Sink>,
}

impl ChainMirror {
    /// Lines HMAC values under `key` (the journal's audit key), name `actor`, and
    /// say which provider and Vault path each credential of `credentials` has.
    pub fn new(
        key: Vec<u8>,
        actor: Actor,
        credentials: HashMap<String, CredentialInfo>,
        sinks: Vec<Sink>,
    ) -> ChainMirror {
        ChainMirror {
            lines: LineMaker::new(key, actor, credentials),
            sinks,
        }
    }
}

impl Mirror for ChainMirror {
    fn record(&mut self, _event: Event<'_>) -> Result<(), String> {
        Err("the audit chain of a shared journal is written in its transactions (a bug)".into())
    }

    fn note_secret(&mut self, fingerprint: &str, secret: &Secret) {
        self.lines.learn(fingerprint, secret);
    }

    fn chain_line(
        &mut self,
        event: Event<'_>,
        seq: u64,
        prev: &str,
    ) -> Option<Result<String, String>> {
        let fields = self.lines.fields(event);
        Some(Ok(self.lines.seal(seq, prev, fields)))
    }

    fn committed(&mut self, line: &str) {
        for sink in &mut self.sinks {
            sink.send(line);
        }
    }
}
