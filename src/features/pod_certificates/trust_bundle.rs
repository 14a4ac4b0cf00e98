//! The bundle as a ClusterTrustBundle linked to meshca's pod-certificate
//! signer, so that a pod's projected `clusterTrustBundle` volume (by
//! `signerName`) trusts exactly what `osm-ca-bundle` and `GET /v1/bundle`
//! hold. Written by server-side apply, by the leader only.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::certificates::v1::{ClusterTrustBundle, ClusterTrustBundleSpec};
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::Api;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::bundle::{BundleError, BundleSink, TrustBundle};
use crate::cluster::MANAGED_BY;

/// One ClusterTrustBundle, named after and linked to the signer.
pub struct ClusterTrustBundleSink {
    api: Api<ClusterTrustBundle>,
    object: String,
    signer_name: String,
    name: String,
    leader: watch::Receiver<bool>,
}

impl std::fmt::Debug for ClusterTrustBundleSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTrustBundleSink")
            .field("object", &self.object)
            .finish()
    }
}

impl ClusterTrustBundleSink {
    /// A sink writing `object` for `signer_name` while `leader` is true.
    pub fn new(
        client: kube::Client,
        object: String,
        signer_name: String,
        leader: watch::Receiver<bool>,
    ) -> Self {
        Self {
            api: Api::all(client),
            name: format!("clustertrustbundle {object}"),
            object,
            signer_name,
            leader,
        }
    }

    /// A task that wakes `resync` whenever the object changes or
    /// disappears, and whenever leadership changes.
    pub fn watch_changes(
        &self,
        resync: Arc<Notify>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        crate::bundle::watch::follow_object(
            self.api.clone(),
            &self.object,
            self.leader.clone(),
            resync,
            shutdown,
        )
    }

    fn desired(&self, pem: &str) -> ClusterTrustBundle {
        ClusterTrustBundle {
            metadata: ObjectMeta {
                name: Some(self.object.clone()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY.0.to_owned(),
                    MANAGED_BY.1.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            spec: ClusterTrustBundleSpec {
                signer_name: Some(self.signer_name.clone()),
                trust_bundle: pem.to_owned(),
            },
        }
    }

    fn holds_pem(&self, current: &ClusterTrustBundle, pem: &str) -> bool {
        current.spec.trust_bundle == pem
            && current.spec.signer_name.as_deref() == Some(self.signer_name.as_str())
    }
}

#[async_trait]
impl BundleSink for ClusterTrustBundleSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, bundle: &TrustBundle) -> Result<(), BundleError> {
        // As for the bundle Secret: a follower only waits for the leader.
        if !*self.leader.borrow() {
            return match self.holds(bundle).await? {
                true => Ok(()),
                false => Err(BundleError::awaiting_leader(&self.name)),
            };
        }
        let params = PatchParams::apply(crate::cluster::FIELD_MANAGER).force();
        self.api
            .patch(
                &self.object,
                &params,
                &Patch::Apply(self.desired(bundle.pem())),
            )
            .await
            .map(drop)
            .map_err(|e| BundleError::kube(&self.name, &e))
    }

    async fn holds(&self, bundle: &TrustBundle) -> Result<bool, BundleError> {
        let current = self
            .api
            .get_opt(&self.object)
            .await
            .map_err(|e| BundleError::kube(&self.name, &e))?;
        Ok(current.is_some_and(|c| self.holds_pem(&c, bundle.pem())))
    }
}
