//! Kubernetes API stand-in, served over real HTTPS on 127.0.0.1:0 with its
//! own CA (as an apiserver is), because no real kube-apiserver can run on
//! these machines. It answers only what
//! the tests that use it need, with the apiserver's wire format:
//! `POST /apis/authentication.k8s.io/v1/tokenreviews` (TokenReview), which
//! Vault's Kubernetes auth calls to check meshca's ServiceAccount token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};

/// A ServiceAccount a token stands for.
#[derive(Clone, Debug)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

#[derive(Default)]
struct Inner {
    tokens: Mutex<HashMap<String, ServiceAccount>>,
    reviewers: Mutex<Vec<String>>,
    reviews: AtomicUsize,
}

/// The running stand-in.
pub struct KubeStandIn {
    pub addr: SocketAddr,
    ca_pem: String,
    inner: Arc<Inner>,
    _server: tokio::task::JoinHandle<()>,
}

impl KubeStandIn {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                post(token_review),
            )
            .with_state(inner.clone());
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
        Self {
            addr,
            ca_pem,
            inner,
            _server: server,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// The CA that signed the stand-in's serving certificate (the
    /// cluster CA a client is configured with).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Issue a ServiceAccount token (JWT-shaped, as the kubelet projects
    /// them) that TokenReview will accept for `namespace/name`.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let sa = ServiceAccount {
            namespace: namespace.into(),
            name: name.into(),
            uid: format!("uid-{namespace}-{name}"),
        };
        let b64 =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let header = json!({ "alg": "RS256", "kid": "stand-in" });
        let claims = json!({
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "aud": ["https://kubernetes.default.svc.cluster.local"],
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

    /// Allow the holder of `token` to create TokenReviews (the RBAC grant a
    /// reviewer needs).
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
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("tls config");
    (ca_cert.pem(), config)
}

async fn token_review(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Json(review): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let caller = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    if !inner.reviewers.lock().expect("lock").contains(&caller) {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                "message": "tokenreviews.authentication.k8s.io is forbidden: the caller cannot create tokenreviews",
            })),
        );
    }
    inner.reviews.fetch_add(1, Ordering::SeqCst);
    let token = review
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let audiences = review
        .pointer("/spec/audiences")
        .cloned()
        .unwrap_or(json!([]));
    let status = match inner.tokens.lock().expect("lock").get(token) {
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
    (
        StatusCode::CREATED,
        Json(json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": { "creationTimestamp": null },
            "spec": review.get("spec").cloned().unwrap_or(json!({})),
            "status": status,
        })),
    )
}
