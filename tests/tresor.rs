//! Tresor, meshca's own root: persistence across restarts, bring-your-own
//! roots in PKCS#8, PKCS#1 and SEC1 (made with the real openssl CLI), key
//! mismatch, intermediates and key algorithms.

use meshca_test_support as support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::json;
use support::{certs, csr, key, verify, TestDaemon};

async fn issue(d: &TestDaemon) -> serde_json::Value {
    let token = d.token("bookstore", "bookstore");
    let (status, _, body) = d
        .post(
            &d.client().await,
            Some(&token),
            &json!({ "csr": csr(&key()) }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

use support::openssl;

/// A self-signed CA made by openssl from `key.pem` in `dir`.
fn openssl_ca(dir: &Path, key_file: &str, cert_file: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            key_file,
            "-subj",
            "/CN=Operator Root CA",
            "-days",
            "365",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            cert_file,
        ],
    );
}

#[tokio::test]
async fn a_restart_reuses_the_generated_root_and_keeps_its_key_private() {
    let mut d = TestDaemon::start("").await;
    let first_bundle = d.bundle_pem().await;
    let issued = issue(&d).await;
    let key_file = d.dir.path().join("tresor/root.key");
    let mode = std::fs::metadata(&key_file)
        .expect("root key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!first_bundle.contains("PRIVATE KEY"));
    d.stop().await;

    let dir = std::mem::replace(&mut d.dir, tempfile::tempdir().expect("tempdir"));
    let d2 = TestDaemon::start_in(dir, "").await;
    assert_eq!(
        d2.bundle_pem().await,
        first_bundle,
        "same root after restart"
    );
    verify(
        issued["certificate_chain"].as_str().expect("chain"),
        &d2.bundle_pem().await,
        webpki::KeyUsage::client_auth(),
    )
    .expect("certificates from before the restart still verify");
}

async fn byo_root_issues_verifiable_certificates(make_key: &[&str], label: &str) {
    let byo = tempfile::tempdir().expect("tempdir");
    openssl(byo.path(), make_key);
    let key_text = std::fs::read_to_string(byo.path().join("key.pem")).expect("key");
    assert!(
        key_text.contains(label),
        "openssl wrote a {label} key: {key_text}"
    );
    openssl_ca(byo.path(), "key.pem", "ca.pem");
    let d = TestDaemon::start(&format!(
        "provider:\n  kind: tresor\n  tresor:\n    root_cert_file: {0}/ca.pem\n    root_key_file: {0}/key.pem\n",
        byo.path().display()
    ))
    .await;
    let root = std::fs::read_to_string(byo.path().join("ca.pem")).expect("ca");
    assert_eq!(
        certs(&d.bundle_pem().await),
        certs(&root),
        "the bundle is the operator's root"
    );
    let body = issue(&d).await;
    verify(
        body["certificate_chain"].as_str().expect("chain"),
        &root,
        webpki::KeyUsage::server_auth(),
    )
    .expect("leaf chains to the operator's root");
}

#[tokio::test]
async fn a_byo_root_with_a_pkcs8_key_is_used() {
    byo_root_issues_verifiable_certificates(
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "key.pem",
        ],
        "BEGIN PRIVATE KEY",
    )
    .await;
}

#[tokio::test]
async fn a_byo_root_with_a_pkcs1_rsa_key_is_used() {
    byo_root_issues_verifiable_certificates(
        &["genrsa", "-traditional", "-out", "key.pem", "2048"],
        "BEGIN RSA PRIVATE KEY",
    )
    .await;
}

#[tokio::test]
async fn a_byo_root_with_a_sec1_ec_key_is_used() {
    byo_root_issues_verifiable_certificates(
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "key.pem",
        ],
        "BEGIN EC PRIVATE KEY",
    )
    .await;
}

/// Load a config on `cert` + `key` in `dir`, expecting it to be refused
/// there: the root files are read and cross-checked when the config is
/// loaded, so `meshca config check` refuses what `serve` would.
async fn start_error(dir: &Path, cert: &str, key: &str) -> String {
    support::install_crypto_provider();
    let state = tempfile::tempdir().expect("tempdir");
    let e = meshca::Config::from_yaml(&support::config_yaml(
        state.path(),
        &format!(
            "provider:\n  kind: tresor\n  tresor:\n    root_cert_file: {0}/{cert}\n    root_key_file: {0}/{key}\n",
            dir.display()
        ),
    ))
    .expect_err("must refuse");
    let message = e.to_string();
    assert!(
        message.contains("provider.tresor.root_cert_file"),
        "{message}"
    );
    message
}

