//! meshca's built-in signer ("Tresor", after Open Service Mesh's).
//!
//! Tresor holds its own root: generated on first start and persisted (key
//! 0600), or brought by the operator as a certificate and key in PEM
//! (PKCS#8, PKCS#1 or SEC1). Optionally the root only signs an intermediate,
//! kept in memory, and the intermediate signs leaves.
//!
//! Leaves are built from policy ([`meshca_provider::LeafProfile`]); of the
//! CSR only the public key is used.
//!
//! The public interface is:
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::too_many_lines, clippy::disallowed_methods))]

mod ca;
mod error;
mod key;
mod leaf;
mod store;

pub use ca::CaCertificate;
pub use error::TresorError;
pub use key::{load_private_key_pem, RootKeyAlgorithm};
pub use store::{RootSource, StoredRoot};

use std::time::Duration;

use async_trait::async_trait;
use meshca_provider::{
    Health, LeafProfile, Provider, ProviderError, ProviderKind, SignatureCheck, SignedChain,
    ValidatedCsr,
};
use rustls_pki_types::CertificateDer;

/// How Tresor is set up; built by the daemon from its validated config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TresorConfig {
    /// Where the root comes from.
    pub root: RootSource,
    /// When set, leaves are signed by an intermediate of this lifetime,
    /// generated at start with the root's key algorithm.
    pub intermediate_validity: Option<Duration>,
}

/// The Tresor provider: signs leaves in-process with its own CA.
pub struct Tresor {
    signer: CaCertificate,
    /// Certificates between the leaf and the anchor (the intermediate).
    chain_tail: Vec<CertificateDer<'static>>,
    anchor: CertificateDer<'static>,
}

impl std::fmt::Debug for Tresor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tresor")
            .field("intermediate", &!self.chain_tail.is_empty())
            .finish_non_exhaustive()
    }
}

impl Tresor {
    /// Load or create the root, then (optionally) an intermediate.
    ///
    /// # Errors
    /// A root that cannot be read, parsed, or whose key does not match its
    /// certificate; a root that is not a CA or has expired.
    pub fn new(config: &TresorConfig) -> Result<Self, TresorError> {
        let StoredRoot { root, created } = config.root.load_or_create()?;
        if created {
            tracing::info!(subject = %root.subject(), "generated a new Tresor root");
        } else {
            tracing::info!(subject = %root.subject(), "loaded the Tresor root");
        }
        Self::from_root(root, config.intermediate_validity)
    }

    /// Sign with `root` (loaded from wherever the caller keeps it, e.g. a
    /// Kubernetes Secret), through a new intermediate when
    /// `intermediate_validity` is set.
    ///
    /// # Errors
    /// The intermediate could not be issued.
    pub fn from_root(
        root: CaCertificate,
        intermediate_validity: Option<Duration>,
    ) -> Result<Self, TresorError> {
        let anchor = root.der().clone();
        match intermediate_validity {
            None => Ok(Self {
                signer: root,
                chain_tail: Vec::new(),
                anchor,
            }),
            Some(validity) => {
                let intermediate = root.issue_intermediate(validity)?;
                tracing::info!(subject = %intermediate.subject(), "signing leaves with a new intermediate");
                Ok(Self {
                    chain_tail: vec![intermediate.der().clone()],
                    signer: intermediate,
                    anchor,
                })
            }
        }
    }

    /// The root certificate (the trust anchor).
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.anchor
    }
}

#[async_trait]
impl Provider for Tresor {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Tresor
    }

    async fn sign(
        &self,
        csr: &ValidatedCsr,
        profile: &LeafProfile,
    ) -> Result<SignedChain, ProviderError> {
        let leaf = leaf::sign(&self.signer, csr, profile)
            .map_err(|e| ProviderError::Internal(e.to_string()))?;
        let mut chain = Vec::with_capacity(1 + self.chain_tail.len());
        chain.push(leaf);
        chain.extend(self.chain_tail.iter().cloned());
        Ok(SignedChain(chain))
    }

    async fn trust_anchors(&self) -> Result<Vec<CertificateDer<'static>>, ProviderError> {
        Ok(vec![self.anchor.clone()])
    }

    async fn health(&self) -> Health {
        Health::Healthy
    }

    /// The signing key was checked against its certificate when loaded, and
    /// the intermediate was issued here by that root.
    fn signature_check(&self) -> SignatureCheck {
        SignatureCheck::LocalSigner
    }
}
