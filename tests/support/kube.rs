//! Kubernetes API stand-in.
//!
//! No real kube-apiserver can run on these machines, so tests that need one
//! use this: an in-process server over real HTTPS on 127.0.0.1:0, with its
//! own cluster CA, speaking the apiserver's wire format where meshca (via
//! kube-rs), OpenBao and kubectl depend on it:
//!
//! - discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/<g>/<v>`;
//! - a store with a monotonically increasing `resourceVersion`, `uid`,
//!   `creationTimestamp`, and lists that carry `kind` and the list's RV;
//! - watch with resume from a resourceVersion, bookmarks, `timeoutSeconds`,
//!   and `410 Gone` (an `ERROR` event with reason `Expired`) for a
//!   resourceVersion older than the compacted history;
//! - create (409 `AlreadyExists`), replace (409 `Conflict` on a stale
//!   resourceVersion), merge / strategic-merge (as merge) / JSON /
//!   server-side-apply patch, delete with a body (`DeleteOptions`
//!   preconditions; 404 with reason `NotFound`);
//! - field ownership as the API server tracks it (`apply`): an apply needs
//!   a `fieldManager`, conflicts (409) with fields another manager owns at
//!   another value unless forced, and removes the fields its manager no
//!   longer lists;
//! - a `status` subresource for the resources that have one;
//! - `TokenReview` (authentication.k8s.io/v1), `Lease`
//!   (coordination.k8s.io/v1), `Event` (v1 and events.k8s.io/v1), `Ingress` (networking.k8s.io/v1 and, when
//!   enabled, v1beta1), cert-manager's `CertificateRequest`, and the kinds
//!   meshca's Helm chart installs (Deployment, RBAC);
//! - fault injection: unavailability (503) and forced update conflicts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::broadcast;

mod apply;

/// A ServiceAccount a token stands for.
#[derive(Clone, Debug)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// A resource the stand-in serves.
#[derive(Clone, Debug)]
struct ResourceDef {
    group: &'static str,
    versions: Vec<&'static str>,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status: bool,
}

impl ResourceDef {
    fn api_version(&self, version: &str) -> String {
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
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ingress_versions: vec!["v1"],
            history: 10_000,
            bookmark_every: Duration::from_secs(1),
        }
    }
}

fn resources(options: &Options) -> Vec<ResourceDef> {
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
    ];
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

/// One stored change, for watches.
#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    kind: &'static str,
    group: &'static str,
    plural: &'static str,
    namespace: String,
    object: Value,
}

type Key = (&'static str, &'static str, String, String);

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// Field managers of each object.
    owners: BTreeMap<Key, apply::Owners>,
    history: VecDeque<Event>,
    /// Events at or below this resourceVersion are gone.
    compacted: u64,
}

struct Inner {
    options: Options,
    resources: Vec<ResourceDef>,
    store: Mutex<Store>,
    events: broadcast::Sender<Event>,
    tokens: Mutex<HashMap<String, ServiceAccount>>,
    reviewers: Mutex<Vec<String>>,
    reviews: AtomicUsize,
    unavailable: AtomicBool,
    forced_conflicts: AtomicUsize,
    requests: Mutex<Vec<String>>,
}

/// The running stand-in.
pub struct KubeStandIn {
    pub addr: SocketAddr,
    ca_pem: String,
    inner: Arc<Inner>,
    server: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
}

