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
pub mod root_generation;
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

use meshca_provider::crypto::custody::{CustodyError, CustodyKey};

use crate::bundle::SecretRef;
use crate::cluster::{Cluster, KubeError};
use crate::custody::{self, CustodyConfig, CustodyMetrics};
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
    /// The custodian of the root's key refused or cannot be reached.
    #[error("failed to use the key custody")]
    Custody(#[from] CustodyError),
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
    /// Where a custodian of Tresor's root key records, whenever one is
    /// connected.
    pub custody_metrics: CustodyMetrics,
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
        ProviderConfig::Tresor(t, None) => Arc::new(tresor(t, deps).await?),
        ProviderConfig::Tresor(t, Some(custody)) => {
            Arc::new(tresor_in_custody(t, custody, deps, &stop).await?)
        }
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
    // A rotated root's Secret is named as its directory: `<root_secret>-g<N>`.
    let generation = match &config.root {
        RootSource::Generated { generation, .. } => *generation,
        _ => 0,
    };
    let suffix = root_generation::named("", generation);
    let root = tresor_root(&config.root, deps, &suffix).await?;
    let post_quantum = match &config.post_quantum {
        Some(source) => Some(tresor_root(source, deps, "-post-quantum").await?),
        None => None,
    };
    Ok(Tresor::from_roots(root, post_quantum, config.intermediate_validity).await?)
}

/// Tresor whose root key `custody` holds: the custodian is connected (its
/// credentials kept fresh until the provider is retired), the root's key
/// found or made there, and the root's certificate loaded or made and
/// kept (in its directory, or the Secret [`custody_secret`]).
async fn tresor_in_custody(
    config: &TresorConfig,
    custody: &CustodyConfig,
    deps: &Deps,
    stop: &CancellationToken,
) -> Result<Tresor, BuildError> {
    let RootSource::InCustody {
        dir,
        key_name,
        algorithm,
        validity,
        common_name,
    } = &config.root
    else {
        return Err(BuildError::Provider(ProviderError::Internal(
            "a root in custody is configured without its key".into(),
        )));
    };
    let (custodian, task) = custody::connect(custody, &deps.custody_metrics, stop.clone()).await?;
    if let Some(task) = task {
        deps.spawner.spawn("key-custody", stop.clone(), task);
    }
    let key = custodian.key(key_name, *algorithm).await?;
    let (validity, cn) = (*validity, common_name.clone());
    let root = match &deps.cluster {
        Some(cluster) => {
            let k = &cluster.config;
            let secret = custody_secret(&k.root_secret, custody, key_name);
            let root = tresor_root::load_or_create_in_custody(
                cluster.client.clone(),
                &k.namespace,
                &secret,
                key,
                validity,
                &cn,
            )
            .await?;
            tracing::info!(subject = %root.subject(), secret = %format!("{}/{secret}", k.namespace), "Tresor root in custody ready");
            root
        }
        None => custody_root_in_dir(dir.clone(), key, validity, &cn).await?,
    };
    let tresor = Tresor::from_roots(root, None, config.intermediate_validity).await?;
    Ok(tresor.with_custody(custodian))
}

/// The Secret keeping the certificate of the root whose key is `key_name`
/// with `custody`: one per custodian and key, so that a move to another
/// key is a new root.
pub fn custody_secret(root_secret: &str, custody: &CustodyConfig, key_name: &str) -> String {
    format!("{root_secret}-{}-{key_name}", custody.backend.name())
}

/// The root in custody whose certificate is kept in `dir`: loaded, or
/// made by the custodian and kept (on the blocking pool).
async fn custody_root_in_dir(
    dir: std::path::PathBuf,
    key: Arc<dyn CustodyKey>,
    validity: Duration,
    common_name: &str,
) -> Result<CaCertificate, BuildError> {
    let blocking =
        |e: tokio::task::JoinError| BuildError::Provider(ProviderError::Internal(e.to_string()));
    let read = dir.clone();
    let stored = tokio::task::spawn_blocking(move || meshca_tresor::load_custody_root(&read))
        .await
        .map_err(blocking)??;
    if let Some(pem) = stored {
        let root = CaCertificate::from_custody(&pem, key)?;
        tracing::info!(subject = %root.subject(), dir = %dir.display(), "loaded the Tresor root in custody");
        return Ok(root);
    }
    let root = CaCertificate::generate_root_in(key.clone(), validity, common_name).await?;
    let write = dir.clone();
    let (kept, root) = tokio::task::spawn_blocking(move || {
        meshca_tresor::save_custody_root(&write, &root).map(|kept| (kept, root))
    })
    .await
    .map_err(blocking)??;
    if kept {
        tracing::info!(subject = %root.subject(), dir = %dir.display(), key = key.name(), "generated a new Tresor root in custody");
        return Ok(root);
    }
    // Another process kept its root first: use theirs.
    let theirs = tokio::task::spawn_blocking(move || meshca_tresor::load_custody_root(&dir))
        .await
        .map_err(blocking)??
        .ok_or_else(|| {
            BuildError::Provider(ProviderError::Internal(
                "the root kept by another process vanished".into(),
            ))
        })?;
    Ok(CaCertificate::from_custody(&theirs, key)?)
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
