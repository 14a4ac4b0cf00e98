//! The bundle's anchors: the signer's own plus those the rollout ledger
//! keeps (retained for certificates of earlier signers, or incoming).

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{RolloutStatus, Signer};
use crate::bundle::TrustBundle;
use crate::metrics::Metrics;

/// Publish the union of the signer's anchors and the ledger's: every
/// `interval`, whenever the ledger changes, and when a retained set is due
/// to leave. A failed read keeps the current bundle.
pub async fn anchor_refresher(
    signer: Arc<Signer>,
    mut ledger: watch::Receiver<RolloutStatus>,
    bundle: watch::Sender<Arc<TrustBundle>>,
    interval: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        let (extra, deadline) = {
            let status = ledger.borrow_and_update();
            (
                status.extra_anchors(OffsetDateTime::now_utc()),
                status.next_deadline(),
            )
        };
        refresh(&signer, extra, &bundle, &metrics).await;
        let mut wait = interval;
        if let Some(until) = deadline {
            let left = until - OffsetDateTime::now_utc();
            wait = wait.min(left.try_into().unwrap_or(Duration::ZERO));
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            changed = ledger.changed() => if changed.is_err() { return },
        }
    }
}

async fn refresh(
    signer: &Signer,
    extra: Vec<rustls_pki_types::CertificateDer<'static>>,
    bundle: &watch::Sender<Arc<TrustBundle>>,
    metrics: &Metrics,
) {
    let (provider, _) = signer.current();
    let mut anchors = match provider.trust_anchors().await {
        Ok(anchors) => anchors,
        Err(e) => {
            tracing::warn!(error = %e, "failed to refresh the trust anchors; keeping the current bundle");
            return;
        }
    };
    anchors.extend(extra);
    match TrustBundle::new(anchors) {
        Ok(fresh) => {
            bundle.send_if_modified(|current| {
                if **current == fresh {
                    return false;
                }
                tracing::info!(anchors = fresh.anchors().len(), "the trust anchors changed");
                // The series change with the bundle only (the start
                // recorded the first).
                metrics.record_anchors(fresh.anchors());
                *current = Arc::new(fresh);
                true
            });
        }
        Err(e) => tracing::warn!(error = %e, "ignoring an unusable set of trust anchors"),
    }
}
