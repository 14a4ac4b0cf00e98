//! ztunnel's impersonation: a node agent asks for the certificate of a pod
//! on its node. It is granted only to a configured node account, and only
//! for an identity that a pod scheduled on the caller's own node runs as,
//! as the API server records it, so that a compromised node can reach the
//! identities of its own pods and no others.

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use meshca_provider::Identity;

use crate::auth::Caller;

/// Why a node agent may not have the identity it asked for.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Denied {
    /// The caller is not one of `istio_ca.trusted_node_accounts`.
    #[error("{0} may not ask for other identities' certificates (not in istio_ca.trusted_node_accounts)")]
    UntrustedCaller(String),
    /// The caller's node is unknown: its credential is not a token bound
    /// to a pod.
    #[error("cannot tell which node {0} runs on: present a ServiceAccount token bound to its pod")]
    NoNode(String),
    /// No pod running as the identity is scheduled on the caller's node.
    #[error("no pod running as {identity} is scheduled on node {node}")]
    NotOnNode {
        /// The identity asked for.
        identity: String,
        /// The caller's node.
        node: String,
    },
    /// meshca runs without a cluster, so no pod can be on the caller's node.
    #[error("ImpersonatedIdentity needs the Kubernetes API server's pods, and meshca runs without a cluster")]
    NoCluster,
    /// The identity asked for is not of this trust domain, or no SPIFFE ID.
    #[error("{0:?} is not a workload identity of this trust domain")]
    ForeignIdentity(String),
}

impl Denied {
    /// The `reason` label of `meshca_istio_impersonations_denied_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UntrustedCaller(_) => "untrusted_caller",
            Self::NoNode(_) | Self::NoCluster => "no_node",
            Self::NotOnNode { .. } => "not_on_node",
            Self::ForeignIdentity(_) => "foreign_identity",
        }
    }
}

/// Why the decision could not be made now.
#[derive(Debug, thiserror::Error)]
#[error("failed to read pods from the Kubernetes API server: {0}")]
pub struct Unavailable(#[source] pub kube::Error);

/// Decides impersonation requests against the API server's pods.
#[derive(Clone)]
pub struct NodeAuthorizer {
    client: Option<kube::Client>,
    trusted: Vec<(String, String)>,
}

impl std::fmt::Debug for NodeAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAuthorizer")
            .field("trusted", &self.trusted)
            .finish_non_exhaustive()
    }
}

impl NodeAuthorizer {
    /// An authorizer trusting the node agents `trusted` (namespace,
    /// ServiceAccount), reading pods through `client` (none without a
    /// cluster: then no impersonation is granted).
    pub fn new(client: Option<kube::Client>, trusted: Vec<(String, String)>) -> Self {
        Self { client, trusted }
    }

    /// The identity `caller` may have for `requested` (a SPIFFE ID).
    ///
    /// # Errors
    /// `Ok(Err(Denied))` when refused; `Err(Unavailable)` when the API
    /// server cannot be asked.
    pub async fn authorize(
        &self,
        caller: &Caller,
        requested: &str,
    ) -> Result<Result<Identity, Denied>, Unavailable> {
        let identity = match self.precheck(caller, requested) {
            Ok(identity) => identity,
            Err(denied) => return Ok(Err(denied)),
        };
        let Some(client) = &self.client else {
            return Ok(Err(Denied::NoCluster));
        };
        let Some(node) = caller_node(client, caller).await? else {
            return Ok(Err(Denied::NoNode(caller.identity.to_string())));
        };
        let pods: Api<Pod> = Api::namespaced(client.clone(), identity.namespace());
        let on_node = pods
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await
            .map_err(Unavailable)?;
        if on_node.items.iter().any(|pod| runs_as(pod, &identity)) {
            Ok(Ok(identity))
        } else {
            Ok(Err(Denied::NotOnNode {
                identity: identity.to_string(),
                node,
            }))
        }
    }

