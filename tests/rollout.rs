//! Changing the signer while mTLS traffic flows, no cluster: two agents
//! (client and server identities) feed a real rustls server and client that
//! make a new mTLS handshake every 50 ms, while the config file moves the
//! signer from Tresor root A to root B and back. No handshake may fail,
//! the stages must come in order, and an old root may leave the bundle only
//! after the last certificate it issued has expired.

use meshca_test_support as support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshca::AgentConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use support::{certs, TestDaemon};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use x509_parser::prelude::{FromDer, X509Certificate};

const COMMON: &str = "certificates: { default_ttl: 8s, min_ttl: 1s, max_ttl: 1h }\nbundle: { refresh_interval: 1s }\nrotation: { propagation_delay: 1s }\n";

fn yaml(root: &(PathBuf, PathBuf)) -> String {
    format!(
        "{COMMON}provider:\n  kind: tresor\n  tresor:\n    root_cert_file: {}\n    root_key_file: {}\n",
        root.0.display(),
        root.1.display()
    )
}

fn stages(status: &Value) -> Vec<String> {
    status["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| h[0].as_str().expect("stage").to_owned())
        .collect()
}

struct Files {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: rustls::RootCertStore,
}

fn read_files(dir: &Path) -> Files {
    let chain = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .expect("cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).expect("key");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).expect("ca") {
        roots.add(c.expect("ca cert")).expect("root");
    }
    Files { chain, key, roots }
}

fn agent(
    d: &TestDaemon,
    dir: &Path,
    token: String,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), meshca::AgentError>> {
    let token_file = dir.join("token");
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(&token_file, token).expect("token");
    tokio::spawn(meshca::run_agent(
        AgentConfig {
            server: d.url(""),
            ca_file: d.bundle_path(),
            token_file: Some(token_file),
            out_dir: Some(dir.join("out")),
            spiffe_files: false,
            workload_api: None,
            ttl: Some(Duration::from_secs(6)),
            once: false,
            bundle_refresh: Duration::from_millis(300),
            crl_refresh: Duration::from_millis(300),
            key_algorithm: meshca::KeyAlgorithmName::EcdsaP256,
        },
        shutdown,
    ))
}

async fn wait_steady(d: &TestDaemon, generation: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = d.rotation().await;
        if r["stage"] == "steady" && r["generation"] == generation {
            return r;
        }
        assert!(Instant::now() < deadline, "rollout did not finish: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Two agents (server and client identities) and real mTLS traffic
/// between them: a new handshake every 50 ms.
struct Traffic {
    work: tempfile::TempDir,
    shutdown: CancellationToken,
    agents: Vec<tokio::task::JoinHandle<Result<(), meshca::AgentError>>>,
    server: tokio::task::JoinHandle<()>,
    client: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    ok: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
}

impl Traffic {
    async fn start(d: &TestDaemon) -> Self {
        let work = tempfile::tempdir().expect("tempdir");
        let shutdown = CancellationToken::new();
        let server_dir = work.path().join("server");
        let client_dir = work.path().join("client");
        let agents = [
            agent(
                d,
                &server_dir,
                d.token("bookstore", "bookstore"),
                shutdown.clone(),
            ),
            agent(
                d,
                &client_dir,
                d.token("bookbuyer", "bookbuyer"),
                shutdown.clone(),
            ),
        ];
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(server_dir.join("out/ca.pem").exists() && client_dir.join("out/ca.pem").exists()) {
            assert!(Instant::now() < deadline, "agents wrote nothing");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // A real mTLS server: certificate, key and trusted roots re-read from
        // the server agent's files for every connection.
        support::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server_out = server_dir.join("out");
        let server = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let f = read_files(&server_out);
                let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(f.roots))
                    .build()
                    .expect("verifier");
                let config = rustls::ServerConfig::builder()
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(f.chain, f.key)
                    .expect("server config");
                tokio::spawn(async move {
                    if let Ok(mut tls) = tokio_rustls::TlsAcceptor::from(Arc::new(config))
                        .accept(tcp)
                        .await
                    {
                        let mut buf = [0u8; 5];
                        if tls.read_exact(&mut buf).await.is_ok() {
                            let _ = tls.write_all(&buf).await;
                        }
                    }
                });
            }
        });

        // The client: a new handshake every 50 ms with the client agent's files.
        let (ok, failed) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(Mutex::new(Vec::<String>::new())),
        );
        let stop = CancellationToken::new();
        let client = {
            let (ok, failed, stop, client_out) = (
                ok.clone(),
                failed.clone(),
                stop.clone(),
                client_dir.join("out"),
            );
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let f = read_files(&client_out);
                    let config = rustls::ClientConfig::builder()
                        .with_root_certificates(f.roots)
                        .with_client_auth_cert(f.chain, f.key)
                        .expect("client config");
                    let result = async {
                        let tcp = tokio::net::TcpStream::connect(addr)
                            .await
                            .map_err(|e| e.to_string())?;
                        let name = rustls_pki_types::ServerName::try_from(
                            "bookstore.bookstore.cluster.local",
                        )
                        .expect("name");
                        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                            .connect(name, tcp)
                            .await
                            .map_err(|e| format!("handshake: {e}"))?;
                        tls.write_all(b"ping\n").await.map_err(|e| e.to_string())?;
                        let mut buf = [0u8; 5];
                        tls.read_exact(&mut buf)
                            .await
                            .map_err(|e| format!("echo: {e}"))?;
                        Ok::<_, String>(())
                    }
                    .await;
                    match result {
                        Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                        Err(e) => {
                            failed.lock().expect("lock").push(e);
                            0
                        }
                    };
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };

        Self {
            work,
            shutdown,
            agents: agents.into(),
            server,
            client,
            stop,
            ok,
            failed,
        }
    }

    fn out(&self, who: &str) -> PathBuf {
        self.work.path().join(who).join("out")
    }

    /// Stop everything; the handshakes that succeeded and the failures.
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.cancel();
        let _ = self.client.await;
        self.server.abort();
        self.shutdown.cancel();
        for a in self.agents {
            a.await.expect("join").expect("agent");
        }
        let failures = self.failed.lock().expect("lock").clone();
        (self.ok.load(Ordering::SeqCst), failures)
    }
}