impl Drop for KubeStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl KubeStandIn {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        let (events, _) = broadcast::channel(65_536);
        let inner = Arc::new(Inner {
            resources: resources(&options),
            options,
            store: Mutex::default(),
            events,
            tokens: Mutex::default(),
            reviewers: Mutex::default(),
            reviews: AtomicUsize::new(0),
            unavailable: AtomicBool::new(false),
            forced_conflicts: AtomicUsize::new(0),
            requests: Mutex::default(),
        });
        let app = Router::new().fallback(dispatch).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (ca_pem, tls) = serving_tls();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        tower::ServiceExt::oneshot(app.clone(), req)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        let s = Self {
            addr,
            ca_pem,
            inner,
            server,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        for ns in ["default", "kube-system", "osm-system"] {
            s.create_namespace(ns);
        }
        s
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// The cluster CA (what a kubeconfig's certificate-authority-data holds).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A kubeconfig file for this cluster, authenticating with a token.
    pub fn kubeconfig(&self) -> std::path::PathBuf {
        let path = self.dir.path().join("kubeconfig");
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\n\
                 users:\n- name: admin\n  user:\n    token: stand-in-admin\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: admin\n    namespace: osm-system\n\
                 current-context: stand-in\n",
                self.url()
            ),
        )
        .expect("kubeconfig");
        path
    }

    /// Answer every request with 503 while `down`.
    pub fn set_unavailable(&self, down: bool) {
        self.inner.unavailable.store(down, Ordering::SeqCst);
    }

    /// Make the next `n` replaces (PUT) answer 409 Conflict.
    pub fn force_conflicts(&self, n: usize) {
        self.inner.forced_conflicts.store(n, Ordering::SeqCst);
    }

    /// Drop the watch history up to now: resuming from an older
    /// resourceVersion then gets 410 Gone.
    pub fn compact(&self) {
        let mut store = self.inner.store.lock().expect("lock");
        store.compacted = store.rv;
        store.history.clear();
    }

    /// `METHOD path` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.inner.requests.lock().expect("lock").clone()
    }

    /// Read an object directly from the store.
    pub fn get(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let store = self.inner.store.lock().expect("lock");
        store
            .objects
            .iter()
            .find(|((g, p, ns, n), _)| *g == group && *p == plural && ns == namespace && n == name)
            .map(|(_, v)| v.clone())
    }

    /// Objects of one resource in a namespace.
    pub fn list(&self, group: &str, plural: &str, namespace: &str) -> Vec<Value> {
        let store = self.inner.store.lock().expect("lock");
        store
            .objects
            .iter()
            .filter(|((g, p, ns, _), _)| *g == group && *p == plural && ns == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Create or overwrite an object as a cluster user would (`kubectl
    /// apply`), bumping its resourceVersion and notifying watchers.
    pub fn put(&self, group: &str, plural: &str, object: Value) -> Value {
        let def = self.def(group, plural);
        let (ns, name) = namespace_and_name(&object);
        let mut store = self.inner.store.lock().expect("lock");
        let key = (def.group, def.plural, ns.clone(), name);
        let existed = store.objects.get(&key).cloned();
        let mut object = object;
        stamp(&mut object, &def, def.versions[0]);
        if let Some(old) = &existed {
            object["metadata"]["uid"] = old["metadata"]["uid"].clone();
            object["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
        }
        let kind = if existed.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        commit(
            &self.inner,
            &mut store,
            &def,
            key,
            Some((object, Owner::Update("kubectl"))),
            kind,
        )
        .expect("stored")
    }

    /// Delete an object as a cluster user would.
    pub fn delete(&self, group: &str, plural: &str, namespace: &str, name: &str) -> bool {
        let def = self.def(group, plural);
        let mut store = self.inner.store.lock().expect("lock");
        let key = (def.group, def.plural, namespace.to_owned(), name.to_owned());
        if !store.objects.contains_key(&key) {
            return false;
        }
        commit(&self.inner, &mut store, &def, key, None, "DELETED").is_some()
    }

    pub fn create_namespace(&self, name: &str) {
        self.put("", "namespaces", json!({ "metadata": { "name": name } }));
    }

    fn def(&self, group: &str, plural: &str) -> ResourceDef {
        self.inner
            .resources
            .iter()
            .find(|d| d.group == group && d.plural == plural)
            .cloned()
            .unwrap_or_else(|| panic!("the stand-in does not serve {group}/{plural}"))
    }

    /// Issue a ServiceAccount token (JWT-shaped, as the kubelet projects
    /// them) that TokenReview accepts for `namespace/name`, for the given
    /// audiences (any audience when empty).
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        self.service_account_token_for(namespace, name, &[])
    }

    pub fn service_account_token_for(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[&str],
    ) -> String {
        let sa = ServiceAccount {
            namespace: namespace.into(),
            name: name.into(),
            uid: format!("uid-{namespace}-{name}"),
        };
        let b64 =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let header = json!({ "alg": "RS256", "kid": "stand-in" });
        let serial = self.inner.tokens.lock().expect("lock").len();
        let claims = json!({
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "aud": audiences,
            "jti": format!("stand-in-{serial}"),
            "kubernetes.io": { "namespace": namespace, "serviceaccount": { "name": name, "uid": sa.uid } },
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/service-account.name": name,
            "kubernetes.io/serviceaccount/service-account.uid": sa.uid,
        });
        let token = format!("{}.{}.c3RhbmQtaW4tc2lnbmF0dXJl", b64(&header), b64(&claims));
        self.inner
            .tokens
            .lock()
            .expect("lock")
            .insert(token.clone(), sa);
        token
    }

    /// Revoke a token: TokenReview stops accepting it.
    pub fn revoke(&self, token: &str) {
        self.inner.tokens.lock().expect("lock").remove(token);
    }

    /// Allow the holder of `token` to create TokenReviews (the RBAC grant a
    /// reviewer needs). Without any grant, every bearer may.
    pub fn allow_reviewer(&self, token: &str) {
        self.inner
            .reviewers
            .lock()
            .expect("lock")
            .push(token.to_owned());
    }

    /// TokenReviews answered so far.
    pub fn reviews(&self) -> usize {
        self.inner.reviews.load(Ordering::SeqCst)
    }
}

/// `metadata.namespace` (empty for cluster-scoped) and `metadata.name`.
fn namespace_and_name(object: &Value) -> (String, String) {
    let field = |f: &str| {
        object
            .pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    (field("namespace"), field("name"))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("valid")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

/// Fill kind, apiVersion, uid and creationTimestamp as the apiserver does.
fn stamp(object: &mut Value, def: &ResourceDef, version: &str) {
    object["kind"] = json!(def.kind);
    object["apiVersion"] = json!(def.api_version(version));
    if object.get("metadata").is_none() {
        object["metadata"] = json!({});
    }
    let meta = &mut object["metadata"];
    if meta.get("uid").is_none() {
        meta["uid"] = json!(uuid_like());
    }
    if meta.get("creationTimestamp").is_none() {
        meta["creationTimestamp"] = json!(now_rfc3339());
    }
}

fn uuid_like() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("random");
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Store (or remove) an object under a new resourceVersion and tell
/// watchers. Returns what was stored (or removed).
/// Who a write is by, for field ownership.
enum Owner<'a> {
    /// An update (create, replace, merge or JSON patch) by this manager.
    Update(&'a str),
    /// An apply, whose ownership [`apply::apply`] worked out.
    Applied(apply::Owners),
}

fn commit(
    inner: &Inner,
    store: &mut Store,
    def: &ResourceDef,
    key: Key,
    object: Option<(Value, Owner<'_>)>,
    kind: &'static str,
) -> Option<Value> {
    store.rv += 1;
    let rv = store.rv;
    let namespace = key.2.clone();
    let object = match object {
        Some((mut o, owner)) => {
            o["metadata"]["resourceVersion"] = json!(rv.to_string());
            match owner {
                Owner::Update(manager) => {
                    let before = store.objects.get(&key).cloned();
                    let owners = store.owners.entry(key.clone()).or_default();
                    apply::record_update(owners, manager, before.as_ref(), &o);
                }
                Owner::Applied(owners) => {
                    store.owners.insert(key.clone(), owners);
                }
            }
            store.objects.insert(key, o.clone());
            o
        }
        None => {
            store.owners.remove(&key);
            let mut o = store.objects.remove(&key)?;
            o["metadata"]["resourceVersion"] = json!(rv.to_string());
            o
        }
    };
    let event = Event {
        rv,
        kind,
        group: def.group,
        plural: def.plural,
        namespace,
        object: object.clone(),
    };
    store.history.push_back(event.clone());
    while store.history.len() > inner.options.history {
        if let Some(e) = store.history.pop_front() {
            store.compacted = e.rv;
        }
    }
    let _ = inner.events.send(event);
    Some(object)
}

fn status_error(code: u16, reason: &str, message: String, kind: &str, name: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason,
        "details": { "name": name, "kind": kind }, "code": code,
    });
    (
        StatusCode::from_u16(code).expect("status"),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

/// A parsed resource path.
struct Target {
    def: ResourceDef,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(inner: &Inner, path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, r, rest @ ..] if !r.is_empty() => (Some((*ns).to_owned()), {
            let mut v = vec![*r];
            v.extend_from_slice(rest);
            v
        }),
        r => (None, r.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [p] => (*p, None, None),
        [p, n] => (*p, Some((*n).to_owned()), None),
        [p, n, s] => (*p, Some((*n).to_owned()), Some((*s).to_owned())),
        _ => return None,
    };
    // `/api/v1/namespaces/NAME` addresses a namespace itself.
    let (plural, name, namespace) = if namespace.is_some() && plural.is_empty() {
        ("namespaces", namespace, None)
    } else {
        (plural, name, namespace)
    };
    let def = inner
        .resources
        .iter()
        .find(|d| d.group == group && d.plural == plural && d.versions.contains(&version))?
        .clone();
    Some(Target {
        def,
        version: version.to_owned(),
        namespace,
        name,
        subresource: sub,
    })
}

fn selector_matches(
    object: &Value,
    label_selector: Option<&str>,
    field_selector: Option<&str>,
) -> bool {
    let labels = object
        .pointer("/metadata/labels")
        .and_then(Value::as_object);
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    for term in label_selector
        .unwrap_or("")
        .split(',')
        .filter(|t| !t.is_empty())
    {
        let ok = if let Some((k, v)) = term.split_once("!=") {
            label(k.trim()) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            label(k.trim()) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            label(k.trim()).is_none()
        } else {
            label(term.trim()).is_some()
        };
        if !ok {
            return false;
        }
    }
    for term in field_selector
        .unwrap_or("")
        .split(',')
        .filter(|t| !t.is_empty())
    {
        let (k, v, negate) = match term.split_once("!=") {
            Some((k, v)) => (k, v, true),
            None => match term.split_once("==").or_else(|| term.split_once('=')) {
                Some((k, v)) => (k, v, false),
                None => return false,
            },
        };
        let pointer = format!("/{}", k.trim().replace('.', "/"));
        let actual = object
            .pointer(&pointer)
            .and_then(Value::as_str)
            .unwrap_or("");
        if (actual == v.trim()) == negate {
            return false;
        }
    }
    true
}

async fn dispatch(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    inner
        .requests
        .lock()
        .expect("lock")
        .push(format!("{method} {}", uri.path()));
    if inner.unavailable.load(Ordering::SeqCst) {
        return status_error(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request".into(),
            "",
            "",
        );
    }
    let path = uri.path();
    match (method.clone(), path) {
        (Method::GET, "/version") => {
            return json_response(
                StatusCode::OK,
                &json!({
                    "major": "1", "minor": "33", "gitVersion": "v1.33.0-meshca-stand-in",
                    "platform": "linux/amd64", "goVersion": "go1.24", "compiler": "gc",
                    "gitCommit": "0000000", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                }),
            )
        }
        (Method::GET, "/api") => {
            return json_response(
                StatusCode::OK,
                &json!({
                    "kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1" }],
                }),
            )
        }
        (Method::GET, "/apis") => return json_response(StatusCode::OK, &api_group_list(&inner)),
        _ => {}
    }
    if method == Method::GET {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match parts.as_slice() {
            ["api", v] => return resource_list(&inner, "", v),
            ["apis", g, v] => return resource_list(&inner, g, v),
            _ => {}
        }
    }
    let Some(target) = parse_path(&inner, path) else {
        return status_error(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({method} {path})"),
            "",
            "",
        );
    };
    if target.def.plural == "tokenreviews" {
        return token_review(&inner, &headers, &body);
    }
    match method {
        Method::GET if target.name.is_some() => get(&inner, &target),
        Method::GET if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            watch(&inner, &target, &query)
        }
        Method::GET => list(&inner, &target, &query),
        Method::POST => create(&inner, &target, &body, manager(&query)),
        Method::PUT => replace(&inner, &target, &body, manager(&query)),
        Method::PATCH => patch(&inner, &target, &headers, &body, &query),
        Method::DELETE => delete(&inner, &target, &body),
        _ => status_error(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported"),
            "",
            "",
        ),
    }
}

/// The field manager a write names; kube-rs names none for plain writes.
fn manager(query: &HashMap<String, String>) -> &str {
    query.get("fieldManager").map_or("unknown", String::as_str)
}

fn api_group_list(inner: &Inner) -> Value {
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for d in inner.resources.iter().filter(|d| !d.group.is_empty()) {
        let e = groups.entry(d.group).or_default();
        for v in &d.versions {
            if !e.contains(v) {
                e.push(v);
            }
        }
    }
    json!({
        "kind": "APIGroupList", "apiVersion": "v1",
        "groups": groups.iter().map(|(g, vs)| json!({
            "name": g,
            "versions": vs.iter().map(|v| json!({ "groupVersion": format!("{g}/{v}"), "version": v })).collect::<Vec<_>>(),
            "preferredVersion": { "groupVersion": format!("{g}/{}", vs[0]), "version": vs[0] },
        })).collect::<Vec<_>>(),
    })
}

fn resource_list(inner: &Inner, group: &str, version: &str) -> Response {
    let defs: Vec<&ResourceDef> = inner
        .resources
        .iter()
        .filter(|d| d.group == group && d.versions.contains(&version))
        .collect();
    if defs.is_empty() {
        return status_error(
            404,
            "NotFound",
            format!("no API group version {group}/{version}"),
            "",
            "",
        );
    }
    let mut resources = Vec::new();
    for d in defs {
        let verbs: Vec<&str> = if d.plural == "tokenreviews" {
            vec!["create"]
        } else {
            vec![
                "create", "delete", "get", "list", "patch", "update", "watch",
            ]
        };
        resources.push(json!({
            "name": d.plural, "singularName": d.kind.to_lowercase(), "namespaced": d.namespaced,
            "kind": d.kind, "verbs": verbs,
        }));
        if d.status {
            resources.push(json!({
                "name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced,
                "kind": d.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources,
        }),
    )
}

fn key_of(target: &Target, name: &str) -> Key {
    (
        target.def.group,
        target.def.plural,
        target.namespace.clone().unwrap_or_default(),
        name.to_owned(),
    )
}

/// The object as served at the requested version.
fn at_version(mut object: Value, target: &Target) -> Value {
    object["apiVersion"] = json!(target.def.api_version(&target.version));
    object
}

fn not_found(target: &Target, name: &str) -> Response {
    status_error(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", target.def.plural),
        target.def.plural,
        name,
    )
}

fn get(inner: &Inner, target: &Target) -> Response {
    let name = target.name.as_deref().unwrap_or_default();
    let store = inner.store.lock().expect("lock");
    match store.objects.get(&key_of(target, name)) {
        Some(o) => json_response(StatusCode::OK, &at_version(o.clone(), target)),
        None => not_found(target, name),
    }
}

/// The stored objects a list or an initial watch of `target` returns.
fn listed<'a>(
    store: &'a Store,
    target: &'a Target,
    query: &'a HashMap<String, String>,
) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
    store.objects.iter().filter(move |((g, p, ns, _), o)| {
        *g == target.def.group
            && *p == target.def.plural
            && target.namespace.as_ref().is_none_or(|t| t == ns)
            && selector_matches(
                o,
                query.get("labelSelector").map(String::as_str),
                query.get("fieldSelector").map(String::as_str),
            )
    })
}

fn list(inner: &Inner, target: &Target, query: &HashMap<String, String>) -> Response {
    let store = inner.store.lock().expect("lock");
    let items: Vec<Value> = listed(&store, target, query)
        .map(|(_, o)| at_version(o.clone(), target))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", target.def.kind),
            "apiVersion": target.def.api_version(&target.version),
            "metadata": { "resourceVersion": store.rv.to_string() },
            "items": items,
        }),
    )
}

