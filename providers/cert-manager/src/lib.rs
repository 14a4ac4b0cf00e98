//! meshca provider that signs through cert-manager.
//!
//! For each CSR meshca creates a `cert-manager.io/v1` `CertificateRequest`
//! naming the configured issuer, waits by watch (never by polling) for the
//! issuer's answer, and deletes the request whatever the outcome, so a
//! burst of renewals leaves nothing behind. cert-manager signs what the CSR
//! names, so the CSR must name exactly the caller's identity (meshca's
//! agent does); the result is then checked like every provider's.
//!
//! Trust anchors come from `status.ca` of issued requests, or from a
//! configured Secret or ConfigMap key for issuers that leave `status.ca`
//! empty (ACME-like); with neither, [`CertManager::connect`] fails.
//!
//! The public interface is:
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::too_many_lines, clippy::disallowed_methods))]

mod metrics;
mod request;

pub use metrics::CertManagerMetrics;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams};
use kube::Api;
use meshca_provider::{
    Capabilities, Health, LeafProfile, PostQuantum, Provider, ProviderError, ProviderKind,
    SignedChain, ValidatedCsr,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::sync::RwLock;

/// The label on every CertificateRequest meshca creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "meshca");

/// Where the anchors come from when the issuer does not fill `status.ca`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaSource {
    /// A key of a Secret in the provider's namespace.
    Secret {
        /// Secret name.
        name: String,
        /// Data key holding PEM certificates.
        key: String,
    },
    /// A key of a ConfigMap in the provider's namespace.
    ConfigMap {
        /// ConfigMap name.
        name: String,
        /// Data key holding PEM certificates.
        key: String,
    },
}

/// How to reach the issuer; built by the daemon from its validated config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertManagerConfig {
    /// The issuer's name (OSM's default: `osm-ca`).
    pub issuer_name: String,
    /// `Issuer` (namespaced) or `ClusterIssuer`.
    pub issuer_kind: String,
    /// The issuer's API group (default `cert-manager.io`).
    pub issuer_group: String,
    /// Namespace where CertificateRequests are created.
    pub namespace: String,
    /// How long to wait for the issuer's answer.
    pub timeout: Duration,
    /// Anchors for issuers that do not fill `status.ca`.
    pub ca_from: Option<CaSource>,
}

/// cert-manager's issuers sign the names a CSR carries, not the ones meshca
/// would pass: a CSR must name exactly its identity. Its CA issuer signs
/// no ML-DSA key.
pub const CAPABILITIES: Capabilities = Capabilities {
    names_from_profile: false,
    hint: None,
    post_quantum: PostQuantum::Cannot(
        "cert-manager's issuers do not sign ML-DSA keys; use the tresor or vault provider for post-quantum identities",
    ),
};

/// The cert-manager provider.
pub struct CertManager {
    api: Api<DynamicObject>,
    client: kube::Client,
    resource: ApiResource,
    config: CertManagerConfig,
    anchors: RwLock<Vec<CertificateDer<'static>>>,
    /// When `ca_from` was last read; it is re-read at most every
    /// [`CA_SOURCE_REFRESH`], not on every signature.
    ca_read_at: RwLock<Option<std::time::Instant>>,
    metrics: Arc<CertManagerMetrics>,
}

/// How long anchors read from `ca_from` are reused.
const CA_SOURCE_REFRESH: Duration = Duration::from_secs(60);

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The `CertificateRequest` resource.
fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "CertificateRequest"),
        "certificaterequests",
    )
}

pub(crate) fn pem_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

impl CertManager {
    /// Set up the provider: delete CertificateRequests a previous run left
    /// behind, then learn the trust anchors, from `ca_from` or, when it is
    /// not set, by signing `probe` (the daemon's own identity) and reading
    /// `status.ca`.
    ///
    /// # Errors
    /// [`ProviderError::Misconfigured`] when no anchors can be found, or
    /// the probe's own error.
    pub async fn connect(
        client: kube::Client,
        config: CertManagerConfig,
        metrics: Arc<CertManagerMetrics>,
        probe: (ValidatedCsr, LeafProfile),
    ) -> Result<Self, ProviderError> {
        let resource = resource();
        let api = Api::namespaced_with(client.clone(), &config.namespace, &resource);
        let this = Self {
            api,
            client,
            resource,
            config,
            anchors: RwLock::new(Vec::new()),
            ca_read_at: RwLock::new(None),
            metrics,
        };
        this.sweep_orphans().await;
        if let Some(source) = this.config.ca_from.clone() {
            let anchors = this.read_ca_source(&source).await?;
            *this.anchors.write().await = anchors;
            *this.ca_read_at.write().await = Some(std::time::Instant::now());
        } else {
            this.sign(&probe.0, &probe.1).await?;
            if this.anchors.read().await.is_empty() {
                return Err(ProviderError::Misconfigured(format!(
                    "{} {:?} does not report its CA in status.ca; set provider.cert_manager.ca_from to the Secret or ConfigMap key that holds it",
                    this.config.issuer_kind, this.config.issuer_name
                )));
            }
        }
        tracing::info!(issuer = %this.config.issuer_name, kind = %this.config.issuer_kind, "cert-manager provider ready");
        Ok(this)
    }

