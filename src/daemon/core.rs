//! The daemon's core, wired: the signer and its ledger, the first bundle
//! and its publisher, the issuer, the serving certificate, the config
//! follower, the rollout, caller authentication and the SPIFFE bundle
//! served. Features add to it through their `Plug`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::DaemonError;
use crate::api;
use crate::auth::{Authenticator, TokenReviewer, TokenStore};
use crate::bundle::spiffe::{Sequence, Served, DEFAULT_REFRESH_HINT};
use crate::bundle::{
    self, BundleReceiver, BundleSink, FileSink, PublishStatus, SecretSink, TrustBundle,
};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::feature::{Core, Plug};
use crate::issuer::{deny_configmap, Admission, DenyList, Issuer, MintTokens};
use crate::listener::ServingTls;
use crate::metrics::Metrics;
use crate::provider;
use crate::provider::root_generation::GenerationStore;
use crate::rollout::{self, Rollout, RolloutStatus, Signer, Target};
use crate::supervisor::Spawner;

/// What signs and what the bundle holds, as built at start.
pub(super) struct Signing {
    pub(super) signer: Arc<Signer>,
    /// The root generation in force (`meshca rotate root`), followed.
    root_generation: watch::Receiver<u32>,
    restored: RolloutStatus,
    bundle_tx: watch::Sender<Arc<TrustBundle>>,
    bundle: BundleReceiver,
    deps: provider::Deps,
}

/// Temporary files an earlier, killed run left where meshca writes
/// atomically: the state directory, the bundle's and the tokens'.
pub(super) async fn remove_debris(config: &Config) {
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
pub(super) async fn signing(
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
        custody_metrics: crate::custody::CustodyMetrics::register(metrics),
        spawner: spawner.clone(),
    };
    let generations = GenerationStore::new(
        &config.state_dir,
        cluster.map(|c| (c.client.clone(), c.config.namespace.as_str())),
    );
    let generation = generations.load().await?;
    let built = provider::build(&config.provider.at_root_generation(generation), &deps).await?;
    tracing::info!(provider = %built.provider.kind(), root_generation = generation, "signing provider ready");
    let root_generation = follow_root_generation(generations, generation, spawner);
    let (persisted, _) = ledger_places(config, cluster).load().await?;
    let now = time::OffsetDateTime::now_utc();
    let kind = built.provider.kind();
    let restored =
        RolloutStatus::restored(persisted, kind.as_str(), config.certificates.max_ttl, now);
    if !restored.retained.is_empty() {
        let sets = restored.retained.len();
        tracing::info!(sets, "kept anchors retained before the restart");
    }
    let mut anchors = built.provider.trust_anchors().await?;
    anchors.extend(restored.extra_anchors(now));
    let bundle = TrustBundle::new(anchors)?;
    metrics.record_anchors(bundle.anchors());
    let (bundle_tx, bundle) = watch::channel(Arc::new(bundle));
    Ok(Signing {
        signer: Signer::new(built.provider, built.stop, restored.generation),
        root_generation,
        restored,
        bundle_tx,
        bundle,
        deps,
    })
}

/// How often the root generation is read again.
const ROOT_GENERATION_EVERY: Duration = Duration::from_secs(5);

/// The root generation, read again every [`ROOT_GENERATION_EVERY`]; one
/// that cannot be read keeps the generation in force (logged once).
fn follow_root_generation(
    store: GenerationStore,
    now: u32,
    spawner: &Spawner,
) -> watch::Receiver<u32> {
    let (tx, rx) = watch::channel(now);
    spawner.spawn_child("root-generation", |stop| async move {
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(ROOT_GENERATION_EVERY) => {}
            }
            match store.load().await {
                Ok(n) => {
                    failing = false;
                    if tx.send_if_modified(|g| std::mem::replace(g, n) != n) {
                        tracing::info!(root_generation = n, place = %store.describe(), "the root generation changed: rolling out the new root");
                    }
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %crate::report::error_chain(&e), "failed to read the root generation; the one in force stays");
                }
                Err(_) => {}
            }
        }
    });
    rx
}

/// What the rollout aims at: the configured provider, its root at the
/// generation in force; again on every change of either.
fn rollout_target(
    config: &watch::Receiver<Arc<Config>>,
    generation: &watch::Receiver<u32>,
    spawner: &Spawner,
) -> watch::Receiver<Target> {
    let view = |c: &Config, n: u32| Target {
        provider: c.provider.at_root_generation(n),
        propagation_delay: c.rotation.propagation_delay,
    };
    let (mut config, mut generation) = (config.clone(), generation.clone());
    let first = view(&config.borrow_and_update(), *generation.borrow_and_update());
    let (tx, rx) = watch::channel(first);
    spawner.spawn_child("rollout-target", |stop| async move {
        // A source that can change no more (no config file) is left out.
        let (mut config_open, mut generation_open) = (true, true);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                r = config.changed(), if config_open => config_open = r.is_ok(),
                r = generation.changed(), if generation_open => generation_open = r.is_ok(),
            }
            let next = view(&config.borrow_and_update(), *generation.borrow_and_update());
            tx.send_if_modified(|now| {
                let changed = *now != next;
                if changed {
                    *now = next;
                }
                changed
            });
        }
    });
    rx
}

