//! Tresor's root key held in OpenBao's Transit engine (a real OpenBao
//! 2.7): made there non-exportable, never written by meshca, signing
//! intermediates or every leaf, failing fast while Transit is sealed, and
//! reached from a file-held root by a staged rollout.

use std::path::Path;
use std::time::{Duration, Instant};

use meshca_test_support::custody::{
    assert_jwt_keys_named_only, every_way_a_workload_asks_verifies, openssl_verifies,
    private_keys_under, renew_through_rollout, sign,
};
use meshca_test_support::openbao::OpenBao;
use meshca_test_support::{self as support, TestDaemon};
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};

/// Transit enabled, and a token file carrying only meshca's policy.
fn transit(bao: &OpenBao) -> std::path::PathBuf {
    bao.transit_custody_token()
}

/// `key_custody:` for `bao`, and the Tresor settings a mode needs.
fn custody_yaml(bao: &OpenBao, token_file: &Path, sign_leaves: bool) -> String {
    bao.key_custody_yaml(token_file, sign_leaves)
}

/// Transit's own account of meshca's root key.
fn transit_key(bao: &OpenBao) -> Value {
    let read = bao.cli(&["read", "-format=json", "transit/keys/meshca-root"]);
    serde_json::from_str::<Value>(&read).expect("JSON")["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_key_is_made_in_transit_never_leaves_it_and_chains_verify_in_both_modes() {
    for sign_leaves in [false, true] {
        let bao = OpenBao::dev().await;
        let token_file = transit(&bao);
        let mut d = TestDaemon::start(&custody_yaml(&bao, &token_file, sign_leaves)).await;
        let key = transit_key(&bao);
        assert_eq!(key["type"], "ecdsa-p256", "{key}");
        assert_eq!(key["exportable"], false, "{key}");
        let export = bao.try_cli(&["read", "transit/export/signing-key/meshca-root"]);
        assert!(export.is_err(), "Transit refuses to export it: {export:?}");

        // The bundle's root is Transit's key.
        let bundle = d.bundle_pem().await;
        let anchors = support::certs(&bundle);
        assert_eq!(anchors.len(), 1);
        let (_, root) = x509_parser::parse_x509_certificate(&anchors[0]).expect("root");
        let transit_pem = key["keys"]["1"]["public_key"].as_str().expect("public key");
        let transit_der =
            rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(transit_pem.as_bytes())
                .expect("PEM");
        assert_eq!(
            root.public_key().raw,
            transit_der.as_ref(),
            "mode {sign_leaves}"
        );

        let (status, _, body) = sign(&d).await;
        assert_eq!(status, 200, "{body}");
        let chain = body["certificate_chain"].as_str().expect("chain");
        let depth = support::certs(chain).len();
        assert_eq!(
            depth,
            if sign_leaves { 1 } else { 2 },
            "leaf, and the intermediate unless every leaf is signed in custody"
        );
        let work = tempfile::tempdir().expect("tempdir");
        assert!(
            openssl_verifies(work.path(), chain, &d.bundle_path()),
            "sign_leaves {sign_leaves}"
        );

        let metrics = d.metrics().await;
        assert!(
            metrics.contains("meshca_key_custody_up{backend=\"transit\"} 1"),
            "{metrics}"
        );
        let signed = metrics
            .lines()
            .find(|l| l.starts_with("meshca_key_custody_sign_duration_seconds_count"))
            .expect("sign duration");
        let count: u64 = signed
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("count");
        // The root itself, then the intermediate or the leaf.
        assert!(count >= 2, "{signed}");

        // The same root after a restart: the certificate is kept, the key
        // found again in Transit.
        d.restart().await;
        assert_eq!(
            d.bundle_pem().await,
            bundle,
            "the same root after a restart"
        );
        let (status, _, body) = sign(&d).await;
        assert_eq!(status, 200, "{body}");

        let keys = private_keys_under(d.dir.path());
        let custody_dir = d.dir.path().join("tresor-transit/meshca-root");
        assert!(custody_dir.join("root.crt").exists());
        assert!(!custody_dir.join("root.key").exists());
        assert!(keys.is_empty(), "no private key in state_dir: {keys:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rsa_root_in_transit_signs_every_leaf_with_pkcs1_and_chains_verify() {
    let bao = OpenBao::dev().await;
    let token_file = transit(&bao);
    let yaml = custody_yaml(&bao, &token_file, true).replace(
        "provider: { kind: tresor }",
        "provider: { kind: tresor, tresor: { key_algorithm: rsa-3072 } }",
    );
    let d = TestDaemon::start(&yaml).await;
    let key = transit_key(&bao);
    assert_eq!(
        (&key["type"], &key["exportable"]),
        (&json!("rsa-3072"), &json!(false)),
        "{key}"
    );
    let bundle = d.bundle_pem().await;
    let anchors = support::certs(&bundle);
    let (_, root) = x509_parser::parse_x509_certificate(&anchors[0]).expect("root");
    let transit_pem = key["keys"]["1"]["public_key"].as_str().expect("public key");
    let transit_der =
        rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(transit_pem.as_bytes())
            .expect("PEM");
    assert_eq!(root.public_key().raw, transit_der.as_ref());
    for _ in 0..3 {
        let (status, _, body) = sign(&d).await;
        assert_eq!(status, 200, "{body}");
        let chain = body["certificate_chain"].as_str().expect("chain");
        let certs = support::certs(chain);
        let (_, leaf) = x509_parser::parse_x509_certificate(&certs[0]).expect("leaf");
        assert_eq!(
            leaf.signature_algorithm.algorithm.to_id_string(),
            "1.2.840.113549.1.1.11",
            "sha256WithRSAEncryption (PKCS#1 v1.5), not PSS"
        );
        let work = tempfile::tempdir().expect("tempdir");
        assert!(openssl_verifies(work.path(), chain, &d.bundle_path()));
    }
    let keys = private_keys_under(d.dir.path());
    assert!(keys.is_empty(), "no private key in state_dir: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_can_be_exported_or_refused_credentials_stop_the_start() {
    let bao = OpenBao::dev().await;
    let token_file = transit(&bao);
    bao.cli(&[
        "write",
        "transit/keys/meshca-root",
        "type=ecdsa-p256",
        "exportable=true",
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = support::config_yaml(dir.path(), &custody_yaml(&bao, &token_file, true));
    let config = meshca::Config::from_yaml(&yaml).expect("valid config");
    support::install_crypto_provider();
    let err = meshca::start(config).await.expect_err("refused");
    let text = support::error_chain(&err);
    assert!(
        text.contains("transit/keys/meshca-root can be exported"),
        "{text}"
    );
    assert!(!dir.path().join("tresor").exists(), "no file root instead");
    assert!(!dir.path().join("tresor-transit").exists());

    std::fs::write(&token_file, "not-a-token").expect("token");
    let yaml = support::config_yaml(dir.path(), &custody_yaml(&bao, &token_file, false));
    let config = meshca::Config::from_yaml(&yaml).expect("valid config");
    let err = meshca::start(config).await.expect_err("refused");
    let text = support::error_chain(&err);
    assert!(
        text.contains("transit key custody refused") && text.contains("403"),
        "{text}"
    );
    assert!(private_keys_under(dir.path()).is_empty());
}

/// Wait until `/readyz` answers `status`.
async fn ready_is(d: &TestDaemon, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (now, body) = d.readyz().await;
        if now == status {
            return body;
        }
        assert!(Instant::now() < deadline, "readyz stayed {now}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_transit_fails_fast_with_retry_after_and_meshca_recovers_by_itself() {
    let bao = OpenBao::raft().await;
    let token_file = transit(&bao);
    let d = TestDaemon::start(&custody_yaml(&bao, &token_file, true)).await;
    let (status, _, body) = sign(&d).await;
    assert_eq!(status, 200, "{body}");
    let issued_before = d.metrics().await;

    bao.seal();
    for _ in 0..3 {
        let started = Instant::now();
        let (status, headers, body) = sign(&d).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "provider_unavailable", "{body}");
        assert!(headers.contains_key("retry-after"), "{headers:?}");
        assert!(started.elapsed() < Duration::from_secs(4), "fails fast");
    }
    let why = ready_is(&d, 503).await;
    assert!(why.contains("sealed"), "{why}");
    let metrics = d.metrics().await;
    assert!(
        metrics.contains("meshca_key_custody_up{backend=\"transit\"} 0"),
        "{metrics}"
    );
    let count = |m: &str| {
        m.lines()
            .filter(|l| {
                l.starts_with("meshca_certificates_issued_total")
                    && l.contains("result=\"success\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert!(count(&issued_before) >= 1.0, "{issued_before}");
    assert_eq!(
        count(&metrics),
        count(&issued_before),
        "nothing issued while sealed"
    );

    bao.unseal().await;
    ready_is(&d, 200).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = sign(&d).await;
        if status == 200 {
            let chain = body["certificate_chain"].as_str().expect("chain");
            let work = tempfile::tempdir().expect("tempdir");
            assert!(openssl_verifies(work.path(), chain, &d.bundle_path()));
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let metrics = d.metrics().await;
    assert!(
        metrics.contains("meshca_key_custody_up{backend=\"transit\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intermediate_signs_on_while_transit_is_sealed() {
    let bao = OpenBao::raft().await;
    let token_file = transit(&bao);
    let d = TestDaemon::start(&custody_yaml(&bao, &token_file, false)).await;
    bao.seal();
    // The readiness probe (every second) finds Transit sealed...
    let deadline = Instant::now() + Duration::from_secs(15);
    while !d
        .metrics()
        .await
        .contains("meshca_key_custody_up{backend=\"transit\"} 0")
    {
        assert!(Instant::now() < deadline, "the outage is never seen");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and meshca stays ready and signs with its intermediate.
    let (ready, why) = d.readyz().await;
    assert_eq!(ready, 200, "still ready: {why}");
    let (status, _, body) = sign(&d).await;
    assert_eq!(status, 200, "the intermediate in memory signs: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_file_root_into_transit_is_a_staged_rollout_no_workload_sees_an_untrusted_chain() {
    let bao = OpenBao::dev().await;
    let token_file = transit(&bao);
    let common = "certificates: { default_ttl: 1h, min_ttl: 1s, max_ttl: 2h }\nbundle: { refresh_interval: 1s }\nrotation: { propagation_delay: 2s }\n";
    let d = TestDaemon::start_from_file(common).await;
    let file_root = support::certs(&d.bundle_pem().await);
    let before = d.rotation().await["generation"].as_u64();
    d.rewrite_config(&format!(
        "{common}{}",
        custody_yaml(&bao, &token_file, false)
    ));

    // Renew continuously through the rollout: each chain must verify
    // against the bundle published at the time it is handed out.
    let renewals = renew_through_rollout(&d, before).await;
    let work = tempfile::tempdir().expect("tempdir");
    let anchors = support::certs(&d.bundle_pem().await);
    assert!(
        anchors.contains(&file_root[0]),
        "the file root stays until its leaves expire"
    );
    assert_eq!(anchors.len(), 2);
    let (status, _, body) = sign(&d).await;
    assert_eq!(status, 200, "{body}");
    let chain = body["certificate_chain"].as_str().expect("chain");
    let transit_root = work.path().join("transit-root.pem");
    std::fs::write(
        &transit_root,
        std::fs::read(d.dir.path().join("tresor-transit/meshca-root/root.crt"))
            .expect("custody root"),
    )
    .expect("copy");
    assert!(
        openssl_verifies(work.path(), chain, &transit_root),
        "new leaves chain to the root in Transit"
    );
    assert!(renewals > 3, "renewed through the rollout ({renewals})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_two_replicas_share_one_root_in_custody_and_no_secret_holds_its_key() {
    use meshca_test_support::kube::KubeStandIn;
    let bao = OpenBao::dev().await;
    let token_file = transit(&bao);
    let kube = KubeStandIn::start().await;
    let yaml = format!(
        "kubernetes: {{ kubeconfig: {}, lease_duration: 3s }}\n{}",
        kube.kubeconfig().display(),
        custody_yaml(&bao, &token_file, false)
    );
    let (a, b) = tokio::join!(TestDaemon::start(&yaml), TestDaemon::start(&yaml));
    let bundle = a.bundle_pem().await;
    assert_eq!(
        support::certs(&bundle),
        support::certs(&b.bundle_pem().await),
        "one root"
    );

    let secret = kube
        .get(
            "",
            "secrets",
            "osm-system",
            "meshca-tresor-root-transit-meshca-root",
        )
        .expect("the root's certificate in its Secret");
    let data = secret["data"].as_object().expect("data");
    assert_eq!(data.keys().collect::<Vec<_>>(), ["ca.crt"], "{secret}");
    assert_eq!(secret["type"], "Opaque");
    assert!(
        kube.get("", "secrets", "osm-system", "meshca-tresor-root")
            .is_none(),
        "no file-held root was made"
    );
    // No Secret meshca wrote holds a private key.
    for s in kube.list("", "secrets", "osm-system") {
        for (key, value) in s["data"].as_object().into_iter().flatten() {
            let text = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                value.as_str().unwrap_or(""),
            )
            .unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&text).contains("PRIVATE KEY"),
                "{} holds a private key in {key}",
                s["metadata"]["name"]
            );
        }
    }
    let (status, _, body) = sign(&b).await;
    assert_eq!(status, 200, "{body}");
    let work = tempfile::tempdir().expect("tempdir");
    let chain = body["certificate_chain"].as_str().expect("chain");
    assert!(openssl_verifies(work.path(), chain, &a.bundle_path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_root_whose_key_was_replaced_stops_the_start_and_says_what_to_do() {
    let bao = OpenBao::dev().await;
    let token_file = transit(&bao);
    let yaml = custody_yaml(&bao, &token_file, true);
    let mut d = TestDaemon::start(&yaml).await;
    d.stop().await;
    // The key is replaced in Transit (an operator deleted and remade it).
    bao.cli(&[
        "write",
        "transit/keys/meshca-root/config",
        "deletion_allowed=true",
    ]);
    bao.cli(&["delete", "transit/keys/meshca-root"]);
    let config = meshca::Config::from_yaml(&support::config_yaml(d.dir.path(), &yaml))
        .expect("valid config");
    let err = meshca::start(config).await.expect_err("refused");
    let text = support::error_chain(&err);
    assert!(
        text.contains("the root certificate kept for the key meshca-root in transit custody is not of that key"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_name_is_a_new_root_in_the_same_custody_rolled_out_under_renewals() {
    let bao = OpenBao::dev().await;
    let token_file = transit(&bao);
    let common = "certificates: { default_ttl: 1h, min_ttl: 1s, max_ttl: 2h }\nbundle: { refresh_interval: 1s }\nrotation: { propagation_delay: 2s }\n";
    let yaml = custody_yaml(&bao, &token_file, false);
    let d = TestDaemon::start_from_file(&format!("{common}{yaml}")).await;
    let first = support::certs(&d.bundle_pem().await);
    let before = d.rotation().await["generation"].as_u64();
    let rotated = yaml.replace("transit: {", "transit: { key_prefix: meshca-2026,");
    d.rewrite_config(&format!("{common}{rotated}"));
    let renewals = renew_through_rollout(&d, before).await;
    assert!(renewals > 3, "renewed through the rollout ({renewals})");
    let anchors = support::certs(&d.bundle_pem().await);
    assert!(
        anchors.contains(&first[0]),
        "the first root stays until its leaves expire"
    );
    assert_eq!(anchors.len(), 2);
    let key = serde_json::from_str::<Value>(&bao.cli(&[
        "read",
        "-format=json",
        "transit/keys/meshca-2026-root",
    ]))
    .expect("JSON");
    assert_eq!(key["data"]["exportable"], false, "{key}");
    let (status, _, body) = sign(&d).await;
    assert_eq!(status, 200, "{body}");
    let work = tempfile::tempdir().expect("tempdir");
    let chain = body["certificate_chain"].as_str().expect("chain");
    let new_root = d
        .dir
        .path()
        .join("tresor-transit/meshca-2026-root/root.crt");
    assert!(
        openssl_verifies(work.path(), chain, &new_root),
        "new leaves chain to the new key's root"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_a_workload_asks_gets_a_chain_to_the_root_in_transit_in_both_modes() {
    for sign_leaves in [false, true] {
        let bao = OpenBao::dev().await;
        let token_file = transit(&bao);
        let custody = custody_yaml(&bao, &token_file, sign_leaves);
        every_way_a_workload_asks_verifies(&custody, sign_leaves).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_svids_are_signed_in_transit_verify_with_pyjwt_and_fail_fast_while_sealed() {
    let bao = OpenBao::raft().await;
    let token_file = transit(&bao);
    let issuer = "https://meshca.example.com";
    let jwt = format!("jwt_svids: {{ enabled: true, issuer: \"{issuer}\" }}\n");
    let mut d =
        TestDaemon::start(&format!("{}{jwt}", custody_yaml(&bao, &token_file, false))).await;
    let read = bao.cli(&["read", "-format=json", "transit/keys/meshca-jwt-1"]);
    let key = serde_json::from_str::<Value>(&read).expect("JSON")["data"].clone();
    assert_eq!(
        (&key["type"], &key["exportable"]),
        (&json!("ecdsa-p256"), &json!(false)),
        "{key}"
    );

    let workload = d.token("shop", "web");
    let ask = json!({ "audience": ["vault"] });
    let (status, _, body) = support::jwt::mint(&d, Some(&workload), &ask).await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().expect("token").to_owned();
    let keys = support::jwt::jwks(&d).await;
    assert_eq!(
        support::jwt::pyjwt(&keys, &token, "vault", issuer),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    // The JWK is Transit's public key: its point ends the SPKI.
    let pem = key["keys"]["1"]["public_key"].as_str().expect("public key");
    let spki =
        rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes()).expect("PEM");
    let point = &spki.as_ref()[spki.as_ref().len() - 64..];
    let b64 = |v: &Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v.as_str().expect("coordinate"))
            .expect("base64url")
    };
    let jwk = &keys["keys"][0];
    assert_eq!([b64(&jwk["x"]), b64(&jwk["y"])].concat(), point, "{jwk}");

    // meshca keeps the key's name, never key material.
    assert_jwt_keys_named_only(d.dir.path(), "transit");

    // After a restart: the same key, found again in Transit.
    d.restart().await;
    assert_eq!(
        support::jwt::jwks(&d).await,
        keys,
        "the same key after a restart"
    );
    assert_eq!(
        support::jwt::pyjwt(&keys, &token, "vault", issuer),
        "spiffe://cluster.local/ns/shop/sa/web"
    );

    bao.seal();
    for _ in 0..3 {
        let started = Instant::now();
        let (status, headers, body) = support::jwt::mint(&d, Some(&workload), &ask).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "provider_unavailable", "{body}");
        assert!(headers.contains_key("retry-after"), "{headers:?}");
        assert!(started.elapsed() < Duration::from_secs(4), "fails fast");
    }
    bao.unseal().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = support::jwt::mint(&d, Some(&workload), &ask).await;
        if status == 200 {
            let token = body["token"].as_str().expect("token");
            assert_eq!(
                support::jwt::pyjwt(&keys, token, "vault", issuer),
                "spiffe://cluster.local/ns/shop/sa/web"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The `kid` in `token`'s header.
fn kid_of(token: &str) -> String {
    use base64::Engine as _;
    let head = token.split('.').next().expect("a JWS");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .expect("base64url");
    let header: Value = serde_json::from_slice(&json).expect("JSON header");
    header["kid"].as_str().expect("kid").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_keys_move_into_transit_by_a_rotation_and_earlier_tokens_still_verify() {
    let bao = OpenBao::dev().await;
    let token_file = transit(&bao);
    let issuer = "https://meshca.example.com";
    let common = format!(
        "rotation: {{ propagation_delay: 1s }}\njwt_svids: {{ enabled: true, issuer: \"{issuer}\" }}\n"
    );
    let mut d = TestDaemon::start(&common).await;
    let (workload, ask) = (d.token("shop", "web"), json!({ "audience": ["vault"] }));
    let (status, _, body) = support::jwt::mint(&d, Some(&workload), &ask).await;
    assert_eq!(status, 200, "{body}");
    let before = body["token"].as_str().expect("token").to_owned();
    let own = kid_of(&before);

    // With a custodian, the file key signs on until a rotation.
    let with_custody = format!("{common}{}", custody_yaml(&bao, &token_file, false));
    d.restart_with(&with_custody).await;
    let (_, _, body) = support::jwt::mint(&d, Some(&workload), &ask).await;
    assert_eq!(kid_of(body["token"].as_str().expect("token")), own);
    let config = d.dir.path().join("custody.yaml");
    std::fs::write(&config, support::config_yaml(d.dir.path(), &with_custody)).expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
        .args(["rotate", "jwt-key", "--config"])
        .arg(&config)
        .output()
        .expect("meshca rotate jwt-key");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");

    // The daemon reads the new key, which signs once published long enough.
    let deadline = Instant::now() + Duration::from_secs(40);
    let after = loop {
        let (status, _, body) = support::jwt::mint(&d, Some(&workload), &ask).await;
        assert_eq!(status, 200, "{body}");
        let token = body["token"].as_str().expect("token").to_owned();
        if kid_of(&token) != own {
            break token;
        }
        assert!(
            Instant::now() < deadline,
            "the key made in Transit never signed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(said.contains(&kid_of(&after)), "{said}");
    let stored = std::fs::read_to_string(d.dir.path().join("jwt-keys.json")).expect("stored");
    assert!(stored.contains("meshca-jwt-1"), "{stored}");
    let keys = support::jwt::jwks(&d).await;
    assert_eq!(keys["keys"].as_array().map(Vec::len), Some(2), "{keys}");
    for token in [&before, &after] {
        assert_eq!(
            support::jwt::pyjwt(&keys, token, "vault", issuer),
            "spiffe://cluster.local/ns/shop/sa/web",
            "tokens of the file key and of the key in Transit verify"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_jwt_key_is_deleted_from_transit() {
    let bao = OpenBao::dev().await;
    let token_file = transit(&bao);
    let d = TestDaemon::start(&format!(
        "rotation: {{ propagation_delay: 2s }}\n{}jwt_svids: {{ enabled: true, issuer: \"https://meshca.example.com\", default_ttl: 10s, max_ttl: 10s, key_lifetime: 12s }}\n",
        custody_yaml(&bao, &token_file, false)
    ))
    .await;
    let ask = json!({ "audience": ["vault"] });
    let (status, _, body) = support::jwt::mint(&d, Some(&d.token("shop", "web")), &ask).await;
    assert_eq!(status, 200, "{body}");
    let held = |name: &str| {
        bao.try_cli(&["read", &format!("transit/keys/{name}")])
            .is_ok()
    };
    assert!(held("meshca-jwt-1"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while held("meshca-jwt-1") {
        assert!(Instant::now() < deadline, "meshca-jwt-1 was never deleted");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(held("meshca-jwt-2"), "its successor stays");
    assert!(held("meshca-root"), "the root's key is never deleted");
    let (status, _, body) = support::jwt::mint(&d, Some(&d.token("shop", "web")), &ask).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_root_makes_the_new_key_in_transit_and_rolls_it_out_under_renewals() {
    let bao = OpenBao::dev().await;
    let token_file = transit(&bao);
    let common = "certificates: { default_ttl: 1h, min_ttl: 1s, max_ttl: 2h }\nbundle: { refresh_interval: 1s }\nrotation: { propagation_delay: 2s }\n";
    let d = TestDaemon::start_from_file(&format!(
        "{common}{}",
        custody_yaml(&bao, &token_file, false)
    ))
    .await;
    let first = support::certs(&d.bundle_pem().await);
    let before = d.rotation().await["generation"].as_u64();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
        .args(["rotate", "root", "-c"])
        .arg(d.dir.path().join("meshca.yaml"))
        .output()
        .expect("meshca runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let renewals = renew_through_rollout(&d, before).await;
    assert!(renewals > 3, "renewed through the rollout ({renewals})");
    let read = bao.cli(&["read", "-format=json", "transit/keys/meshca-root-g1"]);
    let key = serde_json::from_str::<Value>(&read).expect("JSON")["data"].clone();
    assert_eq!(
        (&key["type"], &key["exportable"]),
        (&json!("ecdsa-p256"), &json!(false)),
        "the new key, made in the same custody: {key}"
    );
    assert!(
        bao.try_cli(&["read", "transit/keys/meshca-root"]).is_ok(),
        "the first stays"
    );
    let anchors = support::certs(&d.bundle_pem().await);
    assert_eq!(anchors.len(), 2);
    assert!(anchors.contains(&first[0]));
    let kept = support::certs(
        &std::fs::read_to_string(d.dir.path().join("tresor-transit/meshca-root-g1/root.crt"))
            .expect("the new root's certificate"),
    );
    let (_, root) = x509_parser::parse_x509_certificate(&kept[0]).expect("root");
    let pem = key["keys"]["1"]["public_key"].as_str().expect("public key");
    let spki =
        rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes()).expect("PEM");
    assert_eq!(
        root.public_key().raw,
        spki.as_ref(),
        "its key is Transit's new key"
    );
    let keys = private_keys_under(d.dir.path());
    assert!(keys.is_empty(), "no private key in state_dir: {keys:?}");
}
