//! Small YAML state files that the daemon follows and the CLI edits: the
//! token store and the identity deny-list.
//!
//! The daemon keeps the parsed file in memory and a background task
//! ([`WatchedFile::follow`]) re-reads it, off the async workers, when its
//! modification time or length changes, looking once a second: a request
//! only loads the current snapshot, never touches the disk. The CLI changes
//! a file under a lock file and replaces it atomically, mode 0600.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::store;

/// How often the follower looks at the file's metadata.
pub const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// Why a state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It exists but cannot be read, or written.
    #[error("failed to access {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It does not parse.
    #[error("failed to parse {}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_yaml_ng::Error,
    },
}

type Stamp = (SystemTime, u64);

/// What the file held when last read: the value, or why it could not be
/// read (an error someone sees, never an empty file assumed).
#[derive(Debug)]
struct Snapshot<T> {
    /// `None` while the file is missing (the value is then the default).
    stamp: Option<Stamp>,
    value: Result<Arc<T>, Arc<FileError>>,
}

/// A YAML file, parsed, re-read when it changes. A missing file reads as
/// `T::default()`.
#[derive(Debug)]
pub struct WatchedFile<T> {
    path: PathBuf,
    current: ArcSwap<Snapshot<T>>,
    /// Set while one caller re-reads, so others never wait for it.
    reading: AtomicBool,
}

impl<T: DeserializeOwned + Default + Send + Sync + 'static> WatchedFile<T> {
    /// Follow `path`, read once now.
    pub fn new(path: PathBuf) -> Self {
        let watched = Self {
            current: ArcSwap::from_pointee(Snapshot {
                stamp: None,
                value: Ok(Arc::new(T::default())),
            }),
            path,
            reading: AtomicBool::new(false),
        };
        watched.refresh();
        watched
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The contents as last read: no I/O.
    ///
    /// # Errors
    /// The file exists but could not be read or parsed.
    pub fn get(&self) -> Result<Arc<T>, Arc<FileError>> {
        self.current.load().value.clone()
    }

    /// Look at the file now and re-read it if it changed (a caller already
    /// doing so is not waited for). Blocking I/O: the follower runs it off
    /// the async workers.
    pub fn refresh(&self) {
        if self.reading.swap(true, Ordering::AcqRel) {
            return;
        }
        self.reread();
        self.reading.store(false, Ordering::Release);
    }

    /// Look at the file now whoever else is looking: for a caller that
    /// must see a change made a moment ago (a token just created), which
    /// the follower may have stat'ed just before. A snapshot never goes
    /// back to an older file.
    pub fn reread(&self) {
        let stamp = store::fs::stamp(&self.path).map_err(|source| FileError::Io {
            path: self.path.clone(),
            source,
        });
        let previous = self.current.load();
        let next = match stamp {
            Ok(stamp) if stamp == previous.stamp && previous.value.is_ok() => return,
            Ok(stamp) => Snapshot {
                stamp,
                value: read_yaml(&self.path).map(Arc::new).map_err(Arc::new),
            },
            Err(e) => Snapshot {
                stamp: None,
                value: Err(Arc::new(e)),
            },
        };
        tracing::debug!(path = %self.path.display(), ok = next.value.is_ok(), "read a state file");
        let next = Arc::new(next);
        self.current.rcu(|current| {
            let older = matches!(
                (&current.stamp, &next.stamp),
                (Some((now, _)), Some((then, _))) if then < now
            );
            if older {
                current.clone()
            } else {
                next.clone()
            }
        });
    }

    /// Follow `path`, read once now on the blocking pool: for the daemon,
    /// which does not start on a file it cannot use (a missing one is
    /// the default).
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed.
    pub async fn open(path: PathBuf) -> Result<Self, Arc<FileError>> {
        let reading = path.clone();
        let watched = tokio::task::spawn_blocking(move || Self::new(reading))
            .await
            .map_err(|e| {
                Arc::new(FileError::Io {
                    source: std::io::Error::other(e.to_string()),
                    path,
                })
            })?;
        watched.get()?;
        Ok(watched)
    }

    /// The task that keeps the snapshot current until `shutdown`.
    pub async fn follow(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RECHECK_AFTER) => {}
            }
            let file = self.clone();
            let _ = tokio::task::spawn_blocking(move || file.refresh()).await;
        }
    }
}

