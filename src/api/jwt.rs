//! JWT-SVIDs on the signing API (`POST /v1/jwt-svids`), and what relying
//! parties read without credentials: the OIDC discovery document, the
//! JWKS and the trust domain's SPIFFE bundle.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Version};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::handlers::{drain, json_body, rfc3339, ttl};
use super::{ApiError, ApiState};
use crate::auth::AuthMethod;
use crate::auth::Caller;
use crate::issuer::{Frontend, TokenRefusal, TokenRequest, Unasked, Verdict};
use crate::jwt::documents;
use crate::listener::PeerCertificates;

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

pub(super) async fn create_jwt_svid(
    State(state): State<Arc<ApiState>>,
    peer: Option<Extension<PeerCertificates>>,
    version: Version,
    headers: HeaderMap,
    mut body: Body,
) -> Response {
    if !state.issuer.mints_tokens() {
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
    state: &ApiState,
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
    let verdict = state.issuer.issue_token(request)?;
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
    state: &ApiState,
    peer: Option<&PeerCertificates>,
    headers: &HeaderMap,
    body: &mut Body,
) -> Result<(Caller, TokenBody), Unasked> {
    let caller = state.auth.authenticate(headers, peer).await?;
    let asked: TokenBody = json_body(state, headers, body).await?;
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

pub(super) async fn discovery(State(state): State<Arc<ApiState>>) -> Response {
    match state.bundles.jwt.as_ref() {
        Some(tokens) => cached(Json(documents::discovery(tokens))),
        None => ApiError::NotEnabled("JWT-SVIDs (jwt_svids.enabled)").into_response(),
    }
}

pub(super) async fn jwks(State(state): State<Arc<ApiState>>) -> Response {
    match state.bundles.jwt.as_ref() {
        Some(tokens) => cached(Json(documents::jwks(tokens))),
        None => ApiError::NotEnabled("JWT-SVIDs (jwt_svids.enabled)").into_response(),
    }
}

/// The discovery routes under the issuer URL's path (`/.well-known/…` and
/// `/keys` for an issuer without one).
pub(super) fn discovery_paths(state: &ApiState) -> Option<(String, String)> {
    let path = state.bundles.jwt.as_ref()?.config().issuer.path();
    Some((
        format!("{path}/.well-known/openid-configuration"),
        format!("{path}/keys"),
    ))
}
