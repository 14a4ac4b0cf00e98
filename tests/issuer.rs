//! The issuer is the one contract every frontend renders: the same
//! deny-list, admission and metrics apply whichever way a workload asks
//! (the signing API, Istio's certificate service, a PodCertificateRequest,
//! an ingress backend Secret), the same refusal means the same thing on
//! each, in its own terms, and every certificate issued is indexed under
//! its identity.

use meshca_test_support as support;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;
use support::kube::KubeStandIn;
use support::{eventually, TestDaemon};

const GROUP: &str = "certificates.k8s.io";

fn config(kube: &KubeStandIn, api: &str) -> String {
    format!(
        "kubernetes: {{ kubeconfig: {}, lease_duration: 3s }}\npod_certificates: {{ enabled: true }}\n\
         ingress: {{ enabled: true, backend_protocol: https }}\napi: {{ {api} }}\n",
        kube.kubeconfig().display()
    )
}

/// Namespace `shop` (monitored), Service `web` selecting a pod that runs as
/// ServiceAccount `sa`, and an Ingress to it.
fn backend(kube: &KubeStandIn, sa: &str) {
    kube.put("", "namespaces", json!({ "metadata": { "name": "shop", "labels": { "openservicemesh.io/monitored-by": "osm" } } }));
    kube.put(
        "",
        "services",
        json!({
            "metadata": { "name": sa, "namespace": "shop" },
            "spec": { "selector": { "app": sa }, "ports": [{ "port": 8443 }] },
        }),
    );
    kube.put(
        "",
        "pods",
        json!({
            "metadata": { "name": format!("{sa}-1"), "namespace": "shop", "labels": { "app": sa } },
            "spec": { "serviceAccountName": sa, "containers": [{ "name": "c", "image": "i" }] },
        }),
    );
    kube.put("networking.k8s.io", "ingresses", json!({
        "metadata": { "name": sa, "namespace": "shop" },
        "spec": { "rules": [{ "host": "x.example", "http": { "paths": [{ "path": "/", "pathType": "Prefix",
            "backend": { "service": { "name": sa, "port": { "number": 8443 } } } }] } }] },
    }));
}

fn pcr(kube: &KubeStandIn, name: &str, sa: &str) {
    let (csr, _) = support::kubelet_stub_csr("ECDSAP256");
    kube.put(GROUP, "podcertificaterequests", json!({
        "metadata": { "name": name, "namespace": "shop" },
        "spec": { "signerName": "meshca.io/workload", "podName": name, "podUID": format!("u-{name}"),
            "serviceAccountName": sa, "serviceAccountUID": "sa", "nodeName": "node-1", "nodeUID": "n1",
            "maxExpirationSeconds": 3600, "stubPKCS10Request": STANDARD.encode(csr) },
    }));
}

fn condition(kube: &KubeStandIn, name: &str) -> Option<(String, String)> {
    let p = kube.get(GROUP, "podcertificaterequests", "shop", name)?;
    let c = p["status"]["conditions"].get(0)?;
    Some((
        c["type"].as_str()?.to_owned(),
        c["reason"].as_str()?.to_owned(),
    ))
}

fn counted(metrics: &str, frontend: &str, result: &str) -> bool {
    metrics.contains(&format!(
        r#"meshca_certificates_issued_total{{frontend="{frontend}",provider="tresor",result="{result}"}}"#
    ))
}

