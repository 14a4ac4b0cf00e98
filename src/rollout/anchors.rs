//! The bundle's anchors: the current provider's, plus those retained for
//! certificates of earlier (or incoming) providers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::Signer;
use crate::bundle::TrustBundle;
use crate::metrics::Metrics;

/// Anchors beyond the current provider's, each until an instant (unix
/// seconds; `None`: until removed).
/// A tagged set of anchors and when it may go (unix seconds).
type Tagged = (String, Vec<CertificateDer<'static>>, Option<i64>);

#[derive(Debug, Default)]
pub struct AnchorSet {
    extra: Mutex<Vec<Tagged>>,
    kick: Notify,
}

impl AnchorSet {
    /// Keep `anchors` under `tag` until `until`, replacing what the tag held.
    pub fn retain(&self, tag: &str, anchors: Vec<CertificateDer<'static>>, until: Option<i64>) {
        if let Ok(mut extra) = self.extra.lock() {
            extra.retain(|(t, _, _)| t != tag);
            extra.push((tag.to_owned(), anchors, until));
        }
        self.kick.notify_one();
    }

    /// Drop what `tag` held.
    pub fn release(&self, tag: &str) {
        if let Ok(mut extra) = self.extra.lock() {
            extra.retain(|(t, _, _)| t != tag);
        }
        self.kick.notify_one();
    }

    /// Every extra anchor still due, dropping the expired ones.
    pub fn snapshot(&self) -> Vec<CertificateDer<'static>> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let Ok(mut extra) = self.extra.lock() else {
            return Vec::new();
        };
        extra.retain(|(_, _, until)| until.is_none_or(|u| u > now));
        extra
            .iter()
            .flat_map(|(_, a, _)| a.iter().cloned())
            .collect()
    }

    /// The earliest time an extra anchor set expires, for the refresher.
    fn next_expiry(&self) -> Option<i64> {
        self.extra
            .lock()
            .ok()?
            .iter()
            .filter_map(|(_, _, u)| *u)
            .min()
    }
}

/// Publish the union of the current provider's anchors and the retained
/// ones: every `interval`, whenever the set changes, and when a retained
/// set expires. A failed read keeps the current bundle.
pub async fn anchor_refresher(
    signer: Arc<Signer>,
    extra: Arc<AnchorSet>,
    bundle: watch::Sender<Arc<TrustBundle>>,
    interval: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        let (provider, _) = signer.current();
        match provider.trust_anchors().await {
            Ok(mut anchors) => {
                anchors.extend(extra.snapshot());
                match TrustBundle::new(anchors) {
                    Ok(fresh) => {
                        metrics.trust_anchor_expiry.set(fresh.earliest_expiry());
                        bundle.send_if_modified(|current| {
                            if **current == fresh {
                                false
                            } else {
                                tracing::info!(
                                    anchors = fresh.anchors().len(),
                                    "the trust anchors changed"
                                );
                                *current = Arc::new(fresh);
                                true
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring an unusable set of trust anchors")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "failed to refresh the trust anchors; keeping the current bundle")
            }
        }
        let mut wait = interval;
        if let Some(until) = extra.next_expiry() {
            let left = until - OffsetDateTime::now_utc().unix_timestamp();
            wait = wait.min(Duration::from_secs(
                u64::try_from(left.max(0)).unwrap_or(0) + 1,
            ));
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            () = extra.kick.notified() => {}
        }
    }
}
