use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use meshca_provider::ProviderError;
use serde::Serialize;

use crate::auth::AuthError;
use crate::issuer::{Busy, Failure, Outcome, Refused, Retry};

/// Every way the signing API answers with an error. This enum and its
/// [`IntoResponse`] impl are the only place errors become HTTP statuses and
/// the `{"error": {"code", "message"}}` body (`docs/api.md`).
#[derive(Debug)]
pub enum ApiError {
    /// 400 `invalid_csr`: the CSR is malformed, badly signed or asks for
    /// something refused.
    InvalidCsr(String),
    /// 400 `invalid_request`: the JSON is malformed or has bad fields.
    InvalidRequest(String),
    /// 401 `unauthenticated`.
    Unauthenticated(AuthError),
    /// 403 `identity_mismatch`: the CSR names someone the caller is not.
    IdentityMismatch(String),
    /// 403 `identity_denied`: the identity is on meshca's deny-list.
    IdentityDenied(String),
    /// 403 `provider_denied`: the backend's policy refused the identity.
    ProviderDenied(String),
    /// 413 `too_large`.
    TooLarge(usize),
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
    /// 431 `headers_too_large`: the request headers exceed the limit.
    HeadersTooLarge(usize),
    /// 415 `unsupported_media_type`.
    UnsupportedMediaType,
    /// 503 `auth_unavailable`: the credential cannot be checked now.
    AuthUnavailable(String),
    /// 429 `rate_limited`: which limit, and when to retry.
    RateLimited(Limit, Duration),
    /// 503 `provider_unavailable`: retry later.
    ProviderUnavailable {
        /// Why.
        message: String,
        /// When to retry.
        retry_after: Duration,
    },
    /// 502 `provider_rejected`: the backend refused this request, or
    /// returned a certificate meshca will not hand out. Not retryable.
    ProviderRejected(String),
    /// 500 `provider_misconfigured`: meshca's settings for the backend are
    /// wrong (credentials refused, missing mount). Not retryable.
    ProviderMisconfigured(String),
    /// 500 `internal`.
    Internal(String),
}

/// The limit a 429 hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// One identity's token bucket.
    Identity,
    /// Signing requests processed at once, for everyone or for the
    /// caller's namespace.
    InFlight,
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

