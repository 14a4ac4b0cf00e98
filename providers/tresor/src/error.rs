use std::path::PathBuf;

use thiserror::Error;

/// Why Tresor could not set up or use its CA.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TresorError {
    /// Reading or writing CA files failed.
    #[error("failed to {action} {path}: {source}")]
    Io {
        /// What was being done ("read", "write", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The private key is not a PEM key meshca can use.
    #[error("failed to load the CA private key: {0}")]
    Key(String),
    /// The certificate is not a usable CA certificate.
    #[error("failed to load the CA certificate: {0}")]
    Certificate(String),
    /// The key is not the certificate's.
    #[error("the CA private key does not match the CA certificate's public key")]
    KeyMismatch,
    /// The key is held in custody: it cannot be written anywhere.
    #[error("the CA key {0} is held in custody and cannot be exported")]
    InCustody(String),
    /// The custodian did not sign.
    #[error("failed to sign with the CA key in custody")]
    Custody(#[from] meshca_provider::crypto::custody::CustodyError),
    /// rcgen refused to build or sign a certificate.
    #[error("failed to build a certificate: {0}")]
    Sign(#[from] rcgen::Error),
}

impl TresorError {
    /// As the issuer sees it: an unavailable custodian is worth retrying,
    /// anything else is a local failure.
    pub fn into_provider(self) -> meshca_provider::ProviderError {
        match &self {
            Self::Custody(custody) => match custody.retry_after() {
                Some(retry_after) => meshca_provider::ProviderError::Unavailable {
                    message: meshca_provider::error_chain(&self),
                    retry_after,
                    source: Some(Box::new(self)),
                },
                None => meshca_provider::ProviderError::Misconfigured(
                    meshca_provider::error_chain(&self),
                ),
            },
            _ => meshca_provider::ProviderError::Internal(self.to_string()),
        }
    }
}
