//! The trust bundle: every anchor a peer may present now, and the sinks it
//! is published to.
//!
//! The current bundle travels through a `tokio::sync::watch` channel; the
//! API, the serving-certificate task and the [`publisher`] all read it from
//! there. A bundle is never empty: [`TrustBundle::new`] refuses that, so no
//! sink can be handed one.

mod config;
mod file;
mod publisher;
mod secret;
pub mod spiffe;
pub(crate) mod watch;

pub use config::{BundleConfig, RawBundle, RawSecretRef, DEFAULT_SECRET};
pub use file::FileSink;
pub use publisher::{publisher, PublishStatus};
pub use secret::SecretSink;

/// A Secret's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

use std::sync::Arc;

use async_trait::async_trait;
use rustls_pki_types::CertificateDer;
use thiserror::Error;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a bundle could not be built or published.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BundleError {
    /// A bundle must hold at least one anchor.
    #[error("refusing to publish an empty trust bundle")]
    Empty,
    /// An anchor is not a parseable certificate.
    #[error("failed to parse a trust anchor: {0}")]
    BadAnchor(String),
    /// Writing to a sink failed.
    #[error("failed to publish the trust bundle to {sink}: {message}")]
    Sink {
        /// The sink's name.
        sink: String,
        /// What went wrong.
        message: String,
        /// The API server's verdict on trying again, for a Kubernetes
        /// sink it answered.
        refusal: Option<crate::cluster::Refusal>,
    },
}

impl BundleError {
    /// A Kubernetes sink's failure, with the API server's verdict.
    pub fn kube(sink: &str, e: &kube::Error) -> Self {
        Self::Sink {
            sink: sink.to_owned(),
            message: e.to_string(),
            refusal: Some(crate::cluster::Refusal::of(e)),
        }
    }

    /// A follower's sink that does not hold the bundle yet: the leader
    /// writes it, this replica can only wait for it to.
    pub fn awaiting_leader(sink: &str) -> Self {
        Self::Sink {
            sink: sink.to_owned(),
            message: "does not hold this bundle yet; the leader publishes it".into(),
            refusal: Some(crate::cluster::Refusal::Transient { retry_after: None }),
        }
    }

    /// What the failure says about trying again: the API server's verdict
    /// for a Kubernetes sink, else a failure that may pass.
    pub fn refusal(&self) -> crate::cluster::Refusal {
        match self {
            Self::Sink {
                refusal: Some(r), ..
            } => r.clone(),
            _ => crate::cluster::Refusal::Transient { retry_after: None },
        }
    }
}

/// An immutable, non-empty set of trust anchors and its PEM text.
#[derive(Debug, PartialEq, Eq)]
pub struct TrustBundle {
    anchors: Vec<CertificateDer<'static>>,
    pem: String,
}

impl TrustBundle {
    /// Build a bundle from anchors, dropping duplicates and keeping order.
    ///
    /// # Errors
    /// [`BundleError::Empty`] or [`BundleError::BadAnchor`].
    pub fn new(anchors: Vec<CertificateDer<'static>>) -> Result<Self, BundleError> {
        let mut unique: Vec<CertificateDer<'static>> = Vec::with_capacity(anchors.len());
        for a in anchors {
            if !unique.contains(&a) {
                unique.push(a);
            }
        }
        if unique.is_empty() {
            return Err(BundleError::Empty);
        }
        for a in &unique {
            X509Certificate::from_der(a).map_err(|e| BundleError::BadAnchor(e.to_string()))?;
        }
        let pem = meshca_provider::pem::encode_certificates(&unique);
        Ok(Self {
            anchors: unique,
            pem,
        })
    }

    /// The anchors.
    pub fn anchors(&self) -> &[CertificateDer<'static>] {
        &self.anchors
    }

    /// The bundle as concatenated PEM certificates (the `ca.crt` format).
    pub fn pem(&self) -> &str {
        &self.pem
    }
}

/// A place the bundle is published to (a file; a Kubernetes Secret).
#[async_trait]
pub trait BundleSink: Send + Sync + 'static {
    /// A short name for logs, metrics and `/readyz`.
    fn name(&self) -> &str;

    /// Make the sink hold exactly `bundle`.
    ///
    /// # Errors
    /// [`BundleError::Sink`]; the publisher retries.
    async fn publish(&self, bundle: &TrustBundle) -> Result<(), BundleError>;

    /// Whether the sink still holds `bundle`; a sink someone edited or
    /// removed is published again.
    ///
    /// # Errors
    /// [`BundleError::Sink`] when the sink cannot be read; the publisher
    /// holds it back and retries.
    async fn holds(&self, bundle: &TrustBundle) -> Result<bool, BundleError>;
}

/// Shared handle on the current bundle.
pub type BundleReceiver = tokio::sync::watch::Receiver<Arc<TrustBundle>>;
