//! The ingress reconciler against the repository's Kubernetes API stand-in
//! (no real apiserver can run here): backend identity Secrets follow
//! Ingresses, monitored namespaces and the HTTP/HTTPS mode.

use meshca_test_support as support;

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use support::kube::{KubeStandIn, Options};
use support::{certs, verify, TestDaemon};
use x509_parser::prelude::{FromDer, X509Certificate};

fn data(secret: &Value, key: &str) -> String {
    let b = secret["data"][key].as_str().unwrap_or_default();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b)
            .expect("base64"),
    )
    .expect("utf8")
}

fn cluster(kube: &KubeStandIn, ingress: &str) -> String {
    format!(
        "kubernetes: {{ kubeconfig: {}, lease_duration: 3s }}\ningress: {{ enabled: true, {ingress} }}\n",
        kube.kubeconfig().display()
    )
}

/// Namespace httpbin (monitored by label), Service httpbin selecting pods
/// that run as ServiceAccount httpbin-sa.
fn httpbin(kube: &KubeStandIn, namespace: &str, monitored: bool) {
    let labels = if monitored {
        json!({ "openservicemesh.io/monitored-by": "osm" })
    } else {
        json!({})
    };
    kube.put(
        "",
        "namespaces",
        json!({ "metadata": { "name": namespace, "labels": labels } }),
    );
    kube.put(
        "",
        "services",
        json!({
            "metadata": { "name": "httpbin", "namespace": namespace },
            "spec": { "selector": { "app": "httpbin" }, "ports": [{ "port": 14001 }] },
        }),
    );
    kube.put("", "pods", json!({
        "metadata": { "name": "httpbin-1", "namespace": namespace, "labels": { "app": "httpbin" } },
        "spec": { "serviceAccountName": "httpbin-sa", "containers": [{ "name": "httpbin", "image": "kennethreitz/httpbin" }] },
    }));
}

fn ingress(kube: &KubeStandIn, namespace: &str, version: &str) {
    let backend = if version == "v1" {
        json!({ "service": { "name": "httpbin", "port": { "number": 14001 } } })
    } else {
        json!({ "serviceName": "httpbin", "servicePort": 14001 })
    };
    kube.put("networking.k8s.io", "ingresses", json!({
        "apiVersion": format!("networking.k8s.io/{version}"),
        "metadata": { "name": "httpbin", "namespace": namespace },
        "spec": { "rules": [{ "host": "httpbin.com", "http": { "paths": [{ "path": "/", "pathType": "Prefix", "backend": backend }] } }] },
    }));
}

