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
    /// The HTTP status answered (0 when the answer was lost).
    pub code: u16,
    /// When the request arrived.
    pub at: std::time::Instant,
    /// An authorization check the request implied (create on an apply
    /// that creates, sign, attest), not a request of its own.
    pub implied: bool,
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
    // As kube-apiserver's RequestInfo: a list or watch whose field selector
    // requires one metadata.name is authorized as a request for that name,
    // so `resourceNames` can restrict it.
    let selected = || {
        let selector = query.get("fieldSelector")?;
        let mut terms = selector.split(',');
        let only = terms.next()?;
        let name = only
            .strip_prefix("metadata.name==")
            .or_else(|| only.strip_prefix("metadata.name="))?;
        terms.next().is_none().then(|| name.to_owned())
    };
    let name = match verb {
        "list" | "watch" => selected(),
        _ => target.name.clone(),
    };
    Some(AuditEntry {
        user_agent: user_agent.to_owned(),
        verb,
        group: target.def.group.to_owned(),
        resource: target.def.plural.to_owned(),
        subresource: target.subresource.clone(),
        namespace: target.namespace.clone(),
        name,
        code: 0,
        at: std::time::Instant::now(),
        implied: false,
    })
}

/// The authorization checks kube-apiserver makes beyond the request's own
/// verb: a server-side apply that creates its object is also checked for
/// `create` (`handlers/patch.go`), and a signer's writes for `sign` or
/// `attest` ([`signer_check`]).
pub(crate) fn implied_checks(
    inner: &Inner,
    entry: &AuditEntry,
    headers: &HeaderMap,
    body: &Bytes,
) -> Vec<AuditEntry> {
    let apply = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/apply-patch"));
    let creates = entry.verb == "patch" && apply && stored(inner, entry).is_none();
    let create = creates.then(|| AuditEntry {
        verb: "create",
        implied: true,
        ..entry.clone()
    });
    create
        .into_iter()
        .chain(signer_check(inner, entry, body))
        .collect()
}

/// The object `entry` names, as stored.
fn stored(inner: &Inner, entry: &AuditEntry) -> Option<Value> {
    let store = inner.store.lock().expect("lock");
    let namespace = entry.namespace.clone().unwrap_or_default();
    store
        .objects
        .iter()
        .find(|((g, p, ns, n), _)| {
            *g == entry.group
                && *p == entry.resource
                && *ns == namespace
                && Some(n) == entry.name.as_ref()
        })
        .map(|(_, o)| o.clone())
}

/// The authorization check kube-apiserver adds on a signer's behalf:
/// writing a PodCertificateRequest's status needs `sign`, and writing a
/// ClusterTrustBundle linked to a signer needs `attest`, on
/// `certificates.k8s.io` `signers` named after the signer.
fn signer_check(inner: &Inner, entry: &AuditEntry, body: &Bytes) -> Option<AuditEntry> {
    if !matches!(entry.verb, "create" | "update" | "patch") || entry.group != "certificates.k8s.io"
    {
        return None;
    }
    let verb = match (entry.resource.as_str(), entry.subresource.as_deref()) {
        ("podcertificaterequests", Some("status")) => "sign",
        ("clustertrustbundles", None) => "attest",
        _ => return None,
    };
    let sent = writes::parse_body(body).ok();
    let signer = [sent, stored(inner, entry)]
        .into_iter()
        .flatten()
        .find_map(|o| {
            o.pointer("/spec/signerName")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })?;
    Some(AuditEntry {
        verb,
        resource: "signers".into(),
        subresource: None,
        namespace: None,
        name: Some(signer),
        implied: true,
        ..entry.clone()
    })
}
