//! The files rekey keeps beside a run (journal, trail, head record, HMAC keys):
//! private from birth, and refused when anyone else could have handled them.
//!
//! Each is opened with `O_NOFOLLOW` (a symbolic link would redirect writes, or
//! reads of a key, to a file the link's author chose), must be a regular file
//! owned by the user running rekey with no permission for group or others, and
//! must sit in a directory only its owner (or root) can write: whoever can write
//! the directory can replace the files, or plant links where SQLite will create
//! its side files. Ancestors may be writable by others only with the sticky bit
//! (`/tmp`), which stops them from renaming what is not theirs.
//!
//! Invariant: rekey never reads or writes one of these files through a link, nor
//! one another user owns or could replace.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a file or its directory is refused, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot {action} {path}: {source}{}", disk_hint(source))]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is a symbolic link; rekey opens its journal, trail, head and key files only directly: put the file itself there, or point --journal/--audit-file at the real path"
    )]
    Link { path: PathBuf },
    #[error("{path} is not a regular file; point rekey at a file it may create or use")]
    NotAFile { path: PathBuf },
    #[error(
        "{path} belongs to uid {owner}, not to the user running rekey (uid {me}): another user could have written it; find out who changed it, or run rekey as its owner"
    )]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "{path} is accessible by group or others (mode {mode:04o}); rekey refuses to use it: run `chmod 600 {path}` and check who changed it"
    )]
    Mode { path: PathBuf, mode: u32 },
    #[error(
        "{path} is writable by group or others (mode {mode:04o}): whoever can write it can replace rekey's journal, trail or key files; run `chmod go-w {path}` or keep them in a private directory"
    )]
    OpenDir { path: PathBuf, mode: u32 },
    #[error(
        "{path} belongs to uid {owner}, neither the user running rekey (uid {me}) nor root: its owner can replace rekey's files in it; keep them in a directory of your own"
    )]
    DirOwner { path: PathBuf, owner: u32, me: u32 },
}

/// What to do when the file system under rekey's files is full or read-only
/// (empty for other errors): the run stops there, and `resume` finishes it.
pub fn disk_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            " (the file system is full: free space there, or move the journal's directory to a larger disk and point --journal at it, then `rekey resume`: what was in flight is in the journal)"
        }
        ErrorKind::ReadOnlyFilesystem => {
            " (the file system is read-only: make it writable, or copy the journal's directory elsewhere and point --journal at it, then `rekey resume`)"
        }
        _ => "",
    }
}

fn me() -> u32 {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> FileError {
    let path = path.to_path_buf();
    move |source| FileError::Io {
        path,
        action,
        source,
    }
}

/// The directory a file named `path` lives in (`.` for a bare name).
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Refuses `dir` when someone else can write it: group or others have write
/// permission, or it belongs to another user than rekey's or root. Its ancestors
/// may be writable by others only with the sticky bit.
pub fn check_dir(dir: &Path) -> Result<(), FileError> {
    let meta = std::fs::metadata(dir).map_err(io(dir, "check the permissions of"))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(FileError::OpenDir {
            path: dir.to_path_buf(),
            mode,
        });
    }
    if meta.uid() != me() && meta.uid() != 0 {
        return Err(FileError::DirOwner {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            me: me(),
        });
    }
    let real = std::fs::canonicalize(dir).map_err(io(dir, "resolve"))?;
    for ancestor in real.ancestors().skip(1) {
        let meta = std::fs::metadata(ancestor).map_err(io(ancestor, "check the permissions of"))?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            return Err(FileError::OpenDir {
                path: ancestor.to_path_buf(),
                mode,
            });
        }
    }
    Ok(())
}

