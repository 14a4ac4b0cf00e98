//! The one contract every frontend renders: an authenticated caller's
//! request for a certificate goes in, the certificate or a typed
//! [`Refusal`] comes out (a token or a [`TokenRefusal`] for JWT-SVIDs),
//! classified here once ([`Verdict`]: its code and whose move it is).
//!
//! [`Issuer::issue`] does everything between the two, once for every way a
//! workload asks (the HTTPS API, pod certificates, ingress Secrets, and
//! the daemon's own serving certificate): the deny-list, admission (the
//! identity's rate, signing requests in flight overall and per
//! namespace), CSR policy, the lifetime's bounds, the provider call
//! through the [`Checked`] gate, the record of each signer generation's
//! latest NotAfter (which decides when an old root may leave the bundle),
//! and `meshca_certificates_issued_total{frontend,provider,result}`, which
//! counts the refusals frontends decide before asking ([`Unasked`],
//! through [`Issuer::refuse`]) alike.
//!
//! A frontend only authenticates its caller and renders the verdict: an
//! HTTP status and JSON body (`api`), a gRPC status (`istio_ca`), a
//! PodCertificateRequest condition (`pod_certificates`), a requeue
//! (`ingress`).

mod admission;
mod config;
mod deny;
pub mod deny_configmap;
mod own;
mod verdict;

pub use admission::Admission;
pub use config::{LifetimeBounds, Lifetimes, RawLifetimes};
pub use deny::DenyList;
#[cfg(test)]
pub use deny::DenyListError;
pub use verdict::{Busy, Class, Code, Refusal, TokenRefusal, Unasked, Verdict};

use std::sync::Arc;
use std::time::{Duration, Instant};

use meshca_provider::{Identity, Issued, LeafProfile, ServerName, ValidatedCsr};
use time::OffsetDateTime;

use crate::bundle::{BundleReceiver, TrustBundle};
use crate::jose::{JwtSvid, MintError};
use crate::metrics::{IssuedLabels, Metrics, TokenLabels};
use verdict::Standing;

/// Mints JWT-SVIDs for the issuer, which decides whether to ask: the keys
/// are the JWT-SVID feature's, behind this trait.
#[async_trait::async_trait]
pub trait MintTokens: Send + Sync + std::fmt::Debug {
    /// A token for `identity` meant for `audience`, living `ttl` (the
    /// minter's default when `None`, within its bounds).
    ///
    /// # Errors
    /// [`MintError`].
    async fn mint(
        &self,
        identity: &Identity,
        audience: &[String],
        ttl: Option<Duration>,
    ) -> Result<JwtSvid, MintError>;
}

/// Told of every certificate issued: the revocation feature's index of
/// live certificates, behind this trait. Called on the request's path, so
/// it only takes note (the writing is the recorder's own task).
pub trait RecordIssued: Send + Sync + std::fmt::Debug {
    /// `issued` was handed out through `frontend`.
    fn issued(&self, frontend: Frontend, issued: &Issued);
}

use crate::renewal;
use crate::rollout::Signer;

/// Which way a request arrived: a label of the issuance metric, and what
/// admission applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Frontend {
    /// The HTTPS signing API (`POST /v1/certificates`).
    Api,
    /// A Kubernetes PodCertificateRequest.
    PodCertificate,
    /// An ingress backend or client Secret meshca keeps.
    Ingress,
    /// The daemon's own serving certificate.
    Daemon,
    /// Istio's certificate service (istio-agent, ztunnel).
    Istio,
}

/// A request for a JWT-SVID, from a caller already authenticated.
#[derive(Clone, Copy, Debug)]
pub struct TokenRequest<'a> {
    /// Which way it arrived.
    pub frontend: Frontend,
    /// How the caller proved who it is (`token`, `certificate`): a label.
    pub credential: &'static str,
    /// The authenticated caller: the token's `sub`.
    pub identity: &'a Identity,
    /// The relying parties the token is for.
    pub audience: &'a [String],
    /// The lifetime asked, if any.
    pub ttl: Option<Duration>,
}

impl Frontend {
    /// The `frontend` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::PodCertificate => "pod_certificate",
            Self::Ingress => "ingress",
            Self::Daemon => "daemon",
            Self::Istio => "istio",
        }
    }
}

/// A request for a certificate, from a caller already authenticated.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    frontend: Frontend,
    identity: &'a Identity,
    csr: &'a [u8],
    lifetime: LifetimeBounds,
    server_names: &'a [ServerName],
}

