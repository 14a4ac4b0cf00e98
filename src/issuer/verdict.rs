//! What the issuer decided when it did not issue, for a certificate
//! ([`Refusal`]) or a token ([`TokenRefusal`]), and the one classification
//! every frontend renders: each refusal has a [`Code`] (the signing API's
//! error code, and the `result` label of the issuance metrics whichever
//! way the request came) and the code a [`Class`]: whose move it is, and
//! when to try again.
//!
//! Refusals decided before the issuer is asked (the caller's credential,
//! the form of its request) are [`Unasked`], handed to the issuer by the
//! frontend (`Issuer::refuse`), so that they are counted and classified
//! like the rest.

use std::time::Duration;

use meshca_provider::{CsrError, Identity, ProviderError};
use thiserror::Error;

use super::deny::DenyListError;
use crate::auth::AuthError;
use crate::jose::{AudienceError, MintError};

/// The vocabulary of refusals, shared by every frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    /// The request is malformed (not JSON, an unknown field, a bad value).
    InvalidRequest,
    /// The CSR is malformed, badly signed, of a key type meshca does not
    /// sign, asks for a CA, or cannot be signed as sent by the backend.
    InvalidCsr,
    /// No credential, or one that does not authenticate anyone.
    Unauthenticated,
    /// The credential cannot be checked now.
    AuthUnavailable,
    /// The request names someone the caller is not.
    IdentityMismatch,
    /// The identity is on the deny-list.
    IdentityDenied,
    /// The backend's policy refuses the identity.
    ProviderDenied,
    /// The request is larger than the contract allows.
    TooLarge,
    /// The request is not of the media type the contract names.
    UnsupportedMediaType,
    /// Over a rate or the requests in flight.
    RateLimited,
    /// The backend cannot sign now.
    ProviderUnavailable,
    /// The backend refused this request or answered unacceptably.
    ProviderRejected,
    /// meshca's configuration of the backend is wrong.
    ProviderMisconfigured,
    /// A local failure.
    Internal,
}

/// Whose move it is after a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The caller must change the request.
    Invalid,
    /// The caller must prove who it is.
    Unauthenticated,
    /// The caller's standing must change (deny-list, the backend's policy,
    /// an identity not its own).
    Forbidden,
    /// The same request may pass after a wait: the caller is over a limit.
    Busy,
    /// The same request may pass after a wait: something meshca depends on
    /// cannot answer now.
    Unavailable,
    /// The backend refused or answered unacceptably; repeating cannot help.
    Rejected,
    /// An operator must act.
    Operator,
}

impl Code {
    /// The snake_case code: the signing API's `error.code` and the `result`
    /// label of `meshca_certificates_issued_total` and
    /// `meshca_jwt_svids_issued_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidCsr => "invalid_csr",
            Self::Unauthenticated => "unauthenticated",
            Self::AuthUnavailable => "auth_unavailable",
            Self::IdentityMismatch => "identity_mismatch",
            Self::IdentityDenied => "identity_denied",
            Self::ProviderDenied => "provider_denied",
            Self::TooLarge => "too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RateLimited => "rate_limited",
            Self::ProviderUnavailable => "provider_unavailable",
            Self::ProviderRejected => "provider_rejected",
            Self::ProviderMisconfigured => "provider_misconfigured",
            Self::Internal => "internal",
        }
    }

    /// Whose move it is.
    pub fn class(self) -> Class {
        match self {
            Self::InvalidRequest
            | Self::InvalidCsr
            | Self::TooLarge
            | Self::UnsupportedMediaType => Class::Invalid,
            Self::Unauthenticated => Class::Unauthenticated,
            Self::IdentityMismatch | Self::IdentityDenied | Self::ProviderDenied => {
                Class::Forbidden
            }
            Self::RateLimited => Class::Busy,
            Self::AuthUnavailable | Self::ProviderUnavailable => Class::Unavailable,
            Self::ProviderRejected => Class::Rejected,
            Self::ProviderMisconfigured | Self::Internal => Class::Operator,
        }
    }
}

/// A refusal as every frontend reads it: its code, and when (if ever) the
/// same request is worth sending again. `retry_after` is `Some` exactly
/// for the classes [`Class::Busy`] and [`Class::Unavailable`].
pub trait Verdict: std::error::Error + Send + Sync + 'static {
    /// The code.
    fn code(&self) -> Code;

    /// When to try again.
    fn retry_after(&self) -> Option<Duration>;

    /// Whose move it is.
    fn class(&self) -> Class {
        self.code().class()
    }
}

/// How long an unavailable credential check or a full admission queue
/// asks a caller to wait.
const SHORT_WAIT: Duration = Duration::from_secs(1);

