//! The workload agent against a real daemon over HTTPS: first fetch,
//! renewal at about two thirds of a short lifetime, file modes, and renewal
//! with the held certificate instead of a token.

use meshca_test_support as support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use meshca::AgentConfig;
use support::{certs, verify, TestDaemon};
use tokio_util::sync::CancellationToken;
use x509_parser::prelude::{FromDer, X509Certificate};

fn agent_config(
    d: &TestDaemon,
    out: &Path,
    token_file: Option<&Path>,
    ttl: Duration,
) -> AgentConfig {
    AgentConfig {
        server: d.url(""),
        ca_file: d.bundle_path(),
        token_file: token_file.map(Path::to_owned),
        out_dir: Some(out.to_owned()),
        spiffe_files: false,
        workload_api: None,
        ttl: Some(ttl),
        once: false,
        bundle_refresh: Duration::from_millis(500),
        crl_refresh: Duration::from_millis(500),
        key_algorithm: meshca::KeyAlgorithmName::EcdsaP256,
    }
}

fn serial(out: &Path) -> Option<Vec<u8>> {
    let pem = std::fs::read_to_string(out.join("cert.pem")).ok()?;
    let der = certs(&pem).into_iter().next()?;
    let (_, c) = X509Certificate::from_der(&der).ok()?;
    Some(c.raw_serial().to_vec())
}

/// The key in key.pem is the one certified in cert.pem.
fn assert_key_matches(out: &Path) {
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(out.join("key.pem")).expect("key"))
        .expect("parse key");
    let der = certs(&std::fs::read_to_string(out.join("cert.pem")).expect("cert")).remove(0);
    let (_, c) = X509Certificate::from_der(&der).expect("cert");
    assert_eq!(
        c.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
}

#[tokio::test]
async fn the_agent_writes_its_files_and_renews_before_expiry() {
    let d =
        TestDaemon::start("certificates: { default_ttl: 1h, min_ttl: 3s, max_ttl: 2h }\n").await;
    let work = tempfile::tempdir().expect("tempdir");
    let token_file = work.path().join("token");
    std::fs::write(&token_file, d.token("bookstore", "bookstore")).expect("token");
    let out = work.path().join("out");
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(meshca::run_agent(
        agent_config(&d, &out, Some(&token_file), Duration::from_secs(6)),
        shutdown.clone(),
    ));

    let mut first = None;
    for _ in 0..100 {
        if let Some(s) = serial(&out) {
            first = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = first.expect("the agent wrote a certificate");
    let key_mode = std::fs::metadata(out.join("key.pem"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    assert_key_matches(&out);
    let bundle = d.bundle_pem().await;
    assert_eq!(
        std::fs::read_to_string(out.join("ca.pem")).expect("ca"),
        bundle
    );
    let chain = std::fs::read_to_string(out.join("cert.pem")).expect("cert");
    verify(&chain, &bundle, webpki::KeyUsage::client_auth()).expect("valid chain");
    let first_key = std::fs::read_to_string(out.join("key.pem")).expect("key");

    // A 6 s certificate (5-6 s once NotAfter is cut to whole seconds) is
    // renewed at about two thirds of that, ±10 %, long before expiry.
    let started = std::time::Instant::now();
    let mut renewed_after = None;
    while started.elapsed() < Duration::from_secs(8) {
        if serial(&out).is_some_and(|s| s != first) {
            renewed_after = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let renewed_after = renewed_after.expect("the agent renewed");
    assert!(
        renewed_after > Duration::from_millis(2500) && renewed_after < Duration::from_secs(5),
        "renewed at about two thirds of the lifetime, before expiry: {renewed_after:?}"
    );
    assert_key_matches(&out);
    assert_ne!(
        std::fs::read_to_string(out.join("key.pem")).expect("key"),
        first_key,
        "a fresh key per renewal"
    );

    shutdown.cancel();
    agent.await.expect("joined").expect("agent stops cleanly");
}

#[tokio::test]
async fn once_exits_after_the_first_write_and_a_later_run_renews_with_the_certificate_alone() {
    let d = TestDaemon::start("").await;
    let work = tempfile::tempdir().expect("tempdir");
    let token_file = work.path().join("token");
    std::fs::write(&token_file, d.token("bookbuyer", "bookbuyer")).expect("token");
    let out = work.path().join("out");
    let mut config = agent_config(&d, &out, Some(&token_file), Duration::from_secs(3600));
    config.once = true;
    tokio::time::timeout(
        Duration::from_secs(10),
        meshca::run_agent(config.clone(), CancellationToken::new()),
    )
    .await
    .expect("--once returns")
    .expect("first certificate");
    let first = serial(&out).expect("written");

    config.token_file = None;
    meshca::run_agent(config, CancellationToken::new())
        .await
        .expect("renewal with the held certificate (mTLS)");
    let second = serial(&out).expect("written");
    assert_ne!(first, second);
    let der = certs(&std::fs::read_to_string(out.join("cert.pem")).expect("cert")).remove(0);
    let (_, c) = X509Certificate::from_der(&der).expect("cert");
    assert_eq!(
        c.subject().to_string(),
        "CN=bookbuyer.bookbuyer.cluster.local"
    );
}

#[tokio::test]
async fn an_agent_with_a_bad_token_fails_once_with_the_servers_reason() {
    let d = TestDaemon::start("").await;
    let work = tempfile::tempdir().expect("tempdir");
    let token_file = work.path().join("token");
    std::fs::write(&token_file, "meshca_wrong").expect("token");
    let out = work.path().join("out");
    let mut config = agent_config(&d, &out, Some(&token_file), Duration::from_secs(3600));
    config.once = true;
    let err = meshca::run_agent(config, CancellationToken::new())
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("unauthenticated"), "{err}");
    assert!(!out.join("cert.pem").exists(), "nothing written");
}