/// Where the rollout ledger is persisted.
fn ledger_places(config: &Config, cluster: Option<&Cluster>) -> rollout::ledger::Places {
    rollout::ledger::Places::new(
        &config.state_dir,
        cluster.map(|c| (c.client.clone(), c.config.namespace.as_str())),
    )
}

/// What features prepare with.
pub(super) fn core(
    config: &Config,
    cluster: Option<Cluster>,
    signing: &Signing,
    metrics: Arc<Metrics>,
) -> Core {
    Core {
        trust_domain: config.trust_domain.clone(),
        daemon_identity: config.daemon_identity.clone(),
        state_dir: config.state_dir.clone(),
        lifetimes: config.certificates,
        propagation_delay: config.rotation.propagation_delay,
        cluster,
        metrics,
        key_custody: config.key_custody.clone(),
        custody_metrics: signing.deps.custody_metrics.clone(),
        bundle: signing.bundle.clone(),
        resync: Arc::new(Notify::new()),
    }
}

/// The bundle publisher and its sinks: the file always, the Secret with a
/// cluster, and the features'. Waits (briefly) until every sink holds the
/// first bundle.
pub(super) async fn publish_bundle(
    config: &Config,
    core: &Core,
    signing: &Signing,
    plug: &mut Plug,
    spawner: &Spawner,
) -> PublishStatus {
    let resync = core.resync.clone();
    let file = FileSink::new(config.bundle.file.clone());
    let watching = resync.clone();
    spawner.spawn_child("bundle-file-watch", |token| {
        file.watch_changes(watching, token)
    });
    let mut sinks: Vec<Arc<dyn BundleSink>> = vec![Arc::new(file)];
    if let (Some(cluster), Some(secret)) = (&core.cluster, &config.bundle.secret) {
        let sink = SecretSink::new(
            cluster.client.clone(),
            secret.clone(),
            cluster.leader.clone(),
        );
        let watching = resync.clone();
        spawner.spawn_child("bundle-secret-watch", |token| {
            sink.watch_changes(watching, token)
        });
        sinks.push(Arc::new(sink));
    }
    sinks.append(&mut plug.sinks);
    let (bundle, metrics) = (signing.bundle.clone(), core.metrics.clone());
    let refresh = config.bundle.refresh_interval;
    let status = spawner.spawn_with("bundle-publisher", |token| {
        bundle::publisher(sinks, bundle, refresh, resync, metrics, token)
    });
    // Serve only once the bundle is out where workloads read it, unless a
    // sink keeps failing: then serve anyway, with /readyz saying why.
    if let Err(why) = status.wait_published(Duration::from_secs(10)).await {
        tracing::warn!(%why, "serving before every bundle sink holds the bundle");
    }
    status
}

/// The state files callers are judged by, read before anything is
/// published: a daemon that cannot read them does not start.
pub(super) struct StateFiles {
    pub(super) tokens: TokenStore,
    pub(super) denied: DenyList,
}

/// Read the token store and the deny-list.
pub(super) async fn state_files(config: &Config) -> Result<StateFiles, DaemonError> {
    Ok(StateFiles {
        tokens: TokenStore::open(config.auth.tokens_file.clone()).await?,
        denied: DenyList::open(config.auth.denied_file.clone()).await?,
    })
}

/// The issuer: the signer, the deny-list, admission, and the features'
/// token minter.
pub(super) fn issuer(
    config: &Config,
    core: &Core,
    signing: &Signing,
    (denied, tokens): (DenyList, Option<Arc<dyn MintTokens>>),
    spawner: &Spawner,
) -> Issuer {
    let api = &config.api;
    let admission = Admission::new(
        api.max_in_flight,
        api.per_identity_per_second,
        api.per_identity_burst,
    );
    let issuer = Issuer::new(
        signing.signer.clone(),
        config.certificates,
        signing.bundle.clone(),
        core.metrics.clone(),
        deny_list(denied, core.cluster.as_ref(), spawner),
        Arc::new(admission),
    );
    match tokens {
        Some(tokens) => issuer.with_tokens(tokens),
        None => issuer,
    }
}

