//! SPIFFE federation between two real daemons, `a.test` and `b.test`:
//! `a.test` fetches `b.test`'s bundle over `https_spiffe` (authenticated by
//! the bundle it holds), `b.test` fetches `a.test`'s over `https_web` (an
//! openssl-made certificate, trusted through `SSL_CERT_FILE`). A py-spiffe
//! workload in `a.test` verifies what `b.test` issues with nothing but its
//! Workload API; openssl verifies with the agent's
//! `b.test.trust-bundle.pem`. A peer that fails or serves a bad bundle
//! leaves the last good one in place, and says so.

use meshca_test_support as support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use meshca::{AgentConfig, WorkloadApiConfig};
use serde_json::{json, Value};
use support::process::free_port;
use support::TestDaemon;
use tokio_util::sync::CancellationToken;

/// The SPIFFE ID `b.test`'s bundle endpoint serves with: its daemon's.
const B_ENDPOINT_ID: &str = "spiffe://b.test/ns/osm-system/sa/meshca";

/// A Web PKI for `https_web` endpoints: a root (which `SSL_CERT_FILE`
/// names for every daemon of this binary) and a certificate for
/// 127.0.0.1 under it.
struct WebPki {
    dir: tempfile::TempDir,
    root: (PathBuf, PathBuf),
    cert: PathBuf,
    key: PathBuf,
}

impl WebPki {
    /// A new certificate for 127.0.0.1 under the root, as `(crt, key)` in
    /// `dir`, made by the openssl CLI.
    fn leaf(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        let csr = dir.join(format!("{name}.csr"));
        let ext = self.dir.path().join("ext.cnf");
        let s = |p: &Path| p.to_str().expect("utf8").to_owned();
        for args in [
            vec![
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &s(&key),
            ],
            vec![
                "req",
                "-new",
                "-key",
                &s(&key),
                "-subj",
                "/CN=localhost",
                "-out",
                &s(&csr),
            ],
            vec![
                "x509",
                "-req",
                "-in",
                &s(&csr),
                "-CA",
                &s(&self.root.0),
                "-CAkey",
                &s(&self.root.1),
                "-set_serial",
                &format!("0x{:x}", rand_serial()),
                "-days",
                "30",
                "-extfile",
                &s(&ext),
                "-out",
                &s(&cert),
            ],
        ] {
            support::openssl(dir, &args);
        }
        (cert, key)
    }
}

/// A serial number for an openssl-made certificate.
fn rand_serial() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
        | 1
}

fn web_pki() -> &'static WebPki {
    static PKI: OnceLock<WebPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = support::openssl_root(dir.path(), "web");
        std::fs::write(
            dir.path().join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext");
        // Read by rustls-native-certs in every https_web client of this
        // process; set before any daemon starts.
        std::env::set_var("SSL_CERT_FILE", &root.0);
        let mut pki = WebPki {
            dir,
            root,
            cert: PathBuf::new(),
            key: PathBuf::new(),
        };
        let (cert, key) = pki.leaf(pki.dir.path(), "server");
        (pki.cert, pki.key) = (cert, key);
        pki
    })
}

