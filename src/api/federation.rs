//! SPIFFE bundles: this trust domain's (`GET /v1/bundle/spiffe`, and `/`
//! on the bundle endpoint), a federated trust domain's
//! (`?trust_domain=`), and every federated bundle a caller's workloads
//! receive (`GET /v1/bundle/federated`, which the agent hands on).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::Value;

use super::{ApiError, ApiState};
use crate::bundle::spiffe;
use crate::listener::PeerCertificates;

/// The query of `GET /v1/bundle/spiffe`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BundleQuery {
    trust_domain: Option<String>,
}

fn json(document: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.to_string(),
    )
        .into_response()
}

/// This trust domain's SPIFFE bundle, numbered by the process's sequence.
pub(super) async fn own_bundle(State(state): State<Arc<ApiState>>) -> Response {
    json(&own(&state))
}

fn own(state: &ApiState) -> Value {
    let anchors = state.bundle.borrow().clone();
    let jwt_keys: Vec<_> = state
        .bundles
        .jwt
        .as_ref()
        .map(|t| t.public_keys().into_iter().map(|(jwk, _)| jwk).collect())
        .unwrap_or_default();
    let mut bundle = spiffe::document(anchors.anchors(), &jwt_keys, 0, state.bundles.refresh_hint);
    let now = time::OffsetDateTime::now_utc()
        .unix_timestamp()
        .unsigned_abs();
    bundle["spiffe_sequence"] = state.spiffe_sequence.of(&bundle["keys"], now).into();
    bundle
}

/// `GET /v1/bundle/spiffe[?trust_domain=TD]`: without credentials for
/// this trust domain and for peers every workload receives; a peer limited
/// to some namespaces only to a caller of one of them.
pub(super) async fn spiffe_bundle(
    State(state): State<Arc<ApiState>>,
    peer: Option<Extension<PeerCertificates>>,
    headers: HeaderMap,
    query: Result<Query<BundleQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => return ApiError::InvalidRequest(e.body_text()).into_response(),
    };
    let Some(wanted) = query
        .trust_domain
        .filter(|td| *td != state.bundles.trust_domain.as_str())
    else {
        return json(&own(&state));
    };
    let unknown = || ApiError::UnknownTrustDomain(wanted.clone()).into_response();
    let Some((domain, held)) = state
        .bundles
        .federation
        .as_ref()
        .and_then(|f| f.get(&wanted))
    else {
        return unknown();
    };
    if !domain.namespaces.is_empty() {
        match state
            .auth
            .authenticate(&headers, peer.as_ref().map(|p| &p.0))
            .await
        {
            Ok(caller) if domain.visible_to(&caller.identity) => {}
            Ok(_) => return unknown(),
            Err(e) => return ApiError::from(e).into_response(),
        }
    }
    match held {
        Some(held) => json(&held.bundle.document),
        None => ApiError::BundleNotHeld(wanted).into_response(),
    }
}

/// `GET /v1/bundle/federated`: `{"spiffe://TD": <SPIFFE bundle>, …}` for
/// every federated trust domain the caller's namespace may see.
pub(super) async fn federated_bundles(
    State(state): State<Arc<ApiState>>,
    peer: Option<Extension<PeerCertificates>>,
    headers: HeaderMap,
) -> Response {
    match state
        .auth
        .authenticate(&headers, peer.as_ref().map(|p| &p.0))
        .await
    {
        Ok(caller) => Json(
            state
                .bundles
                .federation
                .as_ref()
                .map(|f| f.visible_to(&caller.identity))
                .unwrap_or_default(),
        )
        .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