fn watch(inner: &Arc<Inner>, target: &Target, query: &HashMap<String, String>) -> Response {
    let label = query.get("labelSelector").cloned();
    let field = query.get("fieldSelector").cloned();
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    let from: Option<u64> = query
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0);
    let matches = {
        let target_ns = target.namespace.clone();
        let (group, plural) = (target.def.group, target.def.plural);
        move |e: &Event| {
            e.group == group
                && e.plural == plural
                && target_ns.as_ref().is_none_or(|ns| *ns == e.namespace)
                && selector_matches(&e.object, label.as_deref(), field.as_deref())
        }
    };
    let api_version = target.def.api_version(&target.version);
    let kind = target.def.kind;
    let mut live = inner.events.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    let line = |v: Value| Ok(Bytes::from(format!("{v}\n")));

    // Replay under the lock, so nothing between replay and live is missed.
    let (replay, mut last_rv, gone) = {
        let store = inner.store.lock().expect("lock");
        match from {
            Some(rv) if rv < store.compacted => (Vec::new(), rv, true),
            Some(rv) => (
                store
                    .history
                    .iter()
                    .filter(|e| e.rv > rv && matches(e))
                    .cloned()
                    .collect::<Vec<_>>(),
                store.rv,
                false,
            ),
            None => {
                let synthetic = listed(&store, target, query)
                    .map(|((g, p, ns, _), o)| Event {
                        rv: 0,
                        kind: "ADDED",
                        group: g,
                        plural: p,
                        namespace: ns.clone(),
                        object: o.clone(),
                    })
                    .collect();
                (synthetic, store.rv, false)
            }
        }
    };
    let every = inner.options.bookmark_every;
    let av = api_version.clone();
    tokio::spawn(async move {
        if gone {
            let _ = tx
                .send(line(json!({ "type": "ERROR", "object": {
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "too old resource version", "reason": "Expired", "code": 410,
                }})))
                .await;
            return;
        }
        for e in replay {
            let mut o = e.object;
            o["apiVersion"] = json!(av);
            if tx
                .send(line(json!({ "type": e.kind, "object": o })))
                .await
                .is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                _ = tick.tick(), if bookmarks => {
                    let b = json!({ "type": "BOOKMARK", "object": {
                        "kind": kind, "apiVersion": av, "metadata": { "resourceVersion": last_rv.to_string() },
                    }});
                    if tx.send(line(b)).await.is_err() { return; }
                }
                e = live.recv() => match e {
                    Ok(e) if e.rv > last_rv => {
                        last_rv = e.rv;
                        if matches(&e) {
                            let mut o = e.object;
                            o["apiVersion"] = json!(av);
                            if tx.send(line(json!({ "type": e.kind, "object": o }))).await.is_err() { return; }
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream = tokio_stream_from(rx);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("response")
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn parse_body(body: &Bytes) -> Result<Value, String> {
    serde_json::from_slice(body)
        .or_else(|_| serde_yaml_ng::from_slice(body))
        .map_err(|e| format!("invalid body: {e}"))
}

fn bad_request(message: String) -> Response {
    status_error(400, "BadRequest", message, "", "")
}

fn create(inner: &Inner, target: &Target, body: &Bytes, manager: &str) -> Response {
    match parse_body(body) {
        Ok(object) => create_object(inner, target, object, Owner::Update(manager)),
        Err(m) => bad_request(m),
    }
}

fn create_object(inner: &Inner, target: &Target, mut object: Value, owner: Owner<'_>) -> Response {
    let name = match object.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) => n.to_owned(),
        None => match object
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
        {
            Some(prefix) => format!("{prefix}{}", &uuid_like()[..5]),
            None => {
                return status_error(
                    422,
                    "Invalid",
                    "metadata.name: Required value".into(),
                    target.def.kind,
                    "",
                )
            }
        },
    };
    object["metadata"]["name"] = json!(name);
    if let Some(ns) = &target.namespace {
        object["metadata"]["namespace"] = json!(ns);
    }
    if let Some(meta) = object["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
        meta.remove("uid");
    }
    let mut store = inner.store.lock().expect("lock");
    let key = key_of(target, &name);
    if store.objects.contains_key(&key) {
        return status_error(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", target.def.plural),
            target.def.plural,
            &name,
        );
    }
    if let Some(ns) = &target.namespace {
        if !store
            .objects
            .contains_key(&("", "namespaces", String::new(), ns.clone()))
        {
            return status_error(
                404,
                "NotFound",
                format!("namespaces \"{ns}\" not found"),
                "namespaces",
                ns,
            );
        }
    }
    stamp(&mut object, &target.def, &target.version);
    match commit(
        inner,
        &mut store,
        &target.def,
        key,
        Some((object, owner)),
        "ADDED",
    ) {
        Some(o) => json_response(StatusCode::CREATED, &at_version(o, target)),
        None => status_error(500, "InternalError", "store failed".into(), "", ""),
    }
}

fn precondition_rv(object: &Value) -> Option<String> {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Store `new` for an existing object, honouring the status subresource.
fn update(
    inner: &Inner,
    store: &mut Store,
    target: &Target,
    name: &str,
    (mut new, owner): (Value, Owner<'_>),
    current: Value,
) -> Response {
    let key = key_of(target, name);
    if target.def.status {
        if target.subresource.as_deref() == Some("status") {
            let status = new.get("status").cloned().unwrap_or(Value::Null);
            new = current.clone();
            new["status"] = status;
        } else {
            match current.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        }
    }
    new["metadata"]["uid"] = current["metadata"]["uid"].clone();
    new["metadata"]["creationTimestamp"] = current["metadata"]["creationTimestamp"].clone();
    new["metadata"]["name"] = json!(name);
    if let Some(ns) = &target.namespace {
        new["metadata"]["namespace"] = json!(ns);
    }
    stamp(&mut new, &target.def, &target.version);
    match commit(
        inner,
        store,
        &target.def,
        key,
        Some((new, owner)),
        "MODIFIED",
    ) {
        Some(o) => json_response(StatusCode::OK, &at_version(o, target)),
        None => status_error(500, "InternalError", "store failed".into(), "", ""),
    }
}

fn conflict(target: &Target, name: &str) -> Response {
    status_error(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            target.def.plural
        ),
        target.def.plural,
        name,
    )
}

fn replace(inner: &Inner, target: &Target, body: &Bytes, manager: &str) -> Response {
    let name = target.name.clone().unwrap_or_default();
    let new = match parse_body(body) {
        Ok(o) => o,
        Err(m) => return bad_request(m),
    };
    if inner
        .forced_conflicts
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return conflict(target, &name);
    }
    let mut store = inner.store.lock().expect("lock");
    let Some(current) = store.objects.get(&key_of(target, &name)).cloned() else {
        return not_found(target, &name);
    };
    if let Some(rv) = precondition_rv(&new) {
        if Some(rv) != precondition_rv(&current) {
            return conflict(target, &name);
        }
    }
    update(
        inner,
        &mut store,
        target,
        &name,
        (new, Owner::Update(manager)),
        current,
    )
}

fn patch(
    inner: &Inner,
    target: &Target,
    headers: &HeaderMap,
    body: &Bytes,
    query: &HashMap<String, String>,
) -> Response {
    let name = target.name.clone().unwrap_or_default();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let mut store = inner.store.lock().expect("lock");
    let current = store.objects.get(&key_of(target, &name)).cloned();
    let patched = match (content_type.as_str(), current.clone()) {
        ("application/json-patch+json", Some(cur)) => {
            let ops: json_patch::Patch = match serde_json::from_slice(body) {
                Ok(p) => p,
                Err(e) => {
                    return status_error(
                        400,
                        "BadRequest",
                        format!("invalid JSON patch: {e}"),
                        "",
                        "",
                    )
                }
            };
            let mut doc = cur;
            if let Err(e) = json_patch::patch(&mut doc, &ops) {
                return status_error(
                    422,
                    "Invalid",
                    format!("the JSON patch could not be applied: {e}"),
                    target.def.kind,
                    &name,
                );
            }
            doc
        }
        ("application/merge-patch+json" | "application/strategic-merge-patch+json", Some(cur)) => {
            let p = match parse_body(body) {
                Ok(p) => p,
                Err(m) => return bad_request(m),
            };
            if let Some(rv) = precondition_rv(&p) {
                if Some(rv) != precondition_rv(&cur) {
                    return conflict(target, &name);
                }
            }
            let mut doc = cur;
            json_patch::merge(&mut doc, &p);
            doc
        }
        ("application/apply-patch+yaml" | "application/apply-patch+cbor", current) => {
            let p = match parse_body(body) {
                Ok(p) => p,
                Err(m) => return bad_request(m),
            };
            return server_side_apply(inner, store, target, &name, current, &p, query);
        }
        (_, None) => return not_found(target, &name),
        (other, _) => {
            return status_error(
                415,
                "UnsupportedMediaType",
                format!("unsupported patch type {other:?}"),
                "",
                "",
            )
        }
    };
    let cur = current.unwrap_or(Value::Null);
    update(
        inner,
        &mut store,
        target,
        &name,
        (patched, Owner::Update(manager(query))),
        cur,
    )
}

/// An apply patch: needs a field manager, refuses conflicts unless forced.
fn server_side_apply(
    inner: &Inner,
    mut store: std::sync::MutexGuard<'_, Store>,
    target: &Target,
    name: &str,
    current: Option<Value>,
    config: &Value,
    query: &HashMap<String, String>,
) -> Response {
    let Some(manager) = query.get("fieldManager") else {
        return bad_request(
            "PATCH request with apply content type must include fieldManager".into(),
        );
    };
    let force = query.get("force").is_some_and(|f| f == "true");
    let mut owners = store
        .owners
        .get(&key_of(target, name))
        .cloned()
        .unwrap_or_default();
    let doc = match apply::apply(current.as_ref(), &mut owners, manager, force, config) {
        Ok(doc) => doc,
        Err(conflicts) => {
            let list: Vec<String> = conflicts
                .iter()
                .map(|c| format!("conflict with {:?}: {}", c.manager, c.path))
                .collect();
            return status_error(
                409,
                "Conflict",
                format!(
                    "Apply failed with {} conflict(s): {}",
                    list.len(),
                    list.join("; ")
                ),
                target.def.plural,
                name,
            );
        }
    };
    match current {
        Some(cur) => update(
            inner,
            &mut store,
            target,
            name,
            (doc, Owner::Applied(owners)),
            cur,
        ),
        None => {
            drop(store);
            let mut doc = doc;
            doc["metadata"]["name"] = json!(name);
            create_object(inner, target, doc, Owner::Applied(owners))
        }
    }
}

fn delete(inner: &Inner, target: &Target, body: &Bytes) -> Response {
    let name = target.name.clone().unwrap_or_default();
    let options: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut store = inner.store.lock().expect("lock");
    let key = key_of(target, &name);
    let Some(current) = store.objects.get(&key).cloned() else {
        return not_found(target, &name);
    };
    if let Some(rv) = options
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
    {
        if Some(rv.to_owned()) != precondition_rv(&current) {
            return conflict(target, &name);
        }
    }
    if let Some(uid) = options
        .pointer("/preconditions/uid")
        .and_then(Value::as_str)
    {
        if current.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
            return conflict(target, &name);
        }
    }
    match commit(inner, &mut store, &target.def, key, None, "DELETED") {
        Some(o) => json_response(StatusCode::OK, &at_version(o, target)),
        None => not_found(target, &name),
    }
}

fn token_review(inner: &Inner, headers: &HeaderMap, body: &Bytes) -> Response {
    let caller = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let reviewers = inner.reviewers.lock().expect("lock").clone();
    if !reviewers.is_empty() && !reviewers.contains(&caller) {
        return status_error(
            403,
            "Forbidden",
            "tokenreviews.authentication.k8s.io is forbidden: the caller cannot create tokenreviews".into(),
            "tokenreviews",
            "",
        );
    }
    let review: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    inner.reviews.fetch_add(1, Ordering::SeqCst);
    let token = review
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let wanted: Vec<String> = review
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let token_audiences: Vec<String> = token
        .split('.')
        .nth(1)
        .and_then(|c| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
        })
        .and_then(|c| serde_json::from_slice::<Value>(&c).ok())
        .and_then(|c| c.get("aud").and_then(Value::as_array).cloned())
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    // As the apiserver: the token must be valid for one of the requested
    // audiences (tokens minted without audiences are valid for any).
    let audiences: Vec<String> = if token_audiences.is_empty() {
        wanted.clone()
    } else {
        wanted
            .iter()
            .filter(|a| token_audiences.contains(a))
            .cloned()
            .collect()
    };
    let status = match inner.tokens.lock().expect("lock").get(token) {
        Some(_) if !wanted.is_empty() && audiences.is_empty() => {
            json!({ "authenticated": false, "error": "token audiences do not match the requested audiences" })
        }
        Some(sa) => json!({
            "authenticated": true,
            "user": {
                "username": format!("system:serviceaccount:{}:{}", sa.namespace, sa.name),
                "uid": sa.uid,
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", sa.namespace), "system:authenticated"],
            },
            "audiences": audiences,
        }),
        None => json!({ "authenticated": false, "error": "invalid bearer token" }),
    };
    json_response(
        StatusCode::CREATED,
        &json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": { "creationTimestamp": null },
            "spec": review.get("spec").cloned().unwrap_or(json!({})),
            "status": status,
        }),
    )
}