async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn secret(kube: &KubeStandIn, ns: &str) -> Option<Value> {
    kube.get("", "secrets", ns, "meshca-httpbin-sa-tls")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_backend_gets_its_identity_secret_until_its_ingress_goes() {
    let kube = KubeStandIn::start().await;
    httpbin(&kube, "httpbin", true);
    let d = TestDaemon::start(&cluster(&kube, "backend_protocol: https")).await;
    ingress(&kube, "httpbin", "v1");
    let s = eventually("the backend Secret", || secret(&kube, "httpbin")).await;
    assert_eq!(s["type"], "kubernetes.io/tls");
    let bundle = d.bundle_pem().await;
    assert_eq!(data(&s, "ca.crt"), bundle);
    assert!(data(&s, "tls.key").contains("PRIVATE KEY"));
    let chain = data(&s, "tls.crt");
    verify(&chain, &bundle, webpki::KeyUsage::server_auth()).expect("a valid serving identity");
    let leaf = certs(&chain).remove(0);
    let names = support::san_names(&leaf);
    assert_eq!(
        names,
        [
            "DNS:httpbin-sa.httpbin.cluster.local",
            "URI:spiffe://cluster.local/ns/httpbin/sa/httpbin-sa"
        ],
        "the pods' ServiceAccount"
    );

    assert!(kube.delete("networking.k8s.io", "ingresses", "httpbin", "httpbin"));
    eventually("the Secret deleted", || {
        secret(&kube, "httpbin").is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmonitored_namespaces_and_external_name_backends_are_ignored() {
    let kube = KubeStandIn::start().await;
    httpbin(&kube, "outside", false);
    httpbin(&kube, "httpbin", true);
    kube.put(
        "",
        "services",
        json!({
            "metadata": { "name": "elsewhere", "namespace": "httpbin" },
            "spec": { "type": "ExternalName", "externalName": "httpbin.other.svc.cluster.local" },
        }),
    );
    let _d = TestDaemon::start(&cluster(&kube, "backend_protocol: https")).await;
    ingress(&kube, "outside", "v1");
    kube.put("networking.k8s.io", "ingresses", json!({
        "apiVersion": "networking.k8s.io/v1",
        "metadata": { "name": "cross", "namespace": "httpbin" },
        "spec": { "defaultBackend": { "service": { "name": "elsewhere", "port": { "number": 80 } } } },
    }));
    let event = eventually("an Event explaining the rule", || {
        kube.list("events.k8s.io", "events", "httpbin")
            .into_iter()
            .find(|e| e["regarding"]["name"] == "cross")
    })
    .await;
    assert!(
        event["note"]
            .as_str()
            .expect("note")
            .contains("own monitored namespace"),
        "{event}"
    );
    assert_eq!(event["type"], "Warning", "{event}");
    assert_eq!(event["reason"], "BackendIgnored", "{event}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        secret(&kube, "outside").is_none(),
        "not a monitored namespace"
    );
    assert!(
        kube.list("", "secrets", "httpbin").is_empty(),
        "nothing for a cross-namespace backend"
    );
    // Another pass meets the same backend again: the Event is counted in
    // its series, not created anew.
    kube.put("networking.k8s.io", "ingresses", json!({
        "apiVersion": "networking.k8s.io/v1",
        "metadata": { "name": "cross", "namespace": "httpbin", "labels": { "touched": "yes" } },
        "spec": { "defaultBackend": { "service": { "name": "elsewhere", "port": { "number": 80 } } } },
    }));
    let counted = eventually("the repeated Event counted in its series", || {
        let events: Vec<_> = kube
            .list("events.k8s.io", "events", "httpbin")
            .into_iter()
            .filter(|e| e["regarding"]["name"] == "cross")
            .collect();
        (events
            .iter()
            .any(|e| e["series"]["count"].as_i64() >= Some(2)))
        .then_some(events)
    })
    .await;
    assert_eq!(counted.len(), 1, "deduplicated: {counted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1beta1_only_cluster_works_and_one_without_ingress_is_a_clear_error() {
    let kube = KubeStandIn::start_with(Options {
        ingress_versions: vec!["v1beta1"],
        ..Options::default()
    })
    .await;
    httpbin(&kube, "httpbin", true);
    let _d = TestDaemon::start(&cluster(&kube, "backend_protocol: https")).await;
    ingress(&kube, "httpbin", "v1beta1");
    eventually("the backend Secret from a v1beta1 Ingress", || {
        secret(&kube, "httpbin")
    })
    .await;

    let none = KubeStandIn::start_with(Options {
        ingress_versions: vec![],
        ..Options::default()
    })
    .await;
    support::install_crypto_provider();
    let state = tempfile::tempdir().expect("tempdir");
    let config = meshca::Config::from_yaml(&support::config_yaml(
        state.path(),
        &cluster(&none, "backend_protocol: https"),
    ))
    .expect("config");
    let err = meshca::start(config).await.expect_err("no Ingress API");
    assert!(
        err.to_string()
            .contains("neither networking.k8s.io/v1 nor networking.k8s.io/v1beta1"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_between_http_and_https_in_the_config_file_takes_effect_without_restart() {
    let kube = KubeStandIn::start().await;
    httpbin(&kube, "httpbin", true);
    let client_cert = "client_certificate: { san: ingress-nginx.ingress-nginx.cluster.local, validity: 1h, secret: { namespace: ingress-nginx, name: osm-nginx-client-cert } }";
    kube.create_namespace("ingress-nginx");
    let d = TestDaemon::start_from_file(&cluster(
        &kube,
        &format!("backend_protocol: http, manage_annotations: true, {client_cert}"),
    ))
    .await;
    ingress(&kube, "httpbin", "v1");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        secret(&kube, "httpbin").is_none(),
        "HTTP mode: no backend identity"
    );

    d.rewrite_config(&cluster(
        &kube,
        &format!("backend_protocol: https, manage_annotations: true, {client_cert}"),
    ));
    eventually("the backend Secret after switching to HTTPS", || {
        secret(&kube, "httpbin")
    })
    .await;
    let client = eventually("the ingress client Secret", || {
        kube.get("", "secrets", "ingress-nginx", "osm-nginx-client-cert")
    })
    .await;
    assert!(certs(&data(&client, "tls.crt")).len() == 1);
    let ing = eventually("nginx annotations", || {
        let i = kube.get("networking.k8s.io", "ingresses", "httpbin", "httpbin")?;
        (i["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTPS")
            .then_some(i)
    })
    .await;
    assert_eq!(
        ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/configuration-snippet"],
        "proxy_ssl_name \"httpbin-sa.httpbin.cluster.local\";\n"
    );
    assert_eq!(
        ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-ssl-secret"],
        "ingress-nginx/osm-nginx-client-cert"
    );

    // An invalid edit is ignored; the HTTPS state stays.
    std::fs::write(
        d.dir.path().join("meshca.yaml"),
        "ingress: { backend_protocol: carrier-pigeon }\n",
    )
    .expect("write");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(secret(&kube, "httpbin").is_some());

    d.rewrite_config(&cluster(
        &kube,
        &format!("backend_protocol: http, manage_annotations: true, {client_cert}"),
    ));
    eventually("the backend Secret removed after switching back", || {
        secret(&kube, "httpbin").is_none().then_some(())
    })
    .await;
    eventually("annotations removed", || {
        let i = kube.get("networking.k8s.io", "ingresses", "httpbin", "httpbin")?;
        i["metadata"]["annotations"]
            .get("nginx.ingress.kubernetes.io/backend-protocol")
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_secrets_are_renewed_before_they_expire() {
    let kube = KubeStandIn::start().await;
    httpbin(&kube, "httpbin", true);
    let _d = TestDaemon::start(&format!(
        "{}certificates: {{ default_ttl: 4s, min_ttl: 1s, max_ttl: 1h }}\n",
        cluster(&kube, "backend_protocol: https")
    ))
    .await;
    ingress(&kube, "httpbin", "v1");
    let first = eventually("the backend Secret", || secret(&kube, "httpbin")).await;
    let first_crt = data(&first, "tls.crt");
    let renewed = eventually("a renewed certificate", || {
        let s = secret(&kube, "httpbin")?;
        (data(&s, "tls.crt") != first_crt).then_some(s)
    })
    .await;
    let der = certs(&data(&renewed, "tls.crt")).remove(0);
    let (_, c) = X509Certificate::from_der(&der).expect("leaf");
    assert!(
        c.validity().not_after.timestamp() > time::OffsetDateTime::now_utc().unix_timestamp(),
        "still valid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_annotations_follow_the_configured_controller() {
    let kube = KubeStandIn::start().await;
    httpbin(&kube, "httpbin", true);
    let _d = TestDaemon::start(&cluster(
        &kube,
        "backend_protocol: https, manage_annotations: true, controller: agic",
    ))
    .await;
    ingress(&kube, "httpbin", "v1");
    let ing = eventually("AGIC annotations", || {
        let i = kube.get("networking.k8s.io", "ingresses", "httpbin", "httpbin")?;
        (i["metadata"]["annotations"]["appgw.ingress.kubernetes.io/backend-protocol"] == "https")
            .then_some(i)
    })
    .await;
    assert_eq!(
        ing["metadata"]["annotations"]["appgw.ingress.kubernetes.io/backend-hostname"],
        "httpbin-sa.httpbin.cluster.local"
    );
    assert!(ing["metadata"]["annotations"]
        .get("nginx.ingress.kubernetes.io/backend-protocol")
        .is_none());

    support::install_crypto_provider();
    let state = tempfile::tempdir().expect("tempdir");
    let e = meshca::Config::from_yaml(&support::config_yaml(
        state.path(),
        &cluster(&kube, "controller: gloo, manage_annotations: true"),
    ))
    .expect_err("gloo has no annotations to manage");
    assert!(e.to_string().contains("ingress.controller"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ingress_that_cannot_be_served_does_not_hold_up_the_others() {
    let kube = KubeStandIn::start().await;
    httpbin(&kube, "httpbin", true);
    // "ghost" is monitored by name but does not exist: its Secret cannot
    // be created, every time.
    kube.put(
        "",
        "services",
        json!({ "metadata": { "name": "httpbin", "namespace": "ghost" },
                "spec": { "selector": { "app": "httpbin" }, "ports": [{ "port": 14001 }] } }),
    );
    kube.put("", "pods", json!({
        "metadata": { "name": "httpbin-1", "namespace": "ghost", "labels": { "app": "httpbin" } },
        "spec": { "serviceAccountName": "httpbin-sa", "containers": [{ "name": "c", "image": "i" }] },
    }));
    let _d = TestDaemon::start(&cluster(
        &kube,
        "backend_protocol: https, monitored_namespaces: [ghost]",
    ))
    .await;
    ingress(&kube, "ghost", "v1");
    ingress(&kube, "httpbin", "v1");
    eventually("the other Ingress's Secret", || secret(&kube, "httpbin")).await;
    assert!(secret(&kube, "ghost").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edited_backend_secret_is_taken_back() {
    let kube = KubeStandIn::start().await;
    httpbin(&kube, "httpbin", true);
    let d = TestDaemon::start(&cluster(&kube, "backend_protocol: https")).await;
    ingress(&kube, "httpbin", "v1");
    let mut s = eventually("the backend Secret", || secret(&kube, "httpbin")).await;
    // Someone else writes the field meshca applies (their own manager).
    s["data"]["ca.crt"] = json!(base64::engine::general_purpose::STANDARD.encode("not a bundle"));
    kube.put("", "secrets", s);
    let bundle = d.bundle_pem().await;
    eventually("the bundle back in the Secret", || {
        let s = secret(&kube, "httpbin")?;
        (data(&s, "ca.crt") == bundle).then_some(())
    })
    .await;
}