/// Parse the YAML at `path`; a missing or empty file is `T::default()`.
///
/// # Errors
/// The file cannot be read or parsed.
pub fn read_yaml<T: DeserializeOwned + Default>(path: &Path) -> Result<T, FileError> {
    match store::fs::read_optional(path) {
        Ok(Some(bytes)) => serde_yaml_ng::from_slice::<Option<T>>(&bytes)
            .map(Option::unwrap_or_default)
            .map_err(|source| FileError::Parse {
                path: path.to_owned(),
                source,
            }),
        Ok(None) => Ok(T::default()),
        Err(source) => Err(FileError::Io {
            path: path.to_owned(),
            source,
        }),
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
) -> Result<R, FileError>
where
    T: DeserializeOwned + Serialize + Default,
{
    let failed = |source: std::io::Error| FileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut outcome = None;
    store::fs::with_lock(path, || {
        let mut value: T = match read_yaml(path) {
            Ok(value) => value,
            Err(e) => {
                outcome = Some(Err(e));
                return Ok(());
            }
        };
        let result = change(&mut value);
        let yaml = match serde_yaml_ng::to_string(&value) {
            Ok(yaml) => yaml,
            Err(source) => {
                outcome = Some(Err(FileError::Parse {
                    path: path.to_owned(),
                    source,
                }));
                return Ok(());
            }
        };
        store::fs::write_atomically(path, format!("# {header}\n{yaml}").as_bytes(), 0o600)?;
        outcome = Some(Ok(result));
        Ok(())
    })
    .map_err(failed)?;
    outcome.unwrap_or_else(|| Err(failed(std::io::ErrorKind::Interrupted.into())))
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

/// Follow `source` (the configuration in force, say) through `view`, so
/// that a component sees only its own settings and wakes only when they
/// change.
pub fn project<S, T>(
    source: &tokio::sync::watch::Receiver<S>,
    view: impl Fn(&S) -> T + Send + 'static,
    spawner: &crate::supervisor::Spawner,
) -> tokio::sync::watch::Receiver<T>
where
    S: Send + Sync + 'static,
    T: PartialEq + Send + Sync + 'static,
{
    let mut source = source.clone();
    let (tx, rx) = tokio::sync::watch::channel(view(&source.borrow_and_update()));
    spawner.spawn_child("config-projection", |stop| async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = source.changed() => if changed.is_err() {
                    // No more changes: the settings in force stay.
                    stop.cancelled().await;
                    return;
                },
            }
            let next = view(&source.borrow_and_update());
            tx.send_if_modified(|now| {
                let changed = *now != next;
                if changed {
                    *now = next;
                }
                changed
            });
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize, PartialEq)]
    struct File {
        n: u32,
    }

    #[tokio::test]
    async fn the_follower_picks_up_a_change_and_get_never_reads_the_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.yaml");
        let watched = Arc::new(WatchedFile::<File>::new(path.clone()));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(watched.clone().follow(shutdown.clone()));
        std::fs::write(&path, "n: 7\n").expect("write");
        assert_eq!(
            watched.get().expect("still the default").n,
            0,
            "no I/O in get"
        );
        tokio::time::sleep(RECHECK_AFTER * 3).await;
        assert_eq!(watched.get().expect("followed").n, 7);
        shutdown.cancel();
        task.await.expect("task");
    }

    #[test]
    fn a_caller_that_must_see_a_change_sees_it_while_the_follower_is_reading() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.yaml");
        std::fs::write(&path, "n: 1\n").expect("write");
        let watched = WatchedFile::<File>::new(path.clone());
        // The follower stat'ed the old file and is still at it.
        watched.reading.store(true, Ordering::Release);
        std::fs::write(&path, "n: 22\n").expect("write");
        watched.refresh();
        assert_eq!(
            watched.get().expect("read").n,
            1,
            "refresh leaves it to the follower"
        );
        watched.reread();
        assert_eq!(watched.get().expect("read").n, 22, "reread looks anyway");
    }

    #[test]
    fn a_file_that_appears_changes_or_goes_is_followed_and_a_missing_one_reads_as_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.yaml");
        let watched = WatchedFile::<File>::new(path.clone());
        let now = || {
            watched.refresh();
            watched.get()
        };
        assert_eq!(*now().expect("missing"), File::default());
        std::fs::write(&path, "n: 1\n").expect("write");
        assert_eq!(now().expect("appeared").n, 1);
        std::fs::write(&path, "n: 22\n").expect("write");
        assert_eq!(now().expect("changed").n, 22);
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(*now().expect("gone"), File::default());
        std::fs::write(&path, "n: [").expect("write");
        let e = now().expect_err("a corrupt file is an error, not empty");
        assert!(matches!(*e, FileError::Parse { .. }), "{e:?}");
        std::fs::write(&path, "n: 3\n").expect("write");
        assert_eq!(now().expect("fixed").n, 3);
    }
}
