//! meshca's built-in signer ("Tresor", after Open Service Mesh's).
//!
//! Tresor holds its own root: generated on first start and persisted (key
//! 0600), or brought by the operator as a certificate and key in PEM
//! (PKCS#8, PKCS#1 or SEC1). Optionally the root only signs an intermediate,
//! kept in memory, and the intermediate signs leaves. Beside it Tresor can
//! hold a post-quantum (ML-DSA) root, kept the same way, under which CSRs
//! of ML-DSA keys are signed; both roots are trust anchors.
//!
//! Leaves are built from policy ([`meshca_provider::LeafProfile`]); of the
//! CSR only the public key is used.
//!
//! The public interface is:
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::too_many_lines, clippy::disallowed_methods))]

mod ca;
mod chain;
mod crl;
mod error;
mod key;
mod leaf;
mod store;

pub use ca::CaCertificate;
pub use error::TresorError;
pub use key::{load_private_key_pem, CaKey, RootKeyAlgorithm};
pub use store::{load_custody_root, save_custody_root};
pub use store::{RootSource, StoredRoot};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chain::Chain;
use meshca_provider::crypto::custody::Custody;
use meshca_provider::revocation::{CrlRequest, Revocation, SignedCrl};
use meshca_provider::{
    Capabilities, Health, LeafProfile, PostQuantum, Provider, ProviderError, ProviderKind,
    SignatureCheck, SignedChain, ValidatedCsr,
};
use rustls_pki_types::CertificateDer;

/// How Tresor is set up; built by the daemon from its validated config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TresorConfig {
    /// Where the (classical) root comes from.
    pub root: RootSource,
    /// Where the post-quantum (ML-DSA) root comes from, when there is one:
    /// CSRs with ML-DSA keys are signed under it.
    pub post_quantum: Option<RootSource>,
    /// When set, leaves are signed by an intermediate of this lifetime,
    /// generated at start with the root's key algorithm (one per root).
    pub intermediate_validity: Option<Duration>,
}

/// The Tresor provider: signs leaves in-process with its own CA: a
/// classical root, and optionally a post-quantum one beside it.
pub struct Tresor {
    classical: Chain,
    post_quantum: Option<Chain>,
    /// The custodian of the root's key, when it has one: Tresor is
    /// healthy while it can sign.
    custody: Option<Arc<dyn Custody>>,
}

impl std::fmt::Debug for Tresor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tresor")
            .field("intermediate", &self.classical.has_intermediate())
            .field("post_quantum", &self.post_quantum.is_some())
            .field("custody", &self.custody.as_ref().map(|c| c.backend()))
            .finish_non_exhaustive()
    }
}

impl Tresor {
    /// Sign with `root`, and CSRs of ML-DSA keys with `post_quantum`.
    ///
    /// # Errors
    /// An intermediate could not be issued; `post_quantum` is not an
    /// ML-DSA root, or `root` is one.
    pub async fn from_roots(
        root: CaCertificate,
        post_quantum: Option<CaCertificate>,
        intermediate_validity: Option<Duration>,
    ) -> Result<Self, TresorError> {
        if root.is_post_quantum() {
            return Err(TresorError::Key(
                "the root's key is ML-DSA: a post-quantum root goes in provider.tresor.post_quantum, beside a classical root".into(),
            ));
        }
        if post_quantum.as_ref().is_some_and(|r| !r.is_post_quantum()) {
            return Err(TresorError::Key(
                "the post-quantum root's key is not ML-DSA (ml-dsa-44, ml-dsa-65 or ml-dsa-87)"
                    .into(),
            ));
        }
        let post_quantum = match post_quantum {
            Some(root) => Some(Chain::new(root, intermediate_validity).await?),
            None => None,
        };
        Ok(Self {
            classical: Chain::new(root, intermediate_validity).await?,
            post_quantum,
            custody: None,
        })
    }

    /// Report the health of `custody`, the custodian of the root's key,
    /// as Tresor's own: without it nothing new can be signed (with an
    /// intermediate, no rollout; without, no leaf).
    #[must_use]
    pub fn with_custody(mut self, custody: Arc<dyn Custody>) -> Self {
        self.custody = Some(custody);
        self
    }

    /// The classical root certificate (a trust anchor).
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.classical.anchor
    }
}

#[async_trait]
impl Provider for Tresor {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Tresor
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            names_from_profile: true,
            hint: None,
            post_quantum: match self.post_quantum {
                Some(_) => PostQuantum::Signs,
                None => PostQuantum::Cannot(
                    "Tresor has no post-quantum root (provider.tresor.post_quantum)",
                ),
            },
        }
    }

    async fn sign(
        &self,
        csr: &ValidatedCsr,
        profile: &LeafProfile,
    ) -> Result<SignedChain, ProviderError> {
        let chain = match (&self.post_quantum, csr.key_algorithm().is_post_quantum()) {
            (Some(pq), true) => pq,
            _ => &self.classical,
        };
        let chain = chain.signing().await;
        let leaf = leaf::sign(&chain.signer, csr, profile).map_err(TresorError::into_provider)?;
        // Signed by the custodian, and checked, when the key signing
        // leaves is in custody.
        let leaf = chain
            .signer
            .finish(&leaf)
            .await
            .map_err(TresorError::into_provider)?;
        let mut signed = Vec::with_capacity(1 + chain.tail.len());
        signed.push(leaf);
        signed.extend(chain.tail.iter().cloned());
        Ok(SignedChain(signed))
    }

    async fn trust_anchors(&self) -> Result<Vec<CertificateDer<'static>>, ProviderError> {
        let pq = self.post_quantum.iter().map(|c| c.anchor.clone());
        Ok(std::iter::once(self.classical.anchor.clone())
            .chain(pq)
            .collect())
    }

    /// With the root's key in custody: unhealthy while the custodian
    /// cannot sign, if it signs every leaf; with an intermediate in
    /// memory, leaves are still signed, so the outage is only logged (and
    /// `meshca_key_custody_up` says it).
    async fn health(&self) -> Health {
        let Some(custody) = &self.custody else {
            return Health::Healthy;
        };
        match custody.health().await {
            Ok(()) => Health::Healthy,
            Err(e) if self.classical.signs_in_custody() => {
                Health::Unhealthy(meshca_provider::error_chain(&e))
            }
            Err(e) => {
                tracing::warn!(error = %meshca_provider::error_chain(&e), "the custodian of the root key is unavailable; the intermediate signs on");
                Health::Healthy
            }
        }
    }

    fn revocation(&self) -> Revocation {
        Revocation::SignsCrls
    }

    /// One CRL per CA of each chain (see [`Chain::revocation_lists`]),
    /// the classical chain's first.
    async fn revocation_lists(
        &self,
        request: &CrlRequest,
    ) -> Result<Vec<SignedCrl>, ProviderError> {
        let mut lists = self
            .classical
            .revocation_lists(request)
            .await
            .map_err(TresorError::into_provider)?;
        if let Some(pq) = &self.post_quantum {
            let more = pq
                .revocation_lists(request)
                .await
                .map_err(TresorError::into_provider)?;
            lists.extend(more);
        }
        Ok(lists)
    }

    /// The signing keys were checked against their certificates when
    /// loaded, and the intermediates were issued here by those roots;
    /// every signature a custodian makes is checked when it is made.
    fn signature_check(&self) -> SignatureCheck {
        SignatureCheck::LocalSigner
    }
}