    /// The checks that need no API server: a trusted caller asking for an
    /// identity of its own trust domain.
    fn precheck(&self, caller: &Caller, requested: &str) -> Result<Identity, Denied> {
        let who = &caller.identity;
        let trusted = self
            .trusted
            .iter()
            .any(|(ns, sa)| who.namespace() == ns && who.service_account() == sa);
        if !trusted {
            return Err(Denied::UntrustedCaller(who.to_string()));
        }
        Identity::from_spiffe_id(requested)
            .ok()
            .filter(|id| id.trust_domain() == who.trust_domain())
            .ok_or_else(|| Denied::ForeignIdentity(requested.to_owned()))
    }
}

/// The caller's node: what its bound token says, else its bound pod's
/// `spec.nodeName` (the same pod, by UID); `None` for a credential not
/// bound to a pod.
async fn caller_node(
    client: &kube::Client,
    caller: &Caller,
) -> Result<Option<String>, Unavailable> {
    let Some(bound) = &caller.bound else {
        return Ok(None);
    };
    if let Some(node) = &bound.node {
        return Ok(Some(node.clone()));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), caller.identity.namespace());
    let pod = pods.get_opt(&bound.name).await.map_err(Unavailable)?;
    Ok(pod
        .filter(|p| bound.uid.is_none() || p.metadata.uid == bound.uid)
        .and_then(|p| p.spec?.node_name))
}

/// Whether `pod` runs (or will run) as `identity`: its ServiceAccount, and
/// not finished.
fn runs_as(pod: &Pod, identity: &Identity) -> bool {
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed");
    pod.metadata.namespace.as_deref() == Some(identity.namespace())
        && account == identity.service_account()
        && !finished
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthMethod, BoundPod};
    use meshca_provider::TrustDomain;

    fn identity(ns: &str, sa: &str) -> Identity {
        Identity::new(TrustDomain::new("cluster.local").expect("td"), ns, sa).expect("identity")
    }

    fn pod(ns: &str, sa: Option<&str>, phase: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "p", "namespace": ns },
            "spec": { "containers": [], "serviceAccountName": sa, "nodeName": "node-1" },
            "status": { "phase": phase },
        }))
        .expect("pod")
    }

    #[test]
    fn a_pod_runs_as_its_service_account_until_it_finishes() {
        let web = identity("web", "web");
        assert!(runs_as(&pod("web", Some("web"), "Running"), &web));
        assert!(runs_as(&pod("web", Some("web"), "Pending"), &web));
        assert!(!runs_as(&pod("web", Some("web"), "Succeeded"), &web));
        assert!(!runs_as(&pod("web", Some("web"), "Failed"), &web));
        assert!(!runs_as(&pod("web", Some("other"), "Running"), &web));
        assert!(!runs_as(&pod("other", Some("web"), "Running"), &web));
        assert!(runs_as(
            &pod("web", None, "Running"),
            &identity("web", "default")
        ));
    }

    #[tokio::test]
    async fn only_a_trusted_node_agent_may_ask_for_its_trust_domains_identities() {
        // No cluster: what is decided without the API server still is.
        let authorizer = NodeAuthorizer::new(None, vec![("istio-system".into(), "ztunnel".into())]);
        let caller = |ns: &str, sa: &str| Caller {
            identity: identity(ns, sa),
            method: AuthMethod::Token,
            bound: Some(BoundPod {
                name: "p".into(),
                uid: None,
                node: Some("node-1".into()),
            }),
        };
        let ztunnel = caller("istio-system", "ztunnel");
        assert_eq!(
            authorizer.precheck(&ztunnel, "spiffe://cluster.local/ns/web/sa/web"),
            Ok(identity("web", "web"))
        );
        let denied = authorizer
            .precheck(&caller("web", "web"), "spiffe://cluster.local/ns/db/sa/db")
            .expect_err("untrusted");
        assert_eq!(denied.reason(), "untrusted_caller");
        for foreign in ["spiffe://other.test/ns/web/sa/web", "web/web", ""] {
            let denied = authorizer.precheck(&ztunnel, foreign).expect_err(foreign);
            assert_eq!(denied.reason(), "foreign_identity", "{foreign}");
        }
        let denied = authorizer
            .authorize(&ztunnel, "spiffe://cluster.local/ns/web/sa/web")
            .await
            .expect("decided without the API server");
        assert_eq!(denied, Err(Denied::NoCluster));
    }
}
