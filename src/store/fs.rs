//! The blocking file operations of meshca's state, and the one module of
//! the daemon that calls `std::fs` (clippy's `disallowed-methods` holds
//! every other to that). Each runs on the blocking pool when called from
//! async code: the `*_blocking` helpers say so in their name, and
//! [`Store`](super::Store) runs them through `spawn_blocking`.
#![allow(clippy::disallowed_methods)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How old a temporary file of [`write_atomically`] must be before it
/// counts as left by an interrupted write.
const STALE_AFTER: Duration = Duration::from_secs(60);

/// The contents of `path`, `None` when there is no such file.
///
/// # Errors
/// The file exists but cannot be read.
pub fn read_optional(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The modification time and length of `path`, `None` when there is no
/// such file: what a follower compares to see a change.
///
/// # Errors
/// The file exists but its metadata cannot be read.
pub fn stamp(path: &Path) -> std::io::Result<Option<(SystemTime, u64)>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some((
            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            m.len(),
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Write `contents` to `path` through a temporary file, synced, and a
/// rename, with `mode` permissions; the directory is created if missing.
/// A reader sees the old file or the new, never a part.
///
/// # Errors
/// The directory, the temporary file or the rename failed; the file at
/// `path` is then as it was.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    // NamedTempFile is created 0600; widen only after the content is there.
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// [`write_atomically`] on the blocking pool.
///
/// # Errors
/// As [`write_atomically`].
pub async fn write_atomically_off_runtime(
    path: PathBuf,
    contents: Vec<u8>,
    mode: u32,
) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || write_atomically(&path, &contents, mode))
        .await
        .map_err(std::io::Error::other)?
}

/// The names of the files in `dir`, empty when there is no such
/// directory.
///
/// # Errors
/// The directory exists but cannot be read.
pub fn file_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(names)
}

/// Remove `path`; one already gone is removed.
///
/// # Errors
/// It exists and cannot be removed.
pub fn remove_optional(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// [`read_optional`] on the blocking pool.
///
/// # Errors
/// As [`read_optional`].
pub async fn read_optional_off_runtime(path: PathBuf) -> std::io::Result<Option<Vec<u8>>> {
    tokio::task::spawn_blocking(move || read_optional(&path))
        .await
        .map_err(std::io::Error::other)?
}

/// Run `change` under an exclusive lock on `path`'s lock file (concurrent
/// CLI runs editing one file), creating its directory if missing.
///
/// # Errors
/// The lock file cannot be made or locked, or `change` failed.
pub fn with_lock<R>(
    path: &Path,
    change: impl FnOnce() -> std::io::Result<R>,
) -> std::io::Result<R> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.with_extension("lock"))?;
    lock.lock()?;
    change()
}

/// Remove the temporary files [`write_atomically`] leaves in `dir` when
/// the process is killed mid-write (`.tmp…`, older than a minute).
pub fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .ok()
            .filter(std::fs::Metadata::is_file)
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_AFTER);
        if stale && entry.file_name().to_string_lossy().starts_with(".tmp") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(path = %entry.path().display(), "removed a temporary file of an interrupted write")
                }
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "failed to remove a temporary file of an interrupted write")
                }
            }
        }
    }
}