/// Checks the metadata of an open (or `lstat`ed) file: regular, rekey's user's,
/// nothing for group or others.
fn check_meta(path: &Path, meta: &Metadata) -> Result<(), FileError> {
    if meta.file_type().is_symlink() {
        return Err(FileError::Link {
            path: path.to_path_buf(),
        });
    }
    if !meta.is_file() {
        return Err(FileError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    if meta.uid() != me() {
        return Err(FileError::Owner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me: me(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(FileError::Mode {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Checks an existing file without opening it (`lstat`: a link is refused, not
/// followed). For files another library opens (SQLite's).
pub fn check_existing(path: &Path) -> Result<(), FileError> {
    let meta = std::fs::symlink_metadata(path).map_err(io(path, "check the permissions of"))?;
    check_meta(path, &meta)
}

/// How [`open`] opens a file.
#[derive(Clone, Copy, Debug)]
pub struct How {
    pub read: bool,
    pub write: bool,
    pub append: bool,
    /// Create it (mode 0600, `O_CREAT|O_EXCL`, synced with its directory entry)
    /// when it does not exist.
    pub create: bool,
}

/// Opens `path` as `how` says, without following a link, after checking its
/// directory; an existing file must pass the checks of this module. Returns the
/// file and whether it was created.
pub fn open(path: &Path, how: How) -> Result<(File, bool), FileError> {
    check_dir(dir_of(path))?;
    let options = |create: bool| {
        let mut o = OpenOptions::new();
        o.read(how.read)
            .write(how.write || how.append)
            .append(how.append)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
        if create {
            o.create_new(true).mode(0o600);
        }
        o
    };
    if how.create {
        match options(true).open(path) {
            Ok(f) => {
                f.sync_all().map_err(io(path, "create"))?;
                // The new directory entry must be durable too.
                File::open(dir_of(path))
                    .and_then(|d| d.sync_all())
                    .map_err(io(path, "create"))?;
                return Ok((f, true));
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(path, "create")(e)),
        }
    }
    let file = options(false).open(path).map_err(|e| {
        // O_NOFOLLOW on a link fails with ELOOP.
        if e.raw_os_error() == Some(libc::ELOOP) {
            FileError::Link {
                path: path.to_path_buf(),
            }
        } else {
            io(path, "open")(e)
        }
    })?;
    let meta = file
        .metadata()
        .map_err(io(path, "check the permissions of"))?;
    check_meta(path, &meta)?;
    Ok((file, false))
}

/// The 32-byte HMAC key in file `path`, created (random, 0600, synced) when
/// missing. Whoever holds the key can test guesses against the fingerprints, so
/// the file gets every check of this module. A new key is written to a private
/// temporary file and linked into place whole: two processes starting at once
/// (two runs sharing a trail) agree on one key, and neither reads a file the
/// other has created but not yet written.
pub fn key_file(path: &Path) -> Result<Vec<u8>, String> {
    let read_only = How {
        read: true,
        write: false,
        append: false,
        create: false,
    };
    match open(path, read_only) {
        Ok((file, _)) => return read_key(path, file),
        Err(FileError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e.to_string()),
    }
    let dir = dir_of(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = dir.join(format!(
        ".{name}.{}.{:08x}.new",
        std::process::id(),
        rand::random::<u32>()
    ));
    let how = How {
        read: false,
        write: true,
        append: false,
        create: true,
    };
    let (mut file, _) = open(&temporary, how).map_err(|e| e.to_string())?;
    let key: [u8; 32] = rand::random();
    let written = file.write_all(&key).and_then(|()| file.sync_all());
    let linked = written.and_then(|()| std::fs::hard_link(&temporary, path));
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            Ok(key.to_vec())
        }
        // Another process linked its key first: use that one.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let (file, _) = open(path, read_only).map_err(|e| e.to_string())?;
            read_key(path, file)
        }
        Err(e) => Err(format!("cannot create {}: {e}", path.display())),
    }
}

fn read_key(path: &Path, file: File) -> Result<Vec<u8>, String> {
    let mut key = Vec::new();
    file.take(64)
        .read_to_end(&mut key)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if key.len() == 32 {
        return Ok(key);
    }
    Err(format!(
        "the key file {} is not a rekey key (32 bytes); restore it from a backup: without it, recorded fingerprints cannot be checked",
        path.display()
    ))
}
