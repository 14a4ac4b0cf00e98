//! The daemon: build every component from a validated [`Config`], spawn
//! their tasks into one [`Supervisor`], and stop them together.
//!
//! Start-up reads as build → spawn → supervise. CA material is loaded and
//! checked, the first bundle is published and the serving certificate
//! issued before any listener accepts, so a daemon that starts can sign.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState, Bundles, Readiness};
use crate::auth::{Authenticator, TokenReviewer, TokenStore};
use crate::bundle::{
    self, BundleError, BundleReceiver, BundleSink, ClusterTrustBundleSink, FileSink, PublishStatus,
    SecretSink, TrustBundle,
};
use crate::cluster::{Cluster, KubeError};
use crate::config::Config;
use crate::events;
use crate::federation::{self, EndpointProfile, FederationError};
use crate::ingress::{self, Mesh};
use crate::issuer::{deny_configmap, Admission, DenyList, Issuer};
use crate::istio_ca;
use crate::jwt;
use crate::listener::{self, Limits, ServingTls};
use crate::metrics::Metrics;
use crate::pod_certificates::{self, PodCertificatesConfig};
use crate::provider::{self, BuildError};
use crate::rollout::{self, Rollout, RolloutStatus, Signer, Target};
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
    /// A federated bundle, kept or configured, cannot be used.
    #[error(transparent)]
    Federation(#[from] FederationError),
    /// The bundle endpoint's certificate files cannot be used.
    #[error(transparent)]
    BundleEndpoint(#[from] federation::endpoint::EndpointError),
    /// The JWT signing keys are stored but cannot be used.
    #[error(transparent)]
    JwtKeys(#[from] jwt::StoreError),
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

/// What signs and what the bundle holds, as built at start.
struct Signing {
    signer: Arc<Signer>,
    restored: RolloutStatus,
    bundle_tx: watch::Sender<Arc<TrustBundle>>,
    bundle: BundleReceiver,
    deps: provider::Deps,
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

/// Build every component and spawn its task; returns the bound addresses.
async fn build(
    config: &Config,
    spawner: &Spawner,
    failed_tasks: watch::Receiver<Vec<&'static str>>,
) -> Result<(SocketAddr, SocketAddr), DaemonError> {
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let metrics = Arc::new(Metrics::new());
    remove_debris(config).await;
    let cluster = Cluster::join(config.kubernetes.as_ref(), spawner).await?;
    let signing = signing(config, cluster.as_ref(), &metrics, spawner).await?;
    let pod_certificates = pod_certificates(config, cluster.as_ref()).await;
    let publish = publish_bundle(
        config,
        cluster.as_ref(),
        pod_certificates.as_ref(),
        &signing,
        &metrics,
        spawner,
    )
    .await;

    let admission = Arc::new(Admission::new(
        config.api.max_in_flight,
        config.api.per_identity_per_second,
        config.api.per_identity_burst,
    ));
    let issuer = Issuer::new(
        signing.signer.clone(),
        config.certificates,
        signing.bundle.clone(),
        metrics.clone(),
        deny_list(config, cluster.as_ref(), spawner).await,
        admission,
    );
    let jwt = match &config.jwt_svids {
        Some(jwt) => Some(
            jwt::start(
                jwt.clone(),
                config.rotation.propagation_delay,
                jwt_key_store(config, cluster.as_ref()),
                metrics.clone(),
                spawner,
            )
            .await?,
        ),
        None => None,
    };
    let issuer = match &jwt {
        Some(jwt) => issuer.with_tokens(Arc::new(jwt.clone())),
        None => issuer,
    };
    let renew_serving = Arc::new(Notify::new());
    let serving_tls =
        serving_certificate(config, &issuer, &metrics, &renew_serving, spawner).await?;

    let config_rx = follow_config(config, spawner);
    let rollout = spawn_rollout(
        config,
        cluster.as_ref(),
        &signing,
        &publish,
        renew_serving,
        &config_rx,
        &metrics,
        spawner,
    );
    spawn_anchor_refresher(config, &signing, &rollout, &metrics, spawner);
    if let Some(cluster) = cluster.as_ref().filter(|_| config.ingress.enabled) {
        spawn_ingress(
            config,
            cluster,
            &issuer,
            &signing.bundle,
            &config_rx,
            spawner,
        )
        .await?;
    }

    if let (Some(cluster), Some(settings)) = (cluster.as_ref(), pod_certificates) {
        let deps = pod_certificates::SignerDeps {
            issuer: issuer.clone(),
            trust_domain: config.trust_domain.clone(),
            metrics: metrics.clone(),
        };
        spawner.spawn_child("pod-certificate-signer", |token| {
            pod_certificates::signer(cluster, settings, deps, token)
        });
    }

    let probes = api::monitor(
        signing.signer.clone(),
        cluster.as_ref().map(|c| c.client.clone()),
        metrics.clone(),
        spawner,
    )
    .await;
    if let Some(cluster) = cluster.as_ref() {
        spawner.spawn_child("events", |token| {
            events::announcer(cluster, rollout.clone(), probes.clone(), token)
        });
    }
    let federation = federation::start(
        &config.federation,
        &config.state_dir,
        cluster.as_ref(),
        &metrics,
        spawner,
    )
    .await?;
    let bundles = Bundles {
        jwt,
        trust_domain: config.trust_domain.clone(),
        refresh_hint: config
            .federation
            .endpoint
            .as_ref()
            .map_or(federation::DEFAULT_REFRESH, |e| e.refresh_hint),
        federation: federation.clone(),
    };
    let reviewer = token_reviewer(config, cluster.as_ref());
    let auth = authenticator(config, reviewer.as_ref(), &signing.bundle, spawner).await;
    if let Some(istio) = &config.istio_ca {
        let deps = istio_ca::Deps {
            issuer: issuer.clone(),
            auth: auth.clone(),
            reviewer,
            cluster: cluster.as_ref(),
            tls: serving_tls.clone(),
            metrics: metrics.clone(),
            trust_domain: config.trust_domain.clone(),
            bundle: signing.bundle.clone(),
        };
        istio_ca::serve(istio, deps, spawner)
            .await
            .map_err(|source| DaemonError::Bind {
                addr: istio.listen,
                source,
            })?;
    }
    let state = Arc::new(ApiState::new(
        issuer,
        auth,
        signing.bundle.clone(),
        config.api.max_body_bytes,
        rollout,
        bundles,
    ));
    let readiness = Readiness {
        probes,
        publish,
        failed_tasks,
        metrics,
        federation,
    };
    serve(config, state, serving_tls, readiness, spawner).await
}

/// Where the JWT signing keys live: the Secret every replica shares in a
/// cluster, else the state directory.
fn jwt_key_store(config: &Config, cluster: Option<&Cluster>) -> jwt::KeyStore {
    jwt::KeyStore::new(
        cluster.map(|c| (c.client.clone(), c.config.namespace.as_str())),
        &config.state_dir,
    )
}

/// The deny-list file and, in a cluster, the ConfigMap every replica
/// follows.
async fn deny_list(config: &Config, cluster: Option<&Cluster>, spawner: &Spawner) -> DenyList {
    let list = DenyList::open(config.auth.denied_file.clone()).await;
    spawner.spawn_child("deny-list-file", |token| list.follow_file(token));
    let Some(cluster) = cluster else {
        return list;
    };
    let rx = spawner.spawn_with("deny-list-watch", |token| {
        deny_configmap::follow(cluster.client.clone(), &cluster.config.namespace, token)
    });
    list.with_cluster(rx)
}

/// Temporary files an earlier, killed run left where meshca writes
/// atomically: the state directory, the bundle's and the tokens'.
async fn remove_debris(config: &Config) {
    let dirs: Vec<_> = [
        Some(config.state_dir.as_path()),
        config.bundle.file.parent(),
        config.auth.tokens_file.parent(),
    ]
    .into_iter()
    .flatten()
    .map(std::path::Path::to_path_buf)
    .collect();
    let _ = tokio::task::spawn_blocking(move || {
        for dir in dirs {
            crate::store::fs::remove_stale_temporaries(&dir);
        }
    })
    .await;
}

/// The provider, the signer slot around it, the anchors retained by an
/// earlier rollout and the first bundle.
async fn signing(
    config: &Config,
    cluster: Option<&Cluster>,
    metrics: &Arc<Metrics>,
    spawner: &Spawner,
) -> Result<Signing, DaemonError> {
    let deps = provider::Deps {
        cluster: cluster.cloned(),
        bundle_secret: config.bundle.secret.clone(),
        daemon_identity: config.daemon_identity.clone(),
        probe_ttl: config.certificates.min_ttl,
        cert_manager_metrics: metrics.cert_manager.clone(),
        spawner: spawner.clone(),
    };
    let built = provider::build(&config.provider, &deps).await?;
    tracing::info!(provider = %built.provider.kind(), "signing provider ready");

    let (persisted, _) = ledger_places(config, cluster).load().await?;
    let now = time::OffsetDateTime::now_utc();
    let restored = RolloutStatus::restored(
        persisted,
        built.provider.kind().as_str(),
        config.certificates.max_ttl,
        now,
    );
    if !restored.retained.is_empty() {
        tracing::info!(
            sets = restored.retained.len(),
            "kept anchors retained before the restart"
        );
    }
    let mut anchors = built.provider.trust_anchors().await?;
    anchors.extend(restored.extra_anchors(now));
    let bundle = TrustBundle::new(anchors)?;
    metrics.record_anchors(bundle.anchors());
    let (bundle_tx, bundle_rx) = watch::channel(Arc::new(bundle));
    Ok(Signing {
        signer: Signer::new(built.provider, built.stop, restored.generation),
        restored,
        bundle_tx,
        bundle: bundle_rx,
        deps,
    })
}

/// Where the rollout ledger is persisted.
fn ledger_places(config: &Config, cluster: Option<&Cluster>) -> rollout::ledger::Places {
    rollout::ledger::Places::new(
        &config.state_dir,
        cluster.map(|c| (c.client.clone(), c.config.namespace.as_str())),
    )
}

/// The pod-certificate settings, when they are on and the cluster serves
/// the API (Kubernetes 1.37); otherwise meshca runs without them, said
/// once.
async fn pod_certificates(
    config: &Config,
    cluster: Option<&Cluster>,
) -> Option<PodCertificatesConfig> {
    let cluster = cluster.filter(|_| config.pod_certificates.enabled)?;
    if pod_certificates::served(&cluster.client).await {
        tracing::info!(
            signer = config.pod_certificates.signer_name.as_str(),
            "signing pod certificates"
        );
        Some(config.pod_certificates.clone())
    } else {
        tracing::warn!("the cluster does not serve certificates.k8s.io/v1 PodCertificateRequests and ClusterTrustBundles (Kubernetes 1.37); running without pod certificates");
        None
    }
}

/// The bundle publisher and its sinks: the file always, the Secret with a
/// cluster, the ClusterTrustBundle with pod certificates. Waits (briefly)
/// until every sink holds the first bundle.
async fn publish_bundle(
    config: &Config,
    cluster: Option<&Cluster>,
    pod_certificates: Option<&PodCertificatesConfig>,
    signing: &Signing,
    metrics: &Arc<Metrics>,
    spawner: &Spawner,
) -> PublishStatus {
    let resync_now = Arc::new(Notify::new());
    let file = FileSink::new(config.bundle.file.clone());
    spawner.spawn_child("bundle-file-watch", |token| {
        file.watch_changes(resync_now.clone(), token)
    });
    let mut sinks: Vec<Arc<dyn BundleSink>> = vec![Arc::new(file)];
    if let (Some(cluster), Some(secret)) = (cluster, &config.bundle.secret) {
        let sink = SecretSink::new(
            cluster.client.clone(),
            secret.clone(),
            cluster.leader.clone(),
        );
        spawner.spawn_child("bundle-secret-watch", |token| {
            sink.watch_changes(resync_now.clone(), token)
        });
        sinks.push(Arc::new(sink));
    }
    if let (Some(cluster), Some(pods)) = (cluster, pod_certificates) {
        let sink = ClusterTrustBundleSink::new(
            cluster.client.clone(),
            pods.signer_name.trust_bundle_name(),
            pods.signer_name.as_str().to_owned(),
            cluster.leader.clone(),
        );
        spawner.spawn_child("bundle-ctb-watch", |token| {
            sink.watch_changes(resync_now.clone(), token)
        });
        sinks.push(Arc::new(sink));
    }
    if let (Some(cluster), Some(istio)) = (cluster, &config.istio_ca) {
        let sink = istio_ca::root_cert::RootCertSink::new(
            cluster.client.clone(),
            istio.root_cert_namespaces.clone(),
            cluster.leader.clone(),
        );
        spawner.spawn_child("bundle-istio-root-cert-watch", |token| {
            sink.watch_changes(resync_now.clone(), token)
        });
        sinks.push(Arc::new(sink));
    }
    let status = spawner.spawn_with("bundle-publisher", |token| {
        bundle::publisher(
            sinks,
            signing.bundle.clone(),
            config.bundle.refresh_interval,
            resync_now,
            metrics.clone(),
            token,
        )
    });
    // Serve only once the bundle is out where workloads read it, unless a
    // sink keeps failing: then serve anyway, with /readyz saying why.
    if let Err(why) = status.wait_published(Duration::from_secs(10)).await {
        tracing::warn!(%why, "serving before every bundle sink holds the bundle");
    }
    status
}

/// Keeps the bundle equal to the signer's anchors plus the ledger's.
fn spawn_anchor_refresher(
    config: &Config,
    signing: &Signing,
    ledger: &watch::Receiver<RolloutStatus>,
    metrics: &Arc<Metrics>,
    spawner: &Spawner,
) {
    spawner.spawn_child("anchor-refresher", |token| {
        rollout::anchor_refresher(
            signing.signer.clone(),
            ledger.clone(),
            signing.bundle_tx.clone(),
            config.bundle.refresh_interval,
            metrics.clone(),
            token,
        )
    });
}

/// The signing API's own certificate, renewed by its task.
async fn serving_certificate(
    config: &Config,
    issuer: &Issuer,
    metrics: &Arc<Metrics>,
    renew_now: &Arc<Notify>,
    spawner: &Spawner,
) -> Result<ServingTls, DaemonError> {
    let token = spawner.child_token();
    let (tls, task) = api::serving_certificate(
        issuer.clone(),
        config.daemon_identity.clone(),
        serving_names(config),
        metrics.clone(),
        renew_now.clone(),
        token.clone(),
    )
    .await?;
    spawner.spawn("serving-certificate", token, task);
    Ok(tls)
}

/// The names the serving certificate carries: `server_names`, and the
/// names Istio's clients dial meshca by.
fn serving_names(config: &Config) -> Vec<meshca_provider::ServerName> {
    let istio = config.istio_ca.iter().flat_map(|i| &i.serving_dns_names);
    let mut names = config.server_names.clone();
    for name in istio {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// The configuration in force: the file's, followed as it changes, or the
/// one given, forever.
fn follow_config(config: &Config, spawner: &Spawner) -> watch::Receiver<Arc<Config>> {
    let Some(path) = &config.source else {
        let (tx, rx) = watch::channel(Arc::new(config.clone()));
        // Dropping the sender would read as "closed" to the followers.
        spawner.spawn_child("config", |stop| async move {
            stop.cancelled().await;
            drop(tx);
        });
        return rx;
    };
    spawner.spawn_with("config-reload", |token| {
        crate::reload::watch_config(path.clone(), config.clone(), token)
    })
}

/// The rollout of signer changes, and (in a cluster) the ConfigMap writer
/// that keeps its state beyond the pod.
#[allow(clippy::too_many_arguments)]
fn spawn_rollout(
    config: &Config,
    cluster: Option<&Cluster>,
    signing: &Signing,
    publish: &PublishStatus,
    renew_serving: Arc<Notify>,
    config_rx: &watch::Receiver<Arc<Config>>,
    metrics: &Arc<Metrics>,
    spawner: &Spawner,
) -> watch::Receiver<RolloutStatus> {
    let (writer, configmap) = ledger_places(config, cluster).writer(
        &signing.restored,
        cluster.map(|c| c.leader.clone()),
        metrics.clone(),
    );
    if let Some(task) = configmap {
        spawner.spawn_child("rollout-configmap", |token| task.run(token));
    }
    let target = crate::reload::project(
        config_rx,
        |c| Target {
            provider: c.provider.clone(),
            propagation_delay: c.rotation.propagation_delay,
        },
        spawner,
    );
    let peers = cluster.map(|c| {
        let peers = rollout::Peers::new(
            c.client.clone(),
            &c.config.namespace,
            rollout::Peers::this_replica(),
        );
        let publisher = peers.clone();
        let signer = signing.signer.clone();
        spawner.spawn_child("issuance-ledger", |token| {
            publisher.publisher(signer, token)
        });
        peers
    });
    let rollout = Rollout {
        peers,
        signer: signing.signer.clone(),
        bundle: signing.bundle.clone(),
        publish: publish.clone(),
        renew_serving,
        store: writer,
        deps: signing.deps.clone(),
        metrics: metrics.clone(),
        max_ttl: config.certificates.max_ttl,
    };
    spawner.spawn_with("rollout", |token| {
        rollout.run(signing.restored.clone(), target, token)
    })
}

/// The ingress reconciler, following `ingress:` as the file changes.
async fn spawn_ingress(
    config: &Config,
    cluster: &Cluster,
    issuer: &Issuer,
    bundle: &BundleReceiver,
    config_rx: &watch::Receiver<Arc<Config>>,
    spawner: &Spawner,
) -> Result<(), DaemonError> {
    let resource = ingress::discover_ingress_api(&cluster.client).await?;
    let settings = crate::reload::project(config_rx, |c| c.ingress.clone(), spawner);
    let mesh = Mesh {
        trust_domain: config.trust_domain.clone(),
    };
    spawner.spawn_child("ingress-reconciler", |token| {
        ingress::reconciler(
            cluster,
            resource,
            issuer.clone(),
            mesh,
            settings,
            bundle.clone(),
            token,
        )
    });
    Ok(())
}

/// The one TokenReview cache of every frontend, with a cluster.
fn token_reviewer(config: &Config, cluster: Option<&Cluster>) -> Option<Arc<TokenReviewer>> {
    let (cluster, review) = (cluster?, config.auth.kubernetes.as_ref()?);
    Some(TokenReviewer::new(
        cluster.client.clone(),
        config.trust_domain.clone(),
        review.cache_ttl,
    ))
}

/// Static tokens, ServiceAccount tokens for `auth.kubernetes.audience`
/// (with a cluster) and client certificates chaining to the bundle.
async fn authenticator(
    config: &Config,
    reviewer: Option<&Arc<TokenReviewer>>,
    bundle: &BundleReceiver,
    spawner: &Spawner,
) -> Authenticator {
    let tokens = TokenStore::open(config.auth.tokens_file.clone()).await;
    spawner.spawn_child("token-file", |token| tokens.follow(token));
    let auth = Authenticator::new(tokens, config.trust_domain.clone(), bundle.clone());
    match (reviewer, &config.auth.kubernetes) {
        (Some(reviewer), Some(review)) => {
            auth.with_kubernetes(reviewer.for_audiences(vec![review.audience.clone()]))
        }
        _ => auth,
    }
}

/// Bind both listeners and spawn their servers.
async fn serve(
    config: &Config,
    state: Arc<ApiState>,
    tls: ServingTls,
    readiness: Readiness,
    spawner: &Spawner,
) -> Result<(SocketAddr, SocketAddr), DaemonError> {
    let (api_listener, api_addr) = bind(config.listen).await?;
    let (health_listener, metrics_addr) = bind(config.metrics_listen).await?;
    if let Some(addr) = config.oidc_listen {
        let (oidc_listener, oidc_addr) = bind(addr).await?;
        let (tls, router) = (tls.clone(), api::oidc_router(state.clone()));
        spawner.spawn_child("oidc-server", |token| {
            listener::serve(oidc_listener, Some(tls), router, Limits::api(), token)
        });
        tracing::info!(%oidc_addr, "serving OIDC discovery and the JWKS");
    }
    if let Some(endpoint) = &config.federation.endpoint {
        serve_bundle_endpoint(endpoint, &state, &tls, spawner).await?;
    }
    spawner.spawn_child("api-server", |token| {
        listener::serve(
            api_listener,
            Some(tls),
            api::router(state),
            Limits::api(),
            token,
        )
    });
    spawner.spawn_child("health-server", |token| {
        listener::serve(
            health_listener,
            None,
            api::health_router(readiness),
            Limits::health(),
            token,
        )
    });
    tracing::info!(%api_addr, %metrics_addr, "meshca is serving");
    Ok((api_addr, metrics_addr))
}

/// The bundle endpoint: this trust domain's SPIFFE bundle on a listener
/// of its own, with meshca's serving certificate (`https_spiffe`: an
/// X509-SVID of the daemon's identity, renewed with it) or the configured
/// files (`https_web`).
async fn serve_bundle_endpoint(
    endpoint: &federation::EndpointConfig,
    state: &Arc<ApiState>,
    serving: &ServingTls,
    spawner: &Spawner,
) -> Result<(), DaemonError> {
    let tls = match &endpoint.profile {
        EndpointProfile::HttpsSpiffe => serving.clone(),
        EndpointProfile::HttpsWeb {
            cert_file,
            key_file,
        } => {
            let token = spawner.child_token();
            let (tls, reload) = federation::endpoint::web_tls(cert_file, key_file, token.clone())?;
            spawner.spawn("bundle-endpoint-certificate", token, reload);
            tls
        }
    };
    let (listener, addr) = bind(endpoint.listen).await?;
    let router = api::bundle_endpoint_router(state.clone());
    spawner.spawn_child("bundle-endpoint", |token| {
        listener::serve(listener, Some(tls), router, Limits::api(), token)
    });
    tracing::info!(%addr, profile = ?endpoint.profile, "serving the SPIFFE bundle endpoint");
    Ok(())
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), DaemonError> {
    let failed = |source| DaemonError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(failed)?;
    let local = listener.local_addr().map_err(failed)?;
    Ok((listener, local))
}
