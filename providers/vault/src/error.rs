//! What went wrong talking to Vault, classified by what the caller should
//! do about it; mapped once onto [`ProviderError`].

use std::path::PathBuf;
use std::time::Duration;

use meshca_provider::ProviderError;
use reqwest::StatusCode;
use serde_json::Value;
use thiserror::Error;

/// A failure of a call to Vault.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum VaultError {
    /// Vault could not be reached or did not answer in time.
    #[error("Vault is unavailable: no answer from {url}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// The transport's failure.
        #[source]
        source: reqwest::Error,
    },
    /// Vault answered that it cannot serve now: sealed, in standby,
    /// overloaded, a 5xx.
    #[error("Vault is unavailable: {0}")]
    Unavailable(String),
    /// Requests are held back after recent failures.
    #[error("Vault was unavailable moments ago; retrying in {0:?}")]
    BackingOff(Duration),
    /// Vault refused meshca's credentials or policy does not allow the call.
    #[error("Vault refused the request (403), check meshca's Vault policy and auth: {0}")]
    Forbidden(String),
    /// The PKI role does not allow this certificate (names, TTL).
    #[error("the Vault role does not allow this certificate: {0}")]
    RoleDenied(String),
    /// Vault refused the request for another reason.
    #[error("Vault rejected the request: {0}")]
    Rejected(String),
    /// The mount, role or auth method does not exist.
    #[error("not found in Vault (check the mount, role and auth paths): {0}")]
    NotFound(String),
    /// A local setting is unusable.
    #[error("invalid Vault settings: {0}")]
    Config(String),
    /// A file of meshca's Vault settings (a token, a secret id, a
    /// ServiceAccount token) cannot be read.
    #[error("invalid Vault settings: cannot read {}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Vault answered something meshca cannot use.
    #[error("unexpected answer from Vault: {0}")]
    Protocol(String),
    /// Vault's answer was not the JSON its API documents.
    #[error("unexpected answer from Vault to {what}")]
    NotJson {
        /// The call answered.
        what: &'static str,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
}

impl VaultError {
    /// The provider-level meaning of this error.
    pub fn into_provider(self) -> ProviderError {
        match self {
            Self::Unreachable { url, source } => ProviderError::Unavailable {
                message: format!("Vault is unavailable: no answer from {url}"),
                retry_after: Duration::from_secs(5),
                source: Some(Box::new(source)),
            },
            Self::Unavailable(_) => ProviderError::Unavailable {
                message: self.to_string(),
                retry_after: Duration::from_secs(5),
                source: None,
            },
            Self::BackingOff(wait) => ProviderError::Unavailable {
                message: self.to_string(),
                retry_after: wait.max(Duration::from_secs(1)),
                source: None,
            },
            Self::RoleDenied(_) => ProviderError::Denied(self.to_string()),
            Self::Rejected(m) => ProviderError::Rejected {
                reason: "VaultRejected".into(),
                message: m,
            },
            Self::Forbidden(_) | Self::NotFound(_) | Self::Config(_) | Self::ReadFile { .. } => {
                ProviderError::Misconfigured(meshca_provider::error_chain(&self))
            }
            Self::Protocol(_) | Self::NotJson { .. } => {
                ProviderError::InvalidResponse(meshca_provider::error_chain(&self))
            }
        }
    }

    /// When the same call may succeed without anyone acting: Vault did not
    /// answer, cannot serve now, or is being given a rest.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unreachable { .. } | Self::Unavailable(_) => Some(Duration::from_secs(5)),
            Self::BackingOff(wait) => Some((*wait).max(Duration::from_secs(1))),
            _ => None,
        }
    }

    /// Whether the breaker counts it: Vault did not answer, or answered
    /// that it cannot serve.
    pub(crate) fn is_outage(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Unavailable(_))
    }

    /// `source` of an answer to `what` that does not parse.
    pub(crate) fn not_json(what: &'static str) -> impl FnOnce(serde_json::Error) -> Self {
        move |source| Self::NotJson { what, source }
    }
}

/// Vault's `{"errors": [...]}` as one line.
fn errors_text(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("errors").and_then(Value::as_array).map(|e| {
                e.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect())
}

/// Classify a non-success answer.
pub(crate) fn classify(status: StatusCode, body: &[u8]) -> VaultError {
    let text = errors_text(body);
    match status.as_u16() {
        403 => VaultError::Forbidden(text),
        404 => VaultError::NotFound(text),
        400 if text.contains("not allowed")
            || text.contains("not in allowed")
            || text.contains("does not match allowed") =>
        {
            VaultError::RoleDenied(text)
        }
        400 => VaultError::Rejected(text),
        429 | 472 | 473 | 500..=599 => VaultError::Unavailable(format!("HTTP {status}: {text}")),
        _ => VaultError::Protocol(format!("HTTP {status}: {text}")),
    }
}
