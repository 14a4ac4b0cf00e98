//! Kubernetes pod certificates. No kubelet or kube-apiserver can run here:
//! the repository's Kubernetes API stand-in serves PodCertificateRequests
//! (with their status subresource) and ClusterTrustBundles, and each test
//! plays kubelet, creating requests with real stub CSRs made by the openssl
//! CLI, exactly as kubelet leaves them (an empty subject, nothing else).

use meshca_test_support as support;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use support::kube::{KubeStandIn, Options};
use support::{certs, eventually, TestDaemon};
use x509_parser::prelude::{FromDer, X509Certificate};

const SIGNER: &str = "meshca.io/workload";
const CTB: &str = "meshca.io:workload:trust-bundle";
const GROUP: &str = "certificates.k8s.io";
const PCRS: &str = "podcertificaterequests";

fn yaml(kube: &KubeStandIn, extra: &str) -> String {
    yaml_with(kube, "48h", extra)
}

fn yaml_with(kube: &KubeStandIn, max_ttl: &str, extra: &str) -> String {
    format!(
        "kubernetes: {{ kubeconfig: {}, lease_duration: 3s }}\nbundle: {{ refresh_interval: 1s }}\npod_certificates: {{ enabled: true }}\ncertificates: {{ default_ttl: 1h, max_ttl: {max_ttl} }}\n{extra}",
        kube.kubeconfig().display()
    )
}

/// A PodCertificateRequest as kubelet creates it, asking for a day.
fn pcr(namespace: &str, name: &str, signer: &str, csr_der: &[u8]) -> Value {
    pcr_for(namespace, name, signer, csr_der, Some(86_400))
}

/// A PodCertificateRequest asking for `max` seconds (the API server's
/// default when `None`).
fn pcr_for(namespace: &str, name: &str, signer: &str, csr_der: &[u8], max: Option<i64>) -> Value {
    KubeStandIn::pod_certificate_request(namespace, name, signer, csr_der, max)
}

fn create(kube: &KubeStandIn, namespace: &str, name: &str, key_type: &str) {
    let (csr, _) = support::kubelet_stub_csr(key_type);
    kube.put(GROUP, PCRS, pcr(namespace, name, SIGNER, &csr));
}

/// The one final condition of a request, once it has one.
fn answered(kube: &KubeStandIn, namespace: &str, name: &str) -> Option<Value> {
    let object = kube.get(GROUP, PCRS, namespace, name)?;
    object["status"]["conditions"].as_array()?.first()?;
    Some(object)
}

async fn answer(kube: &KubeStandIn, namespace: &str, name: &str) -> Value {
    eventually(
        &format!("an answer to {name}"),
        Duration::from_secs(20),
        || answered(kube, namespace, name),
    )
    .await
}

fn condition(object: &Value) -> (String, String, String) {
    let conditions = object["status"]["conditions"]
        .as_array()
        .expect("conditions");
    assert_eq!(conditions.len(), 1, "exactly one condition: {object}");
    let c = &conditions[0];
    assert_eq!(c["status"], "True");
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    (s("type"), s("reason"), s("message"))
}

fn ctb_pem(kube: &KubeStandIn) -> Option<String> {
    let ctb = kube.get(GROUP, "clustertrustbundles", "", CTB)?;
    assert_eq!(ctb["spec"]["signerName"], SIGNER, "linked to the signer");
    ctb["spec"]["trustBundle"].as_str().map(str::to_owned)
}

fn secret_pem(kube: &KubeStandIn) -> Option<String> {
    let secret = kube.get("", "secrets", "osm-system", "osm-ca-bundle")?;
    let b64 = secret["data"]["ca.crt"].as_str()?;
    String::from_utf8(STANDARD.decode(b64).ok()?).ok()
}

