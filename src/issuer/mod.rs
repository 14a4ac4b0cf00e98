//! The one place that turns an authenticated request into a certificate:
//! CSR policy, lifetime clamping, the provider call (through the
//! [`Checked`] gate) and the bookkeeping a response needs.

mod admission;
mod config;
mod deny;
pub mod deny_configmap;

pub use admission::Admission;
pub use config::{LifetimeBounds, Lifetimes, RawLifetimes};
pub use deny::DenyList;

use std::sync::Arc;
use std::time::{Duration, Instant};

use meshca_provider::{
    Checked, CsrError, Identity, Issued, LeafProfile, ProviderError, ServerName, ValidatedCsr,
};

use crate::rollout::Signer;
use thiserror::Error;
use time::OffsetDateTime;

use crate::bundle::{BundleReceiver, TrustBundle};
use crate::metrics::Metrics;
use crate::renewal;

/// Why no certificate was issued.
#[derive(Debug, Error)]
pub enum IssueError {
    /// The CSR was refused.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The provider failed or returned something unacceptable.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The identity is on the deny-list (`meshca identity deny`).
    #[error("{0} is denied any certificate (meshca identity allow lifts it)")]
    IdentityDenied(Identity),
    /// The deny-list cannot be read: nobody is issued a certificate until
    /// it can, rather than risk issuing to a denied identity.
    #[error("failed to read the deny-list: {0}")]
    DenyList(String),
}

/// A certificate ready to hand out, with the bundle to trust alongside it.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The checked certificate.
    pub issued: Issued,
    /// Every anchor a peer may present now.
    pub trust_bundle: Arc<TrustBundle>,
    /// When the holder should renew.
    pub renew_after: OffsetDateTime,
    /// The signer generation that issued it.
    pub generation: u64,
}

/// Issues certificates through one provider.
#[derive(Clone, Debug)]
pub struct Issuer {
    signer: Arc<Signer>,
    lifetimes: Lifetimes,
    bundle: BundleReceiver,
    metrics: Arc<Metrics>,
    denied: DenyList,
}

impl Issuer {
    /// An issuer signing through `provider` with lifetimes within
    /// `lifetimes`, answering with the bundle `bundle` currently holds.
    pub fn new(
        signer: Arc<Signer>,
        lifetimes: Lifetimes,
        bundle: BundleReceiver,
        metrics: Arc<Metrics>,
        denied: DenyList,
    ) -> Self {
        Self {
            signer,
            lifetimes,
            bundle,
            metrics,
            denied,
        }
    }

    /// The configured lifetimes.
    pub fn lifetimes(&self) -> &Lifetimes {
        &self.lifetimes
    }

    /// The provider signing now.
    pub fn provider(&self) -> Arc<Checked> {
        self.signer.current().0
    }

    /// The signer slot (generation, switches).
    pub fn signer(&self) -> &Arc<Signer> {
        &self.signer
    }

    /// Issue a workload certificate for `identity` (already authenticated)
    /// from a DER CSR, for `ttl` clamped to the configured bounds.
    ///
    /// # Errors
    /// [`IssueError::Csr`] when the CSR is unacceptable for this identity,
    /// [`IssueError::Provider`] when signing failed.
    pub async fn issue(
        &self,
        identity: &Identity,
        csr_der: &[u8],
        ttl: Option<Duration>,
    ) -> Result<IssuedCertificate, IssueError> {
        self.issue_for(identity, csr_der, self.lifetimes.for_request(ttl))
            .await
    }

    /// As [`Issuer::issue`], within `bounds`: for callers whose bounds are
    /// not the signing API's, such as a PodCertificateRequest's
    /// ([`Lifetimes::between`]).
    ///
    /// # Errors
    /// As [`Issuer::issue`].
    pub async fn issue_for(
        &self,
        identity: &Identity,
        csr_der: &[u8],
        bounds: LifetimeBounds,
    ) -> Result<IssuedCertificate, IssueError> {
        let (denied, count) = self.denied.check(identity).map_err(IssueError::DenyList)?;
        self.metrics
            .identities_denied
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        if denied {
            return Err(IssueError::IdentityDenied(identity.clone()));
        }
        let csr = ValidatedCsr::new(csr_der, identity)?;
        let profile = LeafProfile::workload(identity.clone(), bounds.lifetime)
            .with_ceiling(bounds.ceiling)
            .with_floor(bounds.floor);
        self.sign(&csr, &profile).await
    }

    /// Issue the daemon's own serving certificate, which also names the
    /// hosts clients dial. Not reachable from the signing API.
    ///
    /// # Errors
    /// As [`Issuer::issue`].
    pub async fn issue_server(
        &self,
        identity: &Identity,
        csr_der: &[u8],
        names: Vec<ServerName>,
    ) -> Result<IssuedCertificate, IssueError> {
        let csr = ValidatedCsr::with_server_names(csr_der, identity, &names)?;
        let profile = LeafProfile::server(identity.clone(), self.lifetimes.default_ttl, names)
            .with_ceiling(self.lifetimes.max_ttl);
        self.sign(&csr, &profile).await
    }

    async fn sign(
        &self,
        csr: &ValidatedCsr,
        profile: &LeafProfile,
    ) -> Result<IssuedCertificate, IssueError> {
        let started = Instant::now();
        let (provider, generation) = self.signer.current();
        let issued = provider.sign(csr, profile).await;
        self.metrics
            .sign_duration
            .get_or_create(&crate::metrics::ProviderLabels {
                provider: provider.kind().as_str(),
            })
            .observe(started.elapsed().as_secs_f64());
        let issued = issued?;
        self.signer
            .record(generation, issued.not_after().unix_timestamp());
        // Within the ceiling (the gate checked it), but longer than asked:
        // renewal follows the real NotAfter; count it for the operator.
        let window = issued.not_after() - issued.not_before();
        if window > profile.lifetime() {
            self.metrics.certificates_longer_than_requested.inc();
            tracing::info!(
                not_after = %issued.not_after(),
                requested_seconds = profile.lifetime().as_secs(),
                issued_seconds = window.whole_seconds(),
                "the provider issued a longer lifetime than requested (within its bound)"
            );
        }
        let renew_after = renewal::renew_after(
            issued.not_before(),
            issued.not_after(),
            OffsetDateTime::now_utc(),
        );
        Ok(IssuedCertificate {
            trust_bundle: self.bundle.borrow().clone(),
            renew_after,
            generation,
            issued,
        })
    }
}
