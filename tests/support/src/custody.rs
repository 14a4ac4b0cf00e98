//! What the key-custody tests of every custodian share: signing as a
//! workload, checking chains with Debian's `openssl verify`, searching the
//! state for private keys, and renewing through a move into custody.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::kube::KubeStandIn;
use crate::TestDaemon;

/// Sign a fresh CSR for shop/web; the status, headers and body.
pub async fn sign(d: &TestDaemon) -> (u16, reqwest::header::HeaderMap, Value) {
    let (token, client) = (d.token("shop", "web"), d.client().await);
    let csr = crate::csr(&crate::key());
    d.post(&client, Some(&token), &json!({ "csr": csr })).await
}

/// Whether Debian's `openssl verify` accepts `chain` (leaf first) for a
/// client against the anchors in `bundle`, working in `dir`.
pub fn openssl_verifies(dir: &Path, chain: &str, bundle: &Path) -> bool {
    let certs = crate::certs(chain);
    let pem = |c: &rustls_pki_types::CertificateDer<'_>| {
        let mut out = String::new();
        meshca_provider::pem::encode_block("CERTIFICATE", c, &mut out);
        out
    };
    let leaf = dir.join("leaf.pem");
    std::fs::write(&leaf, pem(&certs[0])).expect("leaf");
    let mut verify = Command::new("openssl");
    verify
        .args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(bundle);
    if certs.len() > 1 {
        let untrusted = dir.join("untrusted.pem");
        std::fs::write(&untrusted, certs[1..].iter().map(pem).collect::<String>()).expect("chain");
        verify.arg("-untrusted").arg(&untrusted);
    }
    verify.arg(&leaf).status().expect("openssl").success()
}

/// Every file under `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Every file under `dir` that holds a PEM private key.
pub fn private_keys_under(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            std::fs::read(p).is_ok_and(|b| String::from_utf8_lossy(&b).contains("PRIVATE KEY"))
        })
        .collect()
}

/// The JWT signing keys stored in the state directory `dir` name the key
/// `meshca-jwt-1` held by `backend` and hold no key material, and no file
/// under `dir` holds a private key.
pub fn assert_jwt_keys_named_only(dir: &Path, backend: &str) {
    let stored = std::fs::read_to_string(dir.join("jwt-keys.json")).expect("stored");
    let key: Value = serde_json::from_str(&stored).expect("JSON");
    assert_eq!(
        key["keys"][0]["custody"],
        json!({ "backend": backend, "name": "meshca-jwt-1" }),
        "{stored}"
    );
    assert!(!stored.contains("pkcs8"), "{stored}");
    let keys = private_keys_under(dir);
    assert!(keys.is_empty(), "no private key in state_dir: {keys:?}");
}

