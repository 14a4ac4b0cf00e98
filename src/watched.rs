//! Small YAML state files that the daemon follows and the CLI edits: the
//! token store and the identity deny-list.
//!
//! The daemon re-reads a file when its modification time or length
//! changes, looking at most once a second (so a burst of requests costs
//! one `stat`); the CLI changes it under a lock file and replaces it
//! atomically, mode 0600.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// How long a look at the file's metadata is trusted.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

type Stamp = (SystemTime, u64);

#[derive(Debug)]
struct Cache<T> {
    /// `None` while the file is missing (the value is then the default).
    stamp: Option<Stamp>,
    checked_at: Option<Instant>,
    value: Arc<T>,
}

/// A YAML file, parsed, re-read when it changes. A missing file reads as
/// `T::default()`.
#[derive(Debug)]
pub struct WatchedFile<T> {
    path: PathBuf,
    cache: RwLock<Cache<T>>,
}

impl<T: DeserializeOwned + Default> WatchedFile<T> {
    /// Follow `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            cache: RwLock::new(Cache {
                stamp: None,
                checked_at: None,
                value: Arc::new(T::default()),
            }),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The contents now; re-read if the file changed, looking again at
    /// once when `force`.
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed.
    pub fn get(&self, force: bool) -> Result<Arc<T>, String> {
        // A missing file is a state like any other: trusted for as long.
        let fresh =
            |c: &Cache<T>| !force && c.checked_at.is_some_and(|t| t.elapsed() < RECHECK_AFTER);
        if let Ok(c) = self.cache.read() {
            if fresh(&c) {
                return Ok(c.value.clone());
            }
        }
        let stamp = match std::fs::metadata(&self.path) {
            Ok(m) => Some((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        };
        let mut cache = self
            .cache
            .write()
            .map_err(|_| "state file cache poisoned".to_owned())?;
        if cache.stamp != stamp {
            cache.value = Arc::new(read_yaml(&self.path)?);
            cache.stamp = stamp;
            tracing::debug!(path = %self.path.display(), "loaded a state file");
        }
        cache.checked_at = Some(Instant::now());
        Ok(cache.value.clone())
    }
}

/// Parse the YAML at `path`; a missing or empty file is `T::default()`.
///
/// # Errors
/// The file cannot be read or parsed.
pub fn read_yaml<T: DeserializeOwned + Default>(path: &Path) -> Result<T, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_yaml_ng::from_str::<Option<T>>(&text)
            .map(Option::unwrap_or_default)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Change the YAML at `path` under a lock file (concurrent CLI runs), and
/// replace it atomically with mode 0600, `header` as its first comment.
///
/// # Errors
/// The file cannot be read, parsed or written.
pub fn update_yaml<T, R>(
    path: &Path,
    header: &str,
    change: impl FnOnce(&mut T) -> R,
) -> Result<R, String>
where
    T: DeserializeOwned + Serialize + Default,
{
    let failed = |e: std::io::Error| format!("{}: {e}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.with_extension("lock"))
        .map_err(failed)?;
    lock.lock().map_err(failed)?;
    let mut value: T = read_yaml(path)?;
    let result = change(&mut value);
    let yaml = serde_yaml_ng::to_string(&value)
        .map_err(|e| format!("failed to encode {}: {e}", path.display()))?;
    crate::bundle::write_atomically(path, format!("# {header}\n{yaml}").as_bytes(), 0o600)
        .map_err(failed)?;
    Ok(result)
}

/// A stream that yields once per change of `rx`: a trigger for
/// kube-runtime's `reconcile_all_on`.
pub fn changes<T: Send + Sync + 'static>(
    rx: tokio::sync::watch::Receiver<T>,
) -> std::pin::Pin<Box<dyn futures_util::Stream<Item = ()> + Send>> {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize, PartialEq)]
    struct File {
        n: u32,
    }

    #[test]
    fn a_file_that_appears_changes_or_goes_is_followed_and_a_missing_one_reads_as_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.yaml");
        let watched = WatchedFile::<File>::new(path.clone());
        assert_eq!(*watched.get(false).expect("missing"), File::default());
        std::fs::write(&path, "n: 1\n").expect("write");
        assert_eq!(watched.get(true).expect("appeared").n, 1);
        std::fs::write(&path, "n: 22\n").expect("write");
        assert_eq!(watched.get(true).expect("changed").n, 22);
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(*watched.get(true).expect("gone"), File::default());
        std::fs::write(&path, "n: [").expect("write");
        assert!(
            watched.get(true).is_err(),
            "a corrupt file is an error, not empty"
        );
    }
}
