//! Istio's certificate service against the real `meshca serve` code, called
//! by a gRPC client that grpcio-tools generates from proto/istio/ca.proto
//! (tests/istio/ca_client.py), playing istio-agent and ztunnel. Tokens are
//! the Kubernetes stand-in's bound ServiceAccount tokens: TokenReview names
//! each token's pod and node, and refuses expired tokens and tokens whose
//! pod is gone, as kube-apiserver does.

use std::time::Duration;

use meshca_test_support as support;
use serde_json::{json, Value};
use support::kube::KubeStandIn;
use support::{eventually, TestDaemon};

use support::istio::SERVER_NAME;
const WEB: &str = "spiffe://cluster.local/ns/web/sa/web";
const DB: &str = "spiffe://cluster.local/ns/db/sa/db";

fn yaml(kube: &KubeStandIn, port: u16, extra: &str) -> String {
    format!(
        "kubernetes: {{ kubeconfig: {}, lease_duration: 3s }}\nbundle: {{ refresh_interval: 1s }}\ncertificates: {{ default_ttl: 1h, min_ttl: 10m, max_ttl: 2h }}\nistio_ca: {{ enabled: true, listen: 127.0.0.1:{port}, serving_dns_names: [{SERVER_NAME}]{extra} }}\n",
        kube.kubeconfig().display()
    )
}

/// Run `calls` through the Python client; one result per call.
async fn call(d: &TestDaemon, port: u16, calls: &Value) -> Vec<Value> {
    support::istio::create_certificates(port, &d.bundle_pem().await, calls).await
}

fn assert_refused(result: &Value, code: &str, says: &str) {
    assert_eq!(result["ok"], false, "{result}");
    assert_eq!(result["code"], code, "{result}");
    let message = result["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{says:?} not in {message:?}");
}

