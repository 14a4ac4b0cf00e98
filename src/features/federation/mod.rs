//! SPIFFE federation: trust between meshes without a shared root.
//!
//! Each side serves its own bundle at a bundle endpoint (the signing API's
//! SPIFFE bundle on a listener of its own, see [`endpoint`] for the
//! `https_web` profile's TLS) and fetches its peers' ([`fetch`]), checks
//! each ([`bundle`]) and keeps it ([`store`]). A fetch that fails keeps the
//! last good bundle: it ages, which `/readyz` and
//! `meshca_federated_bundle_age_seconds` show, but it is never dropped.
//! Workloads get the bundles their namespace may see through the signing
//! API (`GET /v1/bundle/federated`), which the agent hands on; the signing
//! API's own client authentication trusts only this mesh's trust domain.

mod config;
pub mod endpoint;
mod feature;
pub mod fetch;
mod metrics;
pub mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshca_provider::{Identity, TrustDomain};
use serde_json::Value;
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use crate::bundle::spiffe::{PeerBundle, Refused};
pub use config::{
    EndpointProfile, FederatedDomain, FederationConfig, FederationContext, PeerProfile,
    RawFederation,
};
pub use feature::{FederationFeature, FEATURE};
pub use store::{Held, Kept, StoreError};

use metrics::FederationMetrics;

/// Why federation could not start.
#[derive(Debug, Error)]
pub enum FederationError {
    /// A kept bundle cannot be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configured initial bundle cannot be read.
    #[error("failed to read the initial bundle of {trust_domain} from {}", path.display())]
    InitialRead {
        /// The peer.
        trust_domain: TrustDomain,
        /// `bundle_file`.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configured initial bundle is refused.
    #[error("the initial bundle of {trust_domain} in {} is refused", path.display())]
    InitialRefused {
        /// The peer.
        trust_domain: TrustDomain,
        /// `bundle_file`.
        path: PathBuf,
        /// Why.
        #[source]
        source: Refused,
    },
}

type HeldMap = BTreeMap<TrustDomain, Held>;

/// The peers' bundles as held now, for the API and `/readyz`.
#[derive(Clone, Debug)]
pub struct Federation {
    domains: Arc<[FederatedDomain]>,
    held: watch::Receiver<Arc<HeldMap>>,
    /// When this process started following (Unix seconds): a peer never
    /// fetched ages from here.
    started_at: i64,
}

impl Federation {
    /// The configured peer named `trust_domain` and its bundle, if held.
    pub fn get(&self, trust_domain: &str) -> Option<(&FederatedDomain, Option<Held>)> {
        let domain = self
            .domains
            .iter()
            .find(|d| d.trust_domain.as_str() == trust_domain)?;
        let held = self.held.borrow().get(&domain.trust_domain).cloned();
        Some((domain, held))
    }

    /// The bundles a workload of `identity` receives, keyed by
    /// `spiffe://<trust domain>` as the Workload API keys them.
    pub fn visible_to(&self, identity: &Identity) -> BTreeMap<String, Value> {
        let held = self.held.borrow();
        self.domains
            .iter()
            .filter(|d| d.visible_to(identity))
            .filter_map(|d| {
                let h = held.get(&d.trust_domain)?;
                Some((
                    format!("spiffe://{}", d.trust_domain),
                    h.bundle.document.clone(),
                ))
            })
            .collect()
    }

    /// What `/readyz` reports: every peer whose bundle is older than three
    /// refresh intervals (or that has none after as long).
    pub fn problems(&self, now: i64) -> Vec<String> {
        let held = self.held.borrow();
        self.domains
            .iter()
            .filter_map(|d| {
                let h = held.get(&d.trust_domain);
                let fetched_at = h.map_or(self.started_at, |h| h.fetched_at);
                let hint = h.and_then(|h| h.bundle.refresh_hint);
                let age = stale(fetched_at, hint, now)?;
                Some(match h {
                    Some(_) => format!(
                        "federated trust domain {}: the bundle held was fetched {age}s ago, over three refresh intervals; {} keeps failing",
                        d.trust_domain, d.url
                    ),
                    None => format!(
                        "federated trust domain {}: no bundle fetched from {} in {age}s",
                        d.trust_domain, d.url
                    ),
                })
            })
            .collect()
    }
}

impl crate::bundle::spiffe::PeerBundles for Federation {
    fn lookup(&self, trust_domain: &str) -> Option<crate::bundle::spiffe::PeerLookup> {
        let (domain, held) = self.get(trust_domain)?;
        Some(crate::bundle::spiffe::PeerLookup {
            namespaces: domain.namespaces.clone(),
            document: held.map(|h| h.bundle.document.clone()),
        })
    }

