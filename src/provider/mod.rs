//! Building the signing provider a configuration names, with what it needs
//! from the rest of the daemon ([`Deps`]), and the task that keeps it
//! working.
//!
//! The same [`build`] serves the start and every rollout: a provider rolled
//! in at run time records into the daemon's metrics and runs its task in
//! the supervised set, under a token the rollout cancels at retire.
//!
//! Adding a provider: a crate under `providers/`, an arm in
//! [`ProviderConfig`] (with its `Raw…` section in [`config`]) and one in
//! [`build`].

mod config;
mod tresor_root;

pub use config::{section, ProviderConfig, ProviderContext, RawProvider};

use std::sync::Arc;
use std::time::Duration;

use meshca_cert_manager::{CertManager, CertManagerMetrics};
use meshca_provider::{Checked, Identity, LeafProfile, Provider, ProviderError, ValidatedCsr};
use meshca_tresor::{CaCertificate, RootSource, Tresor, TresorConfig, TresorError};
use meshca_vault::Vault;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::bundle::SecretRef;
use crate::cluster::{Cluster, KubeError};
use crate::supervisor::Spawner;

/// Why a provider could not be built.
#[derive(Debug, Error)]
pub enum BuildError {
    /// Tresor's CA could not be loaded or created.
    #[error("failed to set up the Tresor CA: {0}")]
    Tresor(#[from] TresorError),
    /// The backend refused or could not be reached.
    #[error("failed to set up the signing provider: {0}")]
    Provider(#[from] ProviderError),
    /// The root Secret could not be used.
    #[error("failed to keep the Tresor root in the cluster: {0}")]
    Kubernetes(#[from] KubeError),
    /// The provider needs a cluster and meshca runs without one.
    #[error("the {0} provider needs a cluster: set kubernetes.kubeconfig or kubernetes.enabled: true, or run in a pod")]
    NeedsCluster(&'static str),
}

/// What building a provider needs from the rest of the daemon; built once
/// at start and kept for rollouts.
#[derive(Clone, Debug)]
pub struct Deps {
    /// The cluster, when meshca runs with one.
    pub cluster: Option<Cluster>,
    /// The bundle Secret (an OSM root in it is imported once by Tresor).
    pub bundle_secret: Option<SecretRef>,
    /// The daemon's identity, for cert-manager's start-up probe.
    pub daemon_identity: Identity,
    /// The probe's lifetime.
    pub probe_ttl: Duration,
    /// Where the cert-manager provider records, whenever it is built.
    pub cert_manager_metrics: Arc<CertManagerMetrics>,
    /// Where the provider's task runs.
    pub spawner: Spawner,
}

/// A built provider: what signs, behind the [`Checked`] gate, and the
/// token that stops its background task.
#[derive(Debug)]
pub struct Built {
    /// The provider.
    pub provider: Checked,
    /// Cancel to stop the provider's task (token renewal, re-login).
    pub stop: CancellationToken,
}

/// Build the provider `config` names.
///
/// # Errors
/// [`BuildError`]; nothing is left running on error.
pub async fn build(config: &ProviderConfig, deps: &Deps) -> Result<Built, BuildError> {
    let stop = deps.spawner.child_token();
    let provider: Arc<dyn Provider> = match config {
        ProviderConfig::Tresor(t) => Arc::new(tresor(t, deps).await?),
        ProviderConfig::Vault(v) => {
            let probe = probe_request(&deps.daemon_identity, deps.probe_ttl)?;
            let (vault, task) = Vault::connect(v.clone(), probe, stop.clone()).await?;
            deps.spawner.spawn("vault-token", stop.clone(), task);
            Arc::new(vault)
        }
        ProviderConfig::CertManager(c) => {
            let cluster = deps
                .cluster
                .as_ref()
                .ok_or(BuildError::NeedsCluster("cert-manager"))?;
            let provider = CertManager::connect(
                cluster.client.clone(),
                c.clone(),
                deps.cert_manager_metrics.clone(),
                probe_request(&deps.daemon_identity, deps.probe_ttl)?,
            )
            .await?;
            Arc::new(provider)
        }
    };
    Ok(Built {
        provider: Checked::new(provider),
        stop,
    })
}

/// Tresor; with a cluster a generated root lives in its own Secret (the
/// post-quantum one in another, `<root_secret>-post-quantum`), so every
/// replica and every restart signs with the same roots.
async fn tresor(config: &TresorConfig, deps: &Deps) -> Result<Tresor, BuildError> {
    let root = tresor_root(&config.root, deps, "").await?;
    let post_quantum = match &config.post_quantum {
        Some(source) => Some(tresor_root(source, deps, "-post-quantum").await?),
        None => None,
    };
    Ok(Tresor::from_roots(
        root,
        post_quantum,
        config.intermediate_validity,
    )?)
}

/// One of Tresor's roots: from its files or its directory (on the
/// blocking pool), or, generated with a cluster, from the Secret named
/// `<root_secret><suffix>`.
async fn tresor_root(
    source: &RootSource,
    deps: &Deps,
    suffix: &str,
) -> Result<CaCertificate, BuildError> {
    let (
        Some(cluster),
        RootSource::Generated {
            algorithm,
            validity,
            common_name,
            ..
        },
    ) = (&deps.cluster, source)
    else {
        let source = source.clone();
        let stored = tokio::task::spawn_blocking(move || source.load_or_create())
            .await
            .map_err(|e| BuildError::Provider(ProviderError::Internal(e.to_string())))??;
        let what = if stored.created {
            "generated"
        } else {
            "loaded"
        };
        tracing::info!(subject = %stored.root.subject(), "{what} a Tresor root");
        return Ok(stored.root);
    };
    let (algorithm, validity, cn) = (*algorithm, *validity, common_name.clone());
    let k = &cluster.config;
    let secret = format!("{}{suffix}", k.root_secret);
    // OSM kept its root beside the bundle; only the classical one can be
    // migrated from there.
    let osm = deps.bundle_secret.as_ref().filter(|_| suffix.is_empty());
    let (root, origin) = tresor_root::load_or_create(
        cluster.client.clone(),
        &k.namespace,
        &secret,
        osm,
        move || CaCertificate::generate_root(algorithm, validity, &cn),
    )
    .await?;
    tracing::info!(subject = %root.subject(), secret = %format!("{}/{secret}", k.namespace), ?origin, "Tresor root ready");
    Ok(root)
}

/// A throwaway request for the daemon's own identity, with which a
/// provider can check at start that signing works and learn its anchors.
fn probe_request(
    identity: &Identity,
    ttl: Duration,
) -> Result<(ValidatedCsr, LeafProfile), ProviderError> {
    let internal = |m: String| ProviderError::Internal(m);
    let key = crate::keys::generate().map_err(|e| internal(e.to_string()))?;
    let csr = crate::keys::request_for(&key, identity, &[]).map_err(|e| internal(e.to_string()))?;
    let csr = ValidatedCsr::new(csr.der(), identity).map_err(|e| internal(e.to_string()))?;
    Ok((csr, LeafProfile::workload(identity.clone(), ttl)))
}
