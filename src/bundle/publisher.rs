use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{BundleReceiver, BundleSink, TrustBundle};
use crate::metrics::{Metrics, PublishLabels, SinkLabels};

/// A sink's name and, while it is failing, its last error.
type SinkState = (String, Option<String>);

/// Per-sink state of the publisher, read by `/readyz`.
#[derive(Clone, Debug, Default)]
pub struct PublishStatus {
    inner: Arc<RwLock<Vec<SinkState>>>,
    changed: Arc<tokio::sync::Notify>,
}

impl PublishStatus {
    /// `Ok` when every sink holds the current bundle; otherwise the names
    /// of the failing sinks and their last errors.
    pub fn check(&self) -> Result<(), String> {
        let sinks = self.inner.read().map_err(|_| "publisher state poisoned")?;
        let failing: Vec<String> = sinks
            .iter()
            .filter_map(|(name, err)| err.as_ref().map(|e| format!("{name}: {e}")))
            .collect();
        if failing.is_empty() {
            Ok(())
        } else {
            Err(failing.join("; "))
        }
    }

    /// Wait until every sink holds the bundle, or `timeout` passes; the
    /// result is [`PublishStatus::check`]'s at that point.
    pub async fn wait_published(&self, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            if self.check().is_ok() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.check();
            }
        }
    }

    fn set(&self, index: usize, error: Option<String>) {
        if let Ok(mut sinks) = self.inner.write() {
            sinks[index].1 = error;
        }
        self.changed.notify_waiters();
    }
}

/// Keep every sink holding the current bundle.
///
/// Returns the status handle and the task to spawn. The task publishes each
/// new bundle to every sink, retries a failing sink with backoff, checks
/// every `resync` that sinks still hold the bundle (re-publishing one that
/// was edited or removed) or at once when `resync_now` is notified (a
/// sink that watches its target does so), and ends when `shutdown` fires.
pub fn publisher(
    sinks: Vec<Arc<dyn BundleSink>>,
    mut bundles: BundleReceiver,
    resync: Duration,
    resync_now: Arc<tokio::sync::Notify>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> (PublishStatus, impl Future<Output = ()>) {
    let status = PublishStatus {
        inner: Arc::new(RwLock::new(
            sinks
                .iter()
                .map(|s| (s.name().to_owned(), Some("not yet published".to_owned())))
                .collect(),
        )),
        changed: Arc::default(),
    };
    let task_status = status.clone();
    let task = async move {
        let mut current = bundles.borrow_and_update().clone();
        let mut pending: Vec<bool> = vec![true; sinks.len()];
        let mut failures = 0u32;
        loop {
            let mut retry: Option<Duration> = None;
            for (i, sink) in sinks.iter().enumerate() {
                if !pending[i] {
                    continue;
                }
                let result = publish_one(sink.as_ref(), &current, &metrics).await;
                task_status.set(i, result.as_ref().err().map(ToString::to_string));
                pending[i] = result.is_err();
                if let Err(e) = result {
                    let delay = e.retry_delay(failures + 1);
                    retry = Some(retry.map_or(delay, |r| r.min(delay)));
                }
            }
            let all_ok = retry.is_none();
            failures = if all_ok {
                0
            } else {
                failures.saturating_add(1)
            };
            let wait = retry.unwrap_or(resync);
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = bundles.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    current = bundles.borrow_and_update().clone();
                    pending.iter_mut().for_each(|p| *p = true);
                    failures = 0;
                }
                () = resync_now.notified() => recheck(&sinks, &current, &mut pending, &task_status).await,
                () = tokio::time::sleep(wait) => {
                    if all_ok {
                        recheck(&sinks, &current, &mut pending, &task_status).await;
                    }
                }
            }
        }
    };
    (status, task)
}

/// Mark for publishing every settled sink that no longer holds `current`
/// (edited or removed outside meshca); it counts as failing (and `/readyz`
/// says so) until it holds the bundle again.
async fn recheck(
    sinks: &[Arc<dyn BundleSink>],
    current: &TrustBundle,
    pending: &mut [bool],
    status: &PublishStatus,
) {
    for (i, sink) in sinks.iter().enumerate() {
        if !pending[i] && !sink.holds(current).await {
            tracing::warn!(
                sink = sink.name(),
                "the trust bundle was changed or removed outside meshca; restoring it"
            );
            status.set(i, Some("changed outside meshca; restoring".into()));
            pending[i] = true;
        }
    }
}

async fn publish_one(
    sink: &dyn BundleSink,
    bundle: &TrustBundle,
    metrics: &Metrics,
) -> Result<(), super::BundleError> {
    let labels = |result| PublishLabels {
        sink: sink.name().to_owned(),
        result,
    };
    let result = sink.publish(bundle).await;
    let up = metrics.bundle_sink_up.get_or_create(&SinkLabels {
        sink: sink.name().to_owned(),
    });
    match result {
        Ok(()) => {
            metrics
                .bundle_publish
                .get_or_create(&labels("success"))
                .inc();
            up.set(1);
            tracing::info!(
                sink = sink.name(),
                anchors = bundle.anchors().len(),
                "published the trust bundle"
            );
            Ok(())
        }
        Err(e) => {
            metrics
                .bundle_publish
                .get_or_create(&labels("failure"))
                .inc();
            up.set(0);
            tracing::warn!(sink = sink.name(), error = %e, "failed to publish the trust bundle; will retry");
            Err(e)
        }
    }
}