/// The deny-list file and, in a cluster, the ConfigMap every replica
/// follows.
fn deny_list(list: DenyList, cluster: Option<&Cluster>, spawner: &Spawner) -> DenyList {
    spawner.spawn_child("deny-list-file", |token| list.follow_file(token));
    let Some(cluster) = cluster else {
        return list;
    };
    let rx = spawner.spawn_with("deny-list-watch", |token| {
        deny_configmap::follow(cluster.client.clone(), &cluster.config.namespace, token)
    });
    list.with_cluster(rx)
}

/// The daemon's own serving certificate, for `server_names` and the names
/// features need, renewed by its task.
pub(super) async fn serving_certificate(
    config: &Config,
    issuer: &Issuer,
    metrics: &Arc<Metrics>,
    renew_now: &Arc<Notify>,
    spawner: &Spawner,
) -> Result<ServingTls, DaemonError> {
    let mut names = config.server_names.clone();
    for name in config.features.iter().flat_map(|f| f.server_names()) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let token = spawner.child_token();
    let serving = api::Serving {
        identity: config.daemon_identity.clone(),
        names,
        key_algorithm: config.api.serving_key_algorithm,
    };
    let (tls, task) = api::serving_certificate(
        issuer.clone(),
        serving,
        metrics.clone(),
        renew_now.clone(),
        token.clone(),
    )
    .await?;
    spawner.spawn("serving-certificate", token, task);
    Ok(tls)
}

/// The configuration in force: the file's, followed as it changes, or the
/// one given, forever.
pub(super) fn follow_config(config: &Config, spawner: &Spawner) -> watch::Receiver<Arc<Config>> {
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

/// The rollout of signer changes, its ledger (and, in a cluster, the
/// ConfigMap writer that keeps it beyond the pod) and the peers' issuance
/// ledger.
pub(super) fn spawn_rollout(
    config: &Config,
    core: &Core,
    signing: &Signing,
    (publish, renew_serving): (&PublishStatus, Arc<Notify>),
    config_rx: &watch::Receiver<Arc<Config>>,
    spawner: &Spawner,
) -> watch::Receiver<RolloutStatus> {
    let cluster = core.cluster.as_ref();
    let leader = cluster.map(|c| c.leader.clone());
    let (writer, configmap) =
        ledger_places(config, cluster).writer(&signing.restored, leader, core.metrics.clone());
    if let Some(task) = configmap {
        spawner.spawn_child("rollout-configmap", |token| task.run(token));
    }
    let target = rollout_target(config_rx, &signing.root_generation, spawner);
    let peers = cluster.map(|c| {
        let peers = rollout::Peers::new(
            c.client.clone(),
            &c.config.namespace,
            rollout::Peers::this_replica(),
        );
        let (publisher, signer) = (peers.clone(), signing.signer.clone());
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
        metrics: core.metrics.clone(),
        max_ttl: config.certificates.max_ttl,
    };
    spawner.spawn_with("rollout", |token| {
        rollout.run(signing.restored.clone(), target, token)
    })
}

/// Keeps the bundle equal to the signer's anchors plus the ledger's.
pub(super) fn spawn_anchor_refresher(
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

/// The one TokenReview cache of every frontend, with a cluster.
pub(super) fn token_reviewer(
    config: &Config,
    cluster: Option<&Cluster>,
) -> Option<Arc<TokenReviewer>> {
    let (cluster, review) = (cluster?, config.auth.kubernetes.as_ref()?);
    Some(TokenReviewer::new(
        cluster.client.clone(),
        config.trust_domain.clone(),
        review.cache_ttl,
    ))
}

/// Static tokens, ServiceAccount tokens for `auth.kubernetes.audience`
/// (with a cluster) and client certificates chaining to the bundle.
pub(super) fn authenticator(
    config: &Config,
    tokens: TokenStore,
    reviewer: Option<&Arc<TokenReviewer>>,
    bundle: &BundleReceiver,
    spawner: &Spawner,
) -> Authenticator {
    spawner.spawn_child("token-file", |token| tokens.follow(token));
    let auth = Authenticator::new(tokens, config.trust_domain.clone(), bundle.clone());
    match (reviewer, &config.auth.kubernetes) {
        (Some(reviewer), Some(review)) => {
            auth.with_kubernetes(reviewer.for_audiences(vec![review.audience.clone()]))
        }
        _ => auth,
    }
}

/// This trust domain's SPIFFE bundle as served, with the JWT keys and
/// peers' bundles features gave.
pub(super) fn spiffe(config: &Config, core: &Core, plug: &mut Plug) -> Arc<Served> {
    Arc::new(Served {
        trust_domain: config.trust_domain.clone(),
        refresh_hint: plug.refresh_hint.take().unwrap_or(DEFAULT_REFRESH_HINT),
        bundle: core.bundle.clone(),
        jwt_keys: plug.jwt_keys.take(),
        peers: plug.peers.take(),
        sequence: Sequence::default(),
    })
}