/// The serial number of the certificate served on `port`, as openssl
/// prints it.
fn served_serial(port: u16) -> String {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null | openssl x509 -noout -serial"
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn serial_of(cert: &Path) -> String {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(cert)
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn python() -> PathBuf {
    let p = support::repo_root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "py-spiffe is missing: .ci/run installs it into .venv"
    );
    p
}

/// A daemon of `trust_domain` from a config file (so it can be edited).
async fn daemon(trust_domain: &str, extra: &str) -> TestDaemon {
    TestDaemon::start_from_file(&format!(
        "trust_domain: {trust_domain}\njwt_svids: {{ enabled: true, issuer: 'https://{trust_domain}' }}\nrotation: {{ propagation_delay: 1s }}\nbundle: {{ refresh_interval: 1s }}\n{extra}"
    ))
    .await
}

async fn get_json(url: &str, client: &reqwest::Client, token: Option<&str>) -> (u16, Value) {
    let mut request = client.get(url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The `x509-svid` certificates of a SPIFFE bundle, base64 DER.
fn authorities(bundle: &Value) -> Vec<String> {
    let mut out: Vec<String> = bundle["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter(|k| k["use"] == "x509-svid")
                .filter_map(|k| k["x5c"][0].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn pem_der_b64(path: &Path) -> Vec<String> {
    let mut out: Vec<String> = support::certs(&std::fs::read_to_string(path).expect("pem"))
        .iter()
        .map(|c| STANDARD.encode(c))
        .collect();
    out.sort();
    out
}

/// The value of the first sample of `metric` whose labels contain `labels`.
fn sample(metrics: &str, metric: &str, labels: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(metric) && l.contains(labels))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// `meshca agent` for `ns/sa` of `d`, serving the Workload API and writing
/// the SPIFFE files.
struct Agent {
    socket: PathBuf,
    out: PathBuf,
    shutdown: CancellationToken,
    _work: tempfile::TempDir,
}

impl Agent {
    async fn start(d: &TestDaemon, ns: &str, sa: &str) -> Self {
        let work = tempfile::tempdir().expect("tempdir");
        let socket = work.path().join("agent.sock");
        let token_file = work.path().join("token");
        std::fs::write(&token_file, d.token(ns, sa)).expect("token");
        let out = work.path().join("out");
        let shutdown = CancellationToken::new();
        tokio::spawn(meshca::run_agent(
            AgentConfig {
                server: d.url(""),
                ca_file: d.bundle_path(),
                token_file: Some(token_file),
                out_dir: Some(out.clone()),
                spiffe_files: true,
                workload_api: Some(WorkloadApiConfig {
                    socket: socket.clone(),
                    mode: 0o600,
                }),
                ttl: Some(Duration::from_secs(600)),
                once: false,
                bundle_refresh: Duration::from_millis(300),
                crl_refresh: Duration::from_millis(300),
                key_algorithm: meshca::KeyAlgorithmName::EcdsaP256,
            },
            shutdown.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(15);
        while !socket.exists() || !out.join("cert.pem").exists() {
            assert!(Instant::now() < deadline, "the agent never served");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            socket,
            out,
            shutdown,
            _work: work,
        }
    }

    async fn client(&self, args: &[&str]) -> Value {
        let out = tokio::process::Command::new(python())
            .arg(support::repo_root().join("tests/spiffe/client.py"))
            .args(args)
            .env(
                "SPIFFE_ENDPOINT_SOCKET",
                format!("unix://{}", self.socket.display()),
            )
            .kill_on_drop(true)
            .output()
            .await
            .expect("python runs");
        assert!(
            out.status.success(),
            "client {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("one JSON object")
    }
}

impl Agent {
    /// What py-spiffe makes of b.test's `chain` and `token` with the
    /// bundles this agent's Workload API gives.
    async fn federated_view(&self, chain: &Path, token: &str) -> Value {
        let chain = chain.to_str().expect("utf8");
        self.client(&["federated", "b.test", chain, token, "a-service"])
            .await
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// What `b` issued to `shop/api`: a certificate chain, its key (PEM
/// files) and a JWT-SVID for audience `a-service`.
struct IssuedByB {
    chain: PathBuf,
    key: PathBuf,
    token: String,
}

async fn issued_by(b: &TestDaemon, dir: &Path) -> IssuedByB {
    let token = b.token("shop", "api");
    let key = support::key();
    let csr = support::csr_with(&key, |p| {
        p.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://b.test/ns/shop/sa/api".try_into().expect("uri"),
        )];
    });
    let client = b.client().await;
    let (status, _, issued) = b.post(&client, Some(&token), &json!({ "csr": csr })).await;
    assert_eq!(status, 200, "{issued}");
    let key_file = dir.join("b-key.pem");
    std::fs::write(&key_file, key.serialize_pem()).expect("write");
    let chain = dir.join("b-chain.pem");
    std::fs::write(&chain, issued["certificate_chain"].as_str().expect("chain")).expect("write");
    let minted = client
        .post(b.url("/v1/jwt-svids"))
        .bearer_auth(&token)
        .json(&json!({ "audience": ["a-service"] }))
        .send()
        .await
        .expect("sent");
    assert_eq!(minted.status(), 200);
    let minted: Value = minted.json().await.expect("json");
    IssuedByB {
        chain,
        key: key_file,
        token: minted["token"].as_str().expect("token").to_owned(),
    }
}

/// nginx in a.test: TLS with the agent's own certificate, client
/// certificates verified against `client_ca` only; answers the client's
/// subject.
async fn nginx_verifying(
    dir: &Path,
    agent_out: &Path,
    client_ca: &Path,
) -> (support::nginx::Nginx, u16) {
    let port = free_port();
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {out}/cert.pem;\n    ssl_certificate_key {out}/key.pem;\n\
             ssl_client_certificate {ca};\n    ssl_verify_client on;\n    ssl_verify_depth 3;\n\
             location / {{ return 200 \"$ssl_client_verify\\n\"; }}\n  }}\n}}\n",
        d = dir.display(),
        out = agent_out.display(),
        ca = client_ca.display(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("conf");
    (support::nginx::start(dir, &path, port).await, port)
}

/// Whether `openssl verify` accepts the leaf of `chain` (its other
/// certificates as untrusted intermediates) under the roots in `ca`.
fn openssl_verifies(ca: &Path, chain: &Path) -> bool {
    std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(ca)
        .arg("-untrusted")
        .arg(chain)
        .arg(chain)
        .output()
        .expect("openssl")
        .status
        .success()
}

/// curl's status code for nginx on `port` with a client certificate,
/// trusting `ca`.
fn curl_with(port: u16, ca: &Path, cert: &Path, key: &Path) -> String {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(ca)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        // nginx serves the agent's certificate: its DNS name is SA.NS.TD.
        .arg("--resolve")
        .arg(format!("client.web.a.test:{port}:127.0.0.1"))
        .arg(format!("https://client.web.a.test:{port}/"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).to_string()
}

async fn fetches(d: &TestDaemon, trust_domain: &str, result: &str) -> f64 {
    sample(
        &d.metrics().await,
        "meshca_federated_bundle_fetches_total",
        &format!("trust_domain=\"{trust_domain}\",result=\"{result}\""),
    )
    .unwrap_or(0.0)
}

/// Wait until `d` has counted `at_least` fetches of `trust_domain` with
/// `result`.
async fn wait_for_fetches(
    d: &TestDaemon,
    trust_domain: &str,
    result: &str,
    at_least: f64,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    while fetches(d, trust_domain, result).await < at_least {
        assert!(
            Instant::now() < deadline,
            "fewer than {at_least} {result} fetches of {trust_domain}: {}",
            d.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_meshes_trust_each_other_through_root_rotations() {
    let pki = web_pki();
    let (a_port, b_port) = (free_port(), free_port());
    let work = tempfile::tempdir().expect("tempdir");
    let b_roots = [
        support::openssl_root(work.path(), "b1"),
        support::openssl_root(work.path(), "b2"),
    ];
    let b_yaml = |root: &(PathBuf, PathBuf)| {
        format!(
            "provider: {{ kind: tresor, tresor: {{ root_cert_file: {}, root_key_file: {} }} }}\nfederation:\n  bundle_endpoint: {{ listen: '127.0.0.1:{b_port}', profile: https_spiffe, refresh_hint: 30s }}\n  trust_domains:\n  - {{ trust_domain: a.test, bundle_endpoint_url: 'https://127.0.0.1:{a_port}', profile: https_web }}\n",
            root.0.display(),
            root.1.display()
        )
    };
    let b = daemon("b.test", &b_yaml(&b_roots[0])).await;
    let (_, b_bundle) = get_json(&b.url("/v1/bundle/spiffe"), &b.client().await, None).await;
    let b_bundle_file = work.path().join("b-bundle.json");
    std::fs::write(&b_bundle_file, b_bundle.to_string()).expect("write");

    let a = daemon(
        "a.test",
        &format!(
            "federation:\n  bundle_endpoint: {{ listen: '127.0.0.1:{a_port}', profile: https_web, cert_file: {}, key_file: {}, refresh_hint: 30s }}\n  trust_domains:\n  - {{ trust_domain: b.test, bundle_endpoint_url: 'https://127.0.0.1:{b_port}', profile: https_spiffe, endpoint_spiffe_id: '{B_ENDPOINT_ID}', bundle_file: {}, namespaces: [web] }}\n",
            pki.cert.display(),
            pki.key.display(),
            b_bundle_file.display()
        ),
    )
    .await;
    let a_client = a.client().await;

    // a.test holds b.test's bundle, for workloads of namespace web only.
    let web = a.token("web", "client");
    let other = a.token("other", "client");
    let (status, held) = get_json(&a.url("/v1/bundle/federated"), &a_client, Some(&web)).await;
    assert_eq!(status, 200);
    assert_eq!(
        authorities(&held["spiffe://b.test"]),
        authorities(&b_bundle)
    );
    // a.test fetched it as every client of meshca connects: with the
    // hybrid post-quantum key exchange.
    assert!(
        b.metrics().await.contains(
            r#"meshca_tls_handshakes_total{listener="bundle-endpoint",group="X25519MLKEM768"}"#
        ),
        "a.test's fetch did not negotiate X25519MLKEM768"
    );
    let (_, none) = get_json(&a.url("/v1/bundle/federated"), &a_client, Some(&other)).await;
    assert_eq!(
        none,
        json!({}),
        "a namespace-restricted domain is absent for others"
    );
    let url = a.url("/v1/bundle/spiffe?trust_domain=b.test");
    assert_eq!(get_json(&url, &a_client, None).await.0, 401);
    let (status, body) = get_json(&url, &a_client, Some(&other)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_trust_domain"))
    );
    assert_eq!(get_json(&url, &a_client, Some(&web)).await.0, 200);
    wait_for_fetches(&a, "b.test", "ok", 1.0, Duration::from_secs(20)).await;

    // b.test fetches a.test over https_web (a.test started after b.test:
    // its first fetches failed and were retried).
    let b_client = b.client().await;
    let a_url = b.url("/v1/bundle/spiffe?trust_domain=a.test");
    let deadline = Instant::now() + Duration::from_secs(45);
    let a_held = loop {
        let (status, body) = get_json(&a_url, &b_client, None).await;
        if status == 200 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "b.test never fetched a.test: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (_, a_own) = get_json(&a.url("/v1/bundle/spiffe"), &a_client, None).await;
    assert_eq!(authorities(&a_held), authorities(&a_own));

    // A py-spiffe workload in a.test verifies b.test's X509-SVID and
    // JWT-SVID with nothing but its Workload API.
    let agent = Agent::start(&a, "web", "client").await;
    let IssuedByB { chain, key, token } = issued_by(&b, work.path()).await;
    let seen = agent.federated_view(&chain, &token).await;
    assert_eq!(
        seen["x509_trust_domains"],
        json!(["a.test", "b.test"]),
        "{seen}"
    );
    assert_eq!(
        seen["context_trust_domains"],
        json!(["a.test", "b.test"]),
        "{seen}"
    );
    assert_eq!(
        seen["jwt_trust_domains"],
        json!(["a.test", "b.test"]),
        "{seen}"
    );
    assert_eq!(seen["x509_verified"], true, "{seen}");
    assert_eq!(
        seen["jwt_spiffe_id"], "spiffe://b.test/ns/shop/sa/api",
        "{seen}"
    );
    let checked = agent.client(&["jwt-check", &token, "a-service"]).await;
    assert_eq!(
        (checked["code"].as_str(), checked["spiffe_id"].as_str()),
        (Some("OK"), Some("spiffe://b.test/ns/shop/sa/api")),
        "ValidateJWTSVID with b.test's keys: {checked}"
    );
    let wrong = agent.client(&["jwt-check", &token, "elsewhere"]).await;
    assert_eq!(wrong["code"], "INVALID_ARGUMENT", "{wrong}");

    // openssl verifies b.test's certificate with the agent's file.
    let b_file = agent.out.join("b.test.trust-bundle.pem");
    assert_eq!(pem_der_b64(&b_file), authorities(&b_bundle));
    assert!(
        openssl_verifies(&b_file, &chain),
        "openssl refused b.test's chain"
    );
    let own_file = agent.out.join("a.test.trust-bundle.pem");
    assert!(
        !openssl_verifies(&own_file, &chain),
        "a.test's own roots must not verify b.test"
    );

    // nginx in a.test, given the federated bundle file, admits b.test's
    // workload and refuses a.test's own (not under b.test's roots).
    let nginx_dir = tempfile::tempdir().expect("tempdir");
    let (_nginx, port) = nginx_verifying(nginx_dir.path(), &agent.out, &b_file).await;
    let ca = agent.out.join("ca.pem");
    assert_eq!(curl_with(port, &ca, &chain, &key), "200");
    let (own_cert, own_key) = (agent.out.join("cert.pem"), agent.out.join("key.pem"));
    assert_eq!(curl_with(port, &ca, &own_cert, &own_key), "400");

    // b.test rotates its root: a.test's workload has the new one within a
    // refresh hint, and the https_spiffe link survives b.test's switch.
    let ok_before = fetches(&a, "b.test", "ok").await;
    let rotated_at = Instant::now();
    b.rewrite_config(&b_yaml(&b_roots[1]));
    let b2 = pem_der_b64(&b_roots[1].0);
    let has_b2 = |roots: &[String]| b2.iter().all(|c| roots.contains(c));
    // From the moment b.test publishes the new root at its endpoint...
    let both_roots = [&b_roots[0].0, &b_roots[1].0]
        .map(|p| std::fs::read_to_string(p).expect("root"))
        .concat();
    let b_client = support::client(&both_roots, None);
    let deadline = rotated_at + Duration::from_secs(15);
    loop {
        let (_, served) = get_json(&b.url("/v1/bundle/spiffe"), &b_client, None).await;
        if has_b2(&authorities(&served)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b.test never published its new root"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let published_at = Instant::now();
    // ...to the moment a.test's workload holds it: one refresh hint.
    let deadline = published_at + Duration::from_secs(40);
    while !has_b2(&pem_der_b64(&b_file)) {
        assert!(
            Instant::now() < deadline,
            "the new root of b.test never reached a.test's workload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = published_at.elapsed();
    eprintln!(
        "b.test's new root: published {:?} after the config edit, at a.test's workload {took:?} later",
        published_at - rotated_at
    );
    assert!(
        took <= Duration::from_secs(32),
        "took {took:?}, over one refresh hint (30 s) and the agent's refresh"
    );
    let seen = agent.federated_view(&chain, &token).await;
    let b_roots_now = seen["x509_authorities"].as_array().map_or(0, Vec::len);
    assert_eq!(
        b_roots_now, 2,
        "old and new roots through the rollout: {seen}"
    );

    // The next fetch is answered with b.test's certificate under the new
    // root, authenticated by the bundle a.test now holds.
    wait_for_fetches(&a, "b.test", "ok", ok_before + 2.0, Duration::from_secs(80)).await;
    assert_eq!(fetches(&a, "b.test", "unreachable").await, 0.0);
}

/// A static HTTPS server (Python's http.server, the Web PKI's
/// certificate) serving `dir`.
struct StaticServer(std::process::Child);

impl StaticServer {
    fn start(dir: &Path, port: u16) -> Self {
        let pki = web_pki();
        let script = format!(
            "import http.server, ssl, functools\n\
             h = functools.partial(http.server.SimpleHTTPRequestHandler, directory={dir:?})\n\
             s = http.server.ThreadingHTTPServer(('127.0.0.1', {port}), h)\n\
             c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
             c.load_cert_chain({cert:?}, {key:?})\n\
             s.socket = c.wrap_socket(s.socket, server_side=True)\n\
             s.serve_forever()\n",
            dir = dir.display().to_string(),
            cert = pki.cert.display().to_string(),
            key = pki.key.display().to_string(),
        );
        let child = std::process::Command::new(python())
            .args(["-c", &script])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python");
        support::process::wait_for_port(port);
        Self(child)
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A SPIFFE bundle of one CA (with `uri` as its SPIFFE ID, if any).
fn bundle_of_ca(uri: Option<&str>, sequence: u64) -> Value {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    if let Some(uri) = uri {
        params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().expect("uri"))];
    }
    let der = params.self_signed(&key).expect("cert").der().to_vec();
    json!({
        "keys": [{ "use": "x509-svid", "kty": "EC", "x5c": [STANDARD.encode(der)] }],
        "spiffe_sequence": sequence,
        "spiffe_refresh_hint": 30,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_peer_keeps_its_last_good_bundle_and_says_how_old() {
    web_pki();
    let served = tempfile::tempdir().expect("tempdir");
    let file = served.path().join("bundle.json");
    let good = bundle_of_ca(Some("spiffe://c.test"), 100);
    std::fs::write(&file, good.to_string()).expect("write");
    let port = free_port();
    let server = StaticServer::start(served.path(), port);
    let mut a = daemon(
        "a.test",
        &format!("federation:\n  trust_domains:\n  - {{ trust_domain: c.test, bundle_endpoint_url: 'https://127.0.0.1:{port}/bundle.json', profile: https_web }}\n"),
    )
    .await;
    let url = |a: &TestDaemon| a.url("/v1/bundle/spiffe?trust_domain=c.test");
    wait_for_fetches(&a, "c.test", "ok", 1.0, Duration::from_secs(15)).await;
    let metrics = a.metrics().await;
    assert_eq!(
        sample(&metrics, "meshca_federated_bundle_sequence", "c.test"),
        Some(100.0)
    );

    // Garbage, an older sequence, an authority of another trust domain:
    // each refused at the next fetch (here, a restart's), the good one kept.
    for (what, bad) in [
        ("garbage", "<html>maintenance</html>".to_owned()),
        (
            "an older sequence",
            bundle_of_ca(Some("spiffe://c.test"), 99).to_string(),
        ),
        (
            "another trust domain",
            bundle_of_ca(Some("spiffe://d.test"), 101).to_string(),
        ),
    ] {
        std::fs::write(&file, bad).expect("write");
        a.restart().await;
        wait_for_fetches(&a, "c.test", "refused", 1.0, Duration::from_secs(15)).await;
        let (status, held) = get_json(&url(&a), &a.client().await, None).await;
        assert_eq!(
            (status, authorities(&held)),
            (200, authorities(&good)),
            "{what}"
        );
        assert_eq!(held["spiffe_sequence"], 100, "{what}");
    }

    // The endpoint down, and the bundle kept an hour ago: still served,
    // and /readyz and the age metric say how old it is.
    drop(server);
    let record = a.dir.path().join("federation/c.test.json");
    let mut kept: Value =
        serde_json::from_slice(&std::fs::read(&record).expect("kept")).expect("json");
    let hour_ago = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        - 3600;
    kept["fetched_at"] = hour_ago.into();
    std::fs::write(&record, kept.to_string()).expect("write");
    a.restart().await;
    let (status, held) = get_json(&url(&a), &a.client().await, None).await;
    assert_eq!((status, authorities(&held)), (200, authorities(&good)));
    let (status, why) = a.readyz().await;
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("federated trust domain c.test"), "{why}");
    let age = sample(
        &a.metrics().await,
        "meshca_federated_bundle_age_seconds",
        "c.test",
    )
    .expect("age");
    assert!(age >= 3600.0, "age {age}");
    wait_for_fetches(&a, "c.test", "unreachable", 1.0, Duration::from_secs(15)).await;
    assert_eq!(
        get_json(&url(&a), &a.client().await, None).await.0,
        200,
        "a failing fetch drops nothing"
    );
}

/// In a cluster only the leader fetches; every replica serves what it
/// kept in the ConfigMap `meshca-federation`, a new replica included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_the_leader_fetches_and_every_replica_serves_the_bundle() {
    web_pki();
    let kube = support::kube::KubeStandIn::start().await;
    let served = tempfile::tempdir().expect("tempdir");
    let good = bundle_of_ca(None, 7);
    std::fs::write(served.path().join("bundle.json"), good.to_string()).expect("write");
    let port = free_port();
    let server = StaticServer::start(served.path(), port);
    let yaml = format!(
        "trust_domain: a.test\nkubernetes: {{ kubeconfig: {}, lease_duration: 3s }}\nfederation:\n  trust_domains:\n  - {{ trust_domain: c.test, bundle_endpoint_url: 'https://127.0.0.1:{port}/bundle.json', profile: https_web }}\n",
        kube.kubeconfig().display()
    );
    let replicas = [
        TestDaemon::start(&yaml).await,
        TestDaemon::start(&yaml).await,
    ];
    let kept = support::eventually(
        "the leader kept the bundle in the ConfigMap",
        Duration::from_secs(20),
        || {
            let cm = kube.get("", "configmaps", "osm-system", "meshca-federation")?;
            cm["data"]["c.test.json"].as_str().map(str::to_owned)
        },
    )
    .await;
    let kept: Value = serde_json::from_str(&kept).expect("a JSON record");
    assert_eq!(authorities(&kept["bundle"]), authorities(&good));
    for replica in &replicas {
        let deadline = Instant::now() + Duration::from_secs(25);
        loop {
            let url = replica.url("/v1/bundle/spiffe?trust_domain=c.test");
            let (status, body) = get_json(&url, &replica.client().await, None).await;
            if status == 200 {
                assert_eq!(authorities(&body), authorities(&good));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a replica never served c.test: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let mut counts = Vec::new();
    for replica in &replicas {
        counts.push(
            fetches(replica, "c.test", "ok").await
                + fetches(replica, "c.test", "unreachable").await,
        );
    }
    assert!(
        counts.iter().filter(|c| **c > 0.0).count() == 1,
        "only the leader fetches: {counts:?}"
    );

    // The peer down, a new replica with an empty state directory: it
    // serves the bundle the ConfigMap keeps.
    drop(server);
    let fresh = TestDaemon::start(&yaml).await;
    let (status, body) = get_json(
        &fresh.url("/v1/bundle/spiffe?trust_domain=c.test"),
        &fresh.client().await,
        None,
    )
    .await;
    assert_eq!((status, authorities(&body)), (200, authorities(&good)));
}

/// `https_web`: the endpoint's certificate files are reloaded when they
/// change; files that do not load leave the previous certificate served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_endpoint_follows_its_certificate_files() {
    let pki = web_pki();
    let files = tempfile::tempdir().expect("tempdir");
    let (first, first_key) = pki.leaf(files.path(), "first");
    let (served, served_key) = (files.path().join("tls.crt"), files.path().join("tls.key"));
    std::fs::copy(&first, &served).expect("copy");
    std::fs::copy(&first_key, &served_key).expect("copy");
    let port = free_port();
    let _a = daemon(
        "a.test",
        &format!(
            "federation: {{ bundle_endpoint: {{ listen: '127.0.0.1:{port}', profile: https_web, cert_file: {}, key_file: {} }} }}\n",
            served.display(),
            served_key.display()
        ),
    )
    .await;
    assert_eq!(served_serial(port), serial_of(&first));

    let (second, second_key) = pki.leaf(files.path(), "second");
    std::fs::copy(&second_key, &served_key).expect("copy");
    std::fs::copy(&second, &served).expect("copy");
    let deadline = Instant::now() + Duration::from_secs(15);
    while served_serial(port) != serial_of(&second) {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    std::fs::write(&served, "not a certificate").expect("write");
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        served_serial(port),
        serial_of(&second),
        "a broken file replaced what was served"
    );
}
