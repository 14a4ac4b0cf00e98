use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use meshca_provider::ProviderError;
use serde::Serialize;

use crate::auth::AuthError;
use crate::issuer::IssueError;

/// Every way the signing API answers with an error. This enum and its
/// [`IntoResponse`] impl are the only place errors become HTTP statuses and
/// the `{"error": {"code", "message"}}` body of DESIGN section 4.
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
    /// 403 `provider_denied`: the backend's policy refused the identity.
    ProviderDenied(String),
    /// 413 `too_large`.
    TooLarge(usize),
    /// 415 `unsupported_media_type`.
    UnsupportedMediaType,
    /// 503 `auth_unavailable`: the credential cannot be checked now.
    AuthUnavailable(String),
    /// 429 `rate_limited`.
    RateLimited(Duration),
    /// 503 `provider_unavailable`: retry later.
    ProviderUnavailable {
        /// Why.
        message: String,
        /// When to retry.
        retry_after: Duration,
    },
    /// 503 `provider_rejected`: the backend refused this request.
    ProviderRejected(String),
    /// 500 `internal`.
    Internal(String),
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
            Self::TooLarge(_) => "too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RateLimited(_) => "rate_limited",
            Self::AuthUnavailable(_) => "auth_unavailable",
            Self::ProviderUnavailable { .. } => "provider_unavailable",
            Self::ProviderRejected(_) => "provider_rejected",
            Self::Internal(_) => "internal",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::InvalidCsr(_) | Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::IdentityMismatch(_) | Self::ProviderDenied(_) => StatusCode::FORBIDDEN,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::ProviderUnavailable { .. }
            | Self::ProviderRejected(_)
            | Self::AuthUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            Self::InvalidCsr(m)
            | Self::InvalidRequest(m)
            | Self::IdentityMismatch(m)
            | Self::ProviderDenied(m)
            | Self::ProviderRejected(m)
            | Self::AuthUnavailable(m) => m.clone(),
            Self::ProviderUnavailable { message, .. } => message.clone(),
            Self::Unauthenticated(e) => e.to_string(),
            Self::TooLarge(limit) => format!("the request body exceeds {limit} bytes"),
            Self::UnsupportedMediaType => {
                "send the request as Content-Type: application/json".into()
            }
            Self::RateLimited(_) => "too many signing requests in flight; retry shortly".into(),
            // Details stay in the log; the client only learns that it failed.
            Self::Internal(_) => "internal error".into(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited(d) => Some(*d),
            Self::AuthUnavailable(_) => Some(Duration::from_secs(5)),
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

impl From<IssueError> for ApiError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::Csr(csr) if csr.is_identity_mismatch() => {
                Self::IdentityMismatch(csr.to_string())
            }
            IssueError::Csr(csr) => Self::InvalidCsr(csr.to_string()),
            IssueError::Provider(p) => match p {
                ProviderError::Denied(_) => Self::ProviderDenied(p.to_string()),
                ProviderError::Rejected { .. } => Self::ProviderRejected(p.to_string()),
                ProviderError::Internal(m) => Self::Internal(m),
                ProviderError::UnsupportedRequest(m) => Self::InvalidCsr(m),
                other => Self::ProviderUnavailable {
                    retry_after: other.retry_after().unwrap_or(Duration::from_secs(30)),
                    message: other.to_string(),
                },
            },
        }
    }
}
