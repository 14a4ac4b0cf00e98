//! meshca provider backed by a HashiCorp Vault (or OpenBao) PKI secrets
//! engine.
//!
//! Workload keys never leave the workload: meshca sends the CSR to
//! `POST /v1/<mount>/sign/<role>` with the names of the authenticated
//! identity. The trust anchors are the self-signed roots among the mount's
//! issuers, re-read periodically so that a root rotated inside Vault reaches
//! the bundle; intermediates travel in the chain.
//!
//! meshca logs in with a token (from a file or an environment variable),
//! Kubernetes auth or AppRole, renews the token before it expires and logs
//! in again when renewal is refused. While Vault is unreachable or sealed,
//! requests fail fast with a retry hint and back off with jitter.
//!
//! The public interface is:
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::too_many_lines, clippy::disallowed_methods))]

mod auth;
mod breaker;
mod client;
mod error;
mod http;
mod pki;
mod revoke;
mod transit;

pub use auth::VaultAuth;
pub use error::VaultError;
pub use transit::{Transit, TransitConfig};

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use meshca_provider::{
    Capabilities, Health, LeafProfile, PostQuantum, Provider, ProviderError, ProviderKind,
    SignedChain, ValidatedCsr,
};
use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

/// How to reach Vault and log in: the same for the PKI provider and for
/// key custody in Transit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// Base address, e.g. `https://vault.vault:8200`.
    pub address: String,
    /// CA bundle that verifies Vault's TLS certificate; the system roots
    /// when absent.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for TLS to Vault, if it asks for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Permit an `http://` address. Never implied.
    pub allow_http: bool,
    /// Time limit of one request to Vault.
    pub timeout: Duration,
    /// How meshca authenticates to Vault.
    pub auth: VaultAuth,
}

/// How to reach and use Vault; built by the daemon from its validated
/// config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultConfig {
    /// Where Vault is and how meshca logs in.
    pub connection: Connection,
    /// Mount path of the PKI engine (default `pki`).
    pub mount: String,
    /// The PKI role that signs workload certificates (default
    /// `openservicemesh`).
    pub role: String,
    /// How long the trust anchors read from Vault are reused.
    pub anchors_refresh: Duration,
    /// The role whose (ML-DSA) issuer signs CSRs of ML-DSA keys; none
    /// signs them without it.
    pub post_quantum_role: Option<String>,
}

/// The Vault provider.
pub struct Vault {
    inner: Arc<client::Client>,
    pki: pki::Pki,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("address", &self.inner.address())
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Connect: build the HTTP client, log in, read the role and the trust
    /// anchors, so that a misconfiguration is reported at start, not at
    /// the first CSR. When the role does not say how far Vault backdates
    /// NotBefore, `probe` (a throwaway request for the daemon's own
    /// identity) is signed once to measure it. Returns the provider and
    /// the task that keeps its token fresh until `shutdown`.
    ///
    /// # Errors
    /// [`ProviderError::Misconfigured`] for local problems (files, address,
    /// credentials refused); [`ProviderError::Unavailable`] when Vault
    /// cannot be reached.
    pub async fn connect(
        config: VaultConfig,
        probe: (ValidatedCsr, LeafProfile),
        shutdown: CancellationToken,
    ) -> Result<(Self, impl Future<Output = ()> + Send + 'static), ProviderError> {
        let files = http::TlsFiles::read(&config.connection).await?;
        let inner = Arc::new(client::Client::new(&config.connection, &files)?);
        inner.login().await.map_err(VaultError::into_provider)?;
        let mut pki = pki::Pki::new(inner.clone(), &config);
        pki.read_role().await;
        pki.refresh_anchors()
            .await
            .map_err(VaultError::into_provider)?;
        if pki.backdate().is_none() {
            pki.measure_backdate(&probe.0, &probe.1).await;
        }
        let maintenance = {
            let inner = inner.clone();
            async move { inner.maintain_token(shutdown).await }
        };
        tracing::info!(address = %config.connection.address, mount = %config.mount, role = %config.role, "connected to Vault");
        Ok((Self { inner, pki }, maintenance))
    }
}

