//! `POST /v1/revocations`: revocation for automation, on the signing API.
//!
//! A caller authenticates as for a certificate (a token or a client
//! certificate) and must be one of `revocation.admins`, as SPIRE's
//! `admin_ids` gate its admin API. Both are decided from the request head,
//! before a byte of the body is read; then the request does what
//! `meshca certificate revoke` does, recorded under the caller's SPIFFE ID.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Version};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use meshca_provider::revocation::Serial;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::ledger::Revoking;
use super::publisher::Crls;
use super::revoking::{Asked, ByIdentity, RevokeError, Revoker};
use crate::api::{drain, json_body, rfc3339, ApiError};
use crate::auth::{Authenticator, Caller};
use crate::listener::PeerCertificates;

/// The longest `reason` taken: it is kept in the ledger and every Event.
const MAX_REASON: usize = 1024;

/// What the route needs.
#[derive(Debug)]
pub struct AdminApi {
    /// Caller authentication, as for certificates.
    pub auth: Authenticator,
    /// `revocation.admins`: `namespace/service-account` each.
    pub admins: Vec<String>,
    /// Where revocations are kept.
    pub revoker: Revoker,
    /// `api.max_body_bytes`.
    pub max_body_bytes: usize,
    /// The lists published, for whether the signer can revoke.
    pub crls: watch::Receiver<Crls>,
}

/// The route, on the signing API.
pub fn routes(state: Arc<AdminApi>) -> axum::Router {
    axum::Router::new()
        .route("/v1/revocations", axum::routing::post(revoke))
        .with_state(state)
}

/// Body of `POST /v1/revocations`: a serial, or an identity.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationRequest {
    serial: Option<String>,
    identity: Option<String>,
    issued_before: Option<String>,
    #[serde(default)]
    allow_reissue: bool,
    reason: Option<String>,
}

/// One certificate revoked by the request.
#[derive(Serialize)]
struct RevokedCertificate {
    serial: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    frontend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    issued_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_after: Option<String>,
}

/// Answer of `POST /v1/revocations`.
#[derive(Serialize)]
struct RevocationResponse {
    /// The certificates this request revoked; empty when all were
    /// revoked already.
    revoked: Vec<RevokedCertificate>,
    /// Whether the identity is now denied new certificates.
    identity_denied: bool,
}

/// What a request asks, checked.
enum What {
    Serial(Serial),
    Identity(ByIdentity),
}

async fn revoke(
    State(state): State<Arc<AdminApi>>,
    peer: Option<Extension<PeerCertificates>>,
    version: Version,
    headers: HeaderMap,
    mut body: Body,
) -> Response {
    let caller = match permitted(&state, &headers, peer.as_ref().map(|p| &p.0)).await {
        Ok(caller) => caller,
        Err(refused) => {
            drain(version, body).await;
            return refused.into_response();
        }
    };
    let (what, reason) = match read(&state, &headers, &mut body).await {
        Ok(read) => read,
        Err(refused) => {
            drain(version, body).await;
            return refused.into_response();
        }
    };
    let asked = Asked {
        by: caller.identity.spiffe_id(),
        reason,
    };
    let answered = match what {
        What::Serial(serial) => {
            state
                .revoker
                .serial(&serial, &asked)
                .await
                .map(|revoking| RevocationResponse {
                    revoked: match revoking {
                        Revoking::Revoked => vec![RevokedCertificate {
                            serial: serial.to_string(),
                            frontend: None,
                            issued_at: None,
                            not_after: None,
                        }],
                        Revoking::AlreadyRevoked => Vec::new(),
                    },
                    identity_denied: false,
                })
        }
        What::Identity(what) => state
            .revoker
            .identity(&what, &asked, &|_| {})
            .await
            .map(|done| RevocationResponse {
                identity_denied: done.denied.is_some(),
                revoked: done.revoked.iter().map(certificate).collect(),
            }),
    };
    match answered {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => failed(&e).into_response(),
    }
}

/// The caller, when it is an admin and the signer can revoke: decided
/// from the head alone.
async fn permitted(
    state: &AdminApi,
    headers: &HeaderMap,
    peer: Option<&PeerCertificates>,
) -> Result<Caller, ApiError> {
    let caller = state.auth.authenticate(headers, peer).await?;
    let name = format!(
        "{}/{}",
        caller.identity.namespace(),
        caller.identity.service_account()
    );
    if !state.admins.contains(&name) {
        tracing::warn!(caller = %caller.identity.spiffe_id(), "revocation refused: the caller is not in revocation.admins");
        return Err(ApiError::NotPermitted(format!(
            "{name} may not revoke: only the identities in revocation.admins may"
        )));
    }
    if let Crls::Cannot(why) = &*state.crls.borrow() {
        return Err(ApiError::NotSupported((*why).to_owned()));
    }
    Ok(caller)
}

/// The body, checked: what to revoke and why.
async fn read(
    state: &AdminApi,
    headers: &HeaderMap,
    body: &mut Body,
) -> Result<(What, Option<String>), ApiError> {
    let asked: RevocationRequest = json_body(state.max_body_bytes, headers, body).await?;
    let invalid = ApiError::InvalidRequest;
    if let Some(reason) = &asked.reason {
        if reason.len() > MAX_REASON || reason.chars().any(char::is_control) {
            return Err(invalid(format!(
                "reason must be at most {MAX_REASON} bytes of text without control characters"
            )));
        }
    }
    let what = match (&asked.serial, &asked.identity) {
        (Some(serial), None) => {
            if asked.issued_before.is_some() || asked.allow_reissue {
                return Err(invalid(
                    "issued_before and allow_reissue go with identity, not serial".into(),
                ));
            }
            What::Serial(Serial::parse(serial).map_err(|e| invalid(e.to_string()))?)
        }
        (None, Some(identity)) => What::Identity(
            ByIdentity::of(
                identity,
                asked.issued_before.as_deref(),
                asked.allow_reissue,
            )
            .map_err(invalid)?,
        ),
        _ => return Err(invalid("name exactly one of serial and identity".into())),
    };
    Ok((what, asked.reason))
}

fn certificate(record: &super::index::Record) -> RevokedCertificate {
    let at = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .map(rfc3339)
            .unwrap_or_default()
    };
    RevokedCertificate {
        serial: record.serial.to_string(),
        frontend: Some(record.frontend.clone()),
        issued_at: Some(at(record.issued_at)),
        not_after: Some(at(record.not_after)),
    }
}

/// A failure to revoke, for the admin: what failed, and whether asking
/// again may help.
fn failed(e: &RevokeError) -> ApiError {
    let message = crate::report::error_chain(e);
    tracing::warn!(error = %message, "revocation through the admin API failed");
    match e.is_retryable() {
        true => ApiError::StateUnavailable(message),
        false => ApiError::StateUnusable(message),
    }
}
