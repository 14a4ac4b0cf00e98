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
use crate::bundle::spiffe::Served;
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
pub(super) async fn own_bundle(State(spiffe): State<Arc<Served>>) -> Response {
    json(&spiffe.own())
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
    let served = &state.spiffe;
    let Some(wanted) = query
        .trust_domain
        .filter(|td| *td != served.trust_domain.as_str())
    else {
        return json(&served.own());
    };
    let unknown = || ApiError::UnknownTrustDomain(wanted.clone()).into_response();
    let Some(found) = served.peers.as_ref().and_then(|p| p.lookup(&wanted)) else {
        return unknown();
    };
    if !found.namespaces.is_empty() {
        match state
            .auth
            .authenticate(&headers, peer.as_ref().map(|p| &p.0))
            .await
        {
            Ok(caller) if found.visible_to(&caller.identity) => {}
            Ok(_) => return unknown(),
            Err(e) => return ApiError::from(e).into_response(),
        }
    }
    match found.document {
        Some(document) => json(&document),
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
                .spiffe
                .peers
                .as_ref()
                .map(|p| p.visible_to(&caller.identity))
                .unwrap_or_default(),
        )
        .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
