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

use super::handlers::{drain, json_body, rfc3339, ttl};
use super::{ApiError, ApiState};
use crate::auth::AuthMethod;
use crate::issuer::{Frontend, Outcome, TokenRequest};
use crate::jwt::documents;
use crate::listener::PeerCertificates;
use crate::metrics::TokenLabels;

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
    body: Body,
) -> Response {
    let mut body = Some(body);
    let answer = mint(&state, peer.as_ref().map(|p| &p.0), &headers, &mut body).await;
    if let (Err(_), Some(unread)) = (&answer, body) {
        drain(version, unread).await;
    }
    match answer {
        Ok(Ok(token)) => Json(token).into_response(),
        // The issuer counted and decided it; this only renders it.
        Ok(Err(refused)) => refused.into_response(),
        // Refused before the issuer saw it: counted here.
        Err(early) => {
            state
                .metrics
                .jwt_svids_issued
                .get_or_create(&TokenLabels {
                    frontend: Frontend::Api.as_str(),
                    credential: "none",
                    result: early.code(),
                })
                .inc();
            tracing::info!(code = early.code(), "JWT-SVID request refused");
            early.into_response()
        }
    }
}

/// Authenticate, read the request and ask the issuer: its answer, or a
/// refusal before the issuer was asked.
async fn mint(
    state: &ApiState,
    peer: Option<&PeerCertificates>,
    headers: &HeaderMap,
    body: &mut Option<Body>,
) -> Result<Result<TokenResponse, ApiError>, ApiError> {
    if state.issuer.tokens().is_none() {
        return Err(ApiError::NotEnabled("JWT-SVIDs (jwt_svids.enabled)"));
    }
    let caller = state.auth.authenticate(headers, peer).await?;
    let request: TokenBody = json_body(state, headers, body).await?;
    let request = TokenRequest {
        frontend: Frontend::Api,
        credential: match caller.method {
            AuthMethod::Token => "token",
            AuthMethod::ClientCertificate => "certificate",
        },
        identity: &caller.identity,
        audience: &request.audience,
        ttl: ttl(request.ttl_seconds)?,
    };
    match state.issuer.issue_token(request) {
        Some(Outcome::Issued(svid)) => {
            tracing::info!(spiffe_id = %svid.spiffe_id, audience = ?request.audience, expires_at = %svid.expires_at, "issued a JWT-SVID");
            Ok(Ok(TokenResponse {
                token: svid.token,
                spiffe_id: svid.spiffe_id,
                expires_at: rfc3339(svid.expires_at),
            }))
        }
        Some(refused) => {
            tracing::info!(identity = %caller.identity, code = refused.code(), error = %crate::error_chain(&refused), "JWT-SVID request refused");
            Ok(Err(ApiError::from(refused)))
        }
        None => Err(ApiError::NotEnabled("JWT-SVIDs (jwt_svids.enabled)")),
    }
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
    match state.issuer.tokens() {
        Some(tokens) => cached(Json(documents::discovery(tokens))),
        None => ApiError::NotEnabled("JWT-SVIDs (jwt_svids.enabled)").into_response(),
    }
}

pub(super) async fn jwks(State(state): State<Arc<ApiState>>) -> Response {
    match state.issuer.tokens() {
        Some(tokens) => cached(Json(documents::jwks(tokens))),
        None => ApiError::NotEnabled("JWT-SVIDs (jwt_svids.enabled)").into_response(),
    }
}

/// The discovery routes under the issuer URL's path (`/.well-known/…` and
/// `/keys` for an issuer without one).
pub(super) fn discovery_paths(state: &ApiState) -> Option<(String, String)> {
    let path = state.issuer.tokens()?.config().issuer.path();
    Some((
        format!("{path}/.well-known/openid-configuration"),
        format!("{path}/keys"),
    ))
}
