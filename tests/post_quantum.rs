//! Post-quantum protection: every listener prefers the hybrid key
//! exchange X25519MLKEM768 and still accepts classical groups, as seen by
//! TLS clients that are not rustls (tests/tls/handshake.py: pyOpenSSL over
//! OpenSSL 4, Python's ssl over the system's OpenSSL 3.0) and by
//! `meshca_tls_handshakes_total`.

use meshca_test_support as support;

use std::process::Command;

use serde_json::Value;
use support::process::free_port;
use support::TestDaemon;

/// What `script` prints (one JSON value), run by the Python of `venv`
/// with `args`; `.ci/run` installs both venvs.
fn python(venv: &str, script: &str, args: &[&std::ffi::OsStr]) -> Value {
    let repo = support::repo_root();
    let out = Command::new(repo.join(venv).join("bin/python"))
        .arg(repo.join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{venv}/bin/python runs (.ci/run installs it): {e}"));
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// The two clients' handshakes with `127.0.0.1:port`, dialled as
/// `server_name`, trusting `ca_file`.
fn handshakes(port: u16, server_name: &str, ca_file: &std::path::Path) -> Value {
    let port = port.to_string();
    let args = ["127.0.0.1", &port, server_name].map(std::ffi::OsStr::new);
    let mut args = args.to_vec();
    args.push(ca_file.as_os_str());
    python(".venv", "tests/tls/handshake.py", &args)
}

/// The count of `listener`'s handshakes on `group`, 0 when absent.
fn counted(metrics: &str, listener: &str, group: &str) -> u64 {
    let series =
        format!(r#"meshca_tls_handshakes_total{{listener="{listener}",group="{group}"}} "#);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_prefers_the_hybrid_exchange_and_still_accepts_classical_groups() {
    let (istio, endpoint) = (free_port(), free_port());
    let d = TestDaemon::start(&format!(
        "istio_ca: {{ enabled: true, listen: 127.0.0.1:{istio}, serving_dns_names: [localhost] }}\n\
         federation: {{ bundle_endpoint: {{ listen: 127.0.0.1:{endpoint}, profile: https_spiffe }} }}\n"
    ))
    .await;
    d.bundle_pem().await;
    let api = d.daemon.as_ref().expect("running").api_addr().port();
    let listeners = [
        ("api-server", api),
        ("istio-ca-server", istio),
        ("bundle-endpoint", endpoint),
    ];
    for (listener, port) in listeners {
        let seen = handshakes(port, "localhost", &d.bundle_path());
        assert_eq!(
            seen["pyopenssl"]["group"], "X25519MLKEM768",
            "{listener}: {seen}"
        );
        assert!(
            seen["pyopenssl"]["openssl"]
                .as_str()
                .is_some_and(|v| v.starts_with("OpenSSL 4")),
            "{seen}"
        );
        assert_eq!(seen["stdlib"]["version"], "TLSv1.3", "{listener}: {seen}");
    }
    let metrics = d.metrics().await;
    for (listener, _) in listeners {
        assert!(
            counted(&metrics, listener, "X25519MLKEM768") >= 1,
            "{listener}: {metrics}"
        );
        // Debian 12's OpenSSL 3.0 offers X25519 first among classical groups.
        assert!(
            counted(&metrics, listener, "X25519") >= 1,
            "{listener}: {metrics}"
        );
    }
}

/// What `tests/pq/verify.py` (cryptography 51) says for `args`.
fn pq(args: &[&str]) -> Value {
    let args: Vec<_> = args.iter().map(std::ffi::OsStr::new).collect();
    python(".venv-pq", "tests/pq/verify.py", &args)
}

/// A key and CSR for shop/web of `algorithm`, made by cryptography.
fn csr_by_cryptography(algorithm: &str) -> (String, String) {
    let made = pq(&[
        "csr",
        algorithm,
        "spiffe://cluster.local/ns/shop/sa/web",
        "web.shop.cluster.local",
    ]);
    (
        made["key"].as_str().expect("key").to_owned(),
        made["csr"].as_str().expect("csr").to_owned(),
    )
}

/// cryptography's verdict on `chain` against `bundle`.
fn verified_by_cryptography(dir: &std::path::Path, chain: &str, bundle: &std::path::Path) -> Value {
    let file = dir.join("chain.pem");
    std::fs::write(&file, chain).expect("chain file");
    pq(&[
        "chain",
        &file.display().to_string(),
        &bundle.display().to_string(),
    ])
}

/// Whether Debian's `openssl verify` accepts `chain`'s leaf against the
/// bundle.
fn verified_by_openssl(dir: &std::path::Path, chain: &str, bundle: &std::path::Path) -> bool {
    let certs = support::certs(chain);
    let pem = |c: &rustls_pki_types::CertificateDer<'_>| {
        let mut out = String::new();
        meshca_provider::pem::encode_block("CERTIFICATE", c, &mut out);
        out
    };
    let (leaf, untrusted) = (dir.join("leaf.pem"), dir.join("untrusted.pem"));
    std::fs::write(&leaf, pem(&certs[0])).expect("leaf");
    std::fs::write(&untrusted, certs[1..].iter().map(pem).collect::<String>()).expect("chain");
    let mut verify = Command::new("openssl");
    verify
        .args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(bundle);
    if certs.len() > 1 {
        verify.arg("-untrusted").arg(&untrusted);
    }
    verify.arg(&leaf).status().expect("openssl").success()
}

const POST_QUANTUM: &str =
    "provider: { kind: tresor, tresor: { intermediate: { validity: 200h }, post_quantum: { key_algorithm: ml-dsa-65 } } }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ml_dsa_workload_and_a_classical_one_are_issued_under_their_own_roots_and_both_verify() {
    let d = TestDaemon::start(POST_QUANTUM).await;
    let bundle = d.bundle_path();
    assert_eq!(
        support::certs(&d.bundle_pem().await).len(),
        2,
        "two anchors"
    );
    let (token, client) = (d.token("shop", "web"), d.client().await);
    let work = tempfile::tempdir().expect("tempdir");
    let mut chains = Vec::new();
    for algorithm in ["ml-dsa-65", "ecdsa-p256"] {
        let (_, csr) = csr_by_cryptography(algorithm);
        let (status, _, body) = d
            .post(&client, Some(&token), &serde_json::json!({ "csr": csr }))
            .await;
        assert_eq!(status, 200, "{algorithm}: {body}");
        let chain = body["certificate_chain"]
            .as_str()
            .expect("chain")
            .to_owned();
        let seen = verified_by_cryptography(work.path(), &chain, &bundle);
        assert_eq!(seen["ok"], true, "{algorithm}: {seen}");
        // rustls-webpki, as meshca's agent and every rustls peer verify.
        support::verify(
            &chain,
            &d.bundle_pem().await,
            webpki::KeyUsage::client_auth(),
        )
        .expect("rustls-webpki verifies the chain");
        chains.push((seen, chain));
    }
    let (pq, classical) = (&chains[0], &chains[1]);
    assert_eq!(pq.0["chain"][0]["signature"], "ML-DSA-65", "{}", pq.0);
    assert_eq!(pq.0["chain"][0]["key"], "MLDSA65PublicKey", "{}", pq.0);
    assert_eq!(pq.0["anchor_key"], "MLDSA65PublicKey", "{}", pq.0);
    assert_eq!(classical.0["anchor_key"], "ECPublicKey", "{}", classical.0);
    // Debian's OpenSSL 3.0 reads no ML-DSA, yet finds the classical anchor
    // in the bundle that holds both.
    assert!(verified_by_openssl(work.path(), &classical.1, &bundle));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ml_dsa_client_certificate_authenticates_renewal_and_a_tampered_one_does_not() {
    let d = TestDaemon::start(POST_QUANTUM).await;
    let (token, client) = (d.token("shop", "web"), d.client().await);
    let (key, csr) = csr_by_cryptography("ml-dsa-65");
    let (status, _, body) = d
        .post(&client, Some(&token), &serde_json::json!({ "csr": csr }))
        .await;
    assert_eq!(status, 200, "{body}");
    let chain = body["certificate_chain"]
        .as_str()
        .expect("chain")
        .to_owned();
    let bundle = d.bundle_pem().await;
    let (_, renewal) = csr_by_cryptography("ml-dsa-65");
    let renew = serde_json::json!({ "csr": renewal });
    let mtls = support::client(&bundle, Some((&chain, &key)));
    let (status, _, body) = d.post(&mtls, None, &renew).await;
    assert_eq!(
        status, 200,
        "renewed over mTLS with an ML-DSA certificate: {body}"
    );

    // The same certificate with one bit of its signature flipped.
    let mut certs = support::certs(&chain);
    let mut leaf = certs[0].to_vec();
    let last = leaf.len() - 1;
    leaf[last] ^= 1;
    certs[0] = rustls_pki_types::CertificateDer::from(leaf);
    let mut tampered = String::new();
    for c in &certs {
        meshca_provider::pem::encode_block("CERTIFICATE", c, &mut tampered);
    }
    let forged = support::client(&bundle, Some((&tampered, &key)));
    let answer = forged
        .post(d.url("/v1/certificates"))
        .json(&renew)
        .send()
        .await;
    match answer {
        Ok(r) => assert_eq!(
            r.status().as_u16(),
            401,
            "a tampered certificate was accepted"
        ),
        Err(e) => assert!(e.is_connect() || e.is_request(), "{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_post_quantum_root_an_ml_dsa_key_is_refused_by_name() {
    let d = TestDaemon::start("").await;
    let (token, client) = (d.token("shop", "web"), d.client().await);
    let (_, csr) = csr_by_cryptography("ml-dsa-65");
    let (status, headers, body) = d
        .post(&client, Some(&token), &serde_json::json!({ "csr": csr }))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_csr", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("ML-DSA-65") && message.contains("provider.tresor.post_quantum"),
        "{message}"
    );
    assert!(
        headers.get("retry-after").is_none(),
        "repeating cannot help"
    );
    assert!(d.metrics().await.contains(
        r#"meshca_certificates_issued_total{frontend="api",provider="tresor",result="invalid_csr"} 1"#
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshca_can_serve_with_an_ml_dsa_certificate_to_clients_that_verify_it() {
    let d = TestDaemon::start(&format!(
        "{POST_QUANTUM}api: {{ serving_key_algorithm: ml-dsa-65 }}\n"
    ))
    .await;
    // rustls (meshca's agent) verifies it.
    let (status, _) = d.get_status("/v1/bundle").await;
    assert_eq!(status, 200);
    let api = d.daemon.as_ref().expect("running").api_addr().port();
    let seen = handshakes(api, "localhost", &d.bundle_path());
    // OpenSSL 4 verifies ML-DSA chains; Debian 12's OpenSSL 3.0 does not.
    assert_eq!(seen["pyopenssl"]["version"], "TLSv1.3", "{seen}");
    assert!(seen["stdlib"]["error"].is_string(), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_without_a_post_quantum_role_refuses_an_ml_dsa_key_by_name() {
    let bao = support::openbao::OpenBao::dev().await;
    bao.script("setup-pki.sh", &[]);
    let auth = format!("{{ token_file: {} }}", bao.meshca_token_file().display());
    let d = TestDaemon::start(&bao.provider_yaml(&auth, "")).await;
    let (token, client) = (d.token("shop", "web"), d.client().await);
    let (_, csr) = csr_by_cryptography("ml-dsa-65");
    let (status, _, body) = d
        .post(&client, Some(&token), &serde_json::json!({ "csr": csr }))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_csr", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("provider.vault.post_quantum"), "{message}");
    // A classical key from the same workload is signed as before.
    let (_, csr) = csr_by_cryptography("ecdsa-p256");
    let (status, _, body) = d
        .post(&client, Some(&token), &serde_json::json!({ "csr": csr }))
        .await;
    assert_eq!(status, 200, "{body}");
}

/// A post-quantum root added to a running daemon by editing its config
/// rolls out like any root change: once the new generation signs, the
/// bundle holds both roots, ML-DSA keys chain to the new one, and
/// classical workloads still chain to the first root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_post_quantum_root_is_a_staged_rollout_that_keeps_the_classical_root() {
    let common = "certificates: { default_ttl: 1h, min_ttl: 1s, max_ttl: 2h }\nbundle: { refresh_interval: 1s }\nrotation: { propagation_delay: 1s }\n";
    let d = TestDaemon::start_from_file(common).await;
    let classical_pem = d.bundle_pem().await;
    let classical = support::certs(&classical_pem);
    assert_eq!(classical.len(), 1);
    let before = d.rotation().await["generation"].as_u64();
    d.rewrite_config(&format!(
        "{common}provider: {{ kind: tresor, tresor: {{ post_quantum: {{ key_algorithm: ml-dsa-65 }} }} }}\n"
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = d.rotation().await;
        // Retire keeps the previous generation's anchors until its last
        // leaf expires; the new generation signs from `reissue` on.
        let signing = ["reissue", "retire", "steady"].contains(&r["stage"].as_str().unwrap_or(""));
        if signing && r["generation"].as_u64() > before {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no rollout: {r}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let bundle = support::certs(&d.bundle_pem().await);
    assert!(bundle.contains(&classical[0]), "the classical root stays");
    assert_eq!(bundle.len(), 2, "and the post-quantum root joined it");
    let (token, client) = (d.token("shop", "web"), d.client().await);
    let (_, csr) = csr_by_cryptography("ml-dsa-65");
    let (status, _, body) = d
        .post(&client, Some(&token), &serde_json::json!({ "csr": csr }))
        .await;
    assert_eq!(status, 200, "{body}");
    let work = tempfile::tempdir().expect("tempdir");
    let chain = body["certificate_chain"].as_str().expect("chain");
    let seen = verified_by_cryptography(work.path(), chain, &d.bundle_path());
    assert_eq!(seen["anchor_key"], "MLDSA65PublicKey", "{seen}");
    let (_, csr) = csr_by_cryptography("ecdsa-p256");
    let (status, _, body) = d
        .post(&client, Some(&token), &serde_json::json!({ "csr": csr }))
        .await;
    assert_eq!(status, 200, "{body}");
    let chain = body["certificate_chain"].as_str().expect("chain");
    let first_root = work.path().join("first-root.pem");
    std::fs::write(&first_root, &classical_pem).expect("first root");
    let seen = verified_by_cryptography(work.path(), chain, &first_root);
    assert_eq!(
        seen["ok"], true,
        "still under the first classical root: {seen}"
    );
}
