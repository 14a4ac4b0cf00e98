//! The cert-manager provider. No real cluster or cert-manager can run
//! here: the tests use the repository's Kubernetes API stand-in, whose CA
//! issuer plays cert-manager (approves, verifies the CSR, signs what it
//! names with its own CA, sets conditions) independently of meshca's code.

use meshca_test_support as support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::kube::{CaIssuer, IssuerBehaviour, KubeStandIn};
use support::{certs, csr, key, named_csr, verify, TestDaemon};

fn yaml(kube: &KubeStandIn, kind: &str, extra: &str) -> String {
    yaml_with_timeout(kube, kind, "3s", extra)
}

fn yaml_with_timeout(kube: &KubeStandIn, kind: &str, timeout: &str, extra: &str) -> String {
    format!(
        "kubernetes: {{ kubeconfig: {} }}\napi: {{ per_identity_burst: 1000, per_identity_per_second: 1000 }}\n\
         provider:\n  kind: cert-manager\n  cert_manager:\n    issuer_name: osm-ca\n    issuer_kind: {kind}\n    timeout: {timeout}\n{extra}",
        kube.kubeconfig().display()
    )
}

async fn setup(kind: &str) -> (KubeStandIn, CaIssuer, TestDaemon) {
    let kube = KubeStandIn::start().await;
    let issuer = kube.start_ca_issuer(kind, "osm-ca");
    let d = TestDaemon::start(&yaml(&kube, kind, "")).await;
    (kube, issuer, d)
}

