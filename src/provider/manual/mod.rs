//! `manual`: steps an operator performs by hand (an admin console key, an exchange
//! API key). The engine asks an [`Operator`] for the new value, or for a
//! confirmation when the step only revokes; who answers depends on how rekey runs:
//!
//! - [`Terminal`]: stdin is a terminal. The instructions go to stderr and the value
//!   is read with echo off; concurrent manual steps ask one at a time.
//! - [`Provided`]: `rekey resume --value-stdin` / `--value-file`: a value read before
//!   the engine started, for one named credential.
//! - [`Nobody`]: no terminal (cron, CI). The credential waits as `awaiting operator`
//!   and the rest of the run goes on; `rekey resume` finishes it.
//!
//! A value never comes from the command line (argv is visible to every local user)
//! nor from an environment variable.

mod terminal;

pub use terminal::Terminal;

use crate::secret::Secret;
use std::sync::Mutex;

/// What the operator answered for one manual step.
#[derive(Debug)]
pub enum Answer {
    /// The new value, to stage, verify (when the definition can) and promote.
    Value(Secret),
    /// A revoke-only step (`confirm_only: true`) was done.
    Confirmed,
    /// Nobody could answer now (no terminal, or the operator declined): the
    /// credential waits for `rekey resume`.
    Unavailable,
}

/// One manual step, as the operator sees it.
#[derive(Debug, Clone)]
pub struct Request {
    pub credential: String,
    pub instructions: String,
    pub vault_path: String,
    /// Revoke-only: a confirmation is asked, no value.
    pub confirm_only: bool,
}

/// Who answers manual steps. `ask` blocks (it may wait for a human): the engine
/// calls it on a blocking thread.
pub trait Operator: Send + Sync {
    fn ask(&self, request: &Request) -> Answer;
    /// Whether `ask` talks to a human on the terminal (the progress display then
    /// steps aside).
    fn interactive(&self) -> bool {
        false
    }
}

/// Nobody answers: every manual step waits for `rekey resume`.
pub struct Nobody;

impl Operator for Nobody {
    fn ask(&self, _: &Request) -> Answer {
        Answer::Unavailable
    }
}

/// A value (or a confirmation) given to `rekey resume` for one credential; every
/// other manual step waits. The value is handed out once.
pub struct Provided {
    credential: String,
    answer: Mutex<Option<Answer>>,
}

impl Provided {
    /// `value` is `None` for a confirmation (`--confirm`).
    pub fn new(credential: impl Into<String>, value: Option<Secret>) -> Provided {
        Provided {
            credential: credential.into(),
            answer: Mutex::new(Some(match value {
                Some(v) => Answer::Value(v),
                None => Answer::Confirmed,
            })),
        }
    }
}

impl Operator for Provided {
    fn ask(&self, request: &Request) -> Answer {
        if request.credential != self.credential {
            return Answer::Unavailable;
        }
        let mut slot = self.answer.lock().unwrap_or_else(|e| e.into_inner());
        match (slot.take(), request.confirm_only) {
            // A value given for a revoke-only step is not stored: the step only
            // needed to know it was done.
            (Some(Answer::Value(_)), true) => Answer::Confirmed,
            (Some(Answer::Confirmed), false) => {
                tracing::warn!(credential = %request.credential, "This manual step needs a new value, not a confirmation; pass it with --value-stdin or --value-file.");
                Answer::Unavailable
            }
            (Some(answer), _) => answer,
            (None, _) => Answer::Unavailable,
        }
    }
}

/// Reads a value given on stdin or in a file: one trailing newline (`\n` or
/// `\r\n`) is dropped, nothing else; an empty value is refused.
pub fn value_from_bytes(bytes: Vec<u8>, origin: &str) -> Result<Secret, String> {
    let text = zeroize::Zeroizing::new(
        String::from_utf8(bytes)
            .map_err(|_| format!("the value from {origin} is not UTF-8 text"))?,
    );
    let trimmed = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if trimmed.is_empty() {
        return Err(format!("the value from {origin} is empty"));
    }
    Ok(Secret::new(trimmed.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: &str, confirm_only: bool) -> Request {
        Request {
            credential: id.into(),
            instructions: "do it".into(),
            vault_path: "a/b".into(),
            confirm_only,
        }
    }

    #[test]
    fn a_provided_value_answers_its_credential_once_and_no_other() {
        let op = Provided::new("x", Some(Secret::new("v1")));
        assert!(matches!(op.ask(&request("y", false)), Answer::Unavailable));
        match op.ask(&request("x", false)) {
            Answer::Value(v) => assert_eq!(v.expose(), "v1"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(op.ask(&request("x", false)), Answer::Unavailable));
    }

    #[test]
    fn a_confirmation_does_not_stand_in_for_a_value() {
        let op = Provided::new("x", None);
        assert!(matches!(op.ask(&request("x", false)), Answer::Unavailable));
        let op = Provided::new("x", None);
        assert!(matches!(op.ask(&request("x", true)), Answer::Confirmed));
    }

    #[test]
    fn values_lose_one_trailing_newline_and_empty_ones_are_refused() {
        let v = value_from_bytes(b"abc \n".to_vec(), "stdin").unwrap();
        assert_eq!(v.expose(), "abc ");
        let v = value_from_bytes(b"abc\r\n".to_vec(), "stdin").unwrap();
        assert_eq!(v.expose(), "abc");
        assert!(value_from_bytes(b"\n".to_vec(), "stdin").is_err());
        assert!(value_from_bytes(vec![0xff], "stdin").is_err());
    }
}
