use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::issuer::{Code, Refusal, TokenRefusal, Unasked, Verdict};

/// Every way the signing API answers with an error. This enum and its
/// [`IntoResponse`] impl are the only place errors become HTTP statuses and
/// the `{"error": {"code", "message"}}` body (`docs/api.md`): the issuer's
/// refusals by their [`Code`], and what only HTTP knows of (paths,
/// methods, headers, the peers' bundles).
#[derive(Debug)]
pub enum ApiError {
    /// The issuer refused a certificate or a token, or the API refused the
    /// request before asking (and the issuer counted it).
    Refused(Box<dyn Verdict>),
    /// 400 `invalid_request`: a request that asks for nothing to issue
    /// (a bundle) is malformed.
    InvalidRequest(String),
    /// 404 `not_found`: no such endpoint.
    NotFound,
    /// 404 `not_enabled`: the feature this endpoint serves is turned off.
    NotEnabled(&'static str),
    /// 404 `unknown_trust_domain`: no bundle of this trust domain is
    /// served to this caller (not federated, or not for its namespace).
    UnknownTrustDomain(String),
    /// 503 `bundle_not_held`: a federated trust domain whose bundle has
    /// not been fetched yet.
    BundleNotHeld(String),
    /// 405 `method_not_allowed`: the endpoint exists, not for this method.
    MethodNotAllowed,
    /// 501 `not_supported`: the provider signing now cannot do what the
    /// endpoint serves (revocation with cert-manager); why.
    NotSupported(String),
    /// 503 `not_ready`: what the endpoint serves is being made (the first
    /// CRLs after a start).
    NotReady(&'static str),
    /// 431 `headers_too_large`: the request headers exceed the limit.
    HeadersTooLarge(usize),
    /// 403 `not_permitted`: an authenticated caller this endpoint is not
    /// for (an identity not in `revocation.admins`); why.
    NotPermitted(String),
    /// 503 `state_unavailable`: where meshca keeps the state the request
    /// changes (the API server) cannot be used now; what failed.
    StateUnavailable(String),
    /// 500 `state_unusable`: that state cannot be read or written until
    /// an operator acts (a ledger that does not parse); what failed.
    StateUnusable(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
}

/// The HTTP status of each code the issuer decides.
fn status_of(code: Code) -> StatusCode {
    match code {
        Code::InvalidRequest | Code::InvalidCsr => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::IdentityMismatch | Code::IdentityDenied | Code::ProviderDenied => {
            StatusCode::FORBIDDEN
        }
        Code::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Code::AuthUnavailable | Code::ProviderUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::ProviderRejected => StatusCode::BAD_GATEWAY,
        Code::ProviderMisconfigured | Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    /// The contract's snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Refused(r) => r.code().as_str(),
            Self::InvalidRequest(_) => "invalid_request",
            Self::NotFound => "not_found",
            Self::NotEnabled(_) => "not_enabled",
            Self::UnknownTrustDomain(_) => "unknown_trust_domain",
            Self::BundleNotHeld(_) => "bundle_not_held",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::NotSupported(_) => "not_supported",
            Self::NotReady(_) => "not_ready",
            Self::HeadersTooLarge(_) => "headers_too_large",
            Self::NotPermitted(_) => "not_permitted",
            Self::StateUnavailable(_) => "state_unavailable",
            Self::StateUnusable(_) => "state_unusable",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Refused(r) => status_of(r.code()),
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound | Self::NotEnabled(_) | Self::UnknownTrustDomain(_) => {
                StatusCode::NOT_FOUND
            }
            Self::BundleNotHeld(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotSupported(_) => StatusCode::NOT_IMPLEMENTED,
            Self::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::NotPermitted(_) => StatusCode::FORBIDDEN,
            Self::StateUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::StateUnusable(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            // Details stay in the log; the client only learns that it failed.
            Self::Refused(r) if r.code() == Code::Internal => "internal error".into(),
            Self::Refused(r) => crate::report::error_chain(r.as_ref()),
            Self::InvalidRequest(m) => m.clone(),
            Self::NotFound => "no such endpoint; see docs/api.md".into(),
            Self::NotEnabled(what) => format!("{what} is not enabled on this meshca"),
            Self::UnknownTrustDomain(td) => format!(
                "no bundle of trust domain {td} is served to this caller: it is neither this mesh's nor one federated for its namespace (federation.trust_domains)"
            ),
            Self::BundleNotHeld(td) => format!(
                "the bundle of federated trust domain {td} has not been fetched yet; see meshca_federated_bundle_fetches_total"
            ),
            Self::MethodNotAllowed => "this endpoint does not take this method".into(),
            Self::NotSupported(why)
            | Self::NotPermitted(why)
            | Self::StateUnavailable(why)
            | Self::StateUnusable(why) => why.clone(),
            Self::NotReady(what) => format!("{what} are being made; try again in a moment"),
            Self::HeadersTooLarge(limit) => {
                format!("the request headers exceed {limit} bytes")
            }
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Refused(r) => r.retry_after(),
            Self::BundleNotHeld(_) => Some(Duration::from_secs(5)),
            Self::NotReady(_) => Some(Duration::from_secs(1)),
            Self::StateUnavailable(_) => Some(Duration::from_secs(5)),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Refused(r) = &self {
            if r.code() == Code::Internal {
                tracing::error!(error = %crate::report::error_chain(r.as_ref()), "internal error in the signing API");
            }
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.message(),
            },
        };
        let mut response = (self.status(), axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(after) = self.retry_after() {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs().max(1)),
            );
        }
        if self.status() == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"meshca\""),
            );
        }
        response
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        Self::Refused(Box::new(refusal))
    }
}