/// A throwaway cluster CA and a serving certificate for 127.0.0.1 /
/// localhost / kubernetes.default.svc.
fn serving_tls() -> (String, rustls::ServerConfig) {
    super::install_crypto_provider();
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kubernetes stand-in CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let ca = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec![
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        "kubernetes.default.svc".to_owned(),
    ])
    .expect("params");
    let cert = params.signed_by(&key, &ca).expect("cert");
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("tls config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (ca_cert.pem(), config)
}

/// How the stand-in's cert-manager CA issuer answers a CertificateRequest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssuerBehaviour {
    /// Approve and sign, as cert-manager's CA issuer does.
    Sign,
    /// Approve and sign, but leave `status.ca` empty (ACME-like issuers).
    SignWithoutCa,
    /// Deny (as an approver policy would).
    Deny,
    /// Approve, then fail (Ready=False, reason Failed).
    Fail,
    /// Never answer.
    Ignore,
    /// Sign with an extra name the CSR did not ask for.
    WrongSan,
    /// Sign a CA certificate.
    CaCert,
}

/// A cert-manager CA issuer played by the stand-in: it watches
/// CertificateRequests for its issuerRef and answers them the way
/// cert-manager's controllers do (approval, then signing what the CSR names
/// with its own CA, then conditions), independently of meshca's code.
pub struct CaIssuer {
    pub ca_pem: String,
    behaviour: Arc<Mutex<IssuerBehaviour>>,
    answered: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CaIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CaIssuer {
    pub fn set(&self, b: IssuerBehaviour) {
        *self.behaviour.lock().expect("lock") = b;
    }

    /// Requests answered (any outcome) so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }
}

impl KubeStandIn {
    /// Start an issuer answering requests whose issuerRef is `kind`/`name`.
    pub fn start_ca_issuer(&self, kind: &str, name: &str) -> CaIssuer {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("{name} CA (cert-manager stand-in)"),
        );
        let ca_pem = params.self_signed(&ca_key).expect("ca").pem();
        let issuer = Arc::new(rcgen::Issuer::new(params, ca_key));
        let behaviour = Arc::new(Mutex::new(IssuerBehaviour::Sign));
        let answered = Arc::new(AtomicUsize::new(0));
        let mut events = self.inner.events.subscribe();
        let inner = self.inner.clone();
        let (kind, name) = (kind.to_owned(), name.to_owned());
        let (b, a, ca) = (behaviour.clone(), answered.clone(), ca_pem.clone());
        let task = tokio::spawn(async move {
            loop {
                let event = match events.recv().await {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if event.kind != "ADDED" || event.plural != "certificaterequests" {
                    continue;
                }
                let spec = &event.object["spec"];
                if spec.pointer("/issuerRef/kind").and_then(Value::as_str) != Some(kind.as_str())
                    || spec.pointer("/issuerRef/name").and_then(Value::as_str)
                        != Some(name.as_str())
                {
                    continue;
                }
                let behaviour = *b.lock().expect("lock");
                if behaviour == IssuerBehaviour::Ignore {
                    continue;
                }
                let status = answer(&event.object, behaviour, &issuer, &ca);
                let (inner, a) = (inner.clone(), a.clone());
                let object = event.object.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let (ns, n) = namespace_and_name(&object);
                    let def = inner
                        .resources
                        .iter()
                        .find(|d| d.plural == "certificaterequests")
                        .cloned()
                        .expect("served");
                    let mut store = inner.store.lock().expect("lock");
                    let key: Key = (def.group, def.plural, ns, n);
                    if let Some(mut current) = store.objects.get(&key).cloned() {
                        current["status"] = status;
                        commit(
                            &inner,
                            &mut store,
                            &def,
                            key,
                            Some((current, Owner::Update("cert-manager"))),
                            "MODIFIED",
                        );
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        CaIssuer {
            ca_pem,
            behaviour,
            answered,
            task,
        }
    }
}

fn cond(kind: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({ "type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": now_rfc3339() })
}

/// What cert-manager would write into `status` for `cr`.
fn answer(
    cr: &Value,
    behaviour: IssuerBehaviour,
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: &str,
) -> Value {
    let approved = cond(
        "Approved",
        "True",
        "cert-manager.io",
        "Certificate request has been approved by cert-manager.io",
    );
    match behaviour {
        IssuerBehaviour::Deny => {
            return json!({ "conditions": [
                cond("Denied", "True", "policy.cert-manager.io", "identity not permitted by the approver policy"),
                cond("Ready", "False", "Denied", "The CertificateRequest was denied by an approval controller"),
            ]})
        }
        IssuerBehaviour::Fail => {
            return json!({ "conditions": [
                approved,
                cond("Ready", "False", "Failed", "Error signing certificate: the CA key is unavailable"),
            ]})
        }
        _ => {}
    }
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let request = cr
        .pointer("/spec/request")
        .and_then(Value::as_str)
        .and_then(|r| base64::engine::general_purpose::STANDARD.decode(r).ok())
        .and_then(|r| String::from_utf8(r).ok())
        .unwrap_or_default();
    let mut csr = match rcgen::CertificateSigningRequestParams::from_pem(&request) {
        Ok(c) => c,
        Err(e) => {
            return json!({ "conditions": [
                approved,
                cond("Ready", "False", "Failed", &format!("Failed to decode CSR in spec.request: {e}")),
            ]})
        }
    };
    let seconds = cr
        .pointer("/spec/duration")
        .and_then(Value::as_str)
        .and_then(|d| d.trim_end_matches('s').parse::<i64>().ok())
        .unwrap_or(90 * 24 * 3600);
    let now = time::OffsetDateTime::now_utc();
    let p = &mut csr.params;
    p.not_before = now;
    p.not_after = now + time::Duration::seconds(seconds);
    p.is_ca = if cr.pointer("/spec/isCA").and_then(Value::as_bool) == Some(true)
        || behaviour == IssuerBehaviour::CaCert
    {
        rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
    } else {
        rcgen::IsCa::NoCa
    };
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    let mut serial = [0u8; 16];
    {
        use ring::rand::SecureRandom;
        ring::rand::SystemRandom::new()
            .fill(&mut serial)
            .expect("random");
    }
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    if behaviour == IssuerBehaviour::WrongSan {
        p.subject_alt_names.push(rcgen::SanType::DnsName(
            "evil.example.com".try_into().expect("dns"),
        ));
    }
    let cert = csr.signed_by(issuer).expect("sign").pem();
    let ca = if behaviour == IssuerBehaviour::SignWithoutCa {
        String::new()
    } else {
        b64(ca_pem)
    };
    json!({
        "certificate": b64(&cert),
        "ca": ca,
        "conditions": [approved, cond("Ready", "True", "Issued", "Certificate fetched from issuer successfully")],
    })
}