/// Refused by the frontend before the issuer decided anything: the
/// caller's credential, or the form of its request.
#[derive(Debug, Error)]
pub enum Unasked {
    /// The credential does not authenticate anyone, or cannot be checked.
    #[error(transparent)]
    Credential(#[from] AuthError),
    /// The caller is not authenticated here for another reason (it names
    /// another cluster).
    #[error(transparent)]
    Unauthenticated(Box<dyn std::error::Error + Send + Sync>),
    /// The caller asks for an identity that is not its own and may not
    /// have it.
    #[error(transparent)]
    NotPermitted(Box<dyn std::error::Error + Send + Sync>),
    /// What the decision needs cannot be read now (the API server).
    #[error(transparent)]
    Unverifiable(Box<dyn std::error::Error + Send + Sync>),
    /// The request is malformed.
    #[error("{0}")]
    Malformed(String),
    /// The CSR is not one PEM request.
    #[error("{0}")]
    MalformedCsr(String),
    /// The request is larger than the contract allows.
    #[error("the request body exceeds {0} bytes")]
    TooLarge(usize),
    /// Not of the media type the contract names.
    #[error("send the request as Content-Type: application/json")]
    MediaType,
}

impl Verdict for Unasked {
    fn code(&self) -> Code {
        match self {
            Self::Credential(AuthError::Unavailable(_)) | Self::Unverifiable(_) => {
                Code::AuthUnavailable
            }
            Self::Credential(AuthError::Store(_)) => Code::Internal,
            Self::Credential(_) | Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::NotPermitted(_) => Code::IdentityMismatch,
            Self::Malformed(_) => Code::InvalidRequest,
            Self::MalformedCsr(_) => Code::InvalidCsr,
            Self::TooLarge(_) => Code::TooLarge,
            Self::MediaType => Code::UnsupportedMediaType,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        (self.code() == Code::AuthUnavailable).then_some(SHORT_WAIT)
    }
}

/// What is busy, when a request is not admitted now.
#[derive(Debug, Error)]
pub enum Busy {
    /// The identity is over its signing rate.
    #[error("this identity is over its signing rate (api.per_identity_per_second)")]
    IdentityRate,
    /// Too many signing requests are in flight, for everyone.
    #[error("too many signing requests in flight (api.max_in_flight)")]
    InFlight,
    /// Too many of the namespace's signing requests are in flight.
    #[error("too many signing requests in flight for namespace {0}")]
    NamespaceInFlight(String),
}

/// Why a certificate was not issued.
#[derive(Debug, Error)]
pub enum Refusal {
    /// Refused by its frontend before the issuer was asked.
    #[error(transparent)]
    Unasked(Unasked),
    /// The CSR is malformed, badly signed, of a key type meshca does not
    /// sign, asks for a CA, or names someone else.
    #[error(transparent)]
    Csr(CsrError),
    /// The identity is on the deny-list (`meshca identity deny`).
    #[error("{0} is denied any certificate (meshca identity allow lifts it)")]
    IdentityDenied(Identity),
    /// Not admitted now.
    #[error("{why}; retry in {}s", after.as_secs().max(1))]
    Busy {
        /// What is busy.
        why: Busy,
        /// When to try again.
        after: Duration,
    },
    /// The backend refused, failed or answered unacceptably; which it was
    /// decides the code.
    #[error(transparent)]
    Provider(ProviderError),
    /// The deny-list cannot be read: nobody is issued a certificate until
    /// it can, rather than risk a denied identity.
    #[error("failed to read the deny-list")]
    DenyList(#[source] DenyListError),
    /// A key for meshca's own certificate could not be made.
    #[error("failed to make a key and request for meshca's own certificate")]
    OwnKey(#[source] rcgen::Error),
}

impl Verdict for Refusal {
    fn code(&self) -> Code {
        match self {
            Self::Unasked(u) => u.code(),
            Self::Csr(e) if e.is_identity_mismatch() => Code::IdentityMismatch,
            Self::Csr(_) => Code::InvalidCsr,
            Self::IdentityDenied(_) => Code::IdentityDenied,
            Self::Busy { .. } => Code::RateLimited,
            Self::Provider(e) => provider_code(e),
            Self::DenyList(_) | Self::OwnKey(_) => Code::Internal,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unasked(u) => u.retry_after(),
            Self::Busy { after, .. } => Some(*after),
            Self::Provider(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// What a backend's error means for the caller: only an unavailable
/// backend is worth a retry; a denial or a request it cannot sign is the
/// caller's to fix, the rest the operator's.
fn provider_code(e: &ProviderError) -> Code {
    match e {
        _ if e.is_retryable() => Code::ProviderUnavailable,
        ProviderError::Denied(_) => Code::ProviderDenied,
        ProviderError::UnsupportedRequest(_) => Code::InvalidCsr,
        ProviderError::Misconfigured(_) => Code::ProviderMisconfigured,
        ProviderError::Internal(_) => Code::Internal,
        _ => Code::ProviderRejected,
    }
}

/// Why a JWT-SVID was not minted.
#[derive(Debug, Error)]
pub enum TokenRefusal {
    /// Refused by its frontend before the issuer was asked.
    #[error(transparent)]
    Unasked(Unasked),
    /// The identity is on the deny-list (`meshca identity deny`).
    #[error("{0} is denied any token (meshca identity allow lifts it)")]
    IdentityDenied(Identity),
    /// Not admitted now.
    #[error("{why}; retry in {}s", after.as_secs().max(1))]
    Busy {
        /// What is busy.
        why: Busy,
        /// When to try again.
        after: Duration,
    },
    /// No usable audience.
    #[error(transparent)]
    Audience(AudienceError),
    /// No key could sign.
    #[error("failed to sign a JWT-SVID")]
    Mint(#[source] MintError),
    /// The deny-list cannot be read.
    #[error("failed to read the deny-list")]
    DenyList(#[source] DenyListError),
}

impl Verdict for TokenRefusal {
    fn code(&self) -> Code {
        match self {
            Self::Unasked(u) => u.code(),
            Self::IdentityDenied(_) => Code::IdentityDenied,
            Self::Busy { .. } => Code::RateLimited,
            Self::Audience(_) => Code::InvalidRequest,
            // A key in custody: its custodian is the signing backend.
            Self::Mint(e) if e.retry_after().is_some() => Code::ProviderUnavailable,
            Self::Mint(MintError::Sign(e)) if e.is_custody_refusal() => Code::ProviderMisconfigured,
            Self::Mint(_) | Self::DenyList(_) => Code::Internal,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unasked(u) => u.retry_after(),
            Self::Busy { after, .. } => Some(*after),
            Self::Mint(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// A refusal of either kind, before its kind is known: the deny-list and
/// admission apply to both.
pub(super) enum Standing {
    Denied(Identity),
    Busy(Busy, Duration),
    Unreadable(DenyListError),
}

impl From<Standing> for Refusal {
    fn from(s: Standing) -> Self {
        match s {
            Standing::Denied(identity) => Self::IdentityDenied(identity),
            Standing::Busy(why, after) => Self::Busy { why, after },
            Standing::Unreadable(e) => Self::DenyList(e),
        }
    }
}

impl From<Standing> for TokenRefusal {
    fn from(s: Standing) -> Self {
        match s {
            Standing::Denied(identity) => Self::IdentityDenied(identity),
            Standing::Busy(why, after) => Self::Busy { why, after },
            Standing::Unreadable(e) => Self::DenyList(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backends_error_becomes_the_code_whose_move_it_is() {
        let cases = [
            (
                ProviderError::Unavailable {
                    message: "sealed".into(),
                    retry_after: Duration::from_secs(7),
                    source: None,
                },
                "provider_unavailable",
            ),
            (
                ProviderError::Denied("allowed_domains".into()),
                "provider_denied",
            ),
            (
                ProviderError::UnsupportedRequest("name it".into()),
                "invalid_csr",
            ),
            (
                ProviderError::Rejected {
                    reason: "Failed".into(),
                    message: "no".into(),
                },
                "provider_rejected",
            ),
            (
                ProviderError::InvalidResponse("a CA".into()),
                "provider_rejected",
            ),
            (
                ProviderError::Misconfigured("403".into()),
                "provider_misconfigured",
            ),
            (ProviderError::Internal("rng".into()), "internal"),
        ];
        for (error, code) in cases {
            let refusal = Refusal::Provider(error);
            assert_eq!(refusal.code().as_str(), code, "{refusal:?}");
            assert_eq!(
                refusal.retry_after().is_some(),
                code == "provider_unavailable",
                "only an unavailable backend is worth a retry"
            );
        }
    }

    #[test]
    fn only_busy_and_unavailable_refusals_say_when_to_retry() {
        let refusals: Vec<Box<dyn Verdict>> = vec![
            Box::new(Refusal::Busy {
                why: Busy::InFlight,
                after: Duration::from_secs(3),
            }),
            Box::new(Refusal::Unasked(Unasked::Credential(
                AuthError::Unavailable("down".into()),
            ))),
            Box::new(TokenRefusal::Busy {
                why: Busy::IdentityRate,
                after: Duration::from_secs(2),
            }),
            Box::new(Refusal::Unasked(Unasked::Credential(AuthError::Missing))),
            Box::new(Refusal::Csr(CsrError::BadSignature)),
            Box::new(TokenRefusal::Audience(AudienceError::None)),
            Box::new(Refusal::Unasked(Unasked::TooLarge(10))),
        ];
        for r in refusals {
            let waits = matches!(r.class(), Class::Busy | Class::Unavailable);
            assert_eq!(r.retry_after().is_some(), waits, "{r}");
        }
    }
}