    fn visible_to(&self, identity: &Identity) -> BTreeMap<String, Value> {
        Federation::visible_to(self, identity)
    }
}

impl crate::api::Ready for Federation {
    fn problems(&self) -> Vec<String> {
        Federation::problems(self, time::OffsetDateTime::now_utc().unix_timestamp())
    }
}

/// The age of a bundle fetched at `fetched_at`, when it exceeds three
/// refresh intervals.
pub fn stale(fetched_at: i64, hint: Option<std::time::Duration>, now: i64) -> Option<i64> {
    let interval = fetch::next_fetch(hint, 0).as_secs();
    let age = now.saturating_sub(fetched_at);
    (age > i64::try_from(interval.saturating_mul(3)).unwrap_or(i64::MAX)).then_some(age)
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Where bundles are kept, and whether this replica fetches them.
#[derive(Clone)]
struct Stores {
    state_dir: std::path::PathBuf,
    /// In a cluster: the client and namespace of the ConfigMap, and
    /// whether this replica leads (only the leader fetches; the others take
    /// what it kept).
    cluster: Option<(kube::Client, String, watch::Receiver<bool>)>,
}

impl Stores {
    fn leads(&self) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|(_, _, leader)| *leader.borrow())
    }

    fn file(&self, td: &TrustDomain) -> Kept {
        Kept::file(&self.state_dir, td)
    }

    fn configmap(&self, td: &TrustDomain) -> Option<Kept> {
        let (client, namespace, _) = self.cluster.as_ref()?;
        Some(Kept::configmap(client.clone(), namespace, td))
    }

    /// The newest record kept for `td`, in the ConfigMap or the file.
    async fn load(&self, td: &TrustDomain) -> Result<Option<Held>, StoreError> {
        let file = self.file(td).load(td).await?;
        let shared = match self.configmap(td) {
            Some(configmap) => configmap.load(td).await?,
            None => None,
        };
        Ok(match (file, shared) {
            (Some(f), Some(s)) => Some(if s.fetched_at >= f.fetched_at { s } else { f }),
            (f, s) => s.or(f),
        })
    }

    /// Keep `held` everywhere; failures are logged (what is held in
    /// memory is served either way).
    async fn save(&self, td: &TrustDomain, held: &Held) {
        let mut failures = vec![self.file(td).save(td, held).await.err()];
        if let Some(configmap) = self.configmap(td) {
            failures.push(configmap.save(td, held).await.err());
        }
        for e in failures.into_iter().flatten() {
            tracing::error!(trust_domain = %td, error = %crate::report::error_chain(&e), "failed to keep the federated bundle");
        }
    }
}

/// The task that fetches the peers' bundles.
pub type Fetching = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Read what is held for every peer (kept bundles first, else the
/// configured initial ones) and return it with the task that fetches them
/// (in a cluster, on the leader; the other replicas follow the ConfigMap);
/// `None` without peers.
///
/// # Errors
/// [`FederationError`]: a kept or configured bundle that cannot be used
/// stops the start.
pub async fn start(
    config: &FederationConfig,
    state_dir: &Path,
    cluster: Option<&crate::cluster::Cluster>,
    metrics: &FederationMetrics,
) -> Result<Option<(Federation, impl FnOnce(CancellationToken) -> Fetching)>, FederationError> {
    if config.trust_domains.is_empty() {
        return Ok(None);
    }
    let stores = Stores {
        state_dir: state_dir.to_owned(),
        cluster: cluster.map(|c| {
            (
                c.client.clone(),
                c.config.namespace.clone(),
                c.leader.clone(),
            )
        }),
    };
    let mut held = HeldMap::new();
    for domain in &config.trust_domains {
        if let Some(h) = initial(domain, &stores).await? {
            metrics.record_bundle(
                domain.trust_domain.as_str(),
                h.fetched_at,
                h.bundle.sequence,
            );
            held.insert(domain.trust_domain.clone(), h);
        }
    }
    let (tx, rx) = watch::channel(Arc::new(held));
    let domains: Arc<[FederatedDomain]> = config.trust_domains.clone().into();
    let links = domains.clone();
    let metrics = metrics.clone();
    let fetching = move |token: CancellationToken| {
        Box::pin(async move {
            let follows = links.iter().map(|domain| {
                Link {
                    domain,
                    stores: &stores,
                    held: &tx,
                    metrics: &metrics,
                }
                .run(token.clone())
            });
            futures_util::future::join_all(follows).await;
        }) as Fetching
    };
    let federation = Federation {
        domains,
        held: rx,
        started_at: unix_now(),
    };
    Ok(Some((federation, fetching)))
}

/// The bundle held for `domain` at start: the one kept, else the
/// configured `bundle_file`.
async fn initial(
    domain: &FederatedDomain,
    stores: &Stores,
) -> Result<Option<Held>, FederationError> {
    let td = &domain.trust_domain;
    if let Some(kept) = stores.load(td).await? {
        tracing::info!(trust_domain = %td, sequence = ?kept.bundle.sequence, "kept federated bundle restored");
        return Ok(Some(kept));
    }
    let PeerProfile::HttpsSpiffe { bundle_file, .. } = &domain.profile else {
        return Ok(None);
    };
    let bytes = crate::store::fs::read_optional_off_runtime(bundle_file.clone())
        .await
        .and_then(|b| b.ok_or_else(|| std::io::ErrorKind::NotFound.into()))
        .map_err(|source| FederationError::InitialRead {
            trust_domain: td.clone(),
            path: bundle_file.clone(),
            source,
        })?;
    let bundle =
        PeerBundle::parse(td, &bytes).map_err(|source| FederationError::InitialRefused {
            trust_domain: td.clone(),
            path: bundle_file.clone(),
            source,
        })?;
    Ok(Some(Held {
        bundle: Arc::new(bundle),
        // Read, not fetched: it ages from the start, like a peer with none.
        fetched_at: unix_now(),
    }))
}

/// How often a replica that does not lead looks at the ConfigMap.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// One peer: fetched at its refresh hint by the replica that leads,
/// followed in the ConfigMap by the others.
struct Link<'a> {
    domain: &'a FederatedDomain,
    stores: &'a Stores,
    held: &'a watch::Sender<Arc<HeldMap>>,
    metrics: &'a FederationMetrics,
}

