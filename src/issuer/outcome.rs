//! What became of a request for a certificate: one typed value that every
//! frontend renders in its own terms (an HTTP status and JSON body, a
//! PodCertificateRequest condition, an ingress requeue, a gRPC status), so
//! that the same failure means the same thing everywhere.

use std::time::Duration;

use meshca_provider::{CsrError, Identity, ProviderError};
use thiserror::Error;

use super::deny::DenyListError;
use super::IssuedCertificate;
use crate::jwt::MintError;

/// The outcome of [`Issuer::issue`](super::Issuer::issue) (a
/// certificate) and of [`Issuer::issue_token`](super::Issuer::issue_token)
/// (a JWT-SVID).
#[derive(Debug)]
pub enum Outcome<T = Box<IssuedCertificate>> {
    /// Signed and checked.
    Issued(T),
    /// Never signed as sent: the caller must change the request, or its
    /// standing must change. Repeating it cannot help.
    Refused(Refused),
    /// Not now: the same request may succeed after the delay.
    Retry(Retry),
    /// Not the caller's doing, and repeating cannot help until an
    /// operator acts.
    Failed(Failure),
}

/// Why a request will not be signed as sent.
#[derive(Debug, Error)]
pub enum Refused {
    /// The CSR is malformed, badly signed, of a key type meshca does not
    /// sign, asks for a CA, or names someone else.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The identity is on the deny-list (`meshca identity deny`).
    #[error("{0} is denied any certificate (meshca identity allow lifts it)")]
    IdentityDenied(Identity),
    /// The backend's policy refuses the identity or a name.
    #[error(transparent)]
    ProviderDenied(ProviderError),
    /// The backend cannot sign this request as sent (it signs only the
    /// names a CSR carries, and this one names others or none).
    #[error(transparent)]
    Unsupported(ProviderError),
    /// A token request without a usable audience.
    #[error(transparent)]
    Audience(MintError),
}

/// When and why to try again.
#[derive(Debug, Error)]
#[error("{why}; retry in {}s", after.as_secs().max(1))]
pub struct Retry {
    /// How long to wait.
    pub after: Duration,
    /// What is busy.
    pub why: Busy,
}

/// What is busy.
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
    /// The backend is unavailable.
    #[error(transparent)]
    Provider(ProviderError),
}

/// Why nothing was issued, through nobody's fault on the caller's side.
#[derive(Debug, Error)]
pub enum Failure {
    /// The backend refused or answered unacceptably, or meshca's
    /// configuration of it is wrong.
    #[error(transparent)]
    Provider(ProviderError),
    /// The deny-list cannot be read: nobody is issued a certificate until
    /// it can, rather than risk a denied identity.
    #[error("failed to read the deny-list")]
    DenyList(#[source] DenyListError),
    /// A key for meshca's own certificate could not be made.
    #[error("failed to make a key and request for meshca's own certificate")]
    OwnKey(#[source] rcgen::Error),
    /// No JWT signing key could sign.
    #[error("failed to sign a JWT-SVID")]
    TokenKey(#[source] MintError),
}

impl<T> std::fmt::Display for Outcome<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The cause is the source: `error_chain` prints it after this.
        match self {
            Self::Issued(_) => f.write_str("issued"),
            Self::Refused(_) => f.write_str("refused"),
            Self::Retry(_) => f.write_str("not signed now"),
            Self::Failed(_) => f.write_str("failed"),
        }
    }
}

impl<T: std::fmt::Debug> std::error::Error for Outcome<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Issued(_) => None,
            Self::Refused(e) => Some(e),
            Self::Retry(e) => Some(e),
            Self::Failed(e) => Some(e),
        }
    }
}

impl<T> Outcome<T> {
    /// The outcome of a backend's error: retryable ones are worth a retry,
    /// refusals of this request are the caller's to fix, the rest the
    /// operator's.
    pub fn of_provider(e: ProviderError) -> Self {
        if let Some(after) = e.retry_after() {
            return Self::Retry(Retry {
                after,
                why: Busy::Provider(e),
            });
        }
        match e {
            ProviderError::Denied(_) => Self::Refused(Refused::ProviderDenied(e)),
            ProviderError::UnsupportedRequest(_) => Self::Refused(Refused::Unsupported(e)),
            other => Self::Failed(Failure::Provider(other)),
        }
    }

    /// The signing API's snake_case error code for this outcome, and the
    /// `result` label of `meshca_certificates_issued_total` for every
    /// frontend (`success` when issued).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Issued(_) => "success",
            Self::Refused(Refused::Csr(e)) if e.is_identity_mismatch() => "identity_mismatch",
            Self::Refused(Refused::Csr(_) | Refused::Unsupported(_)) => "invalid_csr",
            Self::Refused(Refused::Audience(_)) => "invalid_request",
            Self::Refused(Refused::IdentityDenied(_)) => "identity_denied",
            Self::Refused(Refused::ProviderDenied(_)) => "provider_denied",
            Self::Retry(Retry {
                why: Busy::Provider(_),
                ..
            }) => "provider_unavailable",
            Self::Retry(_) => "rate_limited",
            Self::Failed(Failure::Provider(ProviderError::Misconfigured(_))) => {
                "provider_misconfigured"
            }
            Self::Failed(Failure::Provider(ProviderError::Internal(_)))
            | Self::Failed(Failure::DenyList(_) | Failure::OwnKey(_) | Failure::TokenKey(_)) => {
                "internal"
            }
            Self::Failed(Failure::Provider(_)) => "provider_rejected",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backends_error_becomes_the_outcome_whose_move_it_is() {
        let cases = [
            (
                ProviderError::Unavailable {
                    message: "sealed".into(),
                    retry_after: Duration::from_secs(7),
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
            let outcome: Outcome = Outcome::of_provider(error);
            assert_eq!(outcome.code(), code, "{outcome:?}");
            assert_eq!(
                matches!(outcome, Outcome::Retry(_)),
                code == "provider_unavailable",
                "only an unavailable backend is worth a retry"
            );
        }
    }
}
