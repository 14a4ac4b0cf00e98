//! What meshca asks the API server for is what the chart grants it.
//!
//! Each configuration the chart can express runs against the Kubernetes
//! stand-in, which records every request as an audit log would (verb,
//! group, resource, subresource, namespace, name, user agent) and the
//! authorization checks kube-apiserver adds for a signer (`sign` on a
//! PodCertificateRequest's status, `attest` on a ClusterTrustBundle linked
//! to a signer). Every request meshca made must be allowed by the Role and
//! ClusterRoles `helm template` renders for that configuration, evaluated
//! as the RBAC authorizer does; and every rule the chart grants with all
//! features on must be needed by some configuration (least privilege).

use meshca_test_support as support;

use std::time::Duration;

use serde_json::json;
use support::chart::{self, Grants};
use support::kube::{AuditEntry, KubeStandIn};
use support::{eventually, TestDaemon};

/// One configuration: the chart values that express it, and meshca's
/// requests while it ran.
struct Run {
    name: &'static str,
    values: Vec<&'static str>,
    requests: Vec<AuditEntry>,
}

fn meshcas(kube: &KubeStandIn) -> Vec<AuditEntry> {
    kube.audit()
        .into_iter()
        .filter(|e| e.user_agent.starts_with("meshca/"))
        .collect()
}

fn cluster(kube: &KubeStandIn, extra: &str) -> String {
    format!(
        "kubernetes: {{ kubeconfig: {}, lease_duration: 3s }}\nbundle: {{ refresh_interval: 1s }}\n{extra}",
        kube.kubeconfig().display()
    )
}

async fn bundle_published(kube: &KubeStandIn) {
    eventually("osm-ca-bundle", Duration::from_secs(15), || {
        kube.get("", "secrets", "osm-system", "osm-ca-bundle")
    })
    .await;
}

