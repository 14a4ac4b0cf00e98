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
mod audit;
mod cert_manager;
mod faults;
mod http;
mod reads;
mod resources;
mod store;
mod tls;
mod token_review;
mod validation;
mod writes;

pub use audit::AuditEntry;
pub use cert_manager::{CaIssuer, IssuerBehaviour};
pub use faults::FaultPlan;
use faults::{Fault, Faults};
use http::*;
use reads::*;
pub use resources::Options;
use resources::*;
use store::*;
use tls::*;
pub use token_review::ADMIN_USER;
use token_review::*;
use writes::*;

/// A ServiceAccount a token stands for.
#[derive(Clone, Debug)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The pod a bound token belongs to: its name and UID when issued.
    pub pod: Option<(String, String)>,
    /// The token's `exp` (seconds since the epoch), if it expires.
    pub exp: Option<u64>,
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
    /// How far the server's clock runs ahead of true time, in seconds.
    clock_offset: std::sync::atomic::AtomicI64,
    /// `(METHOD, path suffix)` pairs answered 403 Forbidden.
    forbidden: Mutex<Vec<(String, String)>>,
    /// Every resource request, as an audit log records it.
    audit: Mutex<Vec<AuditEntry>>,
    /// Every object meshca's writes stored, each version, with when.
    written: Mutex<Vec<(std::time::Instant, Value)>>,
    /// Faults meshca's requests meet, while a plan is on.
    faults: Faults,
}

