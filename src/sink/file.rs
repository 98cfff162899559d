//! File sink: the value written atomically with mode 0600 (a temporary file in the
//! same directory, fsynced, renamed over the target, the directory fsynced), then
//! an optional reload command run directly (no shell) with nothing of the value in
//! its arguments or environment.

use crate::provider::ProviderError;
use crate::secret::Secret;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a reload command may run before it is killed.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes `value` to `path` atomically, mode 0600. Readers see the old content or
/// the new, never a partial file; the file never exists with wider permissions.
pub async fn write(path: &Path, value: &Secret) -> Result<(), ProviderError> {
    let path = path.to_owned();
    let value = value.clone();
    tokio::task::spawn_blocking(move || write_blocking(&path, &value))
        .await
        .map_err(|_| ProviderError::Fatal("the file write task failed".into()))?
}

fn write_blocking(path: &Path, value: &Secret) -> Result<(), ProviderError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| {
        let message = format!("cannot write {}: {e}", path.display());
        match e.kind() {
            std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock => {
                ProviderError::Transient(message)
            }
            _ => ProviderError::Fatal(message),
        }
    };
    let dir: PathBuf = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| ProviderError::Fatal(format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.rekey-{}.tmp",
        name.to_string_lossy(),
        hex::encode(rand::random::<[u8; 4]>())
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(value.expose().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename is durable once the directory is.
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(fail)
}

/// Runs the reload command `argv` (program first), with only `PATH` in its
/// environment, stdin closed and its output discarded; killed after
/// [`RELOAD_TIMEOUT`].
pub async fn reload(argv: &[String]) -> Result<(), ProviderError> {
    let Some((program, args)) = argv.split_first() else {
        return Ok(());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(path) = crate::env_vars::get_os(crate::env_vars::PATH) {
        cmd.env(crate::env_vars::PATH, path);
    }
    let mut child = cmd.spawn().map_err(|e| {
        ProviderError::Fatal(format!("cannot start the reload command `{program}`: {e}"))
    })?;
    match tokio::time::timeout(RELOAD_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(ProviderError::Fatal(format!(
            "the reload command `{program}` failed ({status})"
        ))),
        Ok(Err(e)) => Err(ProviderError::Transient(format!(
            "cannot wait for the reload command `{program}`: {e}"
        ))),
        Err(_) => Err(ProviderError::Transient(format!(
            "the reload command `{program}` did not finish within {}s; it was stopped",
            RELOAD_TIMEOUT.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn a_file_is_replaced_whole_with_mode_0600_and_no_temporary_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write(&path, &Secret::new("new-value")).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new-value");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let missing = write(&dir.path().join("no/such/dir/key"), &Secret::new("x")).await;
        assert!(matches!(missing, Err(ProviderError::Fatal(_))));
    }
}
