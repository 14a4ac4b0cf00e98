//! The resources the stand-in serves, per group and version.

use super::*;

/// A resource the stand-in serves.
#[derive(Clone, Debug)]
pub(crate) struct ResourceDef {
    pub(crate) group: &'static str,
    pub(crate) versions: Vec<&'static str>,
    pub(crate) plural: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) namespaced: bool,
    pub(crate) status: bool,
}

impl ResourceDef {
    pub(crate) fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{version}", self.group)
        }
    }
}

/// Which optional APIs this stand-in serves.
#[derive(Clone, Debug)]
pub struct Options {
    /// Ingress versions served (`v1`, `v1beta1`); empty: no Ingress API.
    pub ingress_versions: Vec<&'static str>,
    /// How many watch events are kept for resuming; older ones are
    /// compacted and resuming from them gets 410 Gone.
    pub history: usize,
    /// Bookmark period on watches that ask for bookmarks.
    pub bookmark_every: Duration,
    /// Serve `certificates.k8s.io/v1` PodCertificateRequests and
    /// ClusterTrustBundles (Kubernetes 1.37); off: an older cluster.
    pub pod_certificates: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ingress_versions: vec!["v1"],
            history: 10_000,
            bookmark_every: Duration::from_secs(1),
            pod_certificates: true,
        }
    }
}

pub(crate) fn resources(options: &Options) -> Vec<ResourceDef> {
    let core = |plural, kind, namespaced| ResourceDef {
        group: "",
        versions: vec!["v1"],
        plural,
        kind,
        namespaced,
        status: false,
    };
    let mut r = vec![
        core("namespaces", "Namespace", false),
        core("secrets", "Secret", true),
        core("configmaps", "ConfigMap", true),
        core("serviceaccounts", "ServiceAccount", true),
        core("events", "Event", true),
        ResourceDef {
            status: true,
            ..core("services", "Service", true)
        },
        ResourceDef {
            status: true,
            ..core("pods", "Pod", true)
        },
        ResourceDef {
            group: "events.k8s.io",
            versions: vec!["v1"],
            plural: "events",
            kind: "Event",
            namespaced: true,
            status: false,
        },
        ResourceDef {
            group: "coordination.k8s.io",
            versions: vec!["v1"],
            plural: "leases",
            kind: "Lease",
            namespaced: true,
            status: false,
        },
        ResourceDef {
            group: "cert-manager.io",
            versions: vec!["v1"],
            plural: "certificaterequests",
            kind: "CertificateRequest",
            namespaced: true,
            status: true,
        },
        ResourceDef {
            group: "cert-manager.io",
            versions: vec!["v1"],
            plural: "issuers",
            kind: "Issuer",
            namespaced: true,
            status: true,
        },
        ResourceDef {
            group: "cert-manager.io",
            versions: vec!["v1"],
            plural: "clusterissuers",
            kind: "ClusterIssuer",
            namespaced: false,
            status: true,
        },
        ResourceDef {
            group: "cert-manager.io",
            versions: vec!["v1"],
            plural: "certificates",
            kind: "Certificate",
            namespaced: true,
            status: true,
        },
        ResourceDef {
            group: "apps",
            versions: vec!["v1"],
            plural: "deployments",
            kind: "Deployment",
            namespaced: true,
            status: true,
        },
        ResourceDef {
            group: "policy",
            versions: vec!["v1"],
            plural: "poddisruptionbudgets",
            kind: "PodDisruptionBudget",
            namespaced: true,
            status: true,
        },
        ResourceDef {
            group: "rbac.authorization.k8s.io",
            versions: vec!["v1"],
            plural: "roles",
            kind: "Role",
            namespaced: true,
            status: false,
        },
        ResourceDef {
            group: "rbac.authorization.k8s.io",
            versions: vec!["v1"],
            plural: "rolebindings",
            kind: "RoleBinding",
            namespaced: true,
            status: false,
        },
        ResourceDef {
            group: "rbac.authorization.k8s.io",
            versions: vec!["v1"],
            plural: "clusterroles",
            kind: "ClusterRole",
            namespaced: false,
            status: false,
        },
        ResourceDef {
            group: "rbac.authorization.k8s.io",
            versions: vec!["v1"],
            plural: "clusterrolebindings",
            kind: "ClusterRoleBinding",
            namespaced: false,
            status: false,
        },
        ResourceDef {
            group: "authentication.k8s.io",
            versions: vec!["v1"],
            plural: "tokenreviews",
            kind: "TokenReview",
            namespaced: false,
            status: false,
        },
        ResourceDef {
            group: "authentication.k8s.io",
            versions: vec!["v1"],
            plural: "selfsubjectreviews",
            kind: "SelfSubjectReview",
            namespaced: false,
            status: false,
        },
    ];
    if options.pod_certificates {
        r.push(ResourceDef {
            group: "certificates.k8s.io",
            versions: vec!["v1"],
            plural: "podcertificaterequests",
            kind: "PodCertificateRequest",
            namespaced: true,
            status: true,
        });
        r.push(ResourceDef {
            group: "certificates.k8s.io",
            versions: vec!["v1"],
            plural: "clustertrustbundles",
            kind: "ClusterTrustBundle",
            namespaced: false,
            status: false,
        });
    }
    if !options.ingress_versions.is_empty() {
        r.push(ResourceDef {
            group: "networking.k8s.io",
            versions: options.ingress_versions.clone(),
            plural: "ingresses",
            kind: "Ingress",
            namespaced: true,
            status: true,
        });
    }
    r
}