impl<'a> Request<'a> {
    /// A workload's request through `frontend`: a leaf for `identity` (the
    /// authenticated caller, never the request's own say) with the public
    /// key of `csr` (DER), within `lifetime`.
    pub fn workload(
        frontend: Frontend,
        identity: &'a Identity,
        csr: &'a [u8],
        lifetime: LifetimeBounds,
    ) -> Self {
        Self {
            frontend,
            identity,
            csr,
            lifetime,
            server_names: &[],
        }
    }

    /// A serving certificate meshca makes for itself (its own, or one it
    /// keeps for a server such as istiod), which also names the hosts and
    /// addresses clients dial it by: the only requests with names beyond
    /// an identity's, never built from a caller's say.
    pub(crate) fn server(
        frontend: Frontend,
        identity: &'a Identity,
        csr: &'a [u8],
        lifetime: LifetimeBounds,
        server_names: &'a [ServerName],
    ) -> Self {
        Self {
            frontend,
            identity,
            csr,
            lifetime,
            server_names,
        }
    }
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

/// Issues certificates through the signer in force.
#[derive(Clone, Debug)]
pub struct Issuer {
    signer: Arc<Signer>,
    lifetimes: Lifetimes,
    bundle: BundleReceiver,
    metrics: Arc<Metrics>,
    denied: DenyList,
    admission: Arc<Admission>,
    tokens: Option<Arc<dyn MintTokens>>,
    records: Vec<Arc<dyn RecordIssued>>,
    crl_url: Option<String>,
}

impl Issuer {
    /// An issuer signing through `signer` within `lifetimes`, answering
    /// with the bundle `bundle` holds, refusing `denied` identities and
    /// admitting requests as `admission` allows.
    pub fn new(
        signer: Arc<Signer>,
        lifetimes: Lifetimes,
        bundle: BundleReceiver,
        metrics: Arc<Metrics>,
        denied: DenyList,
        admission: Arc<Admission>,
    ) -> Self {
        Self {
            signer,
            lifetimes,
            bundle,
            metrics,
            denied,
            admission,
            tokens: None,
            records: Vec::new(),
            crl_url: None,
        }
    }

    /// This issuer, naming `url` as every leaf's CRL distribution point
    /// (where the provider builds the leaf).
    #[must_use]
    pub fn with_crl_url(mut self, url: Option<String>) -> Self {
        self.crl_url = url;
        self
    }

    /// This issuer, telling `records` of every certificate it issues.
    #[must_use]
    pub fn with_records(mut self, records: Vec<Arc<dyn RecordIssued>>) -> Self {
        self.records = records;
        self
    }

    /// This issuer, minting JWT-SVIDs with `tokens` too.
    #[must_use]
    pub fn with_tokens(mut self, tokens: Arc<dyn MintTokens>) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Whether this issuer mints JWT-SVIDs.
    pub fn mints_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// Decide a request for a JWT-SVID under the same deny-list, rate
    /// and metrics as certificates; `None` when JWT-SVIDs are disabled.
    pub async fn issue_token(
        &self,
        request: TokenRequest<'_>,
    ) -> Option<Result<JwtSvid, TokenRefusal>> {
        let tokens = self.tokens.as_ref()?;
        let admitted = self
            .admit_identity(request.frontend, request.identity)
            .map_err(TokenRefusal::from);
        let verdict = match admitted {
            Ok(()) => tokens
                .mint(request.identity, request.audience, request.ttl)
                .await
                .map_err(|e| match e {
                    MintError::Audience(a) => TokenRefusal::Audience(a),
                    other => TokenRefusal::Mint(other),
                }),
            Err(refused) => Err(refused),
        };
        self.count_token(request.frontend, request.credential, verdict.as_ref().err());
        Some(verdict)
    }

    /// A token request its frontend refused before asking: counted, and
    /// returned to render.
    pub fn refuse_token(
        &self,
        frontend: Frontend,
        credential: &'static str,
        unasked: Unasked,
    ) -> TokenRefusal {
        let refusal = TokenRefusal::Unasked(unasked);
        self.count_token(frontend, credential, Some(&refusal));
        refusal
    }

    fn count_token(
        &self,
        frontend: Frontend,
        credential: &'static str,
        refusal: Option<&TokenRefusal>,
    ) {
        self.metrics
            .jwt_svids_issued
            .get_or_create(&TokenLabels {
                frontend: frontend.as_str(),
                credential,
                result: refusal.map_or("success", |r| r.code().as_str()),
            })
            .inc();
    }

    /// The configured lifetimes.
    pub fn lifetimes(&self) -> &Lifetimes {
        &self.lifetimes
    }