fn rfc3339_seconds(v: &Value) -> i64 {
    time::OffsetDateTime::parse(
        v.as_str().expect("a time"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339")
    .unix_timestamp()
}

/// Everything an issued answer must hold, checked independently of meshca.
fn check_issued(object: &Value, csr_der: &[u8], bundle_pem: &str) {
    let (kind, _, _) = condition(object);
    assert_eq!(kind, "Issued", "{object}");
    let status = &object["status"];
    let chain = status["certificateChain"].as_str().expect("chain");
    support::verify(chain, bundle_pem, webpki::KeyUsage::client_auth())
        .expect("the chain verifies against the ClusterTrustBundle");
    let leaf_der = certs(chain).remove(0);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).expect("leaf");
    let names = support::san_names(&leaf_der);
    assert_eq!(
        names,
        [
            "DNS:web.shop.cluster.local",
            "URI:spiffe://cluster.local/ns/shop/sa/web"
        ]
    );
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
        .expect("csr");
    assert_eq!(
        leaf.public_key().raw,
        csr.certification_request_info.subject_pki.raw,
        "the key is kubelet's"
    );
    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    assert_eq!(rfc3339_seconds(&status["notBefore"]), not_before);
    assert_eq!(rfc3339_seconds(&status["notAfter"]), not_after);
    assert!(
        not_after - not_before <= 86_400,
        "within maxExpirationSeconds, backdate included"
    );
    assert!(not_after - not_before >= 3600, "at least an hour");
    let refresh = rfc3339_seconds(&status["beginRefreshAt"]);
    assert!(
        refresh > not_before + (not_after - not_before) / 2 && refresh <= not_after - 600,
        "beginRefreshAt follows the agent's schedule, ten minutes before the end: {refresh} in ({not_before}, {not_after})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_type_kubelet_offers_is_issued_or_denied_by_name() {
    let kube = KubeStandIn::start().await;
    kube.create_namespace("shop");
    let d = TestDaemon::start(&yaml(&kube, "")).await;
    let mut csrs = Vec::new();
    for key_type in [
        "ECDSAP256",
        "ECDSAP384",
        "ECDSAP521",
        "ED25519",
        "RSA3072",
        "RSA4096",
    ] {
        let (csr, _) = support::kubelet_stub_csr(key_type);
        let name = format!("web-{}", key_type.to_lowercase());
        kube.put(GROUP, PCRS, pcr("shop", &name, SIGNER, &csr));
        csrs.push((key_type, name, csr));
    }
    let bundle = eventually("the ClusterTrustBundle", Duration::from_secs(10), || {
        ctb_pem(&kube)
    })
    .await;
    assert_eq!(
        certs(&bundle),
        certs(&d.bundle_pem().await),
        "the CTB is GET /v1/bundle"
    );
    assert_eq!(Some(bundle.clone()), secret_pem(&kube), "and osm-ca-bundle");
    for (key_type, name, csr) in &csrs {
        let object = answer(&kube, "shop", name).await;
        if *key_type == "ECDSAP521" {
            let (kind, reason, message) = condition(&object);
            assert_eq!(
                (kind.as_str(), reason.as_str()),
                ("Denied", "UnsupportedKeyType")
            );
            assert!(
                message.contains("ECDSAP256") && message.contains("RSA4096"),
                "{message}"
            );
            assert!(object["status"]["certificateChain"].is_null());
        } else {
            check_issued(&object, csr, &bundle);
        }
    }
    let metrics = d.metrics().await;
    assert!(
        metrics.contains(r#"meshca_certificates_issued_total{frontend="pod_certificate",provider="tresor",result="success"} 5"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"meshca_certificates_issued_total{frontend="pod_certificate",provider="tresor",result="invalid_csr"} 1"#),
        "a key type meshca does not sign is the CSR's fault, as on the signing API: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_explicit_and_other_signers_are_left_alone() {
    let kube = KubeStandIn::start().await;
    kube.create_namespace("shop");
    let _d = TestDaemon::start(&yaml(&kube, "")).await;
    let (csr, _) = support::kubelet_stub_csr("ECDSAP256");

    kube.put(
        GROUP,
        PCRS,
        pcr("shop", "theirs", "example.com/other", &csr),
    );
    let mut annotated = pcr("shop", "annotated", SIGNER, &csr);
    annotated["spec"]["unverifiedUserAnnotations"] = json!({ "example.com/role": "admin" });
    kube.put(GROUP, PCRS, annotated);
    // The API server refuses a stub CSR that does not parse; one that
    // parses and verifies but asks for a CA reaches meshca.
    let mut garbage = pcr("shop", "garbage", SIGNER, &csr);
    garbage["spec"]["stubPKCS10Request"] = json!(STANDARD.encode(b"not a certificate request"));
    let (code, reason, _) = kube.try_put(GROUP, PCRS, garbage).expect_err("refused");
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    kube.put(
        GROUP,
        PCRS,
        pcr("shop", "ca", SIGNER, &support::ca_stub_csr()),
    );
    // Deleted right away, as when the pod goes before it is answered.
    create(&kube, "shop", "gone", "ECDSAP256");
    kube.delete(GROUP, PCRS, "shop", "gone");
    create(&kube, "shop", "after", "ECDSAP256");

    let (kind, reason, message) = condition(&answer(&kube, "shop", "annotated").await);
    assert_eq!(
        (kind.as_str(), reason.as_str()),
        ("Denied", "UnsupportedAnnotation")
    );
    assert!(message.contains("example.com/role"), "{message}");
    let (kind, reason, message) = condition(&answer(&kube, "shop", "ca").await);
    assert_eq!(
        (kind.as_str(), reason.as_str()),
        ("Failed", "InvalidStubCSR"),
        "{message}"
    );
    let (kind, ..) = condition(&answer(&kube, "shop", "after").await);
    assert_eq!(kind, "Issued", "a deleted request stops nothing");

    let theirs = kube.get(GROUP, PCRS, "shop", "theirs").expect("kept");
    assert!(
        theirs["status"].is_null(),
        "another signer's request is untouched: {theirs}"
    );
    assert!(
        kube.requests()
            .iter()
            .all(|r| !r.contains("podcertificaterequests/theirs")),
        "meshca never even asked for it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_answer_each_request_once() {
    let kube = KubeStandIn::start().await;
    kube.create_namespace("shop");
    let _a = TestDaemon::start(&yaml(&kube, "")).await;
    let _b = TestDaemon::start(&yaml(&kube, "")).await;
    let names: Vec<String> = (0..20).map(|i| format!("web-{i}")).collect();
    for name in &names {
        create(&kube, "shop", name, "ECDSAP256");
    }
    for name in &names {
        let (kind, ..) = condition(&answer(&kube, "shop", name).await);
        assert_eq!(kind, "Issued");
    }
    // Time for a second writer, if there were one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let requests = kube.requests();
    for name in &names {
        let writes = requests
            .iter()
            .filter(|r| {
                r.starts_with("PUT")
                    && r.ends_with(&format!("/podcertificaterequests/{name}/status"))
            })
            .count();
        assert_eq!(writes, 1, "{name} answered {writes} times");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_trust_bundle_follows_a_tresor_root_rotation() {
    let kube = KubeStandIn::start().await;
    kube.create_namespace("shop");
    let roots = tempfile::tempdir().expect("tempdir");
    let a = support::openssl_root(roots.path(), "a");
    let b = support::openssl_root(roots.path(), "b");
    let with_root = |root: &(std::path::PathBuf, std::path::PathBuf)| {
        yaml(
            &kube,
            &format!(
                "rotation: {{ propagation_delay: 1s }}\nprovider:\n  kind: tresor\n  tresor:\n    root_cert_file: {}\n    root_key_file: {}\n",
                root.0.display(),
                root.1.display()
            ),
        )
    };
    let root_b = certs(&std::fs::read_to_string(&b.0).expect("b")).remove(0);
    let d = TestDaemon::start_from_file(&with_root(&a)).await;
    let first = eventually("the ClusterTrustBundle", Duration::from_secs(10), || {
        ctb_pem(&kube)
    })
    .await;
    assert!(!certs(&first).contains(&root_b));

    d.rewrite_config(&with_root(&b));
    let both = eventually(
        "root B in the ClusterTrustBundle",
        Duration::from_secs(20),
        || ctb_pem(&kube).filter(|p| certs(p).contains(&root_b)),
    )
    .await;
    assert_eq!(certs(&both).len(), 2, "A stays while its certificates live");
    // Always the same as the Secret and the API, once the publisher caught up.
    eventually(
        "the CTB equal to osm-ca-bundle",
        Duration::from_secs(10),
        || (ctb_pem(&kube) == secret_pem(&kube)).then_some(()),
    )
    .await;
    // Once the signer has switched to B, new pod certificates come from B.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = d.get_status("/v1/rotation").await;
        let r: Value = serde_json::from_str(&body).expect("json");
        if r["generation"] == 1 && r["stage"] != "distribute" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the signer never switched: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    create(&kube, "shop", "under-b", "ECDSAP256");
    let object = answer(&kube, "shop", "under-b").await;
    let chain = object["status"]["certificateChain"]
        .as_str()
        .expect("chain")
        .to_owned();
    support::verify(
        &chain,
        &meshca_provider::pem::encode_certificates([&root_b]),
        webpki::KeyUsage::client_auth(),
    )
    .expect("signed under the new root");
    assert_eq!(
        certs(&d.bundle_pem().await),
        certs(&ctb_pem(&kube).expect("ctb"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_pod_certificates_runs_without_the_signer() {
    let kube = KubeStandIn::start_with(Options {
        pod_certificates: false,
        ..Options::default()
    })
    .await;
    let d = TestDaemon::start(&yaml(&kube, "")).await;
    eventually("osm-ca-bundle", Duration::from_secs(10), || {
        secret_pem(&kube)
    })
    .await;
    let (status, _) = d.get_status("/v1/bundle").await;
    assert_eq!(status, 200, "the daemon serves");
    let asked = kube
        .requests()
        .iter()
        .filter(|r| r.contains("podcertificaterequests") || r.contains("clustertrustbundles"))
        .count();
    assert_eq!(asked, 0, "no watch spins on an API the cluster lacks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cert_manager_a_request_fails_with_the_reason_and_config_check_warns() {
    let kube = KubeStandIn::start().await;
    kube.create_namespace("shop");
    let _issuer = kube.start_ca_issuer("Issuer", "osm-ca");
    let config = yaml(
        &kube,
        "provider:\n  kind: cert-manager\n  cert_manager:\n    issuer_name: osm-ca\n    issuer_kind: Issuer\n",
    );
    let _d = TestDaemon::start(&config).await;
    create(&kube, "shop", "web-1", "ECDSAP256");
    let (kind, reason, message) = condition(&answer(&kube, "shop", "web-1").await);
    assert_eq!(
        (kind.as_str(), reason.as_str()),
        ("Failed", "ProviderCannotSign")
    );
    assert!(
        message.contains("signs only the names a CSR carries"),
        "the provider's own capability, not a special case: {message}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meshca.yaml");
    std::fs::write(&path, support::config_yaml(dir.path(), &config)).expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .expect("meshca");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("warning: pod_certificates"), "{stdout}");
}

/// Vault's `pki/sign` against a real OpenBao server, set up with the
/// example scripts; the cluster is the stand-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_signs_pod_certificates() {
    let kube = KubeStandIn::start().await;
    kube.create_namespace("shop");
    let bao = support::openbao::OpenBao::dev().await;
    bao.script("setup-pki.sh", &[]);
    let token_file = bao.meshca_token_file();
    let provider = bao.provider_yaml(&format!("{{ token_file: {} }}", token_file.display()), "");
    let _d = TestDaemon::start(&yaml(&kube, &provider)).await;
    let bundle = eventually("the ClusterTrustBundle", Duration::from_secs(10), || {
        ctb_pem(&kube)
    })
    .await;
    for key_type in ["ECDSAP256", "ED25519", "RSA3072"] {
        let (csr, _) = support::kubelet_stub_csr(key_type);
        let name = format!("vault-{}", key_type.to_lowercase());
        kube.put(GROUP, PCRS, pcr("shop", &name, SIGNER, &csr));
        check_issued(&answer(&kube, "shop", &name).await, &csr, &bundle);
    }
}

/// The maxExpirationSeconds a pod may ask for: an hour, two, the API
/// server's default (omitted: a day), and the most it allows (91 days).
const ASKED: [Option<i64>; 4] = [Some(3600), Some(7200), None, Some(7_862_400)];

/// Ask for each of [`ASKED`] with `certificates.max_ttl` at each of
/// `max_ttls` (seconds): every answer is Issued (so the enforcing stand-in
/// stored it), and its whole window, NotBefore to NotAfter, is the smaller
/// of the two, give or take `slack` seconds less.
async fn every_lifetime_fits(provider: &str, max_ttls: &[i64], slack: i64) {
    for max_ttl in max_ttls {
        let kube = KubeStandIn::start().await;
        kube.create_namespace("shop");
        let d = TestDaemon::start(&yaml_with(&kube, &format!("{max_ttl}s"), provider)).await;
        let bundle = eventually("the ClusterTrustBundle", Duration::from_secs(10), || {
            ctb_pem(&kube)
        })
        .await;
        for (i, asked) in ASKED.iter().enumerate() {
            let (csr, _) = support::kubelet_stub_csr("ECDSAP256");
            let name = format!("web-{i}");
            kube.put(GROUP, PCRS, pcr_for("shop", &name, SIGNER, &csr, *asked));
            let object = answer(&kube, "shop", &name).await;
            let (kind, reason, message) = condition(&object);
            assert_eq!(
                kind, "Issued",
                "asked {asked:?}, max_ttl {max_ttl}: {reason}: {message}"
            );
            support::verify(
                object["status"]["certificateChain"]
                    .as_str()
                    .expect("chain"),
                &bundle,
                webpki::KeyUsage::client_auth(),
            )
            .expect("chains to the bundle");
            let window = rfc3339_seconds(&object["status"]["notAfter"])
                - rfc3339_seconds(&object["status"]["notBefore"]);
            let want = asked.unwrap_or(86_400).min(*max_ttl);
            assert!(
                window <= want && window >= want - slack,
                "asked {asked:?}, max_ttl {max_ttl}: a {window}s window, want {want}s"
            );
        }
        let metrics = d.metrics().await;
        assert!(
            !metrics.contains("meshca_kubernetes_writes_refused_total{"),
            "nothing refused: {metrics}"
        );
    }
}

/// `certificates.max_ttl` below every request but the hour, between a day
/// and 91 days, and above them all.
const MAX_TTLS: [i64; 3] = [5400, 172_800, 8_640_000];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tresor_answers_every_lifetime_within_max_expiration_seconds_backdate_included() {
    every_lifetime_fits("", &MAX_TTLS, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_answers_every_lifetime_within_max_expiration_seconds_backdate_included() {
    let bao = support::openbao::OpenBao::dev().await;
    // The role allows the longest; Vault backdates by its default 30 s.
    bao.script("setup-pki.sh", &[("MAX_TTL", "2400h")]);
    let token_file = bao.meshca_token_file();
    let provider = bao.provider_yaml(&format!("{{ token_file: {} }}", token_file.display()), "");
    every_lifetime_fits(&provider, &MAX_TTLS, 2).await;
}

/// The PUTs to one request's status so far.
fn status_writes(kube: &KubeStandIn, name: &str) -> usize {
    kube.requests()
        .iter()
        .filter(|r| {
            r.starts_with("PUT") && r.ends_with(&format!("/podcertificaterequests/{name}/status"))
        })
        .count()
}

/// The API server's clock runs ten minutes ahead, so every Issued status
/// meshca writes has a NotBefore "more than five minutes" off and is
/// refused (422): meshca says so in a Failed answer, counts it, and never
/// signs that request again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_api_server_refuses_becomes_failed_and_is_never_signed_again() {
    let kube = KubeStandIn::start().await;
    kube.create_namespace("shop");
    kube.set_clock_offset(600);
    let d = TestDaemon::start(&yaml(&kube, "")).await;
    create(&kube, "shop", "web-1", "ECDSAP256");
    let (kind, reason, message) = condition(&answer(&kube, "shop", "web-1").await);
    assert_eq!(
        (kind.as_str(), reason.as_str()),
        ("Failed", "AnswerRefused")
    );
    assert!(
        message.contains("422") && message.contains("within 5 minutes"),
        "{message}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        status_writes(&kube, "web-1"),
        2,
        "the refused Issued, then Failed"
    );
    let metrics = d.metrics().await;
    assert!(
        metrics.contains(r#"meshca_kubernetes_writes_refused_total{resource="podcertificaterequests/status",code="422"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"meshca_certificates_issued_total{frontend="pod_certificate",provider="tresor",result="success"} 1"#),
        "signed once, never again: {metrics}"
    );
}

/// meshca may not write statuses at all (RBAC without
/// `podcertificaterequests/status`): it tries the answer and a Failed one,
/// then gives the request up instead of signing it again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_status_write_is_given_up_not_retried_in_a_loop() {
    let kube = KubeStandIn::start().await;
    kube.create_namespace("shop");
    kube.forbid("PUT", "/status");
    let d = TestDaemon::start(&yaml(&kube, "")).await;
    create(&kube, "shop", "web-1", "ECDSAP256");
    eventually("two attempts", Duration::from_secs(10), || {
        (status_writes(&kube, "web-1") >= 2).then_some(())
    })
    .await;
    // Leadership, the signer and the bundle change meanwhile; nothing
    // brings the request back.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(status_writes(&kube, "web-1"), 2, "no retry loop");
    assert!(answered(&kube, "shop", "web-1").is_none());
    let metrics = d.metrics().await;
    assert!(
        metrics.contains(r#"meshca_kubernetes_writes_refused_total{resource="podcertificaterequests/status",code="403"} 2"#),
        "{metrics}"
    );
}