/// Renew as a workload, every 100 ms, until the rollout that started
/// after generation `before` signs: each chain must verify against the
/// bundle published when it was handed out. The number of renewals.
pub async fn renew_through_rollout(d: &TestDaemon, before: Option<u64>) -> usize {
    let work = tempfile::tempdir().expect("tempdir");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut renewals = 0;
    loop {
        let (status, _, body) = sign(d).await;
        assert_eq!(status, 200, "{body}");
        let chain = body["certificate_chain"].as_str().expect("chain");
        let published = work.path().join("published.pem");
        std::fs::copy(d.bundle_path(), &published).expect("bundle copy");
        assert!(
            openssl_verifies(work.path(), chain, &published),
            "renewal {renewals}: a chain the bundle does not trust"
        );
        renewals += 1;
        let r = d.rotation().await;
        let signing = ["reissue", "retire", "steady"].contains(&r["stage"].as_str().unwrap_or(""));
        if signing && r["generation"].as_u64() > before {
            return renewals;
        }
        assert!(Instant::now() < deadline, "no rollout: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every way a workload asks for a certificate, with the root held as
/// `custody` says (its `provider:` and `key_custody:` YAML): the signing
/// API, the agent's files, Istio's CA as istio-agent, and a
/// PodCertificateRequest as kubelet. Each chain must be the leaf alone
/// when custody signs every leaf (leaf and intermediate otherwise), and
/// Debian's `openssl verify` must accept it against the published bundle.
pub async fn every_way_a_workload_asks_verifies(custody: &str, sign_leaves: bool) {
    const SPIFFE_ID: &str = "spiffe://cluster.local/ns/shop/sa/web";
    let kube = KubeStandIn::start().await;
    kube.create_namespace("shop");
    kube.put_pod("shop", "web-1", "web", Some("node-1"));
    let port = crate::process::free_port();
    let d = TestDaemon::start(&format!(
        "kubernetes: {{ kubeconfig: {}, lease_duration: 3s }}\npod_certificates: {{ enabled: true }}\nistio_ca: {{ enabled: true, listen: 127.0.0.1:{port}, serving_dns_names: [{}] }}\n{custody}",
        kube.kubeconfig().display(),
        crate::istio::SERVER_NAME,
    ))
    .await;
    let work = tempfile::tempdir().expect("tempdir");
    let depth = if sign_leaves { 1 } else { 2 };
    let check = |what: &str, chain: &str| {
        assert_eq!(crate::certs(chain).len(), depth, "{what}: {chain}");
        assert!(
            openssl_verifies(work.path(), chain, &d.bundle_path()),
            "{what}: openssl verify refused the chain (sign_leaves {sign_leaves})"
        );
    };

    let (status, _, body) = sign(&d).await;
    assert_eq!(status, 200, "{body}");
    check(
        "signing API",
        body["certificate_chain"].as_str().expect("chain"),
    );

    check("agent", &agent_chain(&d, work.path()).await);

    let token = kube.bound_token("shop", "web-1", &["istio-ca"], 3600);
    let calls = json!([{ "token": token, "uri": SPIFFE_ID }]);
    let results = crate::istio::create_certificates(port, &d.bundle_pem().await, &calls).await;
    assert_eq!(results[0]["ok"], true, "{}", results[0]);
    check("Istio", &crate::istio::leaf_and_intermediates(&results[0]));

    let (csr, _) = crate::kubelet_stub_csr("ECDSAP256");
    let signer = "meshca.io/workload";
    let pcr = KubeStandIn::pod_certificate_request("shop", "web-1", signer, &csr, None);
    kube.put("certificates.k8s.io", "podcertificaterequests", pcr);
    let answered = crate::eventually("the pod certificate", Duration::from_secs(20), || {
        let pcr = kube.get(
            "certificates.k8s.io",
            "podcertificaterequests",
            "shop",
            "web-1",
        )?;
        pcr["status"]["certificateChain"]
            .as_str()
            .map(str::to_owned)
    })
    .await;
    check("pod certificate", &answered);
}

/// The chain `meshca agent --once` writes for shop/web, working in `dir`.
async fn agent_chain(d: &TestDaemon, dir: &Path) -> String {
    let token_file = dir.join("token");
    std::fs::write(&token_file, d.token("shop", "web")).expect("token");
    let out = dir.join("agent");
    let config = meshca::AgentConfig {
        server: d.url(""),
        ca_file: d.bundle_path(),
        token_file: Some(token_file),
        out_dir: Some(out.clone()),
        spiffe_files: false,
        workload_api: None,
        ttl: None,
        once: true,
        bundle_refresh: Duration::from_secs(1),
        crl_refresh: Duration::from_secs(1),
        key_algorithm: meshca::KeyAlgorithmName::EcdsaP256,
    };
    tokio::time::timeout(
        Duration::from_secs(20),
        meshca::run_agent(config, tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("the agent returns")
    .expect("the agent's first certificate");
    std::fs::read_to_string(out.join("cert.pem")).expect("cert.pem")
}
