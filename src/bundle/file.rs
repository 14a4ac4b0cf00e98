use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{BundleError, BundleSink, TrustBundle};

/// The bundle as a file (`<state_dir>/bundle/ca.crt` by default), replaced
/// atomically (temporary file in the same directory, then rename) so that a
/// reader never sees a partial bundle.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
}

impl FileSink {
    /// A sink writing to `path`; its directory is created when needed.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// Notify `resync` whenever the file's metadata changes (an edit, a
    /// delete, a replacement): checked every second, so the publisher
    /// restores a tampered bundle within a second or two rather than at
    /// its next refresh.
    pub fn watch_changes(
        &self,
        resync: Arc<Notify>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let path = self.path.clone();
        async move {
            // The first look may come after a change: a missing file
            // always counts as one.
            let mut last = None;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(WATCH_EVERY) => {}
                }
                let now = stamp(&path).await;
                if now.is_none() || now != last {
                    resync.notify_one();
                    last = now;
                }
            }
        }
    }
}

/// How often the bundle file is looked at.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// What identifies a version of the file: inode, length, modification
/// time; `None` when it is missing.
async fn stamp(path: &std::path::Path) -> Option<(u64, u64, Option<std::time::SystemTime>)> {
    use std::os::unix::fs::MetadataExt;
    let m = tokio::fs::metadata(path).await.ok()?;
    Some((m.ino(), m.len(), m.modified().ok()))
}

#[async_trait]
impl BundleSink for FileSink {
    fn name(&self) -> &str {
        "file"
    }

    async fn publish(&self, bundle: &TrustBundle) -> Result<(), BundleError> {
        let path = self.path.clone();
        let pem = bundle.pem().to_owned();
        let fail = |message: String| BundleError::Sink {
            sink: format!("file {}", self.path.display()),
            message,
            refusal: None,
        };
        crate::store::fs::write_atomically_off_runtime(path, pem.into_bytes(), 0o644)
            .await
            .map_err(|e| fail(e.to_string()))
    }

    async fn holds(&self, bundle: &TrustBundle) -> Result<bool, BundleError> {
        // A missing or unreadable file is one to write again.
        Ok(tokio::fs::read(&self.path)
            .await
            .is_ok_and(|b| b == bundle.pem().as_bytes()))
    }
}
