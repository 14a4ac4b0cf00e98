//! End to end with the real nginx (Debian's) as the ingress data plane:
//! nginx is configured from what `meshca ingress render --controller nginx`
//! prints (backend-protocol HTTPS, proxy_ssl_verify on, the bundle as
//! proxy_ssl_trusted_certificate, proxy_ssl_name = the backend identity),
//! and proxies to a real HTTPS backend serving the identity meshca issued.

use meshca_test_support as support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use serde_json::{json, Value};
use support::TestDaemon;

use support::process::free_port;

/// A real HTTPS server answering `/status/200`, presenting `chain` + `key`.
async fn https_backend(
    chain_pem: &str,
    key_pem: &str,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use rustls_pki_types::pem::PemObject;
    support::install_crypto_provider();
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("tls");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let status = if req.uri().path() == "/status/200" {
                            200
                        } else {
                            404
                        };
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .body(http_body_util::Full::new(axum::body::Bytes::from(
                                    "httpbin\n",
                                )))
                                .expect("response"),
                        )
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    (addr, task)
}

/// An nginx server block built from the rendered Ingress's annotations, as
/// ingress-nginx builds one.
fn nginx_conf(
    dir: &Path,
    listen: u16,
    host: &str,
    backend: SocketAddr,
    annotations: &Value,
    bundle: &Path,
) -> PathBuf {
    let a = |k: &str| {
        annotations[format!("nginx.ingress.kubernetes.io/{k}")]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(a("backend-protocol"), "HTTPS");
    let verify = a("proxy-ssl-verify");
    let depth = a("proxy-ssl-verify-depth");
    let server_name = a("proxy-ssl-server-name");
    let snippet = a("configuration-snippet");
    let conf = format!(
        "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           server {{\n    listen 127.0.0.1:{listen};\n    server_name {host};\n    location / {{\n\
               proxy_pass https://{backend};\n      proxy_ssl_verify {verify};\n      proxy_ssl_verify_depth {depth};\n\
               proxy_ssl_server_name {server_name};\n      proxy_ssl_trusted_certificate {bundle};\n      {snippet}\n    }}\n  }}\n}}\n",
        d = dir.display(),
        bundle = bundle.display(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("conf");
    path
}

fn curl(port: u16) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Host: httpbin.com",
        ])
        .arg(format!("http://127.0.0.1:{port}/status/200"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Certificate chain + key for `ns/sa` from meshca's signing API.
async fn identity(d: &TestDaemon, ns: &str, sa: &str) -> (String, String) {
    let key = support::key();
    let token = d.token(ns, sa);
    let (status, _, body) = d
        .post(
            &d.client().await,
            Some(&token),
            &json!({ "csr": support::csr(&key) }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    (
        body["certificate_chain"]
            .as_str()
            .expect("chain")
            .to_owned(),
        key.serialize_pem(),
    )
}

fn rendered_annotations() -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_meshca"))
        .args(["ingress", "render", "--controller", "nginx", "-f"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ingress/httpbin.yaml"))
        .output()
        .expect("meshca");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use serde::Deserialize;
    for doc in serde_yaml_ng::Deserializer::from_str(&String::from_utf8_lossy(&out.stdout)) {
        let v = Value::deserialize(doc).expect("yaml");
        if v["kind"] == "Ingress" {
            return v["metadata"]["annotations"].clone();
        }
    }
    panic!("no Ingress rendered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_reaches_a_backend_with_the_right_identity_and_refuses_any_other() {
    let d = TestDaemon::start("").await;
    let annotations = rendered_annotations();
    let bundle = d.bundle_path();
    let dir = tempfile::tempdir().expect("tempdir");

    let cases: Vec<(&str, (String, String), &str)> = vec![
        (
            "the backend's own identity",
            identity(&d, "httpbin", "httpbin").await,
            "200",
        ),
        (
            "another mesh identity",
            identity(&d, "bookbuyer", "bookbuyer").await,
            "502",
        ),
        (
            "a certificate from another CA",
            {
                let key = rcgen::KeyPair::generate().expect("key");
                let cert =
                    rcgen::CertificateParams::new(vec!["httpbin.httpbin.cluster.local".to_owned()])
                        .expect("params")
                        .self_signed(&key)
                        .expect("cert");
                (cert.pem(), key.serialize_pem())
            },
            "502",
        ),
    ];
    for (what, (chain, key), want) in cases {
        let (backend, task) = https_backend(&chain, &key).await;
        let port = free_port();
        let case_dir = dir.path().join(want).join(what.replace(' ', "-"));
        std::fs::create_dir_all(&case_dir).expect("dir");
        let conf = nginx_conf(
            &case_dir,
            port,
            "httpbin.com",
            backend,
            &annotations,
            &bundle,
        );
        let nginx = support::nginx::start(&case_dir, &conf, port).await;
        let code = tokio::task::spawn_blocking(move || curl(port))
            .await
            .expect("join");
        assert_eq!(
            code,
            want,
            "{what}: nginx log:\n{}",
            std::fs::read_to_string(case_dir.join("error.log")).unwrap_or_default()
        );
        drop(nginx);
        task.abort();
    }
}
