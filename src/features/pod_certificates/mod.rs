//! Kubernetes pod certificates (`certificates.k8s.io/v1`, KEP-4317):
//! kubelet makes the pod's key, asks for a certificate with a
//! PodCertificateRequest naming meshca's signer, and mounts what meshca
//! answers; the pod's peers trust the ClusterTrustBundle linked to the
//! signer (published by [`ClusterTrustBundleSink`]).
//!
//! No token is involved: the API server has already tied the request to
//! the pod and its ServiceAccount, which is the identity meshca certifies.

mod answer;
mod config;
mod feature;
mod signer;
mod trust_bundle;

pub use answer::SUPPORTED_KEY_TYPES;
pub use config::{PodCertificatesConfig, RawPodCertificates};
pub use feature::{PodCertificatesFeature, FEATURE};
pub use signer::{signer, SignerDeps};
pub use trust_bundle::ClusterTrustBundleSink;

/// Whether the cluster serves PodCertificateRequests and
/// ClusterTrustBundles at `certificates.k8s.io/v1` (Kubernetes 1.37).
pub async fn served(client: &kube::Client) -> bool {
    match client
        .list_api_group_resources("certificates.k8s.io/v1")
        .await
    {
        Ok(list) => ["podcertificaterequests", "clustertrustbundles"]
            .iter()
            .all(|want| list.resources.iter().any(|r| r.name == *want)),
        Err(_) => false,
    }
}
