//! Wiring of the daemon: build the provider, the bundle, the issuer and the
//! servers from a validated [`Config`], spawn every background task with one
//! shared [`CancellationToken`], and stop them together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshca_cert_manager::{CertManager, CertManagerMetrics};
use meshca_provider::{Checked, Provider, ProviderError};
use meshca_provider::{LeafProfile, ValidatedCsr};
use meshca_tresor::{CaCertificate, RootSource, Tresor, TresorConfig, TresorError};
use meshca_vault::Vault;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState, Readiness};
use crate::auth::{Authenticator, TokenStore};
use crate::bundle::{self, BundleError, BundleSink, FileSink, TrustBundle};
use crate::config::{Config, ProviderConfig};
use crate::issuer::{IssueError, Issuer};
use crate::kube::{SecretSink, TokenReviewer};
use crate::metrics::Metrics;
use crate::rollout::{AnchorSet, Build, Rollout, RolloutStatus, Signer, StateStore};

/// The ConfigMap (in meshca's namespace) holding the rollout state.
const ROLLOUT_CONFIGMAP: &str = "meshca-rollout";

/// Why the daemon could not start.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The Tresor CA could not be set up.
    #[error("failed to set up the Tresor CA: {0}")]
    Tresor(#[from] TresorError),
    /// The provider could not be set up or did not give its trust anchors.
    #[error("failed to set up the signing provider: {0}")]
    Anchors(#[from] ProviderError),
    /// The anchors do not make a bundle.
    #[error("failed to build the trust bundle: {0}")]
    Bundle(#[from] BundleError),
    /// The serving certificate could not be issued.
    #[error("failed to issue the signing API's own certificate: {0}")]
    ServingCertificate(#[from] IssueError),
    /// The cluster could not be used.
    #[error("failed to use the Kubernetes API: {0}")]
    Kubernetes(#[from] crate::kube::KubeError),
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
    tasks: JoinSet<()>,
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
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Wait until the shutdown token is cancelled (by a signal handler, for
    /// instance), then stop.
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        self.shutdown().await;
    }
}

/// A provider and, for providers that need one, the task that keeps it
/// working (token renewal).
type BuiltProvider = (
    Arc<dyn Provider>,
    Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
);

async fn build_provider(
    config: &Config,
    cluster: Option<&kube::Client>,
    metrics: &mut Metrics,
    shutdown: &CancellationToken,
) -> Result<BuiltProvider, DaemonError> {
    match &config.provider {
        ProviderConfig::CertManager(c) => {
            let Some(client) = cluster else {
                return Err(DaemonError::Anchors(ProviderError::Misconfigured(
                    "the cert-manager provider needs a cluster".into(),
                )));
            };
            let metrics = Arc::new(CertManagerMetrics::register(metrics.registry_mut()));
            let probe = probe_request(config)?;
            let provider = CertManager::connect(client.clone(), c.clone(), metrics, probe).await?;
            Ok((Arc::new(provider), None))
        }
        // With a cluster, a generated root lives in its own Secret.
        ProviderConfig::Tresor(TresorConfig {
            root:
                RootSource::Generated {
                    algorithm,
                    validity,
                    common_name,
                    ..
                },
            intermediate_validity,
        }) if cluster.is_some() => {
            let (Some(client), Some(k)) = (cluster, &config.kubernetes) else {
                unreachable!("guarded by cluster.is_some()")
            };
            let (algorithm, validity, cn) = (*algorithm, *validity, common_name.clone());
            let (root, origin) = crate::kube::root::load_or_create(
                client.clone(),
                &k.namespace,
                &k.root_secret,
                config.bundle.secret.as_ref(),
                move || CaCertificate::generate_root(algorithm, validity, &cn),
            )
            .await?;
            tracing::info!(subject = %root.subject(), secret = %format!("{}/{}", k.namespace, k.root_secret), ?origin, "Tresor root ready");
            Ok((
                Arc::new(Tresor::from_root(root, *intermediate_validity)?),
                None,
            ))
        }
        ProviderConfig::Tresor(t) => {
            let t = t.clone();
            let tresor = tokio::task::spawn_blocking(move || Tresor::new(&t))
                .await
                .map_err(|e| DaemonError::Anchors(ProviderError::Internal(e.to_string())))??;
            Ok((Arc::new(tresor), None))
        }
        ProviderConfig::Vault(v) => {
            let (vault, task) = Vault::connect(v.clone(), shutdown.clone()).await?;
            Ok((Arc::new(vault), Some(Box::pin(task))))
        }
    }
}

/// Start the daemon described by `config`.
///
/// CA material is loaded and checked, the first bundle is built and the
/// serving certificate issued before any listener accepts, so a daemon that
/// starts is able to sign.
///
/// # Errors
/// [`DaemonError`] for anything that prevents serving.
pub async fn start(config: Config) -> Result<RunningDaemon, DaemonError> {
    let shutdown = CancellationToken::new();
    let mut metrics = Metrics::new();

    let mut tasks = JoinSet::new();

    let cluster = match &config.kubernetes {
        Some(k) => Some(crate::kube::connect(k).await?),
        None => None,
    };
    let leader = match (&cluster, &config.kubernetes) {
        (Some(client), Some(k)) => {
            let (leader, task) = crate::kube::leader::elect(
                client.clone(),
                &k.namespace,
                &k.lease_name,
                replica_identity(),
                k.lease_duration,
                shutdown.clone(),
            );
            tasks.spawn(task);
            Some(leader)
        }
        _ => None,
    };

    let (provider, provider_task) =
        build_provider(&config, cluster.as_ref(), &mut metrics, &shutdown).await?;
    let metrics = Arc::new(metrics);
    if let Some(task) = provider_task {
        tasks.spawn(task);
    }
    let provider = Checked::new(provider);
    tracing::info!(provider = %provider.kind(), "signing provider ready");

    // Anchors retained by an earlier signer change stay in the bundle.
    let extra_anchors = Arc::new(AnchorSet::default());
    // In a cluster the ConfigMap outlives the pod's state directory.
    let persisted = match (&cluster, &config.kubernetes) {
        (Some(client), Some(k)) => {
            crate::kube::rollout_store::load(client, &k.namespace, ROLLOUT_CONFIGMAP)
                .await?
                .and_then(|json| RolloutStatus::parse(&json))
        }
        _ => None,
    }
    .or_else(|| RolloutStatus::load(&config.state_dir));
    let restored = crate::rollout::restore(
        persisted,
        &extra_anchors,
        provider.kind().as_str(),
        config.certificates.max_ttl,
    );
    let mut anchors = provider.trust_anchors().await?;
    anchors.extend(extra_anchors.snapshot());
    let signer = Signer::new(provider, restored.generation);
    let bundle = TrustBundle::new(anchors)?;
    metrics.trust_anchor_expiry.set(bundle.earliest_expiry());
    let (bundle_tx, bundle_rx) = tokio::sync::watch::channel(Arc::new(bundle));

    let resync_now = Arc::new(Notify::new());
    let mut sinks: Vec<Arc<dyn BundleSink>> =
        vec![Arc::new(FileSink::new(config.bundle.file.clone()))];
    if let (Some(client), Some(secret), Some(leader)) = (&cluster, &config.bundle.secret, &leader) {
        let sink = SecretSink::new(client.clone(), secret.clone(), leader.clone());
        tasks.spawn(sink.watch_changes(resync_now.clone(), shutdown.clone()));
        sinks.push(Arc::new(sink));
    }
    let (publish_status, publisher) = bundle::publisher(
        sinks,
        bundle_rx.clone(),
        config.bundle.refresh_interval,
        resync_now,
        metrics.clone(),
        shutdown.clone(),
    );
    tasks.spawn(publisher);
    // Serve only once the bundle is out where workloads read it, unless a
    // sink keeps failing: then serve anyway, with /readyz saying why.
    if let Err(why) = publish_status.wait_published(Duration::from_secs(10)).await {
        tracing::warn!(%why, "serving before every bundle sink holds the bundle");
    }
    tasks.spawn(crate::rollout::anchor_refresher(
        signer.clone(),
        extra_anchors.clone(),
        bundle_tx,
        config.bundle.refresh_interval,
        metrics.clone(),
        shutdown.clone(),
    ));

    let issuer = Issuer::new(
        signer.clone(),
        config.certificates,
        bundle_rx.clone(),
        metrics.clone(),
    );
    let renew_serving_now = Arc::new(Notify::new());
    let (serving_tls, renew_serving) = api::serving_certificate(
        issuer.clone(),
        config.daemon_identity.clone(),
        config.server_names.clone(),
        metrics.clone(),
        renew_serving_now.clone(),
        shutdown.clone(),
    )
    .await?;
    tasks.spawn(renew_serving);

    // Settings that may change at run time follow the config file.
    let config_rx = match &config.source {
        Some(path) => {
            let (rx, task) =
                crate::reload::watch_config(path.clone(), config.clone(), shutdown.clone());
            tasks.spawn(task);
            rx
        }
        None => {
            let (tx, rx) = tokio::sync::watch::channel(Arc::new(config.clone()));
            let done = shutdown.clone();
            tasks.spawn(async move {
                done.cancelled().await;
                drop(tx);
            });
            rx
        }
    };
    let rollout_writer = match (&cluster, &config.kubernetes, &leader) {
        (Some(client), Some(k), Some(leader)) => {
            let (tx, rx) = tokio::sync::watch::channel(String::new());
            tasks.spawn(crate::kube::rollout_store::writer(
                client.clone(),
                k.namespace.clone(),
                ROLLOUT_CONFIGMAP.to_owned(),
                rx,
                leader.clone(),
                shutdown.clone(),
            ));
            Some(tx)
        }
        _ => None,
    };
    // A change of signer in the config file is rolled out in stages.
    let build: Build = {
        let cluster = cluster.clone();
        let shutdown = shutdown.clone();
        Arc::new(move |cfg: Arc<Config>| {
            let (cluster, shutdown) = (cluster.clone(), shutdown.clone());
            Box::pin(async move {
                // A provider rolled in at run time reports no metrics of
                // its own (the registry is fixed once serving).
                let mut scratch = Metrics::new();
                let (provider, task) =
                    build_provider(&cfg, cluster.as_ref(), &mut scratch, &shutdown)
                        .await
                        .map_err(|e| e.to_string())?;
                if let Some(task) = task {
                    tokio::spawn(task);
                }
                Ok(Checked::new(provider))
            })
        })
    };
    let (rollout_status, rollout_task) = Rollout {
        signer: signer.clone(),
        anchors: extra_anchors,
        bundle: bundle_rx.clone(),
        publish: publish_status.clone(),
        renew_serving: renew_serving_now,
        store: StateStore {
            state_dir: config.state_dir.clone(),
            cluster: rollout_writer,
        },
        build,
        metrics: metrics.clone(),
    }
    .run(
        restored,
        config_rx.clone(),
        |c| c.rotation.propagation_delay,
        shutdown.clone(),
    );
    tasks.spawn(rollout_task);

    if config.ingress.enabled {
        if let (Some(client), Some(leader)) = (&cluster, &leader) {
            let resource = crate::kube::ingress::discover_ingress_api(client).await?;
            tasks.spawn(crate::kube::ingress::reconciler(
                client.clone(),
                resource,
                issuer.clone(),
                config_rx.clone(),
                bundle_rx.clone(),
                leader.clone(),
                shutdown.clone(),
            ));
        }
    }

    let mut auth = Authenticator::new(
        TokenStore::new(config.auth.tokens_file.clone()),
        config.trust_domain.clone(),
        bundle_rx.clone(),
    );
    if let (Some(client), Some(review)) = (&cluster, &config.auth.kubernetes) {
        auth = auth.with_kubernetes(Arc::new(TokenReviewer::new(
            client.clone(),
            review.audience.clone(),
            config.trust_domain.clone(),
            review.cache_ttl,
        )));
    }
    let state = Arc::new(ApiState::new(
        issuer,
        auth,
        bundle_rx,
        metrics.clone(),
        config.api,
        rollout_status,
    ));

    let api_listener = bind(config.listen).await?;
    let metrics_listener = bind(config.metrics_listen).await?;
    let api_addr = local_addr(&api_listener, config.listen)?;
    let metrics_addr = local_addr(&metrics_listener, config.metrics_listen)?;

    tasks.spawn(api::serve_tls(
        api_listener,
        serving_tls,
        api::router(state),
        shutdown.clone(),
    ));
    let health = api::health_router(Readiness {
        signer,
        publish: publish_status,
        metrics,
        cluster: cluster.clone(),
    });
    let health_shutdown = shutdown.clone();
    tasks.spawn(async move {
        if let Err(e) = axum::serve(metrics_listener, health)
            .with_graceful_shutdown(health_shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "the health server failed");
        }
    });

    tracing::info!(%api_addr, %metrics_addr, "meshca is serving");
    Ok(RunningDaemon {
        api_addr,
        metrics_addr,
        shutdown,
        tasks,
    })
}

/// A throwaway request for the daemon's own identity, with which a
/// provider can check at start that signing works and learn its anchors.
fn probe_request(config: &Config) -> Result<(ValidatedCsr, LeafProfile), DaemonError> {
    let internal = |m: String| DaemonError::Anchors(ProviderError::Internal(m));
    let identity = &config.daemon_identity;
    let key = crate::keys::generate().map_err(|e| internal(e.to_string()))?;
    let csr = crate::keys::request_for(&key, identity, &[]).map_err(|e| internal(e.to_string()))?;
    let csr = ValidatedCsr::new(csr.der(), identity).map_err(|e| internal(e.to_string()))?;
    Ok((
        csr,
        LeafProfile::workload(identity.clone(), config.certificates.min_ttl),
    ))
}

/// This replica's name in the Lease: the pod name when there is one.
fn replica_identity() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("meshca-{}", std::process::id()))
        + &format!("-{:08x}", rand_u32())
}

fn rand_u32() -> u32 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u32::from_be_bytes(b)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind { addr, source })
}

fn local_addr(l: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, DaemonError> {
    l.local_addr()
        .map_err(|source| DaemonError::Bind { addr, source })
}
