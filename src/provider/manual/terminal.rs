//! The terminal operator: instructions on stderr, the value read from the terminal
//! on stdin with echo off (termios), so it never shows on screen or in scrollback.

use super::{Answer, Operator, Request};
use crate::secret::Secret;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Mutex;

/// Asks on the terminal. Manual steps of one wave may be due at once: the lock
/// makes them ask one after the other.
pub struct Terminal {
    lock: Mutex<()>,
}

impl Terminal {
    /// A terminal operator when stdin is a terminal, else `None`.
    pub fn detect() -> Option<Terminal> {
        std::io::stdin().is_terminal().then(|| Terminal {
            lock: Mutex::new(()),
        })
    }
}

impl Operator for Terminal {
    fn interactive(&self) -> bool {
        true
    }

    fn ask(&self, request: &Request) -> Answer {
        let _turn = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "\nManual step `{}` (stored at {}):\n  {}\n",
            request.credential,
            request.vault_path,
            printable(request.instructions.trim()).replace('\n', "\n  ")
        );
        if request.confirm_only {
            let _ = write!(err, "Type `done` once it is done (anything else: later): ");
            let _ = err.flush();
            drop(err);
            let mut line = String::new();
            if std::io::stdin().lock().read_line(&mut line).is_err() {
                return Answer::Unavailable;
            }
            return if line.trim().eq_ignore_ascii_case("done") {
                Answer::Confirmed
            } else {
                Answer::Unavailable
            };
        }
        // Echo goes off before the prompt shows: a value pasted the moment the
        // prompt appears must not be echoed.
        let prompt = move || {
            let _ = write!(
                err,
                "Paste the new value (hidden; empty: later, `rekey resume` asks again): "
            );
            let _ = err.flush();
        };
        match read_hidden_line(prompt) {
            Ok(value) if !value.is_empty() => Answer::Value(value),
            Ok(_) => Answer::Unavailable,
            Err(e) => {
                tracing::warn!(credential = %request.credential, "Cannot read from the terminal: {e}");
                Answer::Unavailable
            }
        }
    }
}

/// Turns the terminal's echo off, calls `prompt`, reads one line from stdin and
/// restores the mode.
fn read_hidden_line(prompt: impl FnOnce()) -> std::io::Result<Secret> {
    const STDIN: i32 = 0;
    // SAFETY: termios is plain data; tcgetattr fills it or fails.
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(STDIN, &mut term) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let saved = term;
    term.c_lflag &= !libc::ECHO;
    // The newline the operator types still shows, so the next output starts clean.
    term.c_lflag |= libc::ECHONL;
    if unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, &term) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    prompt();
    let mut line = zeroize::Zeroizing::new(String::new());
    let read = std::io::stdin().lock().read_line(&mut line);
    // SAFETY: restores the attributes read above.
    unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, &saved) };
    read?;
    let value = line.trim_end_matches(['\n', '\r']);
    Ok(Secret::new(value.to_owned()))
}

/// `text` with control characters (escape sequences that could rewrite the
/// screen) shown escaped; newlines are kept.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
