//! Why a record of meshca's state could not be read or written.

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but cannot be read.
    #[error("failed to read {place}")]
    Read {
        /// The file.
        place: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file could not be written.
    #[error("failed to write {place}")]
    Write {
        /// The file.
        place: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The API server refused or could not be reached.
    #[error(transparent)]
    Kubernetes(#[from] crate::cluster::KubeError),
    /// The object changed since it was read: read again and re-plan.
    #[error("{0} changed since it was read")]
    Conflict(String),
    /// The object exists without the record's key.
    #[error("{0} exists but holds no such key")]
    MissingKey(String),
    /// The value could not be encoded.
    #[error("failed to encode {what}")]
    Encode {
        /// What.
        what: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    /// Whether trying again may help, as opposed to an operator's fix:
    /// the API server busy or unreachable, or another writer first.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Conflict(_) => true,
            Self::Kubernetes(e) => e.refusal().is_transient(),
            _ => false,
        }
    }
}