/// A workload asks for a certificate with its ServiceAccount token
/// (TokenReview), named as cert-manager needs.
async fn sign_with_a_service_account_token(kube: &KubeStandIn, d: &TestDaemon) {
    let token = kube.service_account_token_for("shop", "web", &["meshca"]);
    let csr = support::named_csr("shop", "web");
    let (status, _, body) = d
        .post(&d.client().await, Some(&token), &json!({ "csr": csr }))
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Tresor, a certificate by ServiceAccount token, then `meshca identity
/// deny` and `allow` editing the deny-list ConfigMap the daemon watches.
async fn tresor_and_the_deny_list() -> Run {
    let kube = KubeStandIn::start().await;
    // A page of the certificate index whose certificates have all
    // expired: the leader deletes it.
    kube.put(
        "",
        "configmaps",
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "meshca-certificates-1000-0a0b0c0d-0", "namespace": "osm-system",
                          "labels": { "app.kubernetes.io/managed-by": "meshca" } },
            "data": { "page.json": "{\"until\":1000,\"records\":[]}" },
        }),
    );
    let d = TestDaemon::start(&cluster(&kube, "")).await;
    bundle_published(&kube).await;
    sign_with_a_service_account_token(&kube, &d).await;
    eventually("the passed page deleted", Duration::from_secs(10), || {
        kube.get(
            "",
            "configmaps",
            "osm-system",
            "meshca-certificates-1000-0a0b0c0d-0",
        )
        .is_none()
        .then_some(())
    })
    .await;
    let config = d.dir.path().join("meshca.yaml");
    std::fs::write(
        &config,
        support::config_yaml(d.dir.path(), &cluster(&kube, "")),
    )
    .expect("config");
    for verb in ["deny", "allow"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
            .args(["identity", verb, "shop/web", "--config"])
            .arg(&config)
            .output()
            .expect("meshca identity");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eventually("the deny-list ConfigMap", Duration::from_secs(10), || {
        kube.get("", "configmaps", "osm-system", "meshca-denied")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Run {
        name: "tresor, deny-list",
        values: vec![],
        requests: meshcas(&kube),
    }
}

async fn vault() -> Run {
    let kube = KubeStandIn::start().await;
    let bao = support::openbao::OpenBao::dev().await;
    bao.script("setup-pki.sh", &[]);
    let token = bao.meshca_token_file();
    let provider = bao.provider_yaml(&format!("{{ token_file: {} }}", token.display()), "");
    let d = TestDaemon::start(&cluster(&kube, &provider)).await;
    bundle_published(&kube).await;
    sign_with_a_service_account_token(&kube, &d).await;
    Run {
        name: "vault",
        values: vec!["provider.kind=vault"],
        requests: meshcas(&kube),
    }
}

async fn cert_manager() -> Run {
    let kube = KubeStandIn::start().await;
    let issuer = kube.start_ca_issuer("Issuer", "osm-ca");
    // Slow enough that meshca always watches for the answer.
    issuer.set_latency(Duration::from_millis(300));
    let provider = "provider:\n  kind: cert-manager\n  cert_manager:\n    issuer_name: osm-ca\n    issuer_kind: Issuer\n";
    let d = TestDaemon::start(&cluster(&kube, provider)).await;
    bundle_published(&kube).await;
    sign_with_a_service_account_token(&kube, &d).await;
    Run {
        name: "cert-manager",
        values: vec!["provider.kind=cert-manager"],
        requests: meshcas(&kube),
    }
}

fn put_backend(kube: &KubeStandIn) {
    kube.put("", "namespaces", json!({ "metadata": { "name": "shop", "labels": { "openservicemesh.io/monitored-by": "osm" } } }));
    kube.put(
        "",
        "services",
        json!({
            "metadata": { "name": "web", "namespace": "shop" },
            "spec": { "selector": { "app": "web" }, "ports": [{ "port": 8443 }] },
        }),
    );
    kube.put("", "pods", json!({
        "metadata": { "name": "web-1", "namespace": "shop", "labels": { "app": "web" } },
        "spec": { "serviceAccountName": "web", "containers": [{ "name": "web", "image": "web" }] },
    }));
}

fn put_ingress(kube: &KubeStandIn, name: &str, service: &str, label: &str) {
    kube.put("networking.k8s.io", "ingresses", json!({
        "metadata": { "name": name, "namespace": "shop", "labels": { "touched": label } },
        "spec": { "rules": [{ "host": "web.example", "http": { "paths": [{ "path": "/", "pathType": "Prefix",
            "backend": { "service": { "name": service, "port": { "number": 8443 } } } }] } }] },
    }));
}

/// HTTPS backends with annotations and a client certificate; an Ingress
/// whose backend is missing (a Warning Event, counted again when it is
/// touched); an Ingress deleted (its Secret swept).
async fn ingress() -> Run {
    let kube = KubeStandIn::start().await;
    kube.create_namespace("ingress-nginx");
    put_backend(&kube);
    let settings = "ingress: { enabled: true, backend_protocol: https, manage_annotations: true, client_certificate: { san: ingress-nginx.ingress-nginx.cluster.local, validity: 1h, secret: { namespace: ingress-nginx, name: osm-nginx-client-cert } } }\n";
    let _d = TestDaemon::start(&cluster(&kube, settings)).await;
    put_ingress(&kube, "web", "web", "a");
    put_ingress(&kube, "broken", "missing", "a");
    let secret = || kube.get("", "secrets", "shop", "meshca-web-tls");
    eventually("the backend Secret", Duration::from_secs(15), secret).await;
    let warned = |count: bool| {
        kube.list("events.k8s.io", "events", "shop")
            .into_iter()
            .find(|e| {
                e["regarding"]["name"] == "broken"
                    && (!count || e["series"]["count"].as_i64() >= Some(2))
            })
    };
    eventually("a Warning Event", Duration::from_secs(15), || warned(false)).await;
    put_ingress(&kube, "broken", "missing", "b");
    eventually("the Warning counted again", Duration::from_secs(15), || {
        warned(true)
    })
    .await;
    kube.delete("networking.k8s.io", "ingresses", "shop", "web");
    eventually("the backend Secret swept", Duration::from_secs(15), || {
        secret().is_none().then_some(())
    })
    .await;
    Run {
        name: "ingress",
        values: vec!["ingress.enabled=true"],
        requests: meshcas(&kube),
    }
}

async fn pod_certificates() -> Run {
    let kube = KubeStandIn::start().await;
    kube.create_namespace("shop");
    let _d = TestDaemon::start(&cluster(&kube, "pod_certificates: { enabled: true }\n")).await;
    let (csr, _) = support::kubelet_stub_csr("ECDSAP256");
    kube.put("certificates.k8s.io", "podcertificaterequests", json!({
        "metadata": { "name": "web-1", "namespace": "shop" },
        "spec": { "signerName": "meshca.io/workload", "podName": "web-1", "podUID": "u1",
            "serviceAccountName": "web", "serviceAccountUID": "u2", "nodeName": "node-1", "nodeUID": "u3",
            "stubPKCS10Request": base64_encode(&csr) },
    }));
    eventually("the answer", Duration::from_secs(15), || {
        kube.get(
            "certificates.k8s.io",
            "podcertificaterequests",
            "shop",
            "web-1",
        )
        .filter(|p| p["status"]["conditions"].is_array())
    })
    .await;
    eventually("the ClusterTrustBundle", Duration::from_secs(15), || {
        kube.get(
            "certificates.k8s.io",
            "clustertrustbundles",
            "",
            "meshca.io:workload:trust-bundle",
        )
    })
    .await;
    Run {
        name: "pod certificates",
        values: vec!["podCertificates.enabled=true"],
        requests: meshcas(&kube),
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// JWT-SVIDs: the keys' Secret, made by one of two replicas starting
/// together and read by both.
async fn jwt_svids() -> Run {
    let kube = KubeStandIn::start().await;
    let config = cluster(&kube, "jwt_svids: { enabled: true }\n");
    let (_a, _b) = tokio::join!(TestDaemon::start(&config), TestDaemon::start(&config));
    bundle_published(&kube).await;
    Run {
        name: "jwt-svids",
        values: vec!["jwtSvids.enabled=true"],
        requests: meshcas(&kube),
    }
}

/// SPIFFE federation: the leader keeps a peer's bundle in the ConfigMap
/// `meshca-federation`, which the other replica reads.
async fn federation() -> Run {
    let kube = KubeStandIn::start().await;
    let port = support::process::free_port();
    let peer = TestDaemon::start(&format!(
        "trust_domain: b.test\nfederation: {{ bundle_endpoint: {{ listen: '127.0.0.1:{port}' }} }}\n"
    ))
    .await;
    let bundle = peer
        .client()
        .await
        .get(peer.url("/v1/bundle/spiffe"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("body");
    let file = peer.dir.path().join("b-bundle.json");
    std::fs::write(&file, bundle).expect("write");
    let config = cluster(
        &kube,
        &format!(
            "federation:\n  trust_domains:\n  - {{ trust_domain: b.test, bundle_endpoint_url: 'https://127.0.0.1:{port}', profile: https_spiffe, endpoint_spiffe_id: 'spiffe://b.test/ns/osm-system/sa/meshca', bundle_file: {} }}\n",
            file.display()
        ),
    );
    let (_a, _b) = tokio::join!(TestDaemon::start(&config), TestDaemon::start(&config));
    eventually("meshca-federation", Duration::from_secs(20), || {
        kube.get("", "configmaps", "osm-system", "meshca-federation")
    })
    .await;
    // One round of the other replica's reading.
    tokio::time::sleep(Duration::from_secs(11)).await;
    Run {
        name: "federation",
        values: vec![],
        requests: meshcas(&kube),
    }
}

/// Istio's certificate service: istio-ca-root-cert in every namespace, and
/// ztunnel's impersonation (pods by node; its own pod by name, for a token
/// that names no node).
async fn istio_ca() -> Run {
    let kube = KubeStandIn::start().await;
    for ns in ["shop", "istio-system"] {
        kube.create_namespace(ns);
    }
    kube.put_pod("shop", "web-1", "web", Some("node-1"));
    kube.put_pod("istio-system", "ztunnel-1", "ztunnel", Some("node-1"));
    kube.put_pod("istio-system", "ztunnel-2", "ztunnel", None);
    let on_node = kube.bound_token("istio-system", "ztunnel-1", &["istio-ca"], 600);
    let unscheduled = kube.bound_token("istio-system", "ztunnel-2", &["istio-ca"], 600);
    let port = support::process::free_port();
    let d = TestDaemon::start(&cluster(
        &kube,
        &format!(
            "istio_ca: {{ enabled: true, listen: '127.0.0.1:{port}', istiod_certificate: {{}} }}\n"
        ),
    ))
    .await;
    let web = "spiffe://cluster.local/ns/shop/sa/web";
    let results = support::istio::create_certificates(
        port,
        &d.bundle_pem().await,
        &json!([
            { "token": on_node, "uri": web, "metadata": { "ImpersonatedIdentity": web } },
            { "token": unscheduled, "uri": web, "metadata": { "ImpersonatedIdentity": web } },
        ]),
    )
    .await;
    assert_eq!(results[0]["ok"], true, "{results:?}");
    assert_eq!(results[1]["code"], "PERMISSION_DENIED", "{results:?}");
    eventually("istio-ca-root-cert", Duration::from_secs(15), || {
        kube.get("", "configmaps", "shop", "istio-ca-root-cert")
    })
    .await;
    eventually("istiod-tls", Duration::from_secs(15), || {
        kube.get("", "secrets", "istio-system", "istiod-tls")
    })
    .await;
    Run {
        name: "istio-ca",
        values: vec![
            "istioCa.enabled=true",
            "istioCa.istiodCertificate.enabled=true",
        ],
        requests: meshcas(&kube),
    }
}

/// Two replicas; the leader stops and hands over.
async fn two_replicas() -> Run {
    let kube = KubeStandIn::start().await;
    let mut a = TestDaemon::start(&cluster(&kube, "")).await;
    let _b = TestDaemon::start(&cluster(&kube, "")).await;
    bundle_published(&kube).await;
    a.stop().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    Run {
        name: "two replicas",
        values: vec![],
        requests: meshcas(&kube),
    }
}

/// A Tresor root rotation in a pod (Events on meshca's own pod).
async fn rollout() -> Run {
    let kube = KubeStandIn::start().await;
    let pod =
        support::process::PodRootRotation::start(env!("CARGO_BIN_EXE_meshca"), kube.kubeconfig());
    bundle_published(&kube).await;
    pod.rotate();
    eventually("the retire stage", Duration::from_secs(40), || {
        kube.list("events.k8s.io", "events", "osm-system")
            .into_iter()
            .find(|e| e["note"].as_str().is_some_and(|n| n.contains("retire")))
    })
    .await;
    drop(pod);
    Run {
        name: "rollout",
        values: vec![],
        requests: meshcas(&kube),
    }
}

fn describe(e: &AuditEntry) -> String {
    let resource = match &e.subresource {
        Some(s) => format!("{}/{s}", e.resource),
        None => e.resource.clone(),
    };
    format!(
        "{} {:?} {resource} in {:?} ({:?})",
        e.verb, e.group, e.namespace, e.name
    )
}

/// Rules the chart grants that no configuration here exercises, each with
/// the reason it stays.
const KEPT: [(&str, &str); 1] = [(
    "Role/meshca: \"events.k8s.io\" events patch",
    "an Event on meshca's own pod that repeats (a provider failing again) is counted by a patch of its series; the same Recorder patches Events on Ingresses in the ingress run",
)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_meshca_makes_is_granted_by_the_chart_and_every_grant_is_used() {
    let (first, second) = tokio::join!(
        async {
            vec![
                tresor_and_the_deny_list().await,
                cert_manager().await,
                pod_certificates().await,
                two_replicas().await,
                jwt_svids().await,
            ]
        },
        async {
            vec![
                vault().await,
                ingress().await,
                rollout().await,
                federation().await,
                istio_ca().await,
            ]
        },
    );
    let runs: Vec<Run> = first.into_iter().chain(second).collect();
    let mut refused = Vec::new();
    for run in &runs {
        assert!(
            !run.requests.is_empty(),
            "{}: meshca made no request",
            run.name
        );
        let grants = Grants::of(&chart::render(&run.values));
        for e in run.requests.iter().filter(|e| !grants.allows(e)) {
            refused.push(format!("{}: {}", run.name, describe(e)));
        }
    }
    refused.sort();
    refused.dedup();
    assert!(
        refused.is_empty(),
        "requests the chart does not grant:\n{}",
        refused.join("\n")
    );

    let all: Vec<AuditEntry> = runs.iter().flat_map(|r| r.requests.clone()).collect();
    let everything = chart::render(&[
        "ingress.enabled=true",
        "podCertificates.enabled=true",
        "istioCa.enabled=true",
        "istioCa.istiodCertificate.enabled=true",
    ]);
    let unused: Vec<String> = Grants::of(&everything)
        .unused(&all)
        .into_iter()
        .filter(|u| !KEPT.iter().any(|(rule, _)| u == rule))
        .collect();
    assert!(
        unused.is_empty(),
        "rules the chart grants that no configuration needs:\n{}",
        unused.join("\n")
    );
}

#[test]
fn the_audit_tells_a_grant_from_a_refusal() {
    let grants = Grants::of(&chart::render(&[]));
    let entry = |verb: &'static str, resource: &str, namespace: Option<&str>| AuditEntry {
        user_agent: "meshca/0".into(),
        verb,
        group: String::new(),
        resource: resource.into(),
        subresource: None,
        namespace: namespace.map(str::to_owned),
        name: None,
        code: 200,
        at: std::time::Instant::now(),
        implied: false,
    };
    assert!(grants.allows(&entry("get", "secrets", Some("osm-system"))));
    assert!(
        !grants.allows(&entry("get", "secrets", Some("shop"))),
        "the Role is namespaced"
    );
    assert!(!grants.allows(&entry("delete", "configmaps", Some("shop"))));
    assert!(
        !grants.allows(&entry("list", "pods", None)),
        "ingress rules are off by default"
    );
    let istio = Grants::of(&chart::render(&["istioCa.enabled=true"]));
    let named = |verb, name: Option<&str>| AuditEntry {
        name: name.map(str::to_owned),
        ..entry(verb, "configmaps", None)
    };
    assert!(istio.allows(&named("list", Some("istio-ca-root-cert"))));
    assert!(istio.allows(&named("patch", Some("istio-ca-root-cert"))));
    assert!(
        !istio.allows(&named("list", None)),
        "every ConfigMap of the cluster is not granted"
    );
    assert!(!istio.allows(&named("patch", Some("kube-root-ca.crt"))));
}
