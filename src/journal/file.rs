//! The journal file on disk: created private, and refused when it is not.
//!
//! The journal holds no secret values, but it does say which credentials of a breached
//! estate were rotated, which were not, and which are quarantined: a map for an attacker
//! still inside. So the file is created with mode 0600 by rekey itself, before SQLite
//! opens it (SQLite would create it with 0644 under the usual umask), and an existing
//! file that group or others can access is refused rather than silently fixed, because
//! that is a sign someone else has handled it.

use super::JournalError;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Makes sure `path` is a private regular file, creating it (and missing parent
/// directories, mode 0700) if needed, and that SQLite's side files are private too.
pub(super) fn ensure_private_file(path: &Path) -> Result<(), JournalError> {
    let io = |action, source| JournalError::Io {
        path: path.to_path_buf(),
        action,
        source,
    };
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent
        && !parent.exists()
    {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| io("create the directory of", e))?;
    }

    // `create_new` is O_CREAT|O_EXCL: the file is born with mode 0600 (less under a
    // stricter umask), so there is no window where it exists with wider permissions.
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => {
            file.sync_all().map_err(|e| io("create", e))?;
            // The new directory entry must be durable too, or a power cut could lose the
            // whole journal even though its pages were synced.
            if let Some(parent) = parent {
                fs::File::open(parent)
                    .and_then(|dir| dir.sync_all())
                    .map_err(|e| io("create", e))?;
            }
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("create", e)),
    }

    check_private(path, path)?;
    // After a crash the write-ahead log still holds the newest records. SQLite creates it
    // with the main file's mode, so a wider one means someone changed it by hand.
    for suffix in ["-wal", "-journal"] {
        let side = side_file(path, suffix);
        if side.exists() {
            check_private(&side, path)?;
        }
    }
    Ok(())
}

/// Refuses `file` (the journal or one of its side files) unless it is a regular file
/// only its owner can access. Errors name `file`, the one the operator must fix.
fn check_private(file: &Path, journal: &Path) -> Result<(), JournalError> {
    let meta = fs::metadata(file).map_err(|source| JournalError::Io {
        path: journal.to_path_buf(),
        action: "check the permissions of",
        source,
    })?;
    if !meta.is_file() {
        return Err(JournalError::NotAFile {
            path: file.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(JournalError::Permissions {
            path: file.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// `journal.db` + `-wal` → `journal.db-wal`, as SQLite names its side files.
pub(super) fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}
