//! The trail checked against what its journal recorded of it (`trail_anchors`,
//! `crate::journal::TrailAnchor`) before rekey writes to it: a trail deleted
//! beside a journal that has runs is refused unless `--new-trail` asks for a new
//! one; a trail shorter than recorded, or whose recorded line is another, was cut
//! or replaced, even when its chain and head agree with each other.

use crate::journal::{Journal, TrailAnchor};
use std::path::Path;

/// What the journal said about a trail that is gone, for messages.
fn recorded(anchor: Option<&TrailAnchor>) -> String {
    match anchor {
        Some(a) => format!(
            "; the journal last recorded it at {} with {} lines, last line sha256 {}",
            a.updated_at, a.lines, a.last
        ),
        None => String::new(),
    }
}

/// Checks the trail at `trail` against `journal`; a new trail started where one
/// was lost (`--new-trail`) is said in a warning.
pub fn check(journal: &Journal, trail: &Path, new_trail: bool) -> Result<(), String> {
    if let Some(note) = judge(journal, trail, new_trail)? {
        tracing::warn!("{note}");
    }
    Ok(())
}

fn judge(journal: &Journal, trail: &Path, new_trail: bool) -> Result<Option<String>, String> {
    let anchor = journal.trail_anchor(trail).map_err(|e| e.to_string())?;
    let shown = trail.display();
    let journal_shown = journal.path().display();
    if std::fs::symlink_metadata(trail).is_err() {
        let runs = journal.run_count().map_err(|e| e.to_string())?;
        if runs == 0 && anchor.is_none() {
            return Ok(None);
        }
        if new_trail {
            return Ok(Some(format!(
                "starting a new audit trail at {shown}: the journal {journal_shown} has {runs} run(s) whose trail is gone{}; record this in the incident ticket",
                recorded(anchor.as_ref())
            )));
        }
        return Err(format!(
            "the audit trail {shown} does not exist, but the journal {journal_shown} has {runs} run(s){}: it was deleted or moved. Restore it (with its .head and .key files) from a backup or the collector's copy, or pass --new-trail to start a new one (and note the loss in the incident ticket)",
            recorded(anchor.as_ref())
        ));
    }
    let Some(anchor) = anchor else {
        return Ok(None);
    };
    // Read a line at a time, keeping only the line the anchor names: the trail
    // of a journal used for months is not held in memory.
    let (count, line) =
        nth_line(trail, anchor.lines).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let evidence = "keep this copy as evidence and compare it with the collector's copy (--audit-sink); rekey will not extend it";
    let Some(line) = line else {
        return Err(format!(
            "the audit trail {shown} has {} lines, but the journal {journal_shown} recorded {} (last line sha256 {}) at {}: lines were cut or the trail was replaced; {evidence}",
            count, anchor.lines, anchor.last, anchor.updated_at
        ));
    };
    if super::chain::sha256_hex(&line) != anchor.last {
        return Err(format!(
            "the audit trail {shown} was replaced: its line {} is not the one the journal {journal_shown} recorded at {} (sha256 {}); {evidence}",
            anchor.lines, anchor.updated_at, anchor.last
        ));
    }
    Ok(None)
}

/// The `n`th non-empty line of `trail` (from 1) without its newline, read a line
/// at a time up to it; when the trail is shorter, its number of lines.
fn nth_line(trail: &Path, n: u64) -> std::io::Result<(u64, Option<Vec<u8>>)> {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(trail)?);
    let mut count = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if line.is_empty() {
            continue;
        }
        count += 1;
        if count == n {
            return Ok((count, Some(line.to_vec())));
        }
    }
    Ok((count, None))
}