/// `POST /v1/certificates` as shop/web, with its ServiceAccount token.
async fn ask_as_web(kube: &KubeStandIn, d: &TestDaemon) -> (u16, serde_json::Value) {
    let token = kube.service_account_token_for("shop", "web", &["meshca"]);
    let (status, _, body) = d
        .post(
            &d.client().await,
            Some(&token),
            &json!({ "csr": support::named_csr("shop", "web") }),
        )
        .await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_identity_is_refused_by_every_frontend_and_counted_alike() {
    let kube = KubeStandIn::start().await;
    kube.put("", "configmaps", json!({
        "metadata": { "name": "meshca-denied", "namespace": "osm-system" },
        "data": { "denied.yaml": "denied:\n- { namespace: shop, service_account: web, since: '2026-01-01T00:00:00Z' }\n" },
    }));
    backend(&kube, "web");
    let port = support::process::free_port();
    let istio = format!(
        "istio_ca: {{ enabled: true, listen: 127.0.0.1:{port}, serving_dns_names: [{}] }}\n",
        support::istio::SERVER_NAME
    );
    let d = TestDaemon::start(&(config(&kube, "") + &istio)).await;

    let (status, body) = ask_as_web(&kube, &d).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("identity_denied"))
    );

    let bound = kube.bound_token("shop", "web-1", &["istio-ca"], 3600);
    let calls = json!([{ "token": bound, "uri": "spiffe://cluster.local/ns/shop/sa/web" }]);
    let istio = support::istio::create_certificates(port, &d.bundle_pem().await, &calls).await;
    assert_eq!(
        (istio[0]["ok"].as_bool(), istio[0]["code"].as_str()),
        (Some(false), Some("PERMISSION_DENIED")),
        "{istio:?}"
    );
    assert_eq!(istio[0]["retry_seconds"], serde_json::Value::Null);

    pcr(&kube, "web-1", "web");
    let answer = eventually("an answer", Duration::from_secs(15), || {
        condition(&kube, "web-1")
    })
    .await;
    assert_eq!(answer, ("Denied".to_owned(), "IdentityDenied".to_owned()));

    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let metrics = loop {
        let m = d.metrics().await;
        if ["api", "istio", "pod_certificate", "ingress"]
            .iter()
            .all(|f| counted(&m, f, "identity_denied"))
        {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every frontend counted: {m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        kube.get("", "secrets", "shop", "meshca-web-tls").is_none(),
        "no backend Secret for a denied identity: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_rate_holds_every_frontend_back_and_each_retries() {
    let kube = KubeStandIn::start().await;
    kube.create_namespace("shop");
    let d = TestDaemon::start(&config(
        &kube,
        "per_identity_per_second: 1, per_identity_burst: 1",
    ))
    .await;
    let token = kube.service_account_token_for("shop", "web", &["meshca"]);
    let client = d.client().await;
    let body = json!({ "csr": support::named_csr("shop", "web") });
    let first = d.post(&client, Some(&token), &body).await;
    let second = d.post(&client, Some(&token), &body).await;
    assert_eq!((first.0, second.0), (200, 429));
    assert!(second.1.contains_key("retry-after"));

    // The same identity's pod certificates share the bucket: each is
    // answered, in turn, as the bucket refills.
    for i in 0..3 {
        pcr(&kube, &format!("web-{i}"), "web");
    }
    for i in 0..3 {
        let answer = eventually("an answer", Duration::from_secs(20), || {
            condition(&kube, &format!("web-{i}"))
        })
        .await;
        assert_eq!(answer.0, "Issued");
    }
    let metrics = d.metrics().await;
    for frontend in ["api", "pod_certificate"] {
        assert!(
            counted(&metrics, frontend, "rate_limited"),
            "{frontend}: {metrics}"
        );
    }
}

/// Every frontend's certificate goes through the issuer, so each is in the
/// certificate index under the identity it was issued to, and revoking
/// the identity revokes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frontends_certificate_is_indexed_and_revoked_with_its_identity() {
    let kube = KubeStandIn::start().await;
    backend(&kube, "web");
    let port = support::process::free_port();
    let extra = config(&kube, "")
        + &format!(
            "istio_ca: {{ enabled: true, listen: 127.0.0.1:{port}, serving_dns_names: [{}] }}\n",
            support::istio::SERVER_NAME
        );
    let d = TestDaemon::start(&extra).await;
    let config_file = d.dir.path().join("meshca.yaml");
    std::fs::write(&config_file, support::config_yaml(d.dir.path(), &extra)).expect("config");

    let (status, body) = ask_as_web(&kube, &d).await;
    assert_eq!(status, 200, "{body}");
    let bound = kube.bound_token("shop", "web-1", &["istio-ca"], 3600);
    let calls = json!([{ "token": bound, "uri": "spiffe://cluster.local/ns/shop/sa/web" }]);
    let istio = support::istio::create_certificates(port, &d.bundle_pem().await, &calls).await;
    assert_eq!(istio[0]["ok"].as_bool(), Some(true), "{istio:?}");
    pcr(&kube, "web-1", "web");

    let meshca = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
            .args(args)
            .arg("-c")
            .arg(&config_file)
            .output()
            .expect("meshca runs")
    };
    let frontends = || {
        let out = meshca(&["certificate", "list", "--identity", "shop/web"]);
        let mut seen: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| l.split('\t').nth(1).map(str::to_owned))
            .collect();
        seen.sort();
        seen.dedup();
        seen
    };
    let want = ["api", "ingress", "istio", "pod_certificate"];
    let seen = eventually("every frontend indexed", Duration::from_secs(20), || {
        let seen = frontends();
        (seen == want).then_some(seen)
    })
    .await;
    assert_eq!(seen, want);

    let out = meshca(&[
        "certificate",
        "revoke",
        "--identity",
        "shop/web",
        "--allow-reissue",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let listed =
        String::from_utf8_lossy(&meshca(&["certificate", "list", "--identity", "shop/web"]).stdout)
            .into_owned();
    let rows: Vec<_> = listed.lines().skip(1).collect();
    assert!(rows.len() >= 4, "{listed}");
    assert!(
        rows.iter().all(|r| r.ends_with("\tyes")),
        "every one revoked:\n{listed}"
    );
}
