//! The hash chain: how a line is sealed, and how a trail is checked.
//!
//! A line is one compact JSON object. Its last two fields are `prev`, the SHA-256
//! (hex) of the whole previous line (64 zeros for the first line), and `hash`, the
//! SHA-256 of the line itself up to `prev` (the line with `,"hash":"..."` cut out).
//! `seq` counts lines from 1. So:
//!
//! - a changed byte makes that line's `hash` wrong (or its JSON invalid): named at
//!   that line;
//! - a deleted, inserted or moved line puts an unexpected `seq` (or `prev`) where it
//!   lands: named at that position;
//! - lines cut from the end are caught by the head record beside the trail
//!   (`<trail>.head`: the number of lines and the hash of the last one).
//!
//! Invariant: verification reads untrusted bytes: it never panics and never
//! allocates more than one line at a time beyond the input it was given.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_PREFIX: &[u8] = b",\"hash\":\"";

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Seals `body` (a compact JSON object whose last field is `prev`): appends the
/// `hash` field. Returns the line without its newline.
pub fn seal(body: &str) -> String {
    debug_assert!(body.ends_with('}'));
    let hash = sha256_hex(body.as_bytes());
    let mut line = String::with_capacity(body.len() + 76);
    line.push_str(&body[..body.len() - 1]);
    line.push_str(",\"hash\":\"");
    line.push_str(&hash);
    line.push_str("\"}");
    line
}

/// What the head record beside a trail says: how many lines the trail had after
/// the last write, and the SHA-256 of the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub lines: u64,
    pub last: String,
}

/// The first problem found in a trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// 1-based line number in the file.
    pub line: u64,
    pub reason: String,
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Complete lines read.
    pub lines: u64,
    /// SHA-256 of the last line (`GENESIS` for an empty trail).
    pub last: String,
    /// The first problem; `None` when the whole chain holds.
    pub problem: Option<Problem>,
    /// Things worth saying that do not break the chain (e.g. no head record).
    pub notes: Vec<String>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// Checks one line (without its newline) at position `n` following a line whose
/// SHA-256 is `prev`. Returns the line's own `seq`-checked JSON on success.
pub fn check_line(
    n: u64,
    line: &[u8],
    prev: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    // `,"hash":"` + 64 hex + `"}` closes every sealed line.
    let tail = HASH_PREFIX.len() + 64 + 2;
    if line.len() < tail + 2 || !line.ends_with(b"\"}") {
        return Err(if line.is_empty() {
            "the line is empty (lines were joined, split or removed here)".into()
        } else {
            "the line does not end with its hash: it was altered, or is not a rekey audit line"
                .into()
        });
    }
    let cut = line.len() - tail;
    let claimed = &line[cut + HASH_PREFIX.len()..line.len() - 2];
    if &line[cut..cut + HASH_PREFIX.len()] != HASH_PREFIX
        || !claimed
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(
            "the line does not end with its hash: it was altered, or is not a rekey audit line"
                .into(),
        );
    }
    let mut hasher = Sha256::new();
    hasher.update(&line[..cut]);
    hasher.update(b"}");
    if hex::encode(hasher.finalize()).as_bytes() != claimed {
        return Err("its content does not match its hash: the line was altered".into());
    }
    let value: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| format!("not valid JSON ({}); the line was altered", classify(&e)))?;
    let serde_json::Value::Object(map) = value else {
        return Err("not a JSON object; the line was altered".into());
    };
    match map.get("seq").and_then(serde_json::Value::as_u64) {
        Some(seq) if seq == n => {}
        Some(seq) => {
            return Err(format!(
                "sequence number {seq} where {n} was expected: lines were deleted, inserted or moved here"
            ));
        }
        None => return Err("no sequence number; the line was altered".into()),
    }
    match map.get("prev").and_then(serde_json::Value::as_str) {
        Some(p) if p == prev => {}
        Some(_) => {
            return Err(format!(
                "its `prev` hash does not match line {}: the lines before it were altered, reordered or removed",
                n.saturating_sub(1)
            ));
        }
        None => return Err("no `prev` hash; the line was altered".into()),
    }
    Ok(map)
}

/// Verifies a whole trail held in `bytes`, and, when given, its head record.
/// Calls `each` with every line that holds (for readers that render them).
pub fn verify(
    bytes: &[u8],
    head: Option<&Head>,
    each: impl FnMut(u64, serde_json::Map<String, serde_json::Value>),
) -> Verdict {
    // A slice cannot fail to read.
    verify_reader(bytes, head, each).unwrap_or_else(|e| Verdict {
        lines: 0,
        last: GENESIS.to_owned(),
        problem: Some(Problem {
            line: 1,
            reason: format!("unreadable: {e}"),
        }),
        notes: Vec::new(),
    })
}

