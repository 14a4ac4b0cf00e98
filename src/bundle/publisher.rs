use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{BundleReceiver, BundleSink, TrustBundle};
use crate::cluster::HoldOff;
use crate::metrics::{Metrics, PublishLabels, SinkLabels};

/// A sink's name, its last error while it is failing, and the bundle it
/// was last seen to hold.
#[derive(Debug)]
struct SinkState {
    name: String,
    error: Option<String>,
    holds: Option<Arc<TrustBundle>>,
}

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
            .filter_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.name)))
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

    /// Whether every sink holds exactly `bundle` (not merely an earlier
    /// one without errors): what a signer change waits for before the new
    /// signer may sign.
    pub fn holds(&self, bundle: &TrustBundle) -> bool {
        self.inner.read().is_ok_and(|sinks| {
            sinks
                .iter()
                .all(|s| s.error.is_none() && s.holds.as_deref() == Some(bundle))
        })
    }

    fn set(&self, index: usize, result: Result<&Arc<TrustBundle>, String>) {
        if let Ok(mut sinks) = self.inner.write() {
            let sink = &mut sinks[index];
            match result {
                Ok(bundle) => {
                    sink.error = None;
                    sink.holds = Some(bundle.clone());
                }
                Err(e) => sink.error = Some(e),
            }
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
                .map(|s| SinkState {
                    name: s.name().to_owned(),
                    error: Some("not yet published".to_owned()),
                    holds: None,
                })
                .collect(),
        )),
        changed: Arc::default(),
    };
    let mut publishing = Publishing {
        pending: vec![true; sinks.len()],
        hold: HoldOff::default(),
        sinks,
        status: status.clone(),
        metrics,
    };
    let task = async move {
        let mut current = bundles.borrow_and_update().clone();
        loop {
            let retry = publishing.publish(&current).await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = bundles.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    current = bundles.borrow_and_update().clone();
                    publishing.pending.iter_mut().for_each(|p| *p = true);
                }
                () = resync_now.notified() => publishing.recheck(&current).await,
                () = tokio::time::sleep(retry.unwrap_or(resync)) => {
                    if retry.is_none() {
                        publishing.recheck(&current).await;
                    }
                }
            }
        }
    };
    (status, task)
}

/// The publisher's state: which sinks still need the current bundle, and
/// which are held back after a failure (backing off, the API server's
/// Retry-After honoured) even when a change wakes the publisher.
struct Publishing {
    sinks: Vec<Arc<dyn BundleSink>>,
    pending: Vec<bool>,
    hold: HoldOff<usize>,
    status: PublishStatus,
    metrics: Arc<Metrics>,
}

impl Publishing {
    /// Publish `current` to every pending sink not held back; when to look
    /// again if some sink still lacks it.
    async fn publish(&mut self, current: &Arc<TrustBundle>) -> Option<Duration> {
        for (i, sink) in self.sinks.iter().enumerate() {
            if !self.pending[i] || self.hold.remaining(&i).is_some() {
                continue;
            }
            let result = publish_one(sink.as_ref(), current, &self.metrics).await;
            self.status.set(
                i,
                result
                    .as_ref()
                    .map(|()| current)
                    .map_err(ToString::to_string),
            );
            self.pending[i] = result.is_err();
            match result {
                Ok(()) => self.hold.succeeded(&i),
                Err(e) => {
                    self.hold.failed(i, &e.refusal());
                }
            }
        }
        self.next_retry()
    }

    /// The earliest time a pending sink may be tried again.
    fn next_retry(&self) -> Option<Duration> {
        (0..self.sinks.len())
            .filter(|i| self.pending[*i])
            .map(|i| self.hold.remaining(&i).unwrap_or(Duration::ZERO))
            .min()
    }

    /// Mark for publishing every settled sink that no longer holds
    /// `current` (edited or removed outside meshca); it counts as failing
    /// (and `/readyz` says so) until it holds the bundle again. A sink
    /// that cannot be read is failing too, and held back like a failed
    /// publish.
    async fn recheck(&mut self, current: &TrustBundle) {
        for (i, sink) in self.sinks.iter().enumerate() {
            if self.pending[i] || self.hold.remaining(&i).is_some() {
                continue;
            }
            match sink.holds(current).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        sink = sink.name(),
                        "the trust bundle was changed or removed outside meshca; restoring it"
                    );
                    self.status
                        .set(i, Err("changed outside meshca; restoring".into()));
                    self.pending[i] = true;
                }
                Err(e) => {
                    let delay = self.hold.failed(i, &e.refusal());
                    tracing::warn!(sink = sink.name(), error = %e, retry_in = ?delay, "failed to read the trust bundle back");
                    self.status.set(i, Err(e.to_string()));
                    self.pending[i] = true;
                }
            }
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