fn assert_issued_to(result: &Value, spiffe_id: &str, bundle: &str) {
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["leaf_uris"], json!([spiffe_id]), "{result}");
    assert_eq!(
        result["key_matches"], true,
        "the leaf carries the CSR's key"
    );
    let chain = result["chain"].as_array().expect("chain");
    assert_eq!(
        chain.last().and_then(Value::as_str),
        Some(bundle),
        "the chain ends with the bundle's anchors"
    );
    let leaf_and_intermediates = support::istio::leaf_and_intermediates(result);
    support::verify(
        &leaf_and_intermediates,
        bundle,
        webpki::KeyUsage::client_auth(),
    )
    .expect("rustls-webpki verifies the chain against the bundle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_and_ztunnel_get_exactly_what_their_tokens_allow() {
    let kube = KubeStandIn::start().await;
    for ns in ["web", "db", "istio-system"] {
        kube.create_namespace(ns);
    }
    kube.put_pod("web", "web-1", "web", Some("node-1"));
    kube.put_pod("db", "db-1", "db", Some("node-2"));
    kube.put_pod("istio-system", "ztunnel-a", "ztunnel", Some("node-1"));
    kube.put_pod("web", "gone", "web", Some("node-1"));
    let web = kube.bound_token("web", "web-1", &["istio-ca"], 3600);
    let ztunnel = kube.bound_token("istio-system", "ztunnel-a", &["istio-ca"], 3600);
    let for_vault = kube.bound_token("web", "web-1", &["vault"], 3600);
    let expired = kube.bound_token("web", "web-1", &["istio-ca"], -10);
    let of_gone_pod = kube.bound_token("web", "gone", &["istio-ca"], 3600);
    assert!(kube.delete("", "pods", "web", "gone"));

    let port = support::process::free_port();
    let d = TestDaemon::start(&yaml(&kube, port, "")).await;
    let bundle = d.bundle_pem().await;
    let on_behalf = |id: &str| json!({ "ImpersonatedIdentity": id });
    let results = call(
        &d,
        port,
        &json!([
            // 0: istio-agent: RSA, its cluster named in the header.
            { "token": web, "uri": WEB, "key": "rsa", "clusterid": "Kubernetes", "validity": 3600 },
            // 1: ztunnel for a pod on its node.
            { "token": ztunnel, "uri": WEB, "metadata": on_behalf(WEB) },
            // 2: ztunnel for a pod on another node.
            { "token": ztunnel, "uri": DB, "metadata": on_behalf(DB) },
            // 3: ztunnel for an identity no pod runs as.
            { "token": ztunnel, "uri": "spiffe://cluster.local/ns/web/sa/ghost", "metadata": on_behalf("spiffe://cluster.local/ns/web/sa/ghost") },
            // 4: a sidecar is no node agent.
            { "token": web, "uri": DB, "metadata": on_behalf(DB) },
            // 5: a token for another audience.
            { "token": for_vault, "uri": WEB },
            // 6: another cluster.
            { "token": web, "uri": WEB, "clusterid": "Remote" },
            // 7: a CSR naming someone else.
            { "token": web, "uri": DB },
            // 8: an expired token.
            { "token": expired, "uri": WEB },
            // 9: a token whose pod was deleted.
            { "token": of_gone_pod, "uri": WEB },
            // 10: ten years asked: max_ttl given.
            { "token": web, "uri": WEB, "validity": 315_360_000 },
            // 11: no credential.
            { "uri": WEB },
        ]),
    )
    .await;
    assert_issued_to(&results[0], WEB, &bundle);
    let seconds = results[0]["leaf_seconds"].as_i64().expect("seconds");
    assert!(
        (3600..=3660).contains(&seconds),
        "validity_duration honoured: {seconds}"
    );
    assert_issued_to(&results[1], WEB, &bundle);
    assert_refused(&results[2], "PERMISSION_DENIED", "node-1");
    assert_refused(&results[3], "PERMISSION_DENIED", "no pod running as");
    assert_refused(&results[4], "PERMISSION_DENIED", "trusted_node_accounts");
    assert_refused(&results[5], "UNAUTHENTICATED", "audience");
    assert_refused(&results[6], "UNAUTHENTICATED", "Remote");
    assert_refused(&results[7], "PERMISSION_DENIED", "");
    assert_refused(&results[8], "UNAUTHENTICATED", "expired");
    assert_refused(&results[9], "UNAUTHENTICATED", "not found");
    assert_issued_to(&results[10], WEB, &bundle);
    let seconds = results[10]["leaf_seconds"].as_i64().expect("seconds");
    assert!(seconds <= 7200 + 60, "capped at max_ttl: {seconds}");
    assert_refused(&results[11], "UNAUTHENTICATED", "no credential");

    let metrics = d.metrics().await;
    for (reason, count) in [("not_on_node", 2), ("untrusted_caller", 1)] {
        let line =
            format!("meshca_istio_impersonations_denied_total{{reason=\"{reason}\"}} {count}");
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
    assert!(
        metrics.contains("meshca_certificates_issued_total{frontend=\"istio\",provider=\"tresor\",result=\"success\"} 3"),
        "{metrics}"
    );
}

/// Whether a certificate request with `token` is refused on the signing
/// API and on Istio's service.
async fn refused_on_both(d: &TestDaemon, port: u16, token: &str) -> (bool, bool) {
    let (status, _, _) = d
        .post(
            &d.client().await,
            Some(token),
            &json!({ "csr": support::named_csr("web", "web") }),
        )
        .await;
    let istio = call(d, port, &json!([{ "token": token, "uri": WEB }])).await;
    (status == 401, istio[0]["code"] == "UNAUTHENTICATED")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_whose_pod_is_deleted_is_refused_everywhere_within_the_review_cache_ttl() {
    let kube = KubeStandIn::start().await;
    kube.create_namespace("web");
    kube.put_pod("web", "web-1", "web", Some("node-1"));
    let token = kube.bound_token("web", "web-1", &["meshca", "istio-ca"], 3600);
    let port = support::process::free_port();
    let d = TestDaemon::start(&format!(
        "{}auth: {{ kubernetes: {{ cache_ttl: 3s }} }}\n",
        yaml(&kube, port, "")
    ))
    .await;
    // Accepted, and now in the one review cache both frontends share.
    assert_eq!(refused_on_both(&d, port, &token).await, (false, false));

    assert!(kube.delete("", "pods", "web", "web-1"));
    let deleted = std::time::Instant::now();
    loop {
        let refused = refused_on_both(&d, port, &token).await;
        if refused == (true, true) {
            break;
        }
        assert!(
            deleted.elapsed() < Duration::from_secs(5),
            "still accepted {:?} after the pod was deleted (cache_ttl 3s): {refused:?}",
            deleted.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meshca_client_certificate_authenticates_without_a_cluster() {
    let port = support::process::free_port();
    let d = TestDaemon::start(&format!(
        "istio_ca: {{ enabled: true, listen: 127.0.0.1:{port}, serving_dns_names: [{SERVER_NAME}] }}\n"
    ))
    .await;
    let bundle = d.bundle_pem().await;
    let key = support::key();
    let (status, _, issued) = d
        .post(
            &d.client().await,
            Some(&d.token("web", "web")),
            &json!({ "csr": support::csr(&key) }),
        )
        .await;
    assert_eq!(status, 200, "{issued}");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, issued["certificate_chain"].as_str().expect("chain")).expect("cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("key");
    let results = call(
        &d,
        port,
        &json!([
            { "cert": cert, "key_file": key_file, "uri": WEB },
            { "cert": cert, "key_file": key_file, "uri": WEB, "metadata": { "ImpersonatedIdentity": DB } },
        ]),
    )
    .await;
    assert_issued_to(&results[0], WEB, &bundle);
    assert_refused(&results[1], "PERMISSION_DENIED", "trusted_node_accounts");
}

/// The ConfigMap `root-cert.pem` of `ns`, as stored.
fn root_cert(kube: &KubeStandIn, ns: &str) -> Option<String> {
    kube.get("", "configmaps", ns, "istio-ca-root-cert")?
        .pointer("/data/root-cert.pem")?
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_ca_root_cert_reaches_selected_namespaces_and_is_repaired() {
    let kube = KubeStandIn::start().await;
    for (ns, mesh) in [("web", true), ("db", true), ("kube-system", false)] {
        kube.put(
            "",
            "namespaces",
            json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns, "labels": { "mesh": if mesh { "on" } else { "off" } } } }),
        );
    }
    let port = support::process::free_port();
    let d = TestDaemon::start(&yaml(
        &kube,
        port,
        ", root_cert_namespaces: { matchLabels: { mesh: 'on' } }",
    ))
    .await;
    let bundle = d.bundle_pem().await;
    for ns in ["web", "db"] {
        let held = eventually(ns, Duration::from_secs(10), || root_cert(&kube, ns)).await;
        assert_eq!(held, bundle);
    }
    assert_eq!(root_cert(&kube, "kube-system"), None, "not selected");

    kube.put(
        "",
        "namespaces",
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "shop", "labels": { "mesh": "on" } } }),
    );
    let started = std::time::Instant::now();
    let held = eventually("the new namespace", Duration::from_secs(10), || {
        root_cert(&kube, "shop")
    })
    .await;
    assert_eq!(held, bundle);
    eprintln!(
        "istio-ca-root-cert in a new namespace after {:?}",
        started.elapsed()
    );

    let mut edited = kube
        .get("", "configmaps", "web", "istio-ca-root-cert")
        .expect("configmap");
    edited["data"]["root-cert.pem"] = json!("edited by hand");
    kube.put("", "configmaps", edited);
    eventually("the repair", Duration::from_secs(10), || {
        (root_cert(&kube, "web").as_deref() == Some(bundle.as_str())).then_some(())
    })
    .await;
    assert!(kube.delete("", "configmaps", "db", "istio-ca-root-cert"));
    eventually("the re-creation", Duration::from_secs(10), || {
        (root_cert(&kube, "db").as_deref() == Some(bundle.as_str())).then_some(())
    })
    .await;
}

