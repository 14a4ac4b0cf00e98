//! `/healthz`, `/readyz` and `/metrics`, on plain HTTP.
//!
//! `/readyz` only reads state that background tasks publish: the health
//! [`monitor`] (provider and API server, probed on a timer), the bundle
//! publisher's per-sink status and the supervisor's failed tasks. A probe
//! from the kubelet never causes a network call of its own.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use meshca_provider::Health;
use tokio::sync::watch;

use crate::bundle::PublishStatus;
use crate::metrics::Metrics;
use crate::rollout::Signer;
use crate::supervisor::Spawner;

/// How often the monitor probes the provider and the API server.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// A source of `/readyz` reasons: what a feature finds wrong now, read
/// from state its tasks keep (never a network call of its own).
pub trait Ready: Send + Sync {
    /// What is wrong now; empty when all is well.
    fn problems(&self) -> Vec<String>;
}

/// What `/readyz` reads.
#[derive(Clone)]
pub struct Readiness {
    /// Problems the health monitor found in its last round.
    pub probes: watch::Receiver<Vec<String>>,
    /// The bundle publisher's per-sink state.
    pub publish: PublishStatus,
    /// Background tasks that ended unexpectedly.
    pub failed_tasks: watch::Receiver<Vec<&'static str>>,
    /// Metrics to render on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The features' sources.
    pub features: Vec<Arc<dyn Ready>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness").finish_non_exhaustive()
    }
}

/// Probe the signing provider and the API server now, then every second,
/// publishing what is wrong (empty when all is well). The first round runs
/// before this returns, so readiness is known from the start.
pub async fn monitor(
    signer: Arc<Signer>,
    cluster: Option<kube::Client>,
    metrics: Arc<Metrics>,
    spawner: &Spawner,
) -> watch::Receiver<Vec<String>> {
    let (tx, rx) = watch::channel(probe(&signer, cluster.as_ref()).await);
    metrics.record_credential_expiry(signer.current().0.credential_expiry());
    spawner.spawn_child("health-monitor", |stop| async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(PROBE_EVERY) => {}
            }
            let problems = probe(&signer, cluster.as_ref()).await;
            metrics.record_credential_expiry(signer.current().0.credential_expiry());
            tx.send_if_modified(|now| {
                let changed = *now != problems;
                if changed {
                    problems.clone_into(now);
                }
                changed
            });
        }
    });
    rx
}

async fn probe(signer: &Signer, cluster: Option<&kube::Client>) -> Vec<String> {
    let mut problems = Vec::new();
    let (provider, _) = signer.current();
    if let Health::Unhealthy(why) = provider.health().await {
        problems.push(format!("provider {}: {why}", provider.kind()));
    }
    if let Some(client) = cluster {
        if let Err(why) = crate::cluster::probe(client).await {
            problems.push(format!("kubernetes API: {why}"));
        }
    }
    problems
}

/// `/healthz`, `/readyz` and `/metrics`, served on plain HTTP.
pub fn health_router(readiness: Readiness) -> Router {
    super::json_errors(
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(Arc::new(readiness)),
    )
}

async fn readyz(State(r): State<Arc<Readiness>>) -> Response {
    let mut problems = r.probes.borrow().clone();
    if let Err(why) = r.publish.check() {
        problems.push(format!("trust bundle: {why}"));
    }
    for source in &r.features {
        problems.extend(source.problems());
    }
    for task in r.failed_tasks.borrow().iter() {
        problems.push(format!("background task {task} stopped"));
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{}\n", problems.join("\n")),
        )
            .into_response()
    }
}

async fn metrics(State(r): State<Arc<Readiness>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        r.metrics.render(),
    )
        .into_response()
}
