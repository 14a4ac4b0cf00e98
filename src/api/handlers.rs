use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Version};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http_body_util::BodyExt;
use rustls_pki_types::CertificateSigningRequestDer;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{ApiError, ApiState};
use crate::auth::Caller;
use crate::issuer::{Frontend, Refusal, Request, Unasked, Verdict};
use crate::listener::PeerCertificates;

/// The signer generation, on certificate and bundle answers: a client
/// whose certificate came from an older generation renews early.
pub const GENERATION_HEADER: &str = "x-meshca-generation";

/// How much of a refused HTTP/1 request's body is read (and dropped)
/// before the answer, so that a client that writes its whole body before
/// reading still gets the answer rather than a reset connection. The
/// listener's body deadline bounds how long that takes.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// Body of `POST /v1/certificates`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateRequest {
    csr: String,
    ttl_seconds: Option<u64>,
}

/// Successful answer of `POST /v1/certificates`; exactly the contract's
/// fields.
#[derive(Serialize)]
struct CertificateResponse {
    identity: String,
    spiffe_id: String,
    certificate_chain: String,
    trust_bundle: String,
    serial: String,
    not_before: String,
    not_after: String,
    renew_after: String,
}

/// A time as RFC 3339 text.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

pub(super) async fn create_certificate(
    State(state): State<Arc<ApiState>>,
    peer: Option<Extension<PeerCertificates>>,
    version: Version,
    headers: HeaderMap,
    mut body: Body,
) -> Response {
    match sign(&state, peer.as_ref().map(|p| &p.0), &headers, &mut body).await {
        Ok((ok, generation)) => {
            ([(GENERATION_HEADER, generation.to_string())], Json(ok)).into_response()
        }
        Err(refusal) => {
            drain(version, body).await;
            ApiError::from(refusal).into_response()
        }
    }
}

/// Read and drop what is left of a refused request's body, within
/// bounds, for HTTP/1 only: an HTTP/2 answer ends the stream, and flow
/// control stops the rest of the body at the client.
pub async fn drain(version: Version, mut body: Body) {
    if version >= Version::HTTP_2 {
        return;
    }
    let mut total = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        total += frame.data_ref().map_or(0, |d| d.len());
        if total > DRAIN_LIMIT {
            return;
        }
    }
}

/// The body, at most `limit` bytes; reading stops at the first byte over
/// it, leaving the rest unread.
pub(super) async fn read_body(body: &mut Body, limit: usize) -> Result<Vec<u8>, Unasked> {
    let mut collected = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| Unasked::Malformed(format!("failed to read the request body: {e}")))?;
        if let Some(data) = frame.data_ref() {
            if collected.len() + data.len() > limit {
                return Err(Unasked::TooLarge(limit));
            }
            collected.extend_from_slice(data);
        }
    }
    Ok(collected)
}

/// Authenticate, read and parse the request, and ask the issuer: the
/// answer and the signer generation, or the refusal to render (counted by
/// the issuer, whether it or the API decided it).
async fn sign(
    state: &ApiState,
    peer: Option<&PeerCertificates>,
    headers: &HeaderMap,
    body: &mut Body,
) -> Result<(CertificateResponse, u64), Refusal> {
    let (caller, ttl, csr) = read_request(state, peer, headers, body)
        .await
        .map_err(|unasked| state.issuer.refuse(Frontend::Api, unasked))?;
    let lifetime = state.issuer.lifetimes().for_request(ttl);
    let request = Request::workload(Frontend::Api, &caller.identity, csr.as_ref(), lifetime);
    let issued = state.issuer.issue(request).await.inspect_err(|refusal| {
        tracing::info!(identity = %caller.identity, code = refusal.code().as_str(), error = %crate::report::error_chain(refusal), "certificate request refused");
    })?;
    let cert = &issued.issued;
    tracing::info!(
        identity = %cert.identity(),
        serial = cert.serial(),
        not_after = %cert.not_after(),
        method = ?caller.method,
        "issued a certificate"
    );
    Ok((
        CertificateResponse {
            identity: cert.identity().dns_name(),
            spiffe_id: cert.identity().spiffe_id(),
            certificate_chain: meshca_provider::pem::encode_certificates(cert.chain()),
            trust_bundle: issued.trust_bundle.pem().to_owned(),
            serial: cert.serial().to_owned(),
            not_before: rfc3339(cert.not_before()),
            not_after: rfc3339(cert.not_after()),
            renew_after: rfc3339(issued.renew_after),
        },
        issued.generation,
    ))
}

