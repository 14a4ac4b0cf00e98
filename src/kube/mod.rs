//! Kubernetes glue: the only daemon module that knows kube-rs.
//!
//! - [`SecretSink`]: the trust bundle as `ca.crt` in the `osm-ca-bundle`
//!   Secret, restored when someone edits or deletes it;
//! - [`root`]: the Tresor root in its own `kubernetes.io/tls` Secret,
//!   created once by whichever replica wins the apiserver's atomic create,
//!   with a one-time import of an OSM-style `osm-ca-bundle`;
//! - [`TokenReviewer`]: ServiceAccount tokens checked with `TokenReview`;
//! - [`leader`]: a `coordination.k8s.io/v1` Lease so that work that must
//!   happen once (publishing) happens on one replica.

pub mod ingress;
pub mod leader;
pub mod rollout_store;
pub mod root;
mod secret_sink;
mod token_review;

pub use secret_sink::SecretSink;
pub use token_review::TokenReviewer;

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// The label every object meshca writes carries.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "meshca");

/// How meshca reaches its cluster and names its own objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// A kubeconfig file; in-cluster configuration when `None`.
    pub kubeconfig: Option<PathBuf>,
    /// meshca's own namespace (root Secret, Lease).
    pub namespace: String,
    /// Name of the Secret holding the Tresor root.
    pub root_secret: String,
    /// Name of the leader-election Lease.
    pub lease_name: String,
    /// How long a leader holds the Lease without renewing it.
    pub lease_duration: Duration,
}

/// A Secret's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// Why a Kubernetes operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KubeError {
    /// No usable client configuration.
    #[error("failed to configure the Kubernetes client: {0}")]
    Config(String),
    /// The API server answered an error or could not be reached.
    #[error("failed to {action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The underlying error.
        #[source]
        source: kube::Error,
    },
    /// A stored object is unusable.
    #[error("{0}")]
    Invalid(String),
}

impl KubeError {
    pub(crate) fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| Self::Api { action, source }
    }
}

/// Whether a kube error is the API server's `reason`.
pub(crate) fn is_reason(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Whether the API server answers now (for `/readyz`).
///
/// # Errors
/// Why it does not, within two seconds.
pub async fn probe(client: &kube::Client) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(2), client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 2s".into()),
    }
}

/// A client for the configured cluster.
///
/// # Errors
/// [`KubeError::Config`] when neither the kubeconfig nor the in-cluster
/// environment yields a configuration.
pub async fn connect(config: &KubernetesConfig) -> Result<kube::Client, KubeError> {
    let mut client_config = match &config.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::incluster().map_err(|e| KubeError::Config(e.to_string()))?,
    };
    // Fail fast and let each caller decide: kube-rs would otherwise retry a
    // 503 for minutes, holding a signing request (TokenReview) hostage.
    client_config.default_retry = false;
    client_config.connect_timeout = Some(Duration::from_secs(5));
    kube::Client::try_from(client_config).map_err(|e| KubeError::Config(e.to_string()))
}
