use std::fmt;

use async_trait::async_trait;
use rustls_pki_types::CertificateDer;

use crate::revocation::{CrlRequest, Revocation, SignedCrl};
use crate::{LeafProfile, ProviderError, ValidatedCsr};

/// Which backend signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProviderKind {
    /// meshca's own root (generated or loaded).
    Tresor,
    /// cert-manager, through `CertificateRequest` objects.
    CertManager,
    /// HashiCorp Vault's PKI engine.
    Vault,
}

impl ProviderKind {
    /// The name used in configuration, metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tresor => "tresor",
            Self::CertManager => "cert-manager",
            Self::Vault => "vault",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ProviderKind {
    /// Every kind, in the order configuration lists them.
    pub const ALL: [Self; 3] = [Self::Tresor, Self::Vault, Self::CertManager];
}

/// What a backend can sign beyond the contract every backend meets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// The leaf's names come from the [`LeafProfile`] whatever the CSR
    /// names. False for backends that sign only the names a CSR carries
    /// (cert-manager; a Vault role with `use_csr_sans`): a CSR must then
    /// name exactly its identity, which kubelet's stub CSRs never do.
    pub names_from_profile: bool,
    /// What the operator can change so that it is, when it is not.
    pub hint: Option<&'static str>,
    /// Whether it signs CSRs of post-quantum (ML-DSA) keys.
    pub post_quantum: PostQuantum,
}

/// Whether a backend signs CSRs of post-quantum (ML-DSA) keys, under a
/// post-quantum chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostQuantum {
    /// It does.
    Signs,
    /// It does not: why, and what would change it, for the refusal.
    Cannot(&'static str),
}

impl Capabilities {
    /// A backend that names leaves from the profile and signs only
    /// classical keys.
    pub const CLASSICAL: Self = Self {
        names_from_profile: true,
        hint: None,
        post_quantum: PostQuantum::Cannot("this provider signs classical keys only"),
    };
}

/// A provider's view of whether it can sign right now; feeds `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Signing should succeed.
    Healthy,
    /// Signing will fail until the backend recovers; the text says why.
    Unhealthy(String),
}

/// What a backend returned: the leaf first, then any intermediates, not yet
/// checked. Only [`Checked`](crate::Checked) turns it into an
/// [`Issued`](crate::Issued).
#[derive(Clone, Debug)]
pub struct SignedChain(pub Vec<CertificateDer<'static>>);

/// How much of a returned chain's cryptography [`Checked`](crate::Checked)
/// re-verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureCheck {
    /// Verify every signature up to a trust anchor (remote backends).
    Full,
    /// The provider signs in-process with a key it proved, when it was
    /// built, to belong to its anchor; re-verifying each of its own
    /// signatures would double the cost of issuing. Names, usages, validity,
    /// key binding and issuer linkage are still checked on every leaf.
    LocalSigner,
}

/// A certificate backend.
///
/// Deliberately narrow (sign a checked CSR, say what to trust, say whether
/// it works): queueing, policy, metrics and the validation of results live
/// outside, once for every backend.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Which backend this is.
    fn kind(&self) -> ProviderKind;

    /// Sign `csr` for `leaf.identity()`, valid for `leaf.lifetime()` from
    /// NotBefore to NotAfter: a backend that backdates NotBefore is asked
    /// for that much less. The caller has already authenticated the
    /// identity and checked the CSR.
    ///
    /// # Errors
    /// [`ProviderError`], with retryability stated by the variant.
    async fn sign(
        &self,
        csr: &ValidatedCsr,
        leaf: &LeafProfile,
    ) -> Result<SignedChain, ProviderError>;

    /// The trust anchors (self-signed roots) that this provider's
    /// certificates chain to.
    async fn trust_anchors(&self) -> Result<Vec<CertificateDer<'static>>, ProviderError>;

    /// Whether signing should work now.
    async fn health(&self) -> Health;

    /// When the backend credential stops working for good (a Vault token
    /// past its maximum TTL that meshca cannot obtain again), as a Unix
    /// time; `None` when it can be renewed or obtained again.
    fn credential_expiry(&self) -> Option<i64> {
        None
    }

    /// How far [`Checked`](crate::Checked) re-verifies signatures; remote
    /// backends keep the default.
    fn signature_check(&self) -> SignatureCheck {
        SignatureCheck::Full
    }

    /// What it can sign; [`Checked`](crate::Checked) refuses a request
    /// beyond it before the backend is asked.
    fn capabilities(&self) -> Capabilities {
        Capabilities::CLASSICAL
    }

    /// Whether it can revoke what it issued.
    fn revocation(&self) -> Revocation {
        Revocation::Cannot("this provider cannot revoke certificates")
    }

    /// The CRLs listing `request`'s serials, one per CA it issues under
    /// (each CA that signs leaves now or signed leaves still valid, and the
    /// CAs above them, so that a verifier checking every CA of a chain
    /// finds a list for each). Only asked when [`Provider::revocation`]
    /// says it signs CRLs.
    ///
    /// # Errors
    /// [`ProviderError`]: the lists could not be signed now.
    async fn revocation_lists(
        &self,
        request: &CrlRequest,
    ) -> Result<Vec<SignedCrl>, ProviderError> {
        let _ = request;
        Err(ProviderError::Misconfigured(format!(
            "the {} provider cannot revoke certificates",
            self.kind()
        )))
    }
}