fn assert_no_failed_handshakes((successes, failures): (usize, Vec<String>)) {
    assert!(successes > 20, "traffic flowed: {successes} handshakes");
    assert!(
        failures.is_empty(),
        "{} failed handshakes out of {}: {:?}",
        failures.len(),
        successes + failures.len(),
        &failures[..failures.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_keeps_working_while_the_signer_moves_from_root_a_to_b_to_vault_and_back_to_a() {
    let bao = support::openbao::OpenBao::dev().await;
    // Leaves of seconds: Vault's backdate must be shorter still.
    bao.script("setup-pki.sh", &[("NOT_BEFORE_DURATION", "1s")]);
    let vault_token = bao.meshca_token_file();
    let roots_dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (
        support::openssl_root(roots_dir.path(), "a"),
        support::openssl_root(roots_dir.path(), "b"),
    );
    let root_a = certs(&std::fs::read_to_string(&a.0).expect("a"))[0].clone();
    let d = TestDaemon::start_from_file(&yaml(&a)).await;
    let traffic = Traffic::start(&d).await;
    let (server_dir, client_dir) = (
        traffic.out("server").parent().expect("dir").to_owned(),
        traffic.out("client").parent().expect("dir").to_owned(),
    );
    let stop = CancellationToken::new();
    // Watch root A's presence in the bundle and the last expiry of any
    // certificate it issued that the agents hold.
    let (a_left_at, a_last_expiry) = (
        Arc::new(Mutex::new(None::<i64>)),
        Arc::new(Mutex::new(0i64)),
    );
    let watcher = {
        let (a_left_at, a_last_expiry, stop) =
            (a_left_at.clone(), a_last_expiry.clone(), stop.clone());
        let (bundle, dirs) = (
            d.bundle_path(),
            [server_dir.join("out"), client_dir.join("out")],
        );
        let root_a = root_a.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let present = std::fs::read_to_string(&bundle)
                    .map(|b| certs(&b).contains(&root_a))
                    .unwrap_or(true);
                {
                    let mut left = a_left_at.lock().expect("lock");
                    if !present && left.is_none() {
                        *left = Some(now);
                    }
                }
                for dir in &dirs {
                    if let Ok(pem) = std::fs::read_to_string(dir.join("cert.pem")) {
                        let der = certs(&pem).remove(0);
                        if let Ok((_, c)) = X509Certificate::from_der(&der) {
                            if c.issuer().to_string() == "CN=root a" {
                                let mut last = a_last_expiry.lock().expect("lock");
                                *last = (*last).max(c.validity().not_after.timestamp());
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    d.rewrite_config(&yaml(&b));
    let first = wait_steady(&d, 1).await;
    let left = a_left_at
        .lock()
        .expect("lock")
        .expect("root A left the bundle after the switch to B");
    let last = *a_last_expiry.lock().expect("lock");
    assert!(
        left >= last,
        "root A left the bundle at {left}, before a certificate it issued expired at {last}"
    );
    assert_eq!(
        stages(&first),
        ["distribute", "switch", "reissue", "retire", "steady"],
        "{first}"
    );
    assert_eq!(first["provider"], "tresor");

    // On to Vault (OpenBao), then back to A: the same stages each time.
    d.rewrite_config(&format!(
        "{COMMON}{}",
        bao.provider_yaml(
            &format!("{{ token_file: {} }}", vault_token.display()),
            "    anchors_refresh: 1s\n"
        )
    ));
    let second = wait_steady(&d, 2).await;
    assert_eq!(second["provider"], "vault");
    let vault_root = bao.cli(&["read", "-field=certificate", "pki/issuer/default"]);
    assert_eq!(
        certs(&std::fs::read_to_string(d.bundle_path()).expect("bundle")),
        certs(&vault_root)
    );
    d.rewrite_config(&yaml(&a));
    let third = wait_steady(&d, 3).await;
    assert_eq!(stages(&third).len(), 15, "{third}");
    let bundle = certs(&std::fs::read_to_string(d.bundle_path()).expect("bundle"));
    assert_eq!(
        bundle,
        vec![root_a],
        "only root A once B's certificates expired"
    );

    stop.cancel();
    let _ = watcher.await;
    assert_no_failed_handshakes(traffic.finish().await);
}

async fn wait_stage(d: &TestDaemon, stage: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = d.rotation().await;
        if r["stage"] == stage {
            return r;
        }
        assert!(Instant::now() < deadline, "never reached {stage}: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn bundle_roots(d: &TestDaemon) -> Vec<CertificateDer<'static>> {
    certs(&std::fs::read_to_string(d.bundle_path()).expect("bundle"))
}

/// Roots A and B made by openssl, with their certificates.
struct TwoRoots {
    _dir: tempfile::TempDir,
    a: (PathBuf, PathBuf),
    b: (PathBuf, PathBuf),
    root_a: CertificateDer<'static>,
    root_b: CertificateDer<'static>,
}

fn two_roots() -> TwoRoots {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (
        support::openssl_root(dir.path(), "a"),
        support::openssl_root(dir.path(), "b"),
    );
    let first = |p: &Path| certs(&std::fs::read_to_string(p).expect("root"))[0].clone();
    TwoRoots {
        root_a: first(&a.0),
        root_b: first(&b.0),
        a,
        b,
        _dir: dir,
    }
}

fn slow(root: &(PathBuf, PathBuf)) -> String {
    yaml(root).replace("propagation_delay: 1s", "propagation_delay: 3s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_during_distribute_undoes_it_without_switching() {
    let TwoRoots {
        a,
        b,
        root_a,
        root_b,
        _dir,
    } = two_roots();
    let d = TestDaemon::start_from_file(&slow(&a)).await;
    d.rewrite_config(&slow(&b));
    wait_stage(&d, "distribute").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bundle_roots(&d).contains(&root_b) {
        assert!(Instant::now() < deadline, "root B never distributed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An invalid edit meanwhile is ignored.
    std::fs::write(
        d.dir.path().join("meshca.yaml"),
        "provider: { kind: nonsense }\n",
    )
    .expect("write");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    d.rewrite_config(&slow(&a));
    let status = wait_steady(&d, 0).await;
    assert_eq!(stages(&status), ["distribute", "steady"], "{status}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while bundle_roots(&d) != vec![root_a.clone()] {
        assert!(
            Instant::now() < deadline,
            "root B stayed in the bundle: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_retiring_keeps_the_old_anchors_until_their_time() {
    let TwoRoots {
        a,
        b,
        root_a,
        root_b,
        _dir,
    } = two_roots();
    // Leaves of A live 20 s, so the retire stage lasts.
    let long = |r: &(PathBuf, PathBuf)| yaml(r).replace("default_ttl: 8s", "default_ttl: 20s");
    let mut d = TestDaemon::start_from_file(&long(&a)).await;
    let token = d.token("bookstore", "bookstore");
    let (status, _, _) = d
        .post(
            &d.client().await,
            Some(&token),
            &serde_json::json!({ "csr": support::csr(&support::key()), "ttl_seconds": 20 }),
        )
        .await;
    assert_eq!(status, 200);
    d.rewrite_config(&long(&b));
    let retiring = wait_stage(&d, "retire").await;
    let until = retiring["retained"][0]["until"]
        .as_str()
        .expect("until")
        .to_owned();

    d.stop().await;
    let dir = std::mem::replace(&mut d.dir, tempfile::tempdir().expect("tempdir"));
    let config = meshca::Config::load(Some(&dir.path().join("meshca.yaml"))).expect("config");
    let restarted = meshca::start(config).await.expect("restart");
    let d2 = TestDaemon {
        daemon: Some(restarted),
        dir,
        config: d.config.clone(),
    };
    let roots = bundle_roots(&d2);
    assert!(
        roots.contains(&root_a) && roots.contains(&root_b),
        "both anchors after the restart"
    );
    let status = d2.rotation().await;
    assert_eq!(status["stage"], "retire", "{status}");
    assert_eq!(status["generation"], 1, "no stage repeated: {status}");
    assert_eq!(status["retained"][0]["until"], until.as_str());
    let cli = Command::new(env!("CARGO_BIN_EXE_meshca"))
        .args(["rotate", "status", "-c"])
        .arg(d2.dir.path().join("meshca.yaml"))
        .output()
        .expect("meshca rotate status");
    let printed: Value = serde_json::from_slice(&cli.stdout).expect("JSON");
    assert_eq!(printed["stage"], "retire");
    let metrics = d2.metrics().await;
    assert!(
        metrics.contains("meshca_rotation_generation 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"meshca_rotation_stage{stage="retire"} 1"#),
        "{metrics}"
    );

    let deadline = Instant::now() + Duration::from_secs(40);
    while bundle_roots(&d2).contains(&root_a) {
        assert!(Instant::now() < deadline, "root A never retired");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let left = time::OffsetDateTime::now_utc();
    let until = time::OffsetDateTime::parse(&until, &time::format_description::well_known::Rfc3339)
        .expect("until");
    assert!(left >= until, "root A left at {left}, before {until}");
    wait_steady(&d2, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_tresor_to_cert_manager_and_back_keeps_mtls_working_and_survives_a_lost_state_dir(
) {
    // No real cluster or cert-manager can run here: the Kubernetes API
    // stand-in, with its CA issuer playing cert-manager.
    let kube = support::kube::KubeStandIn::start().await;
    let issuer = kube.start_ca_issuer("Issuer", "osm-ca");
    let cluster = format!(
        "kubernetes: {{ kubeconfig: {}, lease_duration: 3s }}\ningress: {{ enabled: true, backend_protocol: https, monitored_namespaces: [httpbin] }}\n",
        kube.kubeconfig().display()
    );
    // An HTTPS ingress backend whose Secret meshca keeps.
    kube.create_namespace("httpbin");
    kube.put(
        "",
        "services",
        serde_json::json!({
            "metadata": { "name": "httpbin", "namespace": "httpbin" },
            "spec": { "selector": { "app": "httpbin" }, "ports": [{ "port": 14001 }] },
        }),
    );
    kube.put("", "pods", serde_json::json!({
        "metadata": { "name": "httpbin-1", "namespace": "httpbin", "labels": { "app": "httpbin" } },
        "spec": { "serviceAccountName": "httpbin", "containers": [{ "name": "httpbin", "image": "kennethreitz/httpbin" }] },
    }));
    kube.put("networking.k8s.io", "ingresses", serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "metadata": { "name": "httpbin", "namespace": "httpbin" },
        "spec": { "defaultBackend": { "service": { "name": "httpbin", "port": { "number": 14001 } } } },
    }));
    let backend_issuer = |kube: &support::kube::KubeStandIn| -> Option<String> {
        use base64::Engine;
        let s = kube.get("", "secrets", "httpbin", "meshca-httpbin-tls")?;
        let pem = base64::engine::general_purpose::STANDARD
            .decode(s["data"]["tls.crt"].as_str()?)
            .ok()?;
        let der = certs(&String::from_utf8(pem).ok()?).remove(0);
        let (_, c) = X509Certificate::from_der(&der).ok()?;
        Some(c.issuer().to_string())
    };
    let tresor = format!("{COMMON}{cluster}");
    let cert_manager = format!("{COMMON}{cluster}provider:\n  kind: cert-manager\n  cert_manager: {{ issuer_name: osm-ca, timeout: 5s }}\n");
    let secret_roots = |kube: &support::kube::KubeStandIn| {
        use base64::Engine;
        let s = kube
            .get("", "secrets", "osm-system", "osm-ca-bundle")
            .expect("bundle Secret");
        let pem = base64::engine::general_purpose::STANDARD
            .decode(s["data"]["ca.crt"].as_str().expect("ca.crt"))
            .expect("b64");
        certs(&String::from_utf8(pem).expect("utf8"))
    };

    let mut d = TestDaemon::start_from_file(&tresor).await;
    let tresor_root = bundle_roots(&d)[0].clone();
    let traffic = Traffic::start(&d).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    d.rewrite_config(&cert_manager);
    let retiring = wait_stage(&d, "retire").await;
    assert_eq!(retiring["provider"], "cert-manager");
    // The ingress backend's Secret is re-issued by the new signer at once,
    // not at its next renewal.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !backend_issuer(&kube).is_some_and(|i| i.contains("cert-manager stand-in")) {
        assert!(
            Instant::now() < deadline,
            "backend Secret still from {:?}",
            backend_issuer(&kube)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let issuer_ca = certs(&issuer.ca_pem)[0].clone();
    let roots = secret_roots(&kube);
    assert!(
        roots.contains(&tresor_root) && roots.contains(&issuer_ca),
        "the bundle Secret holds both while retiring"
    );

    // The pod restarts with an empty state directory: the ConfigMap keeps
    // the rollout, so the Tresor root stays until its certificates expire.
    assert_no_failed_handshakes(traffic.finish().await);
    d.stop().await;
    let fresh = tempfile::tempdir().expect("tempdir");
    let path = fresh.path().join("meshca.yaml");
    std::fs::write(&path, support::config_yaml(fresh.path(), &cert_manager)).expect("config");
    let config = meshca::Config::load(Some(&path)).expect("config");
    let restarted = meshca::start(config.clone()).await.expect("restart");
    let mut d2 = TestDaemon {
        daemon: Some(restarted),
        dir: fresh,
        config,
    };
    let roots = bundle_roots(&d2);
    assert!(
        roots.contains(&tresor_root),
        "the retained root survived the lost state dir"
    );
    assert_eq!(d2.rotation().await["generation"], 1);
    let traffic = Traffic::start(&d2).await;
    wait_steady(&d2, 1).await;
    assert_eq!(bundle_roots(&d2), vec![issuer_ca.clone()]);

    // And back to Tresor (its root is still in its Secret).
    d2.rewrite_config(&tresor);
    wait_steady(&d2, 2).await;
    assert_eq!(bundle_roots(&d2), vec![tresor_root.clone()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while secret_roots(&kube) != vec![tresor_root.clone()] {
        assert!(
            Instant::now() < deadline,
            "the bundle Secret did not follow"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_no_failed_handshakes(traffic.finish().await);
    d2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_distribute_keeps_the_old_anchors_and_counts_the_switch() {
    let TwoRoots {
        a,
        b,
        root_a,
        root_b,
        _dir,
    } = two_roots();
    let mut d = TestDaemon::start_from_file(&slow(&a)).await;
    d.rewrite_config(&slow(&b));
    wait_stage(&d, "distribute").await;
    d.stop().await;

    let dir = std::mem::replace(&mut d.dir, tempfile::tempdir().expect("tempdir"));
    let config = meshca::Config::load(Some(&dir.path().join("meshca.yaml"))).expect("config");
    let restarted = meshca::start(config.clone()).await.expect("restart");
    let d2 = TestDaemon {
        daemon: Some(restarted),
        dir,
        config,
    };
    let roots = bundle_roots(&d2);
    assert!(
        roots.contains(&root_a),
        "certificates of root A stay trusted after the restart: {}",
        std::fs::read_to_string(d2.dir.path().join("rollout.json")).unwrap_or_default()
    );
    assert!(roots.contains(&root_b));
    let status = d2.rotation().await;
    assert_eq!(status["generation"], 1, "{status}");
    assert_eq!(status["stage"], "retire", "{status}");
    assert!(
        status["retained"][0]["until"].is_string(),
        "bounded by max_ttl: {status}"
    );
}

/// Requests OpenBao's audit device logged (one JSON line each), by path.
fn audited_requests(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "request")
        .map(|e| e["request"]["path"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_swap_away_from_vault_retires_it_meshca_sends_vault_nothing_more() {
    let bao = support::openbao::OpenBao::dev_audited().await;
    bao.script("setup-pki.sh", &[("NOT_BEFORE_DURATION", "1s")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = bao.audit_log();
    // A short-lived token: meshca renews it about every 2 s while Vault is
    // its provider.
    let token = bao.cli(&[
        "token",
        "create",
        "-policy=meshca",
        "-ttl=3s",
        "-field=token",
    ]);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token.trim()).expect("token file");
    let vault = bao.provider_yaml(&format!("{{ token_file: {} }}", token_file.display()), "");
    let d = TestDaemon::start_from_file(&format!("{COMMON}{vault}")).await;

    // While Vault signs, meshca keeps its token alive.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !audited_requests(&audit)
        .iter()
        .any(|p| p == "auth/token/renew-self")
    {
        assert!(
            Instant::now() < deadline,
            "meshca never renewed its Vault token"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    d.rewrite_config(COMMON);
    wait_stage(&d, "retire").await;
    let at_retire = audited_requests(&audit).len();
    // Well beyond several renewal periods of the 3 s token.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = audited_requests(&audit);
    assert_eq!(
        after[at_retire..],
        [] as [String; 0],
        "Vault requests after the retire stage"
    );
    let status = d.rotation().await;
    assert_eq!(status["provider"], "tresor", "{status}");
}

/// Two replicas on one cluster (the stand-in), each following its own copy
/// of the config. One issues a long certificate under root A, the other
/// only its own short serving certificates. After both retire A, the second
/// must keep A in the bundle until the first one's certificate expires: it
/// learns of it from the shared issuance ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_old_anchors_stay_until_the_last_certificate_either_issued_expires() {
    let kube = support::kube::KubeStandIn::start().await;
    let TwoRoots {
        a,
        b,
        root_a,
        root_b,
        _dir,
    } = two_roots();
    let in_cluster = |root: &(PathBuf, PathBuf)| {
        format!(
            "kubernetes: {{ kubeconfig: {}, lease_duration: 3s }}\n{}",
            kube.kubeconfig().display(),
            yaml(root)
        )
    };
    let x = TestDaemon::start_from_file(&in_cluster(&a)).await;
    let y = TestDaemon::start_from_file(&in_cluster(&a)).await;
    let token = x.token("shop", "web");
    let (status, _, body) = x
        .post(
            &x.client().await,
            Some(&token),
            &serde_json::json!({ "csr": support::named_csr("shop", "web"), "ttl_seconds": 120 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    support::eventually("both ledgers shared", Duration::from_secs(10), || {
        let cm = kube.get("", "configmaps", "osm-system", "meshca-issued")?;
        (cm["data"].as_object()?.len() == 2).then_some(())
    })
    .await;

    x.rewrite_config(&in_cluster(&b));
    y.rewrite_config(&in_cluster(&b));
    wait_stage(&x, "retire").await;
    let retiring = wait_stage(&y, "retire").await;
    // Past y's own certificates under A (8 s serving certificates) and the
    // ledger's grace: only x's 120 s certificate can keep A now.
    tokio::time::sleep(Duration::from_secs(14)).await;
    let bundle = certs(&y.bundle_pem().await);
    assert!(
        bundle.contains(&root_a) && bundle.contains(&root_b),
        "y dropped root A while x's certificate under it is valid: {retiring}"
    );
    assert_eq!(y.rotation().await["stage"], "retire");
}

/// A signature Vault still holds when the signer moves away from it ends
/// in a certificate under Vault's root, counted under Vault's generation:
/// the retire stage waits for it and keeps that root until it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_vault_holds_across_the_switch_keeps_its_root_until_it_expires() {
    let bao = support::openbao::OpenBao::dev().await;
    bao.script("setup-pki.sh", &[("NOT_BEFORE_DURATION", "1s")]);
    let proxy = support::hold::HoldingProxy::start(&bao.addr).await;
    let token_file = bao.meshca_token_file();
    let vault = bao
        .provider_yaml(&format!("{{ token_file: {} }}", token_file.display()), "")
        .replace(&bao.addr, &proxy.url);
    let d = TestDaemon::start_from_file(&format!("{COMMON}{vault}")).await;
    let vault_root_pem = bao.cli(&["read", "-field=certificate", "pki/issuer/default"]);
    let vault_root = certs(&vault_root_pem)[0].clone();
    let TwoRoots { a, _dir, .. } = two_roots();
    let token = d.token("shop", "web");
    let client = d.client().await;

    proxy.hold("/sign/", Duration::from_secs(8));
    let body = serde_json::json!({ "csr": support::named_csr("shop", "web"), "ttl_seconds": 120 });
    let signing = d.post(&client, Some(&token), &body);
    let swap = async {
        support::eventually("Vault holds a signature", Duration::from_secs(10), || {
            (proxy.held() > 0).then_some(())
        })
        .await;
        d.rewrite_config(&yaml(&a));
    };
    let ((status, _, issued), ()) = tokio::join!(signing, swap);
    proxy.release();
    assert_eq!(status, 200, "{issued}");
    let not_after = time::OffsetDateTime::parse(
        issued["not_after"].as_str().expect("not_after"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("not_after");
    support::verify(
        issued["certificate_chain"].as_str().expect("chain"),
        &vault_root_pem,
        webpki::KeyUsage::client_auth(),
    )
    .expect("the held certificate chains to Vault's root");

    let retiring = wait_stage(&d, "retire").await;
    let until = retiring["retained"][0]["until"]
        .as_str()
        .map(|u| time::OffsetDateTime::parse(u, &time::format_description::well_known::Rfc3339))
        .expect("a time to retire Vault's root")
        .expect("RFC 3339");
    assert!(
        until >= not_after,
        "Vault's root retires at {until}, before the held certificate expires at {not_after}"
    );
    // Past every other certificate under Vault's root (8 s).
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        bundle_roots(&d).contains(&vault_root),
        "Vault's root left the bundle while the held certificate is valid"
    );
}

/// A ledger names the old anchors that live certificates still chain to:
/// one that exists but does not parse stops the start, says where it is
/// and what to do, and is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_that_does_not_parse_stops_the_start_and_is_kept() {
    support::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = dir.path().join("rollout.json");
    let torn = r#"{ "stage": "retire", "generation": 3, "provider": "tres"#;
    std::fs::write(&ledger, torn).expect("write");
    let path = dir.path().join("meshca.yaml");
    std::fs::write(&path, support::config_yaml(dir.path(), COMMON)).expect("config");
    let config = meshca::Config::load(Some(&path)).expect("valid config");
    let bundle = config.bundle.file.clone();
    let Err(refused) = meshca::start(config).await else {
        panic!("the start was not refused");
    };
    let said = support::error_chain(&refused);
    assert!(
        said.contains(&ledger.display().to_string()) && said.contains("does not parse"),
        "{said}"
    );
    assert_eq!(std::fs::read_to_string(&ledger).expect("kept"), torn);
    assert!(
        !bundle.exists(),
        "a bundle published without the anchors the ledger keeps"
    );
}

/// In a cluster the ConfigMap is the ledger that outlives the pod: one
/// that does not parse stops the start too, and is not overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_configmap_that_does_not_parse_stops_the_start_and_is_kept() {
    support::install_crypto_provider();
    let kube = support::kube::KubeStandIn::start().await;
    let torn = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "meshca-rollout", "namespace": "osm-system" },
        "data": { "rollout.json": "{\"stage\": 7}" }
    });
    kube.put("", "configmaps", torn.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meshca.yaml");
    let extra = format!(
        "kubernetes: {{ kubeconfig: {} }}\n{COMMON}",
        kube.kubeconfig().display()
    );
    std::fs::write(&path, support::config_yaml(dir.path(), &extra)).expect("config");
    let config = meshca::Config::load(Some(&path)).expect("valid config");
    let Err(refused) = meshca::start(config).await else {
        panic!("the start was not refused");
    };
    let said = support::error_chain(&refused);
    assert!(
        said.contains("ConfigMap osm-system/meshca-rollout") && said.contains("does not parse"),
        "{said}"
    );
    let kept = kube
        .get("", "configmaps", "osm-system", "meshca-rollout")
        .expect("kept");
    assert_eq!(kept["data"], torn["data"]);
}

/// `meshca_rotation_ledger_persisted{store="configmap"}`, when exported.
async fn ledger_persisted(d: &TestDaemon) -> Option<bool> {
    let metrics = d.metrics().await;
    metrics
        .lines()
        .find(|l| l.starts_with(r#"meshca_rotation_ledger_persisted{store="configmap"}"#))
        .map(|l| l.ends_with(" 1"))
}

/// A ConfigMap that keeps changing under meshca's writes (409 Conflict on
/// every replace) leaves the ledger unpersisted there: that shows in
/// `meshca_rotation_ledger_persisted`, and the write is retried until the
/// ConfigMap holds the stage in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_the_configmap_keeps_refusing_shows_and_lands_once_it_can() {
    let kube = support::kube::KubeStandIn::start().await;
    let TwoRoots { a, b, _dir, .. } = two_roots();
    let in_cluster = |root: &(PathBuf, PathBuf)| {
        format!(
            "kubernetes: {{ kubeconfig: {} }}\n{}",
            kube.kubeconfig().display(),
            yaml(root)
        )
    };
    let d = TestDaemon::start_from_file(&in_cluster(&a)).await;
    let ledger_stage = || {
        let cm = kube.get("", "configmaps", "osm-system", "meshca-rollout")?;
        let ledger: Value = serde_json::from_str(cm["data"]["rollout.json"].as_str()?).ok()?;
        Some(ledger["stage"].as_str()?.to_owned())
    };
    support::eventually(
        "the ledger in its ConfigMap",
        Duration::from_secs(10),
        ledger_stage,
    )
    .await;

    kube.force_conflicts(usize::MAX);
    d.rewrite_config(&in_cluster(&b));
    let deadline = Instant::now() + Duration::from_secs(20);
    while ledger_persisted(&d).await != Some(false) {
        assert!(
            Instant::now() < deadline,
            "a failing ledger write never showed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    kube.force_conflicts(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stage = d.rotation().await["stage"].as_str().map(str::to_owned);
        if ledger_persisted(&d).await == Some(true) && ledger_stage() == stage {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ConfigMap never caught up: it says {:?}, the daemon {stage:?}",
            ledger_stage()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `meshca rotate root` with its config file, as an operator runs it.
fn rotate_root(config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshca"))
        .args(["rotate", "root", "-c"])
        .arg(config)
        .output()
        .expect("meshca runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_root_makes_a_new_root_beside_the_first_and_rolls_it_out_under_renewals() {
    let common = "certificates: { default_ttl: 1h, min_ttl: 1s, max_ttl: 2h }\nbundle: { refresh_interval: 1s }\nrotation: { propagation_delay: 2s }\n";
    let mut d = TestDaemon::start_from_file(common).await;
    let first = certs(&d.bundle_pem().await);
    let before = d.rotation().await["generation"].as_u64();
    let config = d.dir.path().join("meshca.yaml");
    let out = rotate_root(&config);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.contains("root generation 1"),
        "{said}"
    );

    let renewals = support::custody::renew_through_rollout(&d, before).await;
    assert!(renewals > 3, "renewed through the rollout ({renewals})");
    let anchors = certs(&d.bundle_pem().await);
    assert_eq!(
        anchors.len(),
        2,
        "the first root stays until its leaves expire"
    );
    assert!(anchors.contains(&first[0]));
    let second = d.dir.path().join("tresor-g1/root.crt");
    let (status, _, body) = support::custody::sign(&d).await;
    assert_eq!(status, 200, "{body}");
    let work = tempfile::tempdir().expect("tempdir");
    assert!(
        support::custody::openssl_verifies(
            work.path(),
            body["certificate_chain"].as_str().expect("chain"),
            &second
        ),
        "new leaves chain to the new root alone"
    );
    assert!(
        d.dir.path().join("tresor/root.key").exists(),
        "the first root is kept"
    );

    // A restart signs with the new root at once, and rolls nothing out.
    let after = d.rotation().await["generation"].as_u64();
    d.restart().await;
    assert_eq!(certs(&d.bundle_pem().await).len(), 2);
    let (status, _, body) = support::custody::sign(&d).await;
    assert_eq!(status, 200, "{body}");
    assert!(support::custody::openssl_verifies(
        work.path(),
        body["certificate_chain"].as_str().expect("chain"),
        &second
    ));
    assert_eq!(d.rotation().await["generation"].as_u64(), after);

    // A generation that cannot be read stops the start: it is never
    // taken for the first root.
    d.stop().await;
    let record = d.dir.path().join("root-generation.json");
    std::fs::write(&record, "{\"generation\": -1}").expect("corrupt");
    let e = meshca::start(d.config.clone()).await.expect_err("refused");
    let text = support::error_chain(&e);
    assert!(
        text.contains("root generation") && text.contains("does not parse"),
        "{text}"
    );
    let out = rotate_root(&config);
    assert!(!out.status.success(), "nor rotated over");
    assert_eq!(
        std::fs::read_to_string(&record).expect("kept"),
        "{\"generation\": -1}"
    );
}

#[test]
fn rotate_root_refuses_a_root_brought_as_files_and_other_providers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = support::openssl_root(dir.path(), "operator");
    let config = dir.path().join("meshca.yaml");
    for (provider, what) in [
        (yaml(&root), "brought as files"),
        (
            "provider: { kind: vault, vault: { address: http://127.0.0.1:1, allow_http: true, auth: { token_env: VAULT_TOKEN } } }\n".to_owned(),
            "vault",
        ),
    ] {
        std::fs::write(&config, support::config_yaml(dir.path(), &provider)).expect("config");
        let out = rotate_root(&config);
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{said}");
        assert!(said.contains(what), "{said}");
        assert!(!dir.path().join("root-generation.json").exists());
    }
}

/// The root a replica's certificate chains to: the issuer of the leaf it
/// hands out now.
async fn signing_root_subject(d: &TestDaemon) -> String {
    let (status, _, body) = support::custody::sign(d).await;
    assert_eq!(status, 200, "{body}");
    let leaf = certs(body["certificate_chain"].as_str().expect("chain"));
    let (_, c) = X509Certificate::from_der(&leaf[0]).expect("leaf");
    c.issuer().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_every_replica_follows_rotate_root_to_one_new_root() {
    let kube = support::kube::KubeStandIn::start().await;
    let extra = format!(
        "kubernetes: {{ kubeconfig: {}, lease_duration: 3s }}\ncertificates: {{ default_ttl: 1h, min_ttl: 1s, max_ttl: 2h }}\nbundle: {{ refresh_interval: 1s }}\nrotation: {{ propagation_delay: 2s }}\n",
        kube.kubeconfig().display()
    );
    let a = TestDaemon::start(&extra).await;
    let b = TestDaemon::start(&extra).await;
    let first = signing_root_subject(&a).await;
    assert_eq!(signing_root_subject(&b).await, first, "one root");
    let before = [
        a.rotation().await["generation"].as_u64(),
        b.rotation().await["generation"].as_u64(),
    ];
    let config = a.dir.path().join("meshca.yaml");
    std::fs::write(&config, support::config_yaml(a.dir.path(), &extra)).expect("config");
    let out = rotate_root(&config);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.contains("meshca-root-generation"),
        "{said}"
    );
    assert!(!a.dir.path().join("root-generation.json").exists());

    for (d, before) in [(&a, before[0]), (&b, before[1])] {
        support::custody::renew_through_rollout(d, before).await;
    }
    let secret = kube
        .get("", "secrets", "osm-system", "meshca-tresor-root-g1")
        .expect("the new root's Secret");
    assert!(secret["data"]["tls.crt"].is_string(), "{secret}");
    let second = signing_root_subject(&a).await;
    assert_eq!(
        signing_root_subject(&b).await,
        second,
        "one new root for both"
    );
    let serials = |d: &TestDaemon| {
        let d = d.bundle_path();
        certs(&std::fs::read_to_string(d).expect("bundle")).len()
    };
    assert_eq!((serials(&a), serials(&b)), (2, 2), "both roots published");
    let record = kube
        .get("", "configmaps", "osm-system", "meshca-root-generation")
        .expect("the generation");
    assert!(
        record.to_string().contains(support::kube::ADMIN_USER),
        "who rotated: {record}"
    );
}