impl ApiError {
    /// The contract's snake_case code; also the `result` label of
    /// `meshca_certificates_issued_total`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidCsr(_) => "invalid_csr",
            Self::InvalidRequest(_) => "invalid_request",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::IdentityMismatch(_) => "identity_mismatch",
            Self::ProviderDenied(_) => "provider_denied",
            Self::IdentityDenied(_) => "identity_denied",
            Self::TooLarge(_) => "too_large",
            Self::NotFound => "not_found",
            Self::NotEnabled(_) => "not_enabled",
            Self::UnknownTrustDomain(_) => "unknown_trust_domain",
            Self::BundleNotHeld(_) => "bundle_not_held",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::HeadersTooLarge(_) => "headers_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RateLimited(..) => "rate_limited",
            Self::AuthUnavailable(_) => "auth_unavailable",
            Self::ProviderUnavailable { .. } => "provider_unavailable",
            Self::ProviderRejected(_) => "provider_rejected",
            Self::ProviderMisconfigured(_) => "provider_misconfigured",
            Self::Internal(_) => "internal",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::InvalidCsr(_) | Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::IdentityMismatch(_) | Self::ProviderDenied(_) | Self::IdentityDenied(_) => {
                StatusCode::FORBIDDEN
            }
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound | Self::NotEnabled(_) | Self::UnknownTrustDomain(_) => {
                StatusCode::NOT_FOUND
            }
            Self::BundleNotHeld(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited(..) => StatusCode::TOO_MANY_REQUESTS,
            Self::ProviderUnavailable { .. } | Self::AuthUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::ProviderRejected(_) => StatusCode::BAD_GATEWAY,
            Self::ProviderMisconfigured(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            Self::InvalidCsr(m)
            | Self::InvalidRequest(m)
            | Self::IdentityMismatch(m)
            | Self::ProviderDenied(m)
            | Self::IdentityDenied(m)
            | Self::ProviderRejected(m)
            | Self::ProviderMisconfigured(m)
            | Self::AuthUnavailable(m) => m.clone(),
            Self::ProviderUnavailable { message, .. } => message.clone(),
            Self::Unauthenticated(e) => e.to_string(),
            Self::TooLarge(limit) => format!("the request body exceeds {limit} bytes"),
            Self::NotFound => "no such endpoint; see docs/api.md".into(),
            Self::NotEnabled(what) => format!("{what} is not enabled on this meshca"),
            Self::UnknownTrustDomain(td) => format!(
                "no bundle of trust domain {td} is served to this caller: it is neither this mesh's nor one federated for its namespace (federation.trust_domains)"
            ),
            Self::BundleNotHeld(td) => format!(
                "the bundle of federated trust domain {td} has not been fetched yet; see meshca_federated_bundle_fetches_total"
            ),
            Self::MethodNotAllowed => "this endpoint does not take this method".into(),
            Self::HeadersTooLarge(limit) => {
                format!("the request headers exceed {limit} bytes")
            }
            Self::UnsupportedMediaType => {
                "send the request as Content-Type: application/json".into()
            }
            Self::RateLimited(Limit::Identity, after) => format!(
                "this identity is over its signing rate (api.per_identity_per_second); retry in {}s",
                after.as_secs().max(1)
            ),
            Self::RateLimited(Limit::InFlight, _) => {
                "too many signing requests in flight (api.max_in_flight); retry shortly".into()
            }
            // Details stay in the log; the client only learns that it failed.
            Self::Internal(_) => "internal error".into(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited(_, d) => Some(*d),
            Self::AuthUnavailable(_) | Self::BundleNotHeld(_) => Some(Duration::from_secs(5)),
            Self::ProviderUnavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(detail) = &self {
            tracing::error!(error = %detail, "internal error in the signing API");
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
        if matches!(self, Self::Unauthenticated(_)) {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"meshca\""),
            );
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Store(m) => Self::Internal(m),
            AuthError::Unavailable(m) => Self::AuthUnavailable(m),
            other => Self::Unauthenticated(other),
        }
    }
}

/// The issuer's outcome, rendered: whose move it is decides the status —
/// the client's (400, 403), the client's after a wait (429, 503 with
/// `Retry-After`), the backend's answer (502) or the operator's (500).
impl<T> From<Outcome<T>> for ApiError {
    fn from(outcome: Outcome<T>) -> Self {
        match outcome {
            Outcome::Issued(_) => Self::Internal("an issued answer rendered as an error".into()),
            Outcome::Refused(refused) => Self::from(refused),
            Outcome::Retry(retry) => Self::from(retry),
            Outcome::Failed(failure) => Self::from(failure),
        }
    }
}

impl From<Refused> for ApiError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Csr(csr) if csr.is_identity_mismatch() => {
                Self::IdentityMismatch(csr.to_string())
            }
            Refused::Csr(csr) => Self::InvalidCsr(csr.to_string()),
            Refused::Unsupported(e) => Self::InvalidCsr(e.to_string()),
            Refused::IdentityDenied(_) => Self::IdentityDenied(refused.to_string()),
            Refused::ProviderDenied(e) => Self::ProviderDenied(e.to_string()),
            Refused::Audience(e) => Self::InvalidRequest(e.to_string()),
        }
    }
}

impl From<Retry> for ApiError {
    fn from(retry: Retry) -> Self {
        match retry.why {
            Busy::IdentityRate => Self::RateLimited(Limit::Identity, retry.after),
            Busy::InFlight | Busy::NamespaceInFlight(_) => {
                Self::RateLimited(Limit::InFlight, retry.after)
            }
            Busy::Provider(e) => Self::ProviderUnavailable {
                message: e.to_string(),
                retry_after: retry.after,
            },
        }
    }
}

impl From<Failure> for ApiError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Provider(e @ ProviderError::Misconfigured(_)) => {
                Self::ProviderMisconfigured(e.to_string())
            }
            Failure::Provider(ProviderError::Internal(m)) => Self::Internal(m),
            Failure::Provider(e) => Self::ProviderRejected(e.to_string()),
            other => Self::Internal(crate::error_chain(&other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(e: ProviderError) -> (StatusCode, &'static str, bool) {
        let api = ApiError::from(Outcome::<()>::of_provider(e));
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