    async fn read_ca_source(
        &self,
        source: &CaSource,
    ) -> Result<Vec<CertificateDer<'static>>, ProviderError> {
        let ns = &self.config.namespace;
        let bad = |m: String| ProviderError::Misconfigured(m);
        let (what, pem) = match source {
            CaSource::Secret { name, key } => {
                let s: Secret = Api::namespaced(self.client.clone(), ns)
                    .get(name)
                    .await
                    .map_err(|e| bad(format!("failed to read Secret {ns}/{name}: {e}")))?;
                let v = s.data.and_then(|d| d.get(key).map(|b| b.0.clone()));
                (format!("Secret {ns}/{name} key {key}"), v)
            }
            CaSource::ConfigMap { name, key } => {
                let c: ConfigMap = Api::namespaced(self.client.clone(), ns)
                    .get(name)
                    .await
                    .map_err(|e| bad(format!("failed to read ConfigMap {ns}/{name}: {e}")))?;
                let v = c
                    .data
                    .and_then(|d| d.get(key).map(|s| s.clone().into_bytes()));
                (format!("ConfigMap {ns}/{name} key {key}"), v)
            }
        };
        let certs = pem.map(|p| pem_certs(&p)).unwrap_or_default();
        if certs.is_empty() {
            return Err(bad(format!("{what} holds no PEM certificates")));
        }
        Ok(certs)
    }

    /// Delete CertificateRequests of ours older than twice the timeout:
    /// leftovers of a crash.
    async fn sweep_orphans(&self) {
        let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
        let Ok(list) = self
            .api
            .list(&ListParams::default().labels(&selector))
            .await
        else {
            return;
        };
        let horizon = self.config.timeout * 2;
        for cr in list.items {
            let old = cr.metadata.creation_timestamp.as_ref().is_none_or(|t| {
                let age = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
                Duration::try_from(age).is_ok_and(|a| a > horizon)
            });
            if let (true, Some(name)) = (old, cr.metadata.name.as_deref()) {
                tracing::info!(request = name, "deleting a CertificateRequest left behind");
                let _ = self.api.delete(name, &DeleteParams::default()).await;
            }
        }
    }

    /// Remember anchors an issued request reported.
    async fn learn_anchors(&self, ca: &[CertificateDer<'static>]) {
        let mut anchors = self.anchors.write().await;
        for c in ca {
            if !anchors.contains(c) {
                tracing::info!("learned a trust anchor from cert-manager's status.ca");
                anchors.push(c.clone());
            }
        }
    }
}

#[async_trait]
impl Provider for CertManager {
    fn kind(&self) -> ProviderKind {
        ProviderKind::CertManager
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    /// cert-manager has no revocation: a CertificateRequest's issuer
    /// signs and forgets.
    fn revocation(&self) -> meshca_provider::revocation::Revocation {
        meshca_provider::revocation::Revocation::Cannot(
            "cert-manager has no revocation (an issued CertificateRequest cannot be revoked); deny the identity (meshca identity deny) and keep certificates short (certificates.max_ttl), or sign with Tresor",
        )
    }

    async fn sign(
        &self,
        csr: &ValidatedCsr,
        leaf: &LeafProfile,
    ) -> Result<SignedChain, ProviderError> {
        let mut pem = String::new();
        meshca_provider::pem::encode_block("CERTIFICATE REQUEST", csr.der(), &mut pem);
        let issued = request::issue(
            self,
            base64::engine::general_purpose::STANDARD.encode(pem),
            leaf,
        )
        .await?;
        if self.config.ca_from.is_none() {
            self.learn_anchors(&issued.ca).await;
        }
        let anchors = self.anchors.read().await.clone();
        let chain: Vec<_> = issued
            .chain
            .into_iter()
            .filter(|c| !anchors.contains(c))
            .collect();
        Ok(SignedChain(chain))
    }

    async fn trust_anchors(&self) -> Result<Vec<CertificateDer<'static>>, ProviderError> {
        if let Some(source) = &self.config.ca_from {
            let stale = self
                .ca_read_at
                .read()
                .await
                .is_none_or(|t| t.elapsed() >= CA_SOURCE_REFRESH);
            if stale {
                match self.read_ca_source(source).await {
                    Ok(fresh) => *self.anchors.write().await = fresh,
                    Err(e) => {
                        tracing::warn!(error = %e, "failed to re-read the CA; keeping the last known anchors")
                    }
                }
                *self.ca_read_at.write().await = Some(std::time::Instant::now());
            }
        }
        Ok(self.anchors.read().await.clone())
    }

    async fn health(&self) -> Health {
        match tokio::time::timeout(Duration::from_secs(2), self.client.apiserver_version()).await {
            Ok(Ok(_)) => Health::Healthy,
            Ok(Err(e)) => Health::Unhealthy(format!("the Kubernetes API is unavailable: {e}")),
            Err(_) => Health::Unhealthy("the Kubernetes API did not answer within 2s".into()),
        }
    }
}
