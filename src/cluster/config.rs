//! `kubernetes:`: whether and how meshca reaches a cluster.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::validation::{is_dns_name, Errors};

/// How meshca reaches its cluster and names its own objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// Where the client configuration comes from.
    pub discovery: Discovery,
    /// meshca's own namespace (root Secret, Lease).
    pub namespace: String,
    /// Name of the Secret holding the Tresor root.
    pub root_secret: String,
    /// Name of the leader-election Lease.
    pub lease_name: String,
    /// How long a leader holds the Lease without renewing it.
    pub lease_duration: Duration,
}

/// Where the cluster's client configuration comes from. Validation only
/// records what was written; where meshca runs is looked at when the
/// daemon connects ([`super::connect`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// `kubernetes.kubeconfig`: this file, nothing else.
    Kubeconfig(PathBuf),
    /// `kubernetes.enabled: true`: as kubectl finds it (`KUBECONFIG`, then
    /// `~/.kube/config`), then the in-cluster environment.
    Infer,
    /// Nothing written: the in-cluster environment when meshca runs in a
    /// pod, otherwise no cluster. A laptop with a `KUBECONFIG` is never
    /// written to by accident.
    InPodOnly,
}

/// `kubernetes:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawKubernetes {
    enabled: Option<bool>,
    kubeconfig: Option<PathBuf>,
    namespace: String,
    root_secret: String,
    lease_name: String,
    #[serde(with = "humantime_serde")]
    lease_duration: Duration,
}

impl Default for RawKubernetes {
    fn default() -> Self {
        Self {
            enabled: None,
            kubeconfig: None,
            namespace: "osm-system".into(),
            root_secret: "meshca-tresor-root".into(),
            lease_name: "meshca-leader".into(),
            lease_duration: Duration::from_secs(15),
        }
    }
}

impl RawKubernetes {
    /// The cluster settings, or `None` when `enabled: false` turns the
    /// cluster off.
    pub fn validate(&self, errors: &mut Errors) -> Option<KubernetesConfig> {
        let discovery = match (self.enabled, &self.kubeconfig) {
            (Some(false), _) => return None,
            (_, Some(path)) => Discovery::Kubeconfig(path.clone()),
            (Some(true), None) => Discovery::Infer,
            (None, None) => Discovery::InPodOnly,
        };
        for (path, value) in [
            ("kubernetes.namespace", &self.namespace),
            ("kubernetes.root_secret", &self.root_secret),
            ("kubernetes.lease_name", &self.lease_name),
        ] {
            if !is_dns_name(value) {
                errors.add(path, format!("{value:?} is not a valid Kubernetes name"));
            }
        }
        if self.lease_duration < Duration::from_secs(3) {
            errors.add("kubernetes.lease_duration", "must be at least 3s");
        }
        Some(KubernetesConfig {
            discovery,
            namespace: self.namespace.clone(),
            root_secret: self.root_secret.clone(),
            lease_name: self.lease_name.clone(),
            lease_duration: self.lease_duration,
        })
    }
}