/// istio-agent renewing every second through a Tresor → Vault rollout: every
/// chain it gets verifies against the istio-ca-root-cert its namespace
/// holds at that moment, and the ConfigMap holds both roots between the
/// switch and the retirement of the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_tresor_to_vault_rollout_every_chain_istio_gets_is_trusted_by_istio_ca_root_cert()
{
    let bao = support::openbao::OpenBao::dev().await;
    // Leaves of seconds: Vault's backdate must be shorter still.
    bao.script("setup-pki.sh", &[("NOT_BEFORE_DURATION", "1s")]);
    let kube = std::sync::Arc::new(KubeStandIn::start().await);
    kube.create_namespace("web");
    kube.put_pod("web", "web-1", "web", Some("node-1"));
    let token = kube.bound_token("web", "web-1", &["istio-ca"], 3600);
    let port = support::process::free_port();
    // Dialled as localhost: the Vault role of the tests allows no other name.
    let common = format!(
        "certificates: {{ default_ttl: 8s, min_ttl: 1s, max_ttl: 1h }}\nbundle: {{ refresh_interval: 1s }}\nrotation: {{ propagation_delay: 1s }}\nkubernetes: {{ kubeconfig: {}, lease_duration: 3s }}\nistio_ca: {{ enabled: true, listen: '127.0.0.1:{port}', serving_dns_names: [localhost] }}\n",
        kube.kubeconfig().display()
    );
    let d = TestDaemon::start_from_file(&common).await;
    let tresor_root = d.bundle_pem().await;
    eventually("istio-ca-root-cert", Duration::from_secs(10), || {
        root_cert(&kube, "web")
    })
    .await;

    let stop = tokio_util::sync::CancellationToken::new();
    let renewals = {
        let (stop, kube, bundle_path) = (stop.clone(), kube.clone(), d.bundle_path());
        tokio::spawn(async move {
            let (mut chains, mut untrusted, mut both_roots_seen) = (0, Vec::new(), false);
            while !stop.is_cancelled() {
                let served = std::fs::read_to_string(&bundle_path).expect("bundle");
                let calls = json!([{ "token": token, "uri": WEB, "validity": 8 }]);
                let result =
                    support::istio::create_certificates_as(port, "localhost", &served, &calls)
                        .await
                        .remove(0);
                let held = root_cert(&kube, "web").expect("istio-ca-root-cert");
                both_roots_seen |= support::certs(&held).len() == 2;
                if result["ok"] == true {
                    let leaf_and_intermediates = support::istio::leaf_and_intermediates(&result);
                    chains += 1;
                    if support::verify(
                        &leaf_and_intermediates,
                        &held,
                        webpki::KeyUsage::client_auth(),
                    )
                    .is_err()
                    {
                        untrusted.push(leaf_and_intermediates);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            (chains, untrusted, both_roots_seen)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    d.rewrite_config(&format!(
        "{common}{}",
        bao.provider_yaml(
            &format!("{{ token_file: {} }}", bao.meshca_token_file().display()),
            "    anchors_refresh: 1s\n"
        )
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let r = d.rotation().await;
        if r["stage"] == "steady" && r["generation"] == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rollout did not finish: {r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A few renewals under Vault alone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let (chains, untrusted, both_roots_seen) = renewals.await.expect("renewals");
    eprintln!("{chains} chains during the rollout, each trusted by istio-ca-root-cert");
    assert!(chains >= 10, "istio-agent renewed only {chains} times");
    assert!(
        untrusted.is_empty(),
        "{} of {chains} chains were not trusted by istio-ca-root-cert at the time",
        untrusted.len()
    );
    assert!(
        both_roots_seen,
        "istio-ca-root-cert never held the old and new roots together"
    );
    let vault_root = bao.cli(&["read", "-field=certificate", "pki/issuer/default"]);
    let held = root_cert(&kube, "web").expect("istio-ca-root-cert");
    assert_eq!(support::certs(&held), support::certs(&vault_root));
    assert!(!held.contains(tresor_root.trim()), "Tresor's root retired");
}

/// istiod's `kubernetes.io/tls` Secret, decoded: `tls.crt`, `tls.key`,
/// `ca.crt`.
fn istiod_secret(kube: &KubeStandIn) -> Option<(String, String, String)> {
    use base64::Engine;
    let secret = kube.get("", "secrets", "istio-system", "istiod-tls")?;
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let field = |k: &str| {
        let b64 = secret["data"][k].as_str().expect("data key");
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64"),
        )
        .expect("PEM")
    };
    Some((field("tls.crt"), field("tls.key"), field("ca.crt")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiods_serving_secret_is_kept_under_the_mesh_root() {
    let kube = KubeStandIn::start().await;
    kube.create_namespace("istio-system");
    let port = support::process::free_port();
    let d = TestDaemon::start(&yaml(&kube, port, ", istiod_certificate: {}")).await;
    let bundle = d.bundle_pem().await;
    let (chain, key, ca) = eventually("istiod-tls", Duration::from_secs(10), || {
        istiod_secret(&kube)
    })
    .await;
    assert_eq!(ca, bundle);
    support::verify(&chain, &bundle, webpki::KeyUsage::server_auth())
        .expect("istiod's chain verifies under the mesh root for serving");
    let leaf = support::certs(&chain).remove(0);
    let mut names = support::san_names(&leaf);
    names.sort();
    assert_eq!(
        names,
        [
            "DNS:istiod.istio-system.cluster.local",
            "DNS:istiod.istio-system.svc",
            "URI:spiffe://cluster.local/ns/istio-system/sa/istiod",
        ]
    );
    let key = rcgen::KeyPair::from_pem(&key).expect("tls.key");
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).expect("leaf");
    assert_eq!(
        parsed.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw(),
        "tls.key is the leaf's key"
    );

    assert!(kube.delete("", "secrets", "istio-system", "istiod-tls"));
    let (again, _, _) = eventually("istiod-tls again", Duration::from_secs(10), || {
        istiod_secret(&kube)
    })
    .await;
    assert_ne!(again, chain, "a new certificate, with a new key");
}
