//! The HTTPS signing API (its contract is `docs/api.md`) and the
//! plain-HTTP health and metrics endpoints.

mod config;
mod error;
mod federation;
mod handlers;
mod health;
mod tls;

pub use config::{ApiLimits, RawApi};
pub use error::ApiError;
pub use handlers::{drain, json_body, parse_request_body, rfc3339, ttl};
pub use health::{health_router, monitor, Readiness, Ready};
pub use tls::{serving_certificate, Serving, ServingError};

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::auth::Authenticator;
use crate::bundle::spiffe::Served;
use crate::bundle::BundleReceiver;
use crate::issuer::Issuer;

/// Everything the signing API's handlers need.
#[derive(Debug)]
pub struct ApiState {
    /// The issuer every frontend shares.
    pub issuer: Issuer,
    /// Caller authentication.
    pub auth: Authenticator,
    bundle: BundleReceiver,
    /// `api.max_body_bytes`.
    pub max_body_bytes: usize,
    rollout: tokio::sync::watch::Receiver<crate::rollout::RolloutStatus>,
    spiffe: Arc<Served>,
}

impl ApiState {
    /// Assemble the API's dependencies.
    pub fn new(
        issuer: Issuer,
        auth: Authenticator,
        max_body_bytes: usize,
        rollout: tokio::sync::watch::Receiver<crate::rollout::RolloutStatus>,
        spiffe: Arc<Served>,
    ) -> Self {
        Self {
            issuer,
            auth,
            bundle: spiffe.bundle.clone(),
            max_body_bytes,
            rollout,
            spiffe,
        }
    }
}

/// Largest request head answered by the router (with a JSON 431); hyper
/// itself refuses far larger ones (`server::MAX_HEAD`) without a body.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The signing API's routes, with `extra` (the features') merged in.
/// Every error, an unknown path or method and oversized headers included,
/// is answered in the contract's JSON form.
pub fn router(state: Arc<ApiState>, extra: Vec<Router>) -> Router {
    let routes = Router::new()
        .route("/v1/certificates", post(handlers::create_certificate))
        .route("/v1/bundle", get(handlers::get_bundle))
        .route("/v1/bundle/spiffe", get(federation::spiffe_bundle))
        .route("/v1/bundle/federated", get(federation::federated_bundles))
        .route("/v1/identity", get(handlers::get_identity))
        .route("/v1/rotation", get(handlers::get_rotation))
        .with_state(state);
    json_errors(extra.into_iter().fold(routes, Router::merge))
}

/// This trust domain's SPIFFE bundle at `/`, without credentials: a
/// bundle endpoint's route.
pub fn bundle_endpoint_router(spiffe: Arc<Served>) -> Router {
    json_errors(
        Router::new()
            .route("/", get(federation::own_bundle))
            .with_state(spiffe),
    )
}

/// 404, 405 and 431 as JSON errors, for any router.
pub fn json_errors(router: Router) -> Router {
    router
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn(limit_headers))
}

async fn limit_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let size: usize = request
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + request.uri().to_string().len();
    if size > MAX_HEADER_BYTES {
        return ApiError::HeadersTooLarge(MAX_HEADER_BYTES).into_response();
    }
    next.run(request).await
}
