//! The daemon: build the core and every feature from a validated
//! [`Config`], spawn their tasks into one [`Supervisor`], and stop them
//! together.
//!
//! Start-up reads as build → spawn → supervise. CA material is loaded and
//! checked, the features prepare (sinks, a token minter), the first bundle
//! is published and the serving certificate issued, the features start
//! (routes, listeners), and only then does any listener accept, so a
//! daemon that starts can sign. The core's parts are wired in `core`, the
//! listeners in `serve`; features are the list in `features::ALL`.

mod core;
mod serve;

use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::bundle::BundleError;
use crate::cluster::{Cluster, KubeError};
use crate::config::Config;
use crate::feature::{Context, FeatureError, Plug};
use crate::metrics::Metrics;
use crate::provider::BuildError;
use crate::rollout;
use crate::supervisor::{Spawner, Supervisor};

/// Why the daemon could not start.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The signing provider could not be built.
    #[error(transparent)]
    Provider(#[from] BuildError),
    /// The provider did not give its trust anchors.
    #[error("failed to read the provider's trust anchors: {0}")]
    Anchors(#[from] meshca_provider::ProviderError),
    /// The anchors do not make a bundle.
    #[error("failed to build the trust bundle: {0}")]
    Bundle(#[from] BundleError),
    /// The serving certificate could not be issued.
    #[error(transparent)]
    ServingCertificate(#[from] api::ServingError),
    /// The rollout ledger exists but cannot be read.
    #[error(transparent)]
    Ledger(#[from] rollout::ledger::LedgerError),
    /// The root generation (`meshca rotate root`) exists but cannot be
    /// read: signing with an earlier root is not an option.
    #[error(transparent)]
    RootGeneration(#[from] crate::provider::root_generation::GenerationError),
    /// A state file (the token store, the deny-list) exists but cannot be
    /// used: meshca does not start as if it were empty.
    #[error(transparent)]
    StateFile(#[from] Arc<crate::watched::FileError>),
    /// A feature could not start.
    #[error(transparent)]
    Feature(#[from] FeatureError),
    /// The cluster could not be used.
    #[error("failed to use the Kubernetes API: {0}")]
    Kubernetes(#[from] KubeError),
    /// A listener could not be bound.
    #[error("failed to listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A started daemon.
#[derive(Debug)]
pub struct RunningDaemon {
    api_addr: SocketAddr,
    metrics_addr: SocketAddr,
    shutdown: CancellationToken,
    supervisor: JoinHandle<()>,
}

impl RunningDaemon {
    /// Where the signing API listens (useful with port 0).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Where health and metrics are served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// A token that stops the daemon when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stop every task and wait for them (connections are drained).
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        if let Err(e) = self.supervisor.await {
            tracing::error!(error = %e, "the supervisor failed while stopping");
        }
    }

    /// Wait until the shutdown token is cancelled (by a signal handler, for
    /// instance), then stop.
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        self.shutdown().await;
    }
}

/// Start the daemon described by `config`.
///
/// # Errors
/// [`DaemonError`] for anything that prevents serving; whatever was
/// started is stopped again.
pub async fn start(config: Config) -> Result<RunningDaemon, DaemonError> {
    let shutdown = CancellationToken::new();
    let supervisor = Supervisor::new(shutdown.clone());
    let spawner = supervisor.spawner();
    let failed_tasks = supervisor.failures();
    let supervisor = tokio::spawn(supervisor.run());
    match build(&config, &spawner, failed_tasks).await {
        Ok((api_addr, metrics_addr)) => Ok(RunningDaemon {
            api_addr,
            metrics_addr,
            shutdown,
            supervisor,
        }),
        Err(e) => {
            shutdown.cancel();
            let _ = supervisor.await;
            Err(e)
        }
    }
}

/// Build the core and every feature, spawn their tasks; returns the bound
/// addresses of the signing API and the health port.
async fn build(
    config: &Config,
    spawner: &Spawner,
    failed_tasks: watch::Receiver<Vec<&'static str>>,
) -> Result<(SocketAddr, SocketAddr), DaemonError> {
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let metrics = Arc::new(Metrics::new());
    core::remove_debris(config).await;
    let cluster = Cluster::join(config.kubernetes.as_ref(), spawner).await?;
    let signing = core::signing(config, cluster.as_ref(), &metrics, spawner).await?;
    let files = core::state_files(config).await?;
    let core = core::core(config, cluster, &signing, metrics.clone());
    let mut plug = Plug::new(spawner.clone());
    for feature in config.features.iter() {
        feature.prepare(&core, &mut plug).await?;
    }
    let publish = core::publish_bundle(config, &core, &signing, &mut plug, spawner).await;
    let minter = plug.tokens.take();
    let issuer = core::issuer(config, &core, &signing, (files.denied, minter), spawner)
        .with_records(std::mem::take(&mut plug.records))
        .with_crl_url(plug.crl_url.take());
    let renew_serving = Arc::new(Notify::new());
    let serving =
        core::serving_certificate(config, &issuer, &metrics, &renew_serving, spawner).await?;
    let config_rx = core::follow_config(config, spawner);
    let rollout = core::spawn_rollout(
        config,
        &core,
        &signing,
        (&publish, renew_serving),
        &config_rx,
        spawner,
    );
    core::spawn_anchor_refresher(config, &signing, &rollout, &metrics, spawner);
    let cluster_client = core.cluster.as_ref().map(|c| c.client.clone());
    let probes = api::monitor(signing.signer.clone(), cluster_client, metrics, spawner).await;
    let reviewer = core::token_reviewer(config, core.cluster.as_ref());
    let ctx = Context {
        auth: core::authenticator(
            config,
            files.tokens,
            reviewer.as_ref(),
            &core.bundle,
            spawner,
        ),
        spiffe: core::spiffe(config, &core, &mut plug),
        features: plug.project(&config_rx, |c| c.features.clone()),
        core: &core,
        issuer,
        reviewer,
        serving,
        max_body_bytes: config.api.max_body_bytes,
        rollout,
        probes,
    };
    for feature in config.features.iter() {
        feature.start(&ctx, &mut plug).await?;
    }
    serve::serve(config, ctx, plug, (publish, failed_tasks), spawner).await
}