/// [`verify`] reading the trail line by line from `reader`: memory holds one
/// line at a time, whatever the trail's size.
pub fn verify_reader(
    mut reader: impl std::io::BufRead,
    head: Option<&Head>,
    mut each: impl FnMut(u64, serde_json::Map<String, serde_json::Value>),
) -> std::io::Result<Verdict> {
    let mut prev = GENESIS.to_owned();
    let mut n = 0u64;
    let mut hashes_at_head: Option<String> = None;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        let complete = buf.last() == Some(&b'\n');
        let line = if complete {
            &buf[..buf.len() - 1]
        } else {
            &buf[..]
        };
        n += 1;
        if !complete {
            return Ok(Verdict {
                lines: n - 1,
                last: prev,
                problem: Some(Problem {
                    line: n,
                    reason: "the last line has no newline: a write was cut short, or the line was altered".into(),
                }),
                notes: Vec::new(),
            });
        }
        match check_line(n, line, &prev) {
            Ok(map) => each(n, map),
            Err(reason) => {
                return Ok(Verdict {
                    lines: n - 1,
                    last: prev,
                    problem: Some(Problem { line: n, reason }),
                    notes: Vec::new(),
                });
            }
        }
        prev = sha256_hex(line);
        if head.is_some_and(|h| h.lines == n) {
            hashes_at_head = Some(prev.clone());
        }
    }
    let mut verdict = Verdict {
        lines: n,
        last: prev,
        problem: None,
        notes: Vec::new(),
    };
    let Some(head) = head else {
        verdict.notes.push(
            "no head record beside the trail: lines removed from its end could not be detected"
                .into(),
        );
        return Ok(verdict);
    };
    if head.lines > n {
        verdict.problem = Some(Problem {
            line: n + 1,
            reason: format!(
                "missing: the head record says the trail had {} lines, it ends after line {n} (lines were removed from its end)",
                head.lines
            ),
        });
    } else if hashes_at_head.as_deref() != Some(head.last.as_str()) && head.lines > 0 {
        verdict.problem = Some(Problem {
            line: head.lines,
            reason: "does not match the head record (the line was replaced)".into(),
        });
    } else if head.lines == 0 && n > 0 && head.last != GENESIS {
        verdict.problem = Some(Problem {
            line: 1,
            reason: "the head record does not match the trail".into(),
        });
    } else if n == head.lines + 1 {
        verdict.notes.push(format!(
            "line {n} is not in the head record yet (rekey stopped between writing it and the head, or is writing now)"
        ));
    } else if n > head.lines + 1 {
        verdict.problem = Some(Problem {
            line: head.lines + 2,
            reason: format!(
                "the head record says the trail had {} lines: line {} and after were appended by something else",
                head.lines,
                head.lines + 2
            ),
        });
    }
    Ok(verdict)
}

/// What kind of JSON error, without serde's message (which quotes the input).
fn classify(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected data",
        serde_json::error::Category::Eof => "cut short",
    }
}

/// Parses a head record; `None` when it is not one.
pub fn parse_head(bytes: &[u8]) -> Option<Head> {
    let head: Head = serde_json::from_slice(bytes.trim_ascii()).ok()?;
    (head.last.len() == 64 && head.last.bytes().all(|b| b.is_ascii_hexdigit())).then_some(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trail(n: u64) -> (Vec<u8>, Head) {
        let mut prev = GENESIS.to_owned();
        let mut out = Vec::new();
        for seq in 1..=n {
            let body = format!("{{\"seq\":{seq},\"action\":\"x{seq}\",\"prev\":\"{prev}\"}}");
            let line = seal(&body);
            prev = sha256_hex(line.as_bytes());
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        (
            out,
            Head {
                lines: n,
                last: prev,
            },
        )
    }

    #[test]
    fn a_sealed_trail_verifies_and_every_single_byte_change_is_named_at_its_line() {
        let (bytes, head) = trail(5);
        let v = verify(&bytes, Some(&head), |_, _| {});
        assert!(v.ok(), "{v:?}");
        assert_eq!(v.lines, 5);
        let line_of = |pos: usize| bytes[..pos].iter().filter(|b| **b == b'\n').count() as u64 + 1;
        for pos in 0..bytes.len() {
            for mask in [0x01u8, 0x20, 0x80] {
                let mut changed = bytes.clone();
                changed[pos] ^= mask;
                let v = verify(&changed, Some(&head), |_, _| {});
                let problem = v
                    .problem
                    .unwrap_or_else(|| panic!("flip at {pos} undetected"));
                // A newline turned into something else joins the line with the next
                // one: the joined line is the one named.
                assert_eq!(problem.line, line_of(pos), "byte {pos}: {}", problem.reason);
            }
        }
    }
}
