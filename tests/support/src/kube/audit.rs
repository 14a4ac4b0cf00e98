//! What each request did, as kube-apiserver's audit log records it (user
//! agent, verb, group, resource, subresource, namespace, name): the RBAC
//! audit compares meshca's requests with what the chart grants.

use super::*;

/// One request as an RBAC rule sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuditEntry {
    /// The client's User-Agent (`meshca/<version>` for meshca).
    pub user_agent: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch` or `delete`.
    pub verb: &'static str,
    /// The API group ("" for core).
    pub group: String,
    /// The resource, e.g. `secrets`.
    pub resource: String,
    /// E.g. `status`.
    pub subresource: Option<String>,
    /// For namespaced requests.
    pub namespace: Option<String>,
    /// For requests on one object.
    pub name: Option<String>,
}

/// Whether a User-Agent is meshca's.
pub(crate) fn is_meshca(user_agent: &str) -> bool {
    user_agent.starts_with("meshca/")
}

/// The audit entry of a resource request (discovery is not authorized by
/// RBAC rules on resources, so it has none).
pub(crate) fn entry(
    method: &Method,
    target: Option<&Target>,
    query: &HashMap<String, String>,
    user_agent: &str,
) -> Option<AuditEntry> {
    let target = target?;
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match *method {
        Method::GET if watching => "watch",
        Method::GET if target.name.is_some() => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => return None,
    };
    Some(AuditEntry {
        user_agent: user_agent.to_owned(),
        verb,
        group: target.def.group.to_owned(),
        resource: target.def.plural.to_owned(),
        subresource: target.subresource.clone(),
        namespace: target.namespace.clone(),
        name: target.name.clone(),
    })
}