impl From<TokenRefusal> for ApiError {
    fn from(refusal: TokenRefusal) -> Self {
        Self::Refused(Box::new(refusal))
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        Self::from(Unasked::from(e))
    }
}

impl From<Unasked> for ApiError {
    /// A refusal of a request that asks for nothing to issue (the caller's
    /// identity, a peer's bundle): rendered as the issuer's, not counted.
    fn from(unasked: Unasked) -> Self {
        Self::Refused(Box::new(unasked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshca_provider::ProviderError;

    fn answer(e: ProviderError) -> (StatusCode, &'static str, bool) {
        let api = ApiError::from(Refusal::Provider(e));
        let (status, code) = (api.status(), api.code());
        let response = api.into_response();
        (
            status,
            code,
            response.headers().contains_key(header::RETRY_AFTER),
        )
    }

    #[test]
    fn only_an_unavailable_backend_is_worth_retrying_and_says_when() {
        let unavailable = ProviderError::Unavailable {
            message: "sealed".into(),
            retry_after: Duration::from_secs(7),
            source: None,
        };
        assert_eq!(
            answer(unavailable),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_unavailable",
                true
            )
        );
        let rejected = ProviderError::Rejected {
            reason: "Failed".into(),
            message: "no".into(),
        };
        for (error, status, code) in [
            (rejected, StatusCode::BAD_GATEWAY, "provider_rejected"),
            (
                ProviderError::InvalidResponse("a CA certificate".into()),
                StatusCode::BAD_GATEWAY,
                "provider_rejected",
            ),
            (
                ProviderError::Misconfigured("403 permission denied".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "provider_misconfigured",
            ),
            (
                ProviderError::Denied("allowed_domains".into()),
                StatusCode::FORBIDDEN,
                "provider_denied",
            ),
            (
                ProviderError::UnsupportedRequest("name the identity".into()),
                StatusCode::BAD_REQUEST,
                "invalid_csr",
            ),
        ] {
            assert!(!error.is_retryable(), "{error}");
            assert_eq!(answer(error), (status, code, false));
        }
    }
}
