//! Istio's trust distribution: the ConfigMap `istio-ca-root-cert` (key
//! `root-cert.pem`, every anchor of the bundle) in every selected
//! namespace, which istio-agent and ztunnel read to trust istiod and their
//! peers.
//!
//! It is one more bundle sink, so a rollout waits for it like for the
//! others: a new root is in every namespace's ConfigMap before anything is
//! signed under it. New namespaces and edited or deleted ConfigMaps wake
//! the publisher, which repairs them within seconds. Only the leader
//! writes.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::Selector;
use kube::runtime::watcher;
use kube::Api;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::bundle::{BundleError, BundleSink, TrustBundle};
use crate::cluster::new_configmap;

/// The ConfigMap Istio's clients read.
pub const CONFIGMAP: &str = "istio-ca-root-cert";
/// Its key.
pub const KEY: &str = "root-cert.pem";

/// The sink: one ConfigMap per selected namespace.
pub struct RootCertSink {
    client: kube::Client,
    selector: Option<Selector>,
    leader: watch::Receiver<bool>,
}

impl std::fmt::Debug for RootCertSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCertSink")
            .field("selector", &self.selector.as_ref().map(ToString::to_string))
            .finish_non_exhaustive()
    }
}

impl RootCertSink {
    /// A sink for the namespaces `selector` selects (every one when
    /// `None`), writing while `leader` is true.
    pub fn new(
        client: kube::Client,
        selector: Option<Selector>,
        leader: watch::Receiver<bool>,
    ) -> Self {
        Self {
            client,
            selector,
            leader,
        }
    }

    /// A task that wakes `resync` when a selected namespace appears or
    /// changes, when one of the ConfigMaps changes or disappears, and when
    /// leadership changes.
    pub fn watch_changes(
        &self,
        resync: Arc<Notify>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let configmaps = crate::bundle::watch::follow_object(
            Api::<ConfigMap>::all(self.client.clone()),
            CONFIGMAP,
            self.leader.clone(),
            resync.clone(),
            shutdown.clone(),
        );
        let namespaces = watcher(
            Api::<Namespace>::all(self.client.clone()),
            self.watch_config(),
        );
        async move {
            let mut namespaces = crate::cluster::resilient("namespaces", namespaces).boxed();
            let follow_namespaces = async {
                while let Some(event) = namespaces.next().await {
                    match event {
                        Ok(watcher::Event::Apply(_) | watcher::Event::InitDone) => {
                            resync.notify_one()
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "namespace watch"),
                    }
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = configmaps => {}
                () = follow_namespaces => {}
            }
        }
    }

    fn watch_config(&self) -> watcher::Config {
        match &self.selector {
            Some(s) => watcher::Config::default().labels_from(s),
            None => watcher::Config::default(),
        }
    }

    fn list_params(&self) -> ListParams {
        match &self.selector {
            Some(s) => ListParams::default().labels_from(s),
            None => ListParams::default(),
        }
    }

    /// The selected namespaces that can hold objects (not terminating),
    /// and of those, the ones whose ConfigMap holds `pem`.
    async fn survey(&self, pem: &str) -> Result<(BTreeSet<String>, BTreeSet<String>), kube::Error> {
        let namespaces = Api::<Namespace>::all(self.client.clone())
            .list(&self.list_params())
            .await?;
        let live: BTreeSet<String> = namespaces
            .items
            .into_iter()
            .filter(|ns| ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating"))
            .filter_map(|ns| ns.metadata.name)
            .collect();
        let configmaps = Api::<ConfigMap>::all(self.client.clone())
            .list(&ListParams::default().fields(&format!("metadata.name={CONFIGMAP}")))
            .await?;
        let holding = configmaps
            .items
            .into_iter()
            .filter(|cm| {
                cm.data
                    .as_ref()
                    .and_then(|d| d.get(KEY))
                    .map(String::as_str)
                    == Some(pem)
            })
            .filter_map(|cm| cm.metadata.namespace)
            .collect();
        Ok((live, holding))
    }

    fn fail(e: &kube::Error) -> BundleError {
        BundleError::kube(SINK, e)
    }
}

const SINK: &str = "configmaps istio-ca-root-cert";

#[async_trait]
impl BundleSink for RootCertSink {
    fn name(&self) -> &str {
        SINK
    }

    async fn publish(&self, bundle: &TrustBundle) -> Result<(), BundleError> {
        if !*self.leader.borrow() {
            return match self.holds(bundle).await? {
                true => Ok(()),
                false => Err(BundleError::awaiting_leader(SINK)),
            };
        }
        let (live, holding) = self
            .survey(bundle.pem())
            .await
            .map_err(|e| Self::fail(&e))?;
        let params = PatchParams::apply(crate::cluster::FIELD_MANAGER).force();
        let mut written = 0;
        for ns in live.difference(&holding) {
            let mut object = new_configmap(CONFIGMAP, KEY, bundle.pem().to_owned());
            object.metadata.namespace = Some(ns.clone());
            match Api::<ConfigMap>::namespaced(self.client.clone(), ns)
                .patch(CONFIGMAP, &params, &Patch::Apply(&object))
                .await
            {
                Ok(_) => written += 1,
                // Deleted or terminating since the list: nothing to hold.
                Err(e) if crate::cluster::is_reason(&e, 404) || is_terminating(&e) => {}
                Err(e) => return Err(Self::fail(&e)),
            }
        }
        if written > 0 {
            tracing::info!(namespaces = written, "wrote istio-ca-root-cert");
        }
        Ok(())
    }

    async fn holds(&self, bundle: &TrustBundle) -> Result<bool, BundleError> {
        let (live, holding) = self
            .survey(bundle.pem())
            .await
            .map_err(|e| Self::fail(&e))?;
        Ok(live.is_subset(&holding))
    }
}

/// The API server's refusal to create objects in a namespace being
/// deleted (403, `NamespaceTerminating` cause).
fn is_terminating(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403 && s.message.contains("being terminated"))
}