async fn no_requests_left(kube: &KubeStandIn) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = kube
            .list("cert-manager.io", "certificaterequests", "osm-system")
            .len();
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{left} CertificateRequests left behind"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sign(d: &TestDaemon, pem: String) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let token = d.token("bookstore", "bookstore");
    d.post(
        &d.client().await,
        Some(&token),
        &json!({ "csr": pem, "ttl_seconds": 3600 }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_or_cluster_issuer_signs_through_certificate_requests_that_are_then_deleted() {
    for kind in ["Issuer", "ClusterIssuer"] {
        let (kube, issuer, d) = setup(kind).await;
        assert_eq!(
            certs(&d.bundle_pem().await),
            certs(&issuer.ca_pem),
            "{kind}: the bundle is the issuer's CA"
        );
        let (status, _, body) = sign(&d, named_csr("bookstore", "bookstore")).await;
        assert_eq!(status, 200, "{kind}: {body}");
        assert_eq!(body["identity"], "bookstore.bookstore.cluster.local");
        verify(
            body["certificate_chain"].as_str().expect("chain"),
            &issuer.ca_pem,
            webpki::KeyUsage::server_auth(),
        )
        .expect("chains to the issuer's CA");
        no_requests_left(&kube).await;

        let metrics = d.metrics().await;
        // Three requests: the start-up probe, the daemon's own serving
        // certificate and the workload's.
        assert!(
            metrics.contains("meshca_cert_manager_requests_created_total 3"),
            "{metrics}"
        );
        assert!(
            metrics.contains(r#"meshca_cert_manager_request_outcomes_total{reason="Issued"} 3"#),
            "{metrics}"
        );
        assert!(
            metrics.contains("meshca_cert_manager_time_to_ready_seconds_count 3"),
            "{metrics}"
        );

        // What meshca asked cert-manager for.
        let created: Vec<String> = kube
            .requests()
            .into_iter()
            .filter(|r| {
                r == "POST /apis/cert-manager.io/v1/namespaces/osm-system/certificaterequests"
            })
            .collect();
        assert!(
            created.len() >= 2,
            "the start-up probe and the workload's request"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_request_carries_the_issuer_ref_duration_usages_and_identity() {
    let (kube, issuer, d) = setup("Issuer").await;
    // Approved, then the issuer never signs.
    issuer.set(IssuerBehaviour::ApproveOnly);
    let signer = tokio::spawn({
        let d_url = d.url("/v1/certificates");
        let token = d.token("bookstore", "bookstore");
        let client = d.client().await;
        async move {
            client
                .post(d_url)
                .bearer_auth(token)
                .json(&json!({ "csr": named_csr("bookstore", "bookstore"), "ttl_seconds": 3600 }))
                .send()
                .await
        }
    });
    let cr = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(cr) = kube
                .list("cert-manager.io", "certificaterequests", "osm-system")
                .into_iter()
                .next()
            {
                break cr;
            }
            assert!(Instant::now() < deadline, "no CertificateRequest created");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert_eq!(
        cr["spec"]["issuerRef"],
        json!({ "name": "osm-ca", "kind": "Issuer", "group": "cert-manager.io" })
    );
    assert_eq!(cr["spec"]["duration"], "3600s");
    assert_eq!(cr["spec"]["isCA"], false);
    assert_eq!(
        cr["spec"]["usages"],
        json!([
            "digital signature",
            "key encipherment",
            "server auth",
            "client auth"
        ])
    );
    assert_eq!(
        cr["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "meshca"
    );
    assert_eq!(cr["metadata"]["labels"]["meshca.io/namespace"], "bookstore");
    assert_eq!(
        cr["metadata"]["annotations"]["meshca.io/identity"],
        "bookstore.bookstore.cluster.local"
    );
    let resp = signer.await.expect("join").expect("sent");
    assert_eq!(resp.status(), 503, "never answered → timeout");
    assert!(resp.headers().contains_key("retry-after"));
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "provider_unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("did not answer"),
        "{body}"
    );
    no_requests_left(&kube).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_failed_and_unacceptable_answers_are_errors_and_leave_nothing_behind() {
    let (kube, issuer, d) = setup("Issuer").await;
    for (behaviour, status, code, needle) in [
        (
            IssuerBehaviour::Deny,
            403,
            "provider_denied",
            "approver policy",
        ),
        (
            IssuerBehaviour::Fail,
            502,
            "provider_rejected",
            "CA key is unavailable",
        ),
        (
            IssuerBehaviour::WrongSan,
            502,
            "provider_rejected",
            "evil.example.com",
        ),
        (
            IssuerBehaviour::CaCert,
            502,
            "provider_rejected",
            "CA certificate",
        ),
    ] {
        issuer.set(behaviour);
        let (got, headers, body) = sign(&d, named_csr("bookstore", "bookstore")).await;
        assert_eq!(got, status, "{behaviour:?}: {body}");
        assert_eq!(body["error"]["code"], code, "{behaviour:?}");
        assert!(
            !headers.contains_key("retry-after"),
            "{behaviour:?}: repeating cannot help"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .expect("msg")
                .contains(needle),
            "{behaviour:?}: {body}"
        );
        no_requests_left(&kube).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_that_does_not_name_the_identity_is_refused_before_cert_manager_is_asked() {
    let (kube, _issuer, d) = setup("Issuer").await;
    let before = kube.requests().len();
    let (status, _, body) = sign(&d, csr(&key())).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_csr");
    assert!(body["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("/v1/identity"));
    assert!(!kube.requests()[before..]
        .iter()
        .any(|r| r.starts_with("POST /apis/cert-manager.io")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_renewals_succeed_and_leave_no_certificate_requests() {
    let kube = KubeStandIn::start().await;
    let issuer = kube.start_ca_issuer("Issuer", "osm-ca");
    let d = TestDaemon::start(&yaml_with_timeout(&kube, "Issuer", "20s", "")).await;
    let token = d.token("bookstore", "bookstore");
    let client = d.client().await;
    let url = d.url("/v1/certificates");
    let requests = (0..500).map(|_| {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        let body = json!({ "csr": named_csr("bookstore", "bookstore") });
        async move {
            let r = client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("sent");
            let status = r.status().as_u16();
            if status != 200 {
                eprintln!("{status}: {}", r.text().await.unwrap_or_default());
            }
            status
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        ok,
        500,
        "statuses: {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    assert!(issuer.answered() >= 500);
    no_requests_left(&kube).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_status_ca_anchors_come_from_the_configured_secret_or_startup_fails() {
    let kube = KubeStandIn::start().await;
    let issuer = kube.start_ca_issuer("Issuer", "osm-ca");
    issuer.set(IssuerBehaviour::SignWithoutCa);
    support::install_crypto_provider();
    let state = tempfile::tempdir().expect("tempdir");
    let config = meshca::Config::from_yaml(&support::config_yaml(
        state.path(),
        &yaml(&kube, "Issuer", ""),
    ))
    .expect("config");
    let err = meshca::start(config)
        .await
        .expect_err("no anchors anywhere");
    assert!(err.to_string().contains("ca_from"), "{err}");

    use base64::Engine;
    kube.put(
        "",
        "secrets",
        json!({
            "metadata": { "name": "osm-ca-root", "namespace": "osm-system" },
            "data": { "ca.crt": base64::engine::general_purpose::STANDARD.encode(&issuer.ca_pem) },
        }),
    );
    let d = TestDaemon::start(&yaml(
        &kube,
        "Issuer",
        "    ca_from: { secret: { name: osm-ca-root } }\n",
    ))
    .await;
    assert_eq!(certs(&d.bundle_pem().await), certs(&issuer.ca_pem));
    let (status, _, body) = sign(&d, named_csr("bookstore", "bookstore")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_issuer_applies_with_kubectl() {
    let kube = KubeStandIn::start().await;
    let file =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cert-manager/issuer.yaml");
    let kubeconfig = kube.kubeconfig();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(support::tool("kubectl"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["apply", "--validate=false", "-f"])
            .arg(&file)
            .output()
            .expect("kubectl")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let issuer = kube
        .get("cert-manager.io", "issuers", "osm-system", "osm-ca")
        .expect("osm-ca Issuer");
    assert_eq!(issuer["spec"]["ca"]["secretName"], "osm-ca-root");
    assert!(kube
        .get("cert-manager.io", "certificates", "osm-system", "osm-ca")
        .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_nobody_approves_says_so_and_is_counted() {
    let (kube, issuer, d) = setup("Issuer").await;
    issuer.set(IssuerBehaviour::Ignore);
    let (status, headers, body) = sign(&d, named_csr("bookstore", "bookstore")).await;
    assert_eq!(status, 503, "an approver may still act: {body}");
    assert!(headers.contains_key("retry-after"));
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("not approved") && message.contains("CertificateRequestPolicy"),
        "{message}"
    );
    assert!(
        d.metrics()
            .await
            .contains("meshca_cert_manager_request_outcomes_total{reason=\"NotApproved\"} 1"),
        "counted"
    );
    no_requests_left(&kube).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_longer_than_requested_is_accepted_within_max_ttl_and_refused_beyond_it() {
    let (_kube, issuer, d) = setup("Issuer").await;
    // Asked for 1h (sign() asks 3600 s), signed for 2h: within the 72h cap.
    issuer.set(IssuerBehaviour::SignFor(2 * 3600));
    let (status, _, body) = sign(&d, named_csr("bookstore", "bookstore")).await;
    assert_eq!(status, 200, "{body}");
    let at = |field: &str| {
        time::OffsetDateTime::parse(
            body[field].as_str().expect(field),
            &time::format_description::well_known::Rfc3339,
        )
        .expect("RFC 3339")
    };
    let (not_before, not_after, renew_after) =
        (at("not_before"), at("not_after"), at("renew_after"));
    assert!(
        not_after - not_before > time::Duration::seconds(3600 + 1800),
        "the real lifetime"
    );
    let lifetime: time::Duration = not_after - not_before;
    let two_thirds: time::OffsetDateTime = not_before + lifetime * 2 / 3;
    assert!(
        (renew_after - two_thirds).abs() < time::Duration::seconds(60),
        "renewal from the real NotAfter"
    );
    assert!(d
        .metrics()
        .await
        .contains("meshca_certificates_longer_than_requested_total 1"));

    issuer.set(IssuerBehaviour::SignFor(100 * 3600));
    let (status, headers, body) = sign(&d, named_csr("bookstore", "bookstore")).await;
    assert_eq!(status, 502, "beyond certificates.max_ttl: {body}");
    assert_eq!(body["error"]["code"], "provider_rejected");
    assert!(!headers.contains_key("retry-after"));
}