impl Link<'_> {
    async fn run(self, shutdown: CancellationToken) {
        let mut failed = 0u32;
        loop {
            let wait = if self.stores.leads() {
                let hint = self.fetch(&mut failed).await;
                fetch::next_fetch(hint, failed)
            } else {
                self.follow().await;
                FOLLOW_EVERY
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn current(&self) -> Option<Held> {
        self.held.borrow().get(&self.domain.trust_domain).cloned()
    }

    fn hold(&self, new: Held) {
        let td = &self.domain.trust_domain;
        self.metrics
            .record_bundle(td.as_str(), new.fetched_at, new.bundle.sequence);
        self.held.send_modify(|map| {
            Arc::make_mut(map).insert(td.clone(), new);
        });
    }

    /// Fetch once, counting failures in a row in `failed`; the refresh
    /// hint to wait for.
    async fn fetch(&self, failed: &mut u32) -> Option<std::time::Duration> {
        let (td, domain) = (&self.domain.trust_domain, self.domain);
        let current = self.current();
        let current_bundle = current.as_ref().map(|h| &*h.bundle);
        match fetch::fetch(td, &domain.url, &domain.profile, current_bundle).await {
            Ok(bundle) => {
                *failed = 0;
                let hint = bundle.refresh_hint;
                if current_bundle != Some(&bundle) {
                    tracing::info!(trust_domain = %td, sequence = ?bundle.sequence, x509_authorities = bundle.x509_authorities.len(), jwt_keys = bundle.jwt_keys.len(), "fetched a new federated bundle");
                }
                let new = Held {
                    bundle: Arc::new(bundle),
                    fetched_at: unix_now(),
                };
                self.stores.save(td, &new).await;
                self.metrics.record_fetch(td.as_str(), "ok");
                self.hold(new);
                hint
            }
            Err(e) => {
                *failed = if e.backs_off() {
                    failed.saturating_add(1)
                } else {
                    0
                };
                self.metrics.record_fetch(td.as_str(), e.label());
                tracing::warn!(trust_domain = %td, error = %crate::report::error_chain(&e), "kept the federated bundle held");
                current_bundle.and_then(|b| b.refresh_hint)
            }
        }
    }

    /// Take what the leader kept, when newer than what is held.
    async fn follow(&self) {
        let td = &self.domain.trust_domain;
        let Some(configmap) = self.stores.configmap(td) else {
            return;
        };
        match configmap.load(td).await {
            Ok(Some(kept))
                if self
                    .current()
                    .is_none_or(|h| kept.fetched_at > h.fetched_at) =>
            {
                if let Err(e) = self.stores.file(td).save(td, &kept).await {
                    tracing::warn!(trust_domain = %td, error = %crate::report::error_chain(&e), "failed to keep the federated bundle in the state directory");
                }
                self.hold(kept);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(trust_domain = %td, error = %crate::report::error_chain(&e), "kept the federated bundle held; the leader's could not be read");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bundle_is_stale_after_three_refresh_intervals() {
        let hint = Some(Duration::from_secs(60));
        assert_eq!(stale(1000, hint, 1180), None);
        assert_eq!(stale(1000, hint, 1181), Some(181));
        assert_eq!(
            stale(1000, None, 1000 + 900),
            None,
            "five minutes by default"
        );
        assert_eq!(stale(1000, None, 1000 + 901), Some(901));
        assert_eq!(
            stale(0, Some(Duration::from_secs(1)), 91),
            Some(91),
            "a hint below 30 s counts as 30 s"
        );
    }
}
