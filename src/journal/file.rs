//! The journal file on disk: created private, and refused when it is not.
//!
//! The journal holds no secret values, but it does say which credentials of a breached
//! estate were rotated, which were not, and which are quarantined: a map for an attacker
//! still inside. So the file is created with mode 0600 by rekey itself, before SQLite
//! opens it (SQLite would create it with 0644 under the usual umask), and an existing
//! file that group or others can access is refused rather than silently fixed, because
//! that is a sign someone else has handled it. So is a link, a file of another user,
//! and a directory others can write (`crate::files`).

use super::JournalError;
use crate::files;
use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Makes sure `path` is a private regular file, creating it (and missing parent
/// directories, mode 0700) if needed, and that SQLite's side files are private
/// too. The checks of `crate::files` apply: no link, rekey's user's, in a
/// directory nobody else can write.
pub(super) fn ensure_private_file(path: &Path) -> Result<(), JournalError> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent
        && !parent.exists()
    {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|source| JournalError::Io {
                path: path.to_path_buf(),
                action: "create the directory of",
                source,
            })?;
    }
    // `create` is O_CREAT|O_EXCL|O_NOFOLLOW: the file is born with mode 0600 (less
    // under a stricter umask), so there is no window where it exists with wider
    // permissions (SQLite would create it with 0644 under the usual umask).
    let how = files::How {
        read: false,
        write: true,
        append: false,
        create: true,
    };
    files::open(path, how).map_err(journal_error)?;
    // After a crash the write-ahead log still holds the newest records. SQLite creates it
    // with the main file's mode, so a wider one means someone changed it by hand.
    for suffix in ["-wal", "-journal", "-shm"] {
        let side = side_file(path, suffix);
        if std::fs::symlink_metadata(&side).is_ok() {
            files::check_existing(&side).map_err(journal_error)?;
        }
    }
    Ok(())
}

/// The journal's own words for a file that is not private; the rest as
/// `crate::files` says it.
fn journal_error(e: files::FileError) -> JournalError {
    match e {
        files::FileError::Mode { path, mode } => JournalError::Permissions { path, mode },
        files::FileError::NotAFile { path } => JournalError::NotAFile { path },
        other => JournalError::File(other),
    }
}

/// `journal.db` + `-wal` → `journal.db-wal`, as SQLite names its side files.
pub(super) fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}
