//! `GET /v1/crl`: the CRLs, without authentication, as the bundle is
//! (verifiers fetch them before they trust anyone).

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use super::publisher::Crls;
use crate::api::ApiError;

/// The PEM media type: every list (each CA signing leaves, those it
/// replaced, the roots above), as `X509 CRL` blocks.
const PEM: &str = "application/x-pem-file";
/// The DER media type (RFC 5280 §4.2.1.13): the one list leaves are
/// checked against now.
const DER: &str = "application/pkix-crl";

/// The route, on the signing API.
pub fn routes(crls: watch::Receiver<Crls>) -> axum::Router {
    axum::Router::new()
        .route("/v1/crl", axum::routing::get(get_crl))
        .with_state(crls)
}

async fn get_crl(State(crls): State<watch::Receiver<Crls>>, headers: HeaderMap) -> Response {
    let published = match &*crls.borrow() {
        Crls::Lists(published) => published.clone(),
        Crls::NotYet => return ApiError::NotReady("the CRLs").into_response(),
        Crls::Cannot(why) => return ApiError::NotSupported((*why).to_owned()).into_response(),
    };
    let wants_pem = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().starts_with(PEM)));
    // One tag per representation; a client that holds it gets 304 and no
    // body (agents ask every few seconds).
    let etag = format!(
        "\"{}-{}\"",
        published.etag(),
        if wants_pem { "pem" } else { "der" }
    );
    let held = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    // Verifiers fetch the lists on their own schedule: never a copy older
    // than what meshca holds without asking.
    let cache = [
        (header::CACHE_CONTROL, "no-cache".to_owned()),
        (header::ETAG, etag),
    ];
    if held {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    if wants_pem {
        return (cache, [(header::CONTENT_TYPE, PEM)], published.pem()).into_response();
    }
    match published.leaf_list() {
        Some(list) => (
            cache,
            [(header::CONTENT_TYPE, DER)],
            list.der.as_ref().to_vec(),
        )
            .into_response(),
        None => ApiError::NotReady("the CRLs").into_response(),
    }
}