#[async_trait]
impl Provider for Vault {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Vault
    }

    /// A role with `use_csr_sans` signs only the names a CSR carries; an
    /// unreadable role is taken at its word (meshca's names), and a leaf
    /// without them is refused after signing, naming the setting.
    /// Vault keeps what its PKI engine revoked and signs the mount's CRL:
    /// meshca revokes there and serves that CRL.
    fn revocation(&self) -> meshca_provider::revocation::Revocation {
        meshca_provider::revocation::Revocation::SignsCrls
    }

    async fn revocation_lists(
        &self,
        request: &meshca_provider::revocation::CrlRequest,
    ) -> Result<Vec<meshca_provider::revocation::SignedCrl>, ProviderError> {
        self.pki
            .revocation_lists(request)
            .await
            .map_err(VaultError::into_provider)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            names_from_profile: !self.pki.settings.is_some_and(|s| s.use_csr_sans),
            hint: Some("set use_csr_sans=false on the Vault role"),
            post_quantum: match self.pki.post_quantum_role() {
                Some(_) => PostQuantum::Signs,
                None => {
                    PostQuantum::Cannot("provider.vault.post_quantum names no role for ML-DSA keys")
                }
            },
        }
    }

    async fn sign(
        &self,
        csr: &ValidatedCsr,
        leaf: &LeafProfile,
    ) -> Result<SignedChain, ProviderError> {
        let chain = self
            .pki
            .sign(csr, leaf)
            .await
            .map_err(VaultError::into_provider)?;
        if let Some(problem) = self.leaf_problem(&chain, leaf) {
            return Err(problem);
        }
        Ok(chain)
    }

    async fn trust_anchors(&self) -> Result<Vec<CertificateDer<'static>>, ProviderError> {
        self.pki.anchors().await.map_err(VaultError::into_provider)
    }

    async fn health(&self) -> Health {
        match self.inner.health().await {
            Ok(()) => Health::Healthy,
            Err(e) => Health::Unhealthy(e.to_string()),
        }
    }

    fn credential_expiry(&self) -> Option<i64> {
        self.inner.credential_expiry()
    }
}

impl Vault {
    /// What Vault's way of signing put wrong in the leaf, said in Vault's
    /// terms (the gate would refuse it too, less helpfully): a role that
    /// ignores the names meshca passes, or a backdate meshca could not
    /// read that stretches the window past what the caller accepts.
    fn leaf_problem(&self, chain: &SignedChain, leaf: &LeafProfile) -> Option<ProviderError> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let der = chain.0.first()?;
        let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
        let want = leaf.identity().spiffe_id();
        let names_identity = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .is_some_and(|san| {
                san.value
                    .general_names
                    .iter()
                    .any(|n| matches!(n, GeneralName::URI(u) if *u == want))
            });
        if !names_identity {
            return Some(ProviderError::InvalidResponse(format!(
                "Vault signed without the SPIFFE ID {want} meshca asked for: the role ignores the requested names (use_csr_sans=true?); set use_csr_sans=false on the role"
            )));
        }
        let validity = cert.validity();
        let window = validity.not_after.timestamp() - validity.not_before.timestamp();
        let ceiling = i64::try_from(leaf.ceiling().as_secs()).unwrap_or(i64::MAX);
        let backdate_unknown = self.pki.backdate().is_none();
        if backdate_unknown && window > ceiling {
            return Some(ProviderError::Misconfigured(format!(
                "Vault's leaf is valid for {window}s from NotBefore to NotAfter, over the {ceiling}s allowed: Vault backdates NotBefore by the role's not_before_duration, which meshca could neither read nor measure; grant meshca's policy read on the role so that it asks for a TTL that fits"
            )));
        }
        None
    }
}
