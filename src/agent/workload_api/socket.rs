//! The Workload API's Unix socket: replaced when a crashed agent left it
//! behind, never taken from a live one, restricted to its owner (and
//! optionally its group), removed on shutdown.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use crate::agent::{io, AgentError};

/// Socket modes the agent accepts: never writable by others, who could
/// then fetch the workload's key.
pub(crate) const ALLOWED_MODES: [u32; 2] = [0o600, 0o660];

/// Removes the socket when dropped, unless another process has replaced it.
pub(super) struct Bound {
    path: PathBuf,
    created: FileId,
}

/// What tells our socket from one bound later at the same path: inode
/// numbers alone are reused at once.
#[derive(PartialEq, Eq)]
struct FileId {
    inode: u64,
    changed: (i64, i64),
}

impl FileId {
    /// Blocking: a stat, at the start and the end of the socket's life.
    #[allow(clippy::disallowed_methods)]
    fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(Self {
            inode: meta.ino(),
            changed: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

impl Drop for Bound {
    /// Blocking, once, as the agent stops: a stat and an unlink.
    #[allow(clippy::disallowed_methods)]
    fn drop(&mut self) {
        let ours = FileId::of(&self.path).is_ok_and(|id| id == self.created);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Listen on `path` with `mode`, replacing a stale socket. Blocking: run
/// on the blocking pool.
#[allow(clippy::disallowed_methods)]
pub(super) fn bind(path: &Path, mode: u32) -> Result<(UnixListener, Bound), AgentError> {
    if !ALLOWED_MODES.contains(&mode) {
        return Err(AgentError::Setup(format!(
            "the Workload API socket mode must be 0600 or 0660, not {mode:04o}"
        )));
    }
    remove_stale(path)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    let listener = UnixListener::bind(path).map_err(io("listen on", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io("chmod", path))?;
    let created = FileId::of(path).map_err(io("stat", path))?;
    Ok((
        listener,
        Bound {
            path: path.to_owned(),
            created,
        },
    ))
}

/// Remove a socket nobody listens on; refuse to touch anything else.
/// Blocking, as [`bind`].
#[allow(clippy::disallowed_methods)]
fn remove_stale(path: &Path) -> Result<(), AgentError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(AgentError::Setup(format!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        )));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(AgentError::Setup(format!(
            "another process already serves the Workload API on {}",
            path.display()
        ))),
        Err(_) => {
            tracing::info!(socket = %path.display(), "replacing a stale Workload API socket");
            std::fs::remove_file(path).map_err(io("remove", path))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn the_socket_has_the_mode_asked_for_and_goes_away_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/agent.sock");
        let (listener, bound) = bind(&path, 0o660).expect("bind");
        assert_eq!(mode_of(&path), 0o660);
        drop(listener);
        drop(bound);
        assert!(!path.exists(), "removed on shutdown");
    }

    #[tokio::test]
    async fn a_world_writable_mode_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = bind(&dir.path().join("s"), 0o666).err().expect("refused");
        assert!(err.to_string().contains("0600 or 0660"), "{err}");
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        // A socket whose listener is gone: what a crash leaves behind.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale"));
        let (_live, _bound) = bind(&path, 0o600).expect("stale socket replaced");
        let err = bind(&path, 0o600).err().expect("live socket kept");
        assert!(err.to_string().contains("already serves"), "{err}");
    }

    #[tokio::test]
    async fn a_regular_file_is_never_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        std::fs::write(&path, "data").expect("file");
        let err = bind(&path, 0o600).err().expect("refused");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).expect("kept"), "data");
    }

    #[tokio::test]
    async fn a_socket_replaced_by_another_process_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let (listener, bound) = bind(&path, 0o600).expect("bind");
        drop(listener);
        // Change times have the file system's granularity (a few ms).
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::remove_file(&path).expect("remove");
        let _other = std::os::unix::net::UnixListener::bind(&path).expect("other");
        drop(bound);
        assert!(path.exists(), "the other process's socket stays");
    }
}
