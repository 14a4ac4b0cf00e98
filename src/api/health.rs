use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use meshca_provider::Health;

use crate::rollout::Signer;

use crate::bundle::PublishStatus;
use crate::metrics::Metrics;

/// What `/readyz` checks: the provider can sign and every bundle sink holds
/// the current bundle.
#[derive(Clone)]
pub struct Readiness {
    /// The signer slot.
    pub signer: Arc<Signer>,
    /// The bundle publisher's per-sink state.
    pub publish: PublishStatus,
    /// Metrics to render on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The cluster, whose API server must answer.
    pub cluster: Option<kube::Client>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("signer", &self.signer)
            .field("cluster", &self.cluster.is_some())
            .finish_non_exhaustive()
    }
}

/// `/healthz`, `/readyz` and `/metrics`, served on plain HTTP.
pub fn health_router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(readiness))
}

async fn readyz(State(r): State<Arc<Readiness>>) -> Response {
    let mut problems = Vec::new();
    let (provider, _) = r.signer.current();
    if let Health::Unhealthy(why) = provider.health().await {
        problems.push(format!("provider {}: {why}", provider.kind()));
    }
    if let Some(client) = &r.cluster {
        if let Err(why) = crate::kube::probe(client).await {
            problems.push(format!("kubernetes API: {why}"));
        }
    }
    if let Err(why) = r.publish.check() {
        problems.push(format!("trust bundle: {why}"));
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
