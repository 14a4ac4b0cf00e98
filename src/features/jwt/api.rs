//! JWT-SVIDs on the signing API (`POST /v1/jwt-svids`), and what relying
//! parties read without credentials: the OIDC discovery document and the
//! JWKS, on the signing API and on `oidc.listen`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Version};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::{documents, JwtSvids};
use crate::api::{drain, json_body, rfc3339, ttl, ApiError};
use crate::auth::{AuthMethod, Authenticator, Caller};
use crate::issuer::{Frontend, Issuer, TokenRefusal, TokenRequest, Unasked, Verdict};
use crate::listener::PeerCertificates;

/// What the JWT-SVID routes need.
#[derive(Debug)]
pub struct JwtApi {
    /// The issuer every frontend shares.
    pub issuer: Issuer,
    /// Caller authentication.
    pub auth: Authenticator,
    /// `api.max_body_bytes`.
    pub max_body_bytes: usize,
    /// The minter and its keys, when JWT-SVIDs are on.
    pub svids: Option<JwtSvids>,
}

/// `POST /v1/jwt-svids`, and discovery and the JWKS under the issuer
/// URL's path, for the signing API; without JWT-SVIDs, the first answers
/// `not_enabled`.
pub fn signing_api_routes(state: Arc<JwtApi>) -> axum::Router {
    let routes = axum::Router::new().route("/v1/jwt-svids", axum::routing::post(create_jwt_svid));
    with_discovery(routes, &state).with_state(state)
}

/// Discovery and the JWKS alone: `oidc.listen`'s routes.
pub fn oidc_routes(state: Arc<JwtApi>) -> axum::Router {
    crate::api::json_errors(with_discovery(axum::Router::new(), &state).with_state(state))
}

/// `routes` plus discovery and the JWKS under the issuer URL's path, when
/// JWT-SVIDs are enabled.
fn with_discovery(routes: axum::Router<Arc<JwtApi>>, state: &JwtApi) -> axum::Router<Arc<JwtApi>> {
    match discovery_paths(state) {
        Some((discovery_path, keys)) => routes
            .route(&discovery_path, axum::routing::get(discovery))
            .route(&keys, axum::routing::get(jwks)),
        None => routes,
    }
}

/// How long relying parties may cache the JWKS and the discovery document:
/// well inside the propagation delay, so a new key is known before it
/// signs.
const CACHE_SECONDS: u64 = 60;

/// Body of `POST /v1/jwt-svids`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    audience: Vec<String>,
    ttl_seconds: Option<u64>,
}

/// Answer of `POST /v1/jwt-svids`.
#[derive(Serialize)]
struct TokenResponse {
    token: String,
    spiffe_id: String,
    expires_at: String,
}

async fn create_jwt_svid(
    State(state): State<Arc<JwtApi>>,
    peer: Option<Extension<PeerCertificates>>,
    version: Version,
    headers: HeaderMap,
    mut body: Body,
) -> Response {
    if state.svids.is_none() {
        return ApiError::NotEnabled("JWT-SVIDs (jwt_svids.enabled)").into_response();
    }
    match mint(&state, peer.as_ref().map(|p| &p.0), &headers, &mut body).await {
        Some(Ok(token)) => Json(token).into_response(),
        Some(Err(refusal)) => {
            drain(version, body).await;
            ApiError::from(refusal).into_response()
        }
        None => ApiError::NotEnabled("JWT-SVIDs (jwt_svids.enabled)").into_response(),
    }
}

/// Authenticate, read the request and ask the issuer: the token, or the
/// refusal (counted by the issuer, whether it or the API decided it);
/// `None` when JWT-SVIDs are off.
async fn mint(
    state: &JwtApi,
    peer: Option<&PeerCertificates>,
    headers: &HeaderMap,
    body: &mut Body,
) -> Option<Result<TokenResponse, TokenRefusal>> {
    let (caller, asked) = match read_request(state, peer, headers, body).await {
        Ok(read) => read,
        Err(unasked) => {
            tracing::info!(code = unasked.code().as_str(), "JWT-SVID request refused");
            return Some(Err(state.issuer.refuse_token(
                Frontend::Api,
                "none",
                unasked,
            )));
        }
    };
    let request = TokenRequest {
        frontend: Frontend::Api,
        credential: match caller.method {
            AuthMethod::Token => "token",
            AuthMethod::ClientCertificate => "certificate",
        },
        identity: &caller.identity,
        audience: &asked.audience,
        ttl: asked.ttl_seconds.map(Duration::from_secs),
    };
    let verdict = state.issuer.issue_token(request).await?;
    Some(
        verdict
            .inspect(|svid| {
                tracing::info!(spiffe_id = %svid.spiffe_id, audiences = request.audience.len(), audience = ?request.audience, expires_at = %svid.expires_at, "issued a JWT-SVID");
            })
            .inspect_err(|refusal| {
                tracing::info!(identity = %caller.identity, code = refusal.code().as_str(), error = %crate::report::error_chain(refusal), "JWT-SVID request refused");
            })
            .map(|svid| TokenResponse {
                token: svid.token,
                spiffe_id: svid.spiffe_id,
                expires_at: rfc3339(svid.expires_at),
            }),
    )
}

/// The caller and what it asks, or why the API refuses before asking.
async fn read_request(
    state: &JwtApi,
    peer: Option<&PeerCertificates>,
    headers: &HeaderMap,
    body: &mut Body,
) -> Result<(Caller, TokenBody), Unasked> {
    let caller = state.auth.authenticate(headers, peer).await?;
    let asked: TokenBody = json_body(state.max_body_bytes, headers, body).await?;
    ttl(asked.ttl_seconds)?;
    Ok((caller, asked))
}

fn cached(body: impl IntoResponse) -> Response {
    (
        [(
            header::CACHE_CONTROL,
            format!("public, max-age={CACHE_SECONDS}"),
        )],
        body,
    )
        .into_response()
}

async fn discovery(State(state): State<Arc<JwtApi>>) -> Response {
    match state.svids.as_ref() {
        Some(tokens) => cached(Json(documents::discovery(tokens))),
        None => ApiError::NotEnabled("JWT-SVIDs (jwt_svids.enabled)").into_response(),
    }
}

async fn jwks(State(state): State<Arc<JwtApi>>) -> Response {
    match state.svids.as_ref() {
        Some(tokens) => cached(Json(documents::jwks(tokens))),
        None => ApiError::NotEnabled("JWT-SVIDs (jwt_svids.enabled)").into_response(),
    }
}

/// The discovery routes under the issuer URL's path (`/.well-known/…` and
/// `/keys` for an issuer without one).
fn discovery_paths(state: &JwtApi) -> Option<(String, String)> {
    let path = state.svids.as_ref()?.config().issuer.path();
    Some((
        format!("{path}/.well-known/openid-configuration"),
        format!("{path}/keys"),
    ))
}
