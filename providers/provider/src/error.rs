use std::time::Duration;

use thiserror::Error;

/// Why a provider could not produce a certificate or its trust anchors.
///
/// Retryability is explicit and stated once, in
/// [`ProviderError::is_retryable`]: the API edge turns retryable errors
/// into 503 with `Retry-After`, the rest into statuses without it, because
/// repeating the request cannot help until someone acts.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The backend cannot be reached or is not ready (sealed, restarting,
    /// timed out). Trying again later may succeed.
    #[error("the signing backend is unavailable: {message}")]
    Unavailable {
        /// What failed, for logs and the API message.
        message: String,
        /// A suggested delay before retrying.
        retry_after: Duration,
        /// The failure underneath (a connection refused, a timeout).
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The backend answered and refused this request (e.g. cert-manager's
    /// `Failed` condition). Repeating the same request will not help.
    #[error("the signing backend rejected the request ({reason}): {message}")]
    Rejected {
        /// A short machine-readable reason from the backend.
        reason: String,
        /// The backend's message.
        message: String,
    },
    /// The backend's policy forbids this identity or name (a Vault role's
    /// `allowed_domains`, a cert-manager approver's denial).
    #[error("the signing backend's policy denied the request: {0}")]
    Denied(String),
    /// The backend returned something that fails meshca's checks (wrong
    /// names, a CA certificate, a chain that does not reach the anchors).
    /// Such a certificate is never handed out, and the backend will return
    /// the same again: its configuration has to change.
    #[error("the signing backend returned an unacceptable certificate: {0}")]
    InvalidResponse(String),
    /// meshca's configuration of the backend is wrong (credentials refused,
    /// missing mount). An operator has to act.
    #[error("the signing backend is misconfigured: {0}")]
    Misconfigured(String),
    /// This backend cannot sign this CSR as sent (e.g. cert-manager needs
    /// the CSR to name the identity). The client must send another.
    #[error("{0}")]
    UnsupportedRequest(String),
    /// A local failure while signing (key unusable, encoding failed).
    #[error("failed to sign: {0}")]
    Internal(String),
}

/// An error and its causes, `outer: inner: innermost`, for a log line or
/// a message that must say everything at once.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

impl ProviderError {
    /// Whether the same request may succeed later without anyone acting:
    /// only a backend that is unavailable now. A refusal, an unacceptable
    /// certificate, a misconfiguration or a local failure repeat until
    /// someone changes something.
    pub fn is_retryable(&self) -> bool {
        self.retry_after().is_some()
    }

    /// The delay to suggest to a client; `Some` exactly for retryable
    /// errors.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}