impl Inner {
    /// The server's clock.
    pub(crate) fn now(&self) -> time::OffsetDateTime {
        time::OffsetDateTime::now_utc()
            + time::Duration::seconds(self.clock_offset.load(Ordering::SeqCst))
    }
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
    /// Stop serving, then hold every object meshca wrote to Kubernetes
    /// 1.37's schemas (a test that already failed is not failed again).
    fn drop(&mut self) {
        self.server.abort();
        if std::thread::panicking() {
            return;
        }
        let written: Vec<Value> = std::mem::take(&mut *self.inner.written.lock().expect("lock"))
            .into_iter()
            .map(|(_, o)| o)
            .collect();
        if let Err(report) = crate::schemas::validate(&written) {
            panic!(
                "objects meshca wrote do not match Kubernetes {}'s schemas:\n{report}",
                crate::schemas::KUBERNETES_VERSION
            );
        }
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
            clock_offset: std::sync::atomic::AtomicI64::new(0),
            forbidden: Mutex::default(),
            audit: Mutex::default(),
            written: Mutex::default(),
            faults: Faults::default(),
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
                 users:\n- name: admin\n  user:\n    token: {ADMIN_TOKEN}\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: admin\n    namespace: osm-system\n\
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

    /// A kube-rs client for this cluster, as meshca's own (through
    /// [`KubeStandIn::kubeconfig`]).
    pub async fn client(&self) -> ::kube::Client {
        let kubeconfig =
            ::kube::config::Kubeconfig::read_from(self.kubeconfig()).expect("kubeconfig");
        let config = ::kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("config");
        ::kube::Client::try_from(config).expect("client")
    }

    /// Run the server's clock `seconds` ahead of true time (behind when
    /// negative), as a cluster whose clock is off does.
    pub fn set_clock_offset(&self, seconds: i64) {
        self.inner.clock_offset.store(seconds, Ordering::SeqCst);
    }

    /// Put meshca's requests through `plan` from now on; `None` ends the
    /// faults.
    pub fn set_faults(&self, plan: Option<FaultPlan>) {
        self.inner.faults.set(plan);
    }

    /// Answer `method` requests whose path ends in `path_suffix` with 403
    /// Forbidden, as RBAC does for a verb the caller was not granted.
    pub fn forbid(&self, method: &str, path_suffix: &str) {
        self.inner
            .forbidden
            .lock()
            .expect("lock")
            .push((method.to_owned(), path_suffix.to_owned()));
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

    /// Every resource request so far, as an audit log records it.
    pub fn audit(&self) -> Vec<AuditEntry> {
        self.inner.audit.lock().expect("lock").clone()
    }

    /// Every version of every object meshca's writes stored so far.
    pub fn written_by_meshca(&self) -> Vec<Value> {
        self.writes_by_meshca()
            .into_iter()
            .map(|(_, o)| o)
            .collect()
    }

    /// As [`KubeStandIn::written_by_meshca`], each with when it was
    /// stored.
    pub fn writes_by_meshca(&self) -> Vec<(std::time::Instant, Value)> {
        self.inner.written.lock().expect("lock").clone()
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
    /// apply`), bumping its resourceVersion and notifying watchers. The
    /// API server's admission applies: an object it would refuse panics
    /// with its message ([`KubeStandIn::try_put`] returns it instead).
    pub fn put(&self, group: &str, plural: &str, object: Value) -> Value {
        self.try_put(group, plural, object)
            .unwrap_or_else(|(code, reason, message)| panic!("{code} {reason}: {message}"))
    }

    /// As [`KubeStandIn::put`], or the API server's refusal: status code,
    /// reason and message.
    pub fn try_put(
        &self,
        group: &str,
        plural: &str,
        object: Value,
    ) -> Result<Value, (u16, String, String)> {
        let def = self.def(group, plural);
        let (ns, name) = namespace_and_name(&object);
        let mut store = self.inner.store.lock().expect("lock");
        let key = (def.group, def.plural, ns.clone(), name.clone());
        let existed = store.objects.get(&key).cloned();
        let mut object = object;
        let write = if existed.is_some() {
            validation::Write::Update
        } else {
            validation::Write::Create
        };
        if def.status {
            if let (Some(old), Some(o)) = (&existed, object.as_object_mut()) {
                match old.get("status") {
                    Some(status) => o.insert("status".into(), status.clone()),
                    None => o.remove("status"),
                };
            }
        }
        validation::admit(&def, write, existed.as_ref(), &mut object, self.inner.now())
            .map_err(|r| (r.code, r.reason.to_owned(), r.message))?;
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
        Ok(commit(
            &self.inner,
            &mut store,
            &def,
            key,
            Some((object, Owner::Update("kubectl"))),
            kind,
        )
        .expect("stored"))
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
        self.mint_token(namespace, name, audiences, None, None)
    }

    /// A token the kubelet would project into `pod` (which must exist):
    /// bound to the pod, for `audiences`, expiring in `lifetime` seconds
    /// (negative: already expired). TokenReview names the pod, its UID and
    /// its node in `extra`, and refuses the token once the pod is gone or
    /// replaced, or the token expired, as kube-apiserver does.
    pub fn bound_token(
        &self,
        namespace: &str,
        pod: &str,
        audiences: &[&str],
        lifetime: i64,
    ) -> String {
        let object = self
            .get("", "pods", namespace, pod)
            .unwrap_or_else(|| panic!("no pod {namespace}/{pod} to bind a token to"));
        let account = object
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned();
        let uid = object
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .expect("a stored pod has a UID")
            .to_owned();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let exp = now.saturating_add_signed(lifetime);
        self.mint_token(
            namespace,
            &account,
            audiences,
            Some((pod.to_owned(), uid)),
            Some(exp),
        )
    }

    fn mint_token(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[&str],
        pod: Option<(String, String)>,
        exp: Option<u64>,
    ) -> String {
        let sa = ServiceAccount {
            namespace: namespace.into(),
            name: name.into(),
            uid: format!("uid-{namespace}-{name}"),
            pod: pod.clone(),
            exp,
        };
        let b64 =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let header = json!({ "alg": "RS256", "kid": "stand-in" });
        let serial = self.inner.tokens.lock().expect("lock").len();
        let mut claims = json!({
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "aud": audiences,
            "jti": format!("stand-in-{serial}"),
            "kubernetes.io": { "namespace": namespace, "serviceaccount": { "name": name, "uid": sa.uid } },
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/service-account.name": name,
            "kubernetes.io/serviceaccount/service-account.uid": sa.uid,
        });
        if let Some(exp) = exp {
            claims["exp"] = json!(exp);
        }
        if let Some((pod, uid)) = &pod {
            claims["kubernetes.io"]["pod"] = json!({ "name": pod, "uid": uid });
        }
        let token = format!("{}.{}.c3RhbmQtaW4tc2lnbmF0dXJl", b64(&header), b64(&claims));
        self.inner
            .tokens
            .lock()
            .expect("lock")
            .insert(token.clone(), sa);
        token
    }

    /// A PodCertificateRequest as kubelet creates it for pod `name`
    /// (running as the ServiceAccount `web` on `node-1`), with the stub CSR
    /// `csr_der`, asking for `max` seconds (the API server's default when
    /// `None`).
    pub fn pod_certificate_request(
        namespace: &str,
        name: &str,
        signer: &str,
        csr_der: &[u8],
        max: Option<i64>,
    ) -> Value {
        use base64::Engine as _;
        let mut pcr = serde_json::json!({
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "PodCertificateRequest",
            "metadata": { "namespace": namespace, "name": name },
            "spec": {
                "signerName": signer,
                "podName": name,
                "podUID": format!("uid-{name}"),
                "serviceAccountName": "web",
                "serviceAccountUID": "uid-web",
                "nodeName": "node-1",
                "nodeUID": "uid-node-1",
                "stubPKCS10Request": base64::engine::general_purpose::STANDARD.encode(csr_der),
            }
        });
        if let Some(m) = max {
            pcr["spec"]["maxExpirationSeconds"] = serde_json::json!(m);
        }
        pcr
    }

    /// A running pod `namespace/name` as `service_account`, scheduled on
    /// `node` (or not yet scheduled), put as a cluster user would.
    pub fn put_pod(&self, namespace: &str, name: &str, service_account: &str, node: Option<&str>) {
        self.put(
            "",
            "pods",
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": { "name": name, "namespace": namespace },
                "spec": {
                    "serviceAccountName": service_account,
                    "nodeName": node,
                    "containers": [{ "name": "app", "image": "app:1" }],
                },
                "status": { "phase": "Running" },
            }),
        );
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
