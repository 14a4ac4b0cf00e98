//! The HTTPS signing API (its contract is `docs/api.md`) and the
//! plain-HTTP health and metrics endpoints.

mod config;
mod error;
mod federation;
mod handlers;
mod health;
mod jwt;
mod tls;

pub use config::{ApiLimits, RawApi};
pub use error::ApiError;
pub use handlers::parse_request_body;
pub use health::{health_router, monitor, Readiness};
pub use tls::{serving_certificate, ServingError};

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::auth::Authenticator;
use crate::bundle::BundleReceiver;
use crate::issuer::Issuer;

/// Everything the signing API's handlers need.
#[derive(Debug)]
pub struct ApiState {
    issuer: Issuer,
    auth: Authenticator,
    bundle: BundleReceiver,
    max_body_bytes: usize,
    rollout: tokio::sync::watch::Receiver<crate::rollout::RolloutStatus>,
    spiffe_sequence: crate::bundle::spiffe::Sequence,
    bundles: Bundles,
}

/// What the SPIFFE bundle endpoints and discovery serve besides the
/// anchors.
#[derive(Debug)]
pub struct Bundles {
    /// JWT-SVIDs' keys and issuer, when enabled.
    pub jwt: Option<crate::jwt::JwtSvids>,
    /// This mesh's trust domain.
    pub trust_domain: meshca_provider::TrustDomain,
    /// `spiffe_refresh_hint` of this trust domain's bundle.
    pub refresh_hint: std::time::Duration,
    /// The peers' bundles, with federation configured.
    pub federation: Option<crate::federation::Federation>,
}

impl ApiState {
    /// Assemble the API's dependencies.
    pub fn new(
        issuer: Issuer,
        auth: Authenticator,
        bundle: BundleReceiver,
        max_body_bytes: usize,
        rollout: tokio::sync::watch::Receiver<crate::rollout::RolloutStatus>,
        bundles: Bundles,
    ) -> Self {
        Self {
            issuer,
            auth,
            bundle,
            max_body_bytes,
            rollout,
            spiffe_sequence: crate::bundle::spiffe::Sequence::default(),
            bundles,
        }
    }
}

/// Largest request head answered by the router (with a JSON 431); hyper
/// itself refuses far larger ones (`server::MAX_HEAD`) without a body.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The signing API's routes. Every error, an unknown path or method and
/// oversized headers included, is answered in the contract's JSON form.
pub fn router(state: Arc<ApiState>) -> Router {
    let routes = Router::new()
        .route("/v1/certificates", post(handlers::create_certificate))
        .route("/v1/jwt-svids", post(jwt::create_jwt_svid))
        .route("/v1/bundle", get(handlers::get_bundle))
        .route("/v1/bundle/spiffe", get(federation::spiffe_bundle))
        .route("/v1/bundle/federated", get(federation::federated_bundles))
        .route("/v1/identity", get(handlers::get_identity))
        .route("/v1/rotation", get(handlers::get_rotation));
    json_errors(with_discovery(routes, &state).with_state(state))
}

/// The bundle endpoint's route (`federation.bundle_endpoint`): this
/// trust domain's SPIFFE bundle at `/`, without credentials.
pub fn bundle_endpoint_router(state: Arc<ApiState>) -> Router {
    json_errors(
        Router::new()
            .route("/", get(federation::own_bundle))
            .with_state(state),
    )
}

/// The public listener's routes (`oidc.listen`): OIDC discovery and the
/// JWKS only, for relying parties outside the mesh.
pub fn oidc_router(state: Arc<ApiState>) -> Router {
    json_errors(with_discovery(Router::new(), &state).with_state(state))
}

/// `routes` plus discovery and the JWKS under the issuer URL's path, when
/// JWT-SVIDs are enabled.
fn with_discovery(routes: Router<Arc<ApiState>>, state: &ApiState) -> Router<Arc<ApiState>> {
    match jwt::discovery_paths(state) {
        Some((discovery, keys)) => routes
            .route(&discovery, get(jwt::discovery))
            .route(&keys, get(jwt::jwks)),
        None => routes,
    }
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