#[tokio::test]
async fn a_byo_root_whose_key_is_not_the_certificates_is_refused_at_start() {
    let byo = tempfile::tempdir().expect("tempdir");
    openssl(
        byo.path(),
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "a.pem",
        ],
    );
    openssl(
        byo.path(),
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "b.pem",
        ],
    );
    openssl_ca(byo.path(), "a.pem", "ca.pem");
    let err = start_error(byo.path(), "ca.pem", "b.pem").await;
    assert!(err.contains("does not match"), "{err}");
}

#[tokio::test]
async fn a_byo_certificate_that_is_not_a_ca_is_refused_at_start() {
    let byo = tempfile::tempdir().expect("tempdir");
    openssl(
        byo.path(),
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "k.pem",
        ],
    );
    openssl(
        byo.path(),
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "k.pem",
            "-subj",
            "/CN=leaf",
            "-days",
            "1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-out",
            "c.pem",
        ],
    );
    let err = start_error(byo.path(), "c.pem", "k.pem").await;
    assert!(err.contains("not a CA"), "{err}");
}

#[tokio::test]
async fn in_intermediate_mode_the_chain_is_leaf_then_intermediate_and_verifies_to_the_root() {
    let d = TestDaemon::start(
        "provider:\n  kind: tresor\n  tresor:\n    intermediate: { validity: 720h }\n",
    )
    .await;
    let body = issue(&d).await;
    let chain = body["certificate_chain"].as_str().expect("chain");
    let ders = certs(chain);
    assert_eq!(ders.len(), 2, "leaf then intermediate");
    let bundle = d.bundle_pem().await;
    assert_eq!(certs(&bundle).len(), 1, "only the root is an anchor");
    assert!(
        !ders.contains(&certs(&bundle)[0]),
        "the root is not in the chain"
    );
    verify(chain, &bundle, webpki::KeyUsage::server_auth())
        .expect("verifies through the intermediate");
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, inter) = X509Certificate::from_der(&ders[1]).expect("intermediate");
    assert!(inter.is_ca());
}

#[tokio::test]
async fn p384_and_ed25519_roots_can_be_generated() {
    for alg in ["ecdsa-p384", "ed25519"] {
        let d = TestDaemon::start(&format!(
            "provider:\n  kind: tresor\n  tresor:\n    key_algorithm: {alg}\n"
        ))
        .await;
        let body = issue(&d).await;
        verify(
            body["certificate_chain"].as_str().expect("chain"),
            &d.bundle_pem().await,
            webpki::KeyUsage::client_auth(),
        )
        .unwrap_or_else(|e| panic!("{alg}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_intermediate_is_renewed_in_place_so_chains_stay_valid_past_its_validity() {
    let d = TestDaemon::start(
        "certificates: { default_ttl: 3s, min_ttl: 1s, max_ttl: 3s }\nprovider:\n  kind: tresor\n  tresor:\n    intermediate: { validity: 9s }\n",
    )
    .await;
    let started = std::time::Instant::now();
    let bundle = d.bundle_pem().await;
    let intermediate = |body: &serde_json::Value| {
        let chain = body["certificate_chain"].as_str().expect("chain");
        verify(chain, &bundle, webpki::KeyUsage::client_auth()).expect("a valid chain now");
        certs(chain).remove(1)
    };
    let first = intermediate(&issue(&d).await);
    let mut seen = vec![first];
    // Past two thirds of the first intermediate's life, and past its end.
    for at in [7, 11] {
        tokio::time::sleep(std::time::Duration::from_secs(at).saturating_sub(started.elapsed()))
            .await;
        let next = intermediate(&issue(&d).await);
        assert!(!seen.contains(&next), "a new intermediate by {at} s");
        seen.push(next);
    }
    assert_eq!(d.bundle_pem().await, bundle, "the same root: no rollout");
}
