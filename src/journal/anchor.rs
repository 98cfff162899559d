//! Where the audit trail stood when the journal last looked (`trail_anchors`): its
//! number of lines and the SHA-256 of its last line, recorded at each run's start,
//! resume and end, after the trail's lines are on disk. A trail deleted beside a
//! journal that has runs, cut back (with a head record rewritten to agree) or
//! replaced by another valid trail no longer matches it (`crate::audit::anchor`).

use super::{JournalError, SqliteJournal, rfc3339};
use rusqlite::{OptionalExtension, params};
use std::path::Path;
use std::time::SystemTime;

/// What the journal recorded of a trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrailAnchor {
    pub lines: u64,
    /// SHA-256 (hex) of line `lines`.
    pub last: String,
    pub updated_at: String,
}

impl SqliteJournal {
    /// How the journal names `trail`: its file name when it lies in the journal's
    /// directory (so the pair can move together), else its absolute path.
    fn trail_key(&self, trail: &Path) -> String {
        let dir = |p: &Path| {
            let d = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => std::path::PathBuf::from("."),
            };
            std::fs::canonicalize(&d).unwrap_or(d)
        };
        let name = trail
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let trail_dir = dir(trail);
        if trail_dir == dir(self.path()) {
            name
        } else {
            trail_dir.join(name).display().to_string()
        }
    }

    /// What the journal last recorded of the trail at `trail`, if anything.
    pub fn trail_anchor(&self, trail: &Path) -> Result<Option<TrailAnchor>, JournalError> {
        self.conn
            .query_row(
                "SELECT lines, last, updated_at FROM trail_anchors WHERE trail = ?1",
                [self.trail_key(trail)],
                |row| {
                    Ok(TrailAnchor {
                        lines: row.get::<_, i64>(0)?.max(0) as u64,
                        last: row.get(1)?,
                        updated_at: row.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.sql("reading the audit trail's anchor", e))
    }

    /// How many runs the journal holds.
    pub fn run_count(&self) -> Result<u64, JournalError> {
        self.conn
            .query_row("SELECT count(*) FROM runs", [], |row| row.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
            .map_err(|e| self.sql("counting runs", e))
    }

    /// Records where the mirror (the trail) stands, once it says its lines are
    /// on disk: the anchor is never ahead of the trail, even after a power cut.
    pub(super) fn record_anchor(&self) -> Result<(), JournalError> {
        let position = self
            .mirror
            .position()
            .map_err(|reason| JournalError::Audit {
                path: self.path.clone(),
                what: "the audit trail's position",
                reason,
            })?;
        let Some((trail, lines, last)) = position else {
            return Ok(());
        };
        self.conn
            .execute(
                "INSERT INTO trail_anchors (trail, lines, last, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (trail) DO UPDATE SET lines = ?2, last = ?3, updated_at = ?4",
                params![
                    self.trail_key(&trail),
                    lines as i64,
                    last,
                    rfc3339(SystemTime::now())
                ],
            )
            .map_err(|e| self.sql("recording the audit trail's anchor", e))?;
        Ok(())
    }
}
