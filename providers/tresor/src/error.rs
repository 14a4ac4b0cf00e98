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
    /// rcgen refused to build or sign a certificate.
    #[error("failed to build a certificate: {0}")]
    Sign(#[from] rcgen::Error),
}