    /// The signer slot (generation, switches).
    pub fn signer(&self) -> &Arc<Signer> {
        &self.signer
    }

    /// Decide `request`, sign it if admitted, count it.
    ///
    /// # Errors
    /// The [`Refusal`], for the frontend to render.
    pub async fn issue(&self, request: Request<'_>) -> Result<Box<IssuedCertificate>, Refusal> {
        let verdict = self.decide(&request).await;
        self.count(request.frontend, verdict.as_ref().err());
        if let Ok(issued) = &verdict {
            for record in &self.records {
                record.issued(request.frontend, &issued.issued);
            }
        }
        verdict
    }

    /// A certificate request its frontend refused before asking (the
    /// caller's credential, the request's form): counted as the issuer
    /// counts its own refusals, and returned to render.
    pub fn refuse(&self, frontend: Frontend, unasked: Unasked) -> Refusal {
        let refusal = Refusal::Unasked(unasked);
        self.count(frontend, Some(&refusal));
        refusal
    }

    fn count(&self, frontend: Frontend, refusal: Option<&Refusal>) {
        let provider = self.signer.current().0.kind();
        self.metrics
            .certificates_issued
            .get_or_create(&IssuedLabels {
                frontend: frontend.as_str(),
                provider: provider.as_str(),
                result: refusal.map_or("success", |r| r.code().as_str()),
            })
            .inc();
    }

    async fn decide(&self, request: &Request<'_>) -> Result<Box<IssuedCertificate>, Refusal> {
        self.admit_identity(request.frontend, request.identity)?;
        let csr =
            ValidatedCsr::with_server_names(request.csr, request.identity, request.server_names)
                .map_err(Refusal::Csr)?;
        let Some(_permits) = self.admission.enter(request.identity.namespace()) else {
            return Err(Refusal::Busy {
                why: Busy::InFlight,
                after: Duration::from_secs(1),
            });
        };
        let profile = profile(request).with_crl_url(self.crl_url.clone());
        self.sign(&csr, &profile).await
    }

    /// The deny-list and the identity's rate; the daemon's own
    /// certificate is subject to neither.
    fn admit_identity(&self, frontend: Frontend, identity: &Identity) -> Result<(), Standing> {
        if frontend == Frontend::Daemon {
            return Ok(());
        }
        let (denied, count) = self.denied.check(identity).map_err(Standing::Unreadable)?;
        self.metrics
            .identities_denied
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        if denied {
            return Err(Standing::Denied(identity.clone()));
        }
        self.admission
            .check_identity(identity)
            .map_err(|after| Standing::Busy(Busy::IdentityRate, after))
    }

    async fn sign(
        &self,
        csr: &ValidatedCsr,
        profile: &LeafProfile,
    ) -> Result<Box<IssuedCertificate>, Refusal> {
        let started = Instant::now();
        // In flight under its generation until recorded: a signer retires
        // only once every signature begun under it is done.
        let signing = self.signer.begin();
        let issued = signing.provider.sign(csr, profile).await;
        self.metrics
            .sign_duration
            .get_or_create(&crate::metrics::ProviderLabels {
                provider: signing.provider.kind().as_str(),
            })
            .observe(started.elapsed().as_secs_f64());
        let issued = issued.map_err(Refusal::Provider)?;
        let generation = signing.generation;
        self.signer
            .record(generation, issued.not_after().unix_timestamp());
        drop(signing);
        self.note_longer_than_asked(&issued, profile);
        let renew_after = renewal::renew_after(
            issued.not_before(),
            issued.not_after(),
            OffsetDateTime::now_utc(),
        );
        Ok(Box::new(IssuedCertificate {
            trust_bundle: self.bundle.borrow().clone(),
            renew_after,
            generation,
            issued,
        }))
    }

    /// Within the ceiling (the gate checked it), but longer than asked:
    /// renewal follows the real NotAfter; count it for the operator.
    fn note_longer_than_asked(&self, issued: &Issued, profile: &LeafProfile) {
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
    }
}

/// The leaf a request may have: its identity (and, for the daemon, the
/// names it is dialled by) within its lifetime's bounds.
fn profile(request: &Request<'_>) -> LeafProfile {
    let bounds = request.lifetime;
    let leaf = if request.server_names.is_empty() {
        LeafProfile::workload(request.identity.clone(), bounds.lifetime)
    } else {
        LeafProfile::server(
            request.identity.clone(),
            bounds.lifetime,
            request.server_names.to_vec(),
        )
    };
    leaf.with_ceiling(bounds.ceiling).with_floor(bounds.floor)
}