/// The caller, the lifetime and the CSR a request asks for, or why the API
/// refuses it before asking the issuer.
async fn read_request(
    state: &ApiState,
    peer: Option<&PeerCertificates>,
    headers: &HeaderMap,
    body: &mut Body,
) -> Result<
    (
        Caller,
        Option<Duration>,
        CertificateSigningRequestDer<'static>,
    ),
    Unasked,
> {
    let caller = state.auth.authenticate(headers, peer).await?;
    let request: CertificateRequest = json_body(state.max_body_bytes, headers, body).await?;
    let ttl = ttl(request.ttl_seconds)?;
    let csr = one_csr(&request.csr)?;
    Ok((caller, ttl, csr))
}

/// The body as JSON of type `T`: `application/json`, within the size
/// limit, parsing.
///
/// # Errors
/// [`Unasked`]: another media type, too large, not JSON of `T`.
pub async fn json_body<T: serde::de::DeserializeOwned>(
    limit: usize,
    headers: &HeaderMap,
    body: &mut Body,
) -> Result<T, Unasked> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(Unasked::MediaType);
    }
    let bytes = read_body(body, limit).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Unasked::Malformed(format!("invalid JSON body: {e}")))
}

/// `ttl_seconds` as asked: absent, or more than zero.
///
/// # Errors
/// [`Unasked::Malformed`] for zero.
pub fn ttl(seconds: Option<u64>) -> Result<Option<Duration>, Unasked> {
    match seconds {
        Some(0) => Err(Unasked::Malformed(
            "ttl_seconds must be greater than zero".into(),
        )),
        other => Ok(other.map(Duration::from_secs)),
    }
}

/// Parse a `POST /v1/certificates` body as the handler does (JSON, then
/// exactly one PEM CSR), for the fuzz targets; `Err` is the answer's
/// message.
pub fn parse_request_body(body: &[u8]) -> Result<(), String> {
    let request: CertificateRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    one_csr(&request.csr)
        .map(drop)
        .map_err(|e| e.code().as_str().to_owned())
}

/// The one PEM "CERTIFICATE REQUEST" block `pem` must be.
fn one_csr(pem: &str) -> Result<CertificateSigningRequestDer<'static>, Unasked> {
    meshca_provider::pem::decode_one_csr(pem).map_err(|why| {
        Unasked::MalformedCsr(format!(
            "csr must be exactly one PEM \"CERTIFICATE REQUEST\" block: {why}"
        ))
    })
}

/// Answer of `GET /v1/identity`: who the credential says the caller is,
/// so a client can name itself in its CSR.
#[derive(Serialize)]
struct IdentityResponse {
    identity: String,
    spiffe_id: String,
}

pub(super) async fn get_identity(
    State(state): State<Arc<ApiState>>,
    peer: Option<Extension<PeerCertificates>>,
    headers: HeaderMap,
) -> Response {
    match state
        .auth
        .authenticate(&headers, peer.as_ref().map(|p| &p.0))
        .await
    {
        Ok(caller) => Json(IdentityResponse {
            identity: caller.identity.dns_name(),
            spiffe_id: caller.identity.spiffe_id(),
        })
        .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

pub(super) async fn get_rotation(State(state): State<Arc<ApiState>>) -> Response {
    Json(crate::rollout::RotationReport::from(
        &*state.rollout.borrow(),
    ))
    .into_response()
}

pub(super) async fn get_bundle(State(state): State<Arc<ApiState>>) -> Response {
    let pem = state.bundle.borrow().pem().to_owned();
    let generation = state.issuer.signer().generation().to_string();
    (
        [
            (
                header::CONTENT_TYPE.as_str(),
                "application/x-pem-file".to_owned(),
            ),
            (GENERATION_HEADER, generation),
        ],
        pem,
    )
        .into_response()
}
