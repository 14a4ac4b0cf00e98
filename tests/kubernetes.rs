//! meshca in a cluster. No real kube-apiserver can run here, so every test
//! in this file talks to the repository's Kubernetes API stand-in
//! (tests/support/src/kube/), served over HTTPS on a loopback port, through
//! kube-rs and a kubeconfig, exactly as meshca would talk to a cluster.

use meshca_test_support as support;

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use support::kube::KubeStandIn;
use support::{certs, csr, csr_with, eventually, key, verify, TestDaemon};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn data(secret: &Value, key: &str) -> Option<String> {
    let v = secret.pointer(&format!(
        "/data/{}",
        key.replace('.', "~1").replace("~1", ".")
    ))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.as_str()?)
        .ok()?;
    String::from_utf8(bytes).ok()
}

fn cluster_yaml(kube: &KubeStandIn) -> String {
    format!(
        "kubernetes: {{ kubeconfig: {}, lease_duration: 3s }}\nbundle: {{ refresh_interval: 1s }}\n",
        kube.kubeconfig().display()
    )
}

async fn bundle_secret(kube: &KubeStandIn) -> Value {
    eventually("the bundle Secret", Duration::from_secs(10), || {
        kube.get("", "secrets", "osm-system", "osm-ca-bundle")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundle_secret_holds_only_ca_crt_and_the_root_lives_in_its_own_tls_secret() {
    let kube = KubeStandIn::start().await;
    let d = TestDaemon::start(&cluster_yaml(&kube)).await;
    let secret = bundle_secret(&kube).await;
    let keys: Vec<&String> = secret["data"].as_object().expect("data").keys().collect();
    assert_eq!(keys, ["ca.crt"], "exactly one data key");
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "meshca"
    );
    let pem = data(&secret, "ca.crt").expect("ca.crt");
    assert_eq!(
        pem,
        d.bundle_pem().await,
        "Secret and file hold the same bundle"
    );
    assert!(!pem.contains("PRIVATE KEY"));

    let root = kube
        .get("", "secrets", "osm-system", "meshca-tresor-root")
        .expect("root Secret");
    assert_eq!(root["type"], "kubernetes.io/tls");
    assert!(data(&root, "tls.key")
        .expect("tls.key")
        .contains("PRIVATE KEY"));
    assert_eq!(
        certs(&data(&root, "tls.crt").expect("tls.crt")),
        certs(&pem)
    );
    assert!(
        !d.dir.path().join("tresor/root.key").exists(),
        "no root key on local disk in a cluster"
    );

    // The user's command from the OSM docs works unchanged.
    let out = std::process::Command::new(support::tool("kubectl"))
        .args(["--kubeconfig", kube.kubeconfig().to_str().expect("utf8")])
        .args([
            "get",
            "secret",
            "-n",
            "osm-system",
            "osm-ca-bundle",
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ])
        .output()
        .expect("kubectl runs (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(out.stdout)
        .expect("base64");
    assert_eq!(String::from_utf8(decoded).expect("utf8"), pem);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_tampered_bundle_secret_is_restored_and_other_keys_are_kept() {
    let kube = KubeStandIn::start().await;
    let d = TestDaemon::start(&cluster_yaml(&kube)).await;
    let pem = data(&bundle_secret(&kube).await, "ca.crt").expect("ca.crt");
    let _ = &d;

    assert!(kube.delete("", "secrets", "osm-system", "osm-ca-bundle"));
    let started = Instant::now();
    let restored = bundle_secret(&kube).await;
    assert_eq!(data(&restored, "ca.crt").as_deref(), Some(pem.as_str()));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "restored within seconds"
    );

    let mut tampered = restored.clone();
    tampered["data"]["ca.crt"] = json!(b64("not the bundle"));
    tampered["data"]["extra.txt"] = json!(b64("someone else's key"));
    kube.put("", "secrets", tampered);
    let fixed = eventually("ca.crt restored", Duration::from_secs(5), || {
        let s = kube.get("", "secrets", "osm-system", "osm-ca-bundle")?;
        (data(&s, "ca.crt").as_deref() == Some(pem.as_str())).then_some(s)
    })
    .await;
    assert_eq!(
        data(&fixed, "extra.txt").as_deref(),
        Some("someone else's key"),
        "others' keys are left alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_update_is_retried() {
    let kube = KubeStandIn::start().await;
    let _d = TestDaemon::start(&cluster_yaml(&kube)).await;
    let secret = bundle_secret(&kube).await;
    let pem = data(&secret, "ca.crt").expect("ca.crt");
    kube.force_conflicts(3);
    let mut tampered = secret.clone();
    tampered["data"]["ca.crt"] = json!(b64("stale"));
    kube.put("", "secrets", tampered);
    eventually(
        "ca.crt restored despite conflicts",
        Duration::from_secs(10),
        || {
            let s = kube.get("", "secrets", "osm-system", "osm-ca-bundle")?;
            (data(&s, "ca.crt").as_deref() == Some(pem.as_str())).then_some(())
        },
    )
    .await;
    let puts = kube
        .requests()
        .iter()
        .filter(|r| r.starts_with("PUT /api/v1/namespaces/osm-system/secrets/osm-ca-bundle"))
        .count();
    assert!(puts >= 4, "three conflicts, then success: {puts} PUTs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_starting_together_converge_on_one_root_and_one_leader() {
    let kube = KubeStandIn::start().await;
    let yaml = cluster_yaml(&kube);
    let (a, b) = tokio::join!(TestDaemon::start(&yaml), TestDaemon::start(&yaml));
    assert_eq!(
        certs(&a.bundle_pem().await),
        certs(&b.bundle_pem().await),
        "one root"
    );
    let root = kube
        .get("", "secrets", "osm-system", "meshca-tresor-root")
        .expect("root");
    assert_eq!(
        certs(&data(&root, "tls.crt").expect("crt")),
        certs(&a.bundle_pem().await)
    );

    // A certificate from either replica verifies with the other's bundle.
    let token_a = a.token("bookstore", "bookstore");
    let (status, _, body) = a
        .post(
            &a.client().await,
            Some(&token_a),
            &json!({ "csr": csr(&key()) }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    verify(
        body["certificate_chain"].as_str().expect("chain"),
        &b.bundle_pem().await,
        webpki::KeyUsage::server_auth(),
    )
    .expect("verifies with the other replica's bundle");

    let lease = eventually("the Lease", Duration::from_secs(10), || {
        kube.get(
            "coordination.k8s.io",
            "leases",
            "osm-system",
            "meshca-leader",
        )
    })
    .await;
    assert!(
        lease["spec"]["holderIdentity"]
            .as_str()
            .is_some_and(|h| !h.is_empty()),
        "{lease}"
    );
    let creates = kube
        .requests()
        .iter()
        .filter(|r| *r == "POST /api/v1/namespaces/osm-system/secrets")
        .count();
    assert!(creates >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_osm_style_bundle_with_its_private_key_is_imported_once_and_the_key_removed() {
    let kube = KubeStandIn::start().await;
    // What OSM's Tresor wrote: ca.crt and private.key in osm-ca-bundle.
    let osm_key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "osm-ca.openservicemesh.io");
    let osm_cert = params.self_signed(&osm_key).expect("ca").pem();
    kube.put(
        "",
        "secrets",
        json!({
            "metadata": { "name": "osm-ca-bundle", "namespace": "osm-system" },
            "data": {
                "ca.crt": b64(&osm_cert),
                "private.key": b64(&osm_key.serialize_pem()),
                "expiration": b64("2036-01-01T00:00:00Z"),
            },
        }),
    );
    let d = TestDaemon::start(&cluster_yaml(&kube)).await;
    assert_eq!(
        certs(&d.bundle_pem().await),
        certs(&osm_cert),
        "the OSM root is meshca's root now"
    );
    let root = kube
        .get("", "secrets", "osm-system", "meshca-tresor-root")
        .expect("root Secret");
    assert_eq!(
        certs(&data(&root, "tls.crt").expect("crt")),
        certs(&osm_cert)
    );
    let bundle = eventually("private.key removed", Duration::from_secs(5), || {
        let s = kube.get("", "secrets", "osm-system", "osm-ca-bundle")?;
        data(&s, "private.key").is_none().then_some(s)
    })
    .await;
    assert_eq!(
        data(&bundle, "expiration").as_deref(),
        Some("2036-01-01T00:00:00Z"),
        "other keys stay"
    );

    let token = d.token("bookstore", "bookstore");
    let (status, _, body) = d
        .post(
            &d.client().await,
            Some(&token),
            &json!({ "csr": csr(&key()) }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    verify(
        body["certificate_chain"].as_str().expect("chain"),
        &osm_cert,
        webpki::KeyUsage::client_auth(),
    )
    .expect("workloads that trust the OSM root keep working");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_are_checked_with_token_review_for_the_meshca_audience() {
    let kube = KubeStandIn::start().await;
    let d = TestDaemon::start(&cluster_yaml(&kube)).await;
    let client = d.client().await;
    let good = kube.service_account_token_for("bookstore", "bookstore-v1", &["meshca"]);
    let (status, _, body) = d
        .post(&client, Some(&good), &json!({ "csr": csr(&key()) }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["identity"], "bookstore-v1.bookstore.cluster.local");

    // Cached: a burst of renewals is one TokenReview.
    let before = kube.reviews();
    for _ in 0..5 {
        let (status, _, _) = d
            .post(&client, Some(&good), &json!({ "csr": csr(&key()) }))
            .await;
        assert_eq!(status, 200);
    }
    assert_eq!(kube.reviews(), before, "answered from the cache");

    let other_audience = kube.service_account_token_for("bookstore", "bookstore-v1", &["vault"]);
    let (status, _, body) = d
        .post(
            &client,
            Some(&other_audience),
            &json!({ "csr": csr(&key()) }),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthenticated");

    let revoked = kube.service_account_token_for("bookstore", "bookstore-v1", &["meshca"]);
    kube.revoke(&revoked);
    let (status, _, _) = d
        .post(&client, Some(&revoked), &json!({ "csr": csr(&key()) }))
        .await;
    assert_eq!(status, 401, "an unknown or expired token");

    let pem = csr_with(&key(), |p| {
        p.subject_alt_names = vec![rcgen::SanType::DnsName(
            "bookbuyer.bookbuyer.cluster.local".try_into().expect("dns"),
        )];
    });
    let (status, _, body) = d.post(&client, Some(&good), &json!({ "csr": pem })).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "identity_mismatch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_api_server_is_down_renewals_by_certificate_go_on_and_readyz_says_so() {
    let kube = KubeStandIn::start().await;
    let d = TestDaemon::start(&cluster_yaml(&kube)).await;
    let client = d.client().await;
    let token = kube.service_account_token_for("bookstore", "bookstore", &["meshca"]);
    let k = key();
    let (status, _, first) = d
        .post(&client, Some(&token), &json!({ "csr": csr(&k) }))
        .await;
    assert_eq!(status, 200, "{first}");
    let plain = reqwest::Client::new();
    let ready = |url: String| {
        let plain = plain.clone();
        async move {
            plain
                .get(url)
                .send()
                .await
                .expect("readyz")
                .status()
                .as_u16()
        }
    };
    eventually_async(|| ready(d.metrics_url("/readyz")), 200).await;

    kube.set_unavailable(true);
    let mtls = support::client(
        &d.bundle_pem().await,
        Some((
            first["certificate_chain"].as_str().expect("chain"),
            &k.serialize_pem(),
        )),
    );
    let (status, _, renewed) = d.post(&mtls, None, &json!({ "csr": csr(&key()) })).await;
    assert_eq!(
        status, 200,
        "renewal with a certificate needs no API server: {renewed}"
    );
    eventually_async(|| ready(d.metrics_url("/readyz")), 503).await;
    // The health monitor probes the API server once a second; /readyz
    // reports what it last found.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let body = plain
            .get(d.metrics_url("/readyz"))
            .send()
            .await
            .expect("readyz")
            .text()
            .await
            .expect("text");
        if body.contains("kubernetes API") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fresh = kube.service_account_token_for("bookstore", "bookstore", &["meshca"]);
    let (status, headers, body) = d
        .post(&client, Some(&fresh), &json!({ "csr": csr(&key()) }))
        .await;
    assert_eq!(status, 503, "a new token cannot be checked now: {body}");
    assert_eq!(body["error"]["code"], "auth_unavailable");
    assert!(headers.contains_key("retry-after"));

    kube.set_unavailable(false);
    eventually_async(|| ready(d.metrics_url("/readyz")), 200).await;
    let (status, _, body) = d
        .post(&client, Some(&fresh), &json!({ "csr": csr(&key()) }))
        .await;
    assert_eq!(status, 200, "recovered: {body}");
}

async fn eventually_async<F, Fut>(mut f: F, want: u16)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = f().await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "still {got}, wanted {want}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `meshca serve ARGS` as a process with `KUBECONFIG` (and a `HOME`
/// without `~/.kube`) plus `env`, killed on drop.
struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve_with_kubeconfig(
    dir: &std::path::Path,
    kube: &KubeStandIn,
    args: &[&str],
    env: &[(&str, &str)],
) -> Serve {
    Serve(
        std::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
            .current_dir(dir)
            .env("KUBECONFIG", kube.kubeconfig())
            .env("HOME", dir)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .envs(env.iter().copied())
            .arg("serve")
            .args(args)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("meshca serve"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabled_without_a_path_finds_the_cluster_through_kubeconfig() {
    let kube = KubeStandIn::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (api, metrics) = (support::process::free_port(), support::process::free_port());
    std::fs::write(
        dir.path().join("meshca.yaml"),
        format!("listen: 127.0.0.1:{api}\nmetrics_listen: 127.0.0.1:{metrics}\nkubernetes: {{ enabled: true, lease_duration: 3s }}\n"),
    )
    .expect("config");
    let _serve = serve_with_kubeconfig(dir.path(), &kube, &["-c", "meshca.yaml"], &[]);
    let secret = eventually(
        "osm-ca-bundle from KUBECONFIG",
        Duration::from_secs(20),
        || kube.get("", "secrets", "osm-system", "osm-ca-bundle"),
    )
    .await;
    assert!(data(&secret, "ca.crt").is_some_and(|pem| pem.contains("BEGIN CERTIFICATE")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_never_touches_the_cluster_kubeconfig_names() {
    let kube = KubeStandIn::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let _serve = serve_with_kubeconfig(dir.path(), &kube, &[], &[]);
    // Serving (the bundle file is written before the listener opens).
    eventually("the daemon serving", Duration::from_secs(20), || {
        dir.path()
            .join("meshca-data/bundle/ca.crt")
            .exists()
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        kube.requests().is_empty(),
        "a laptop's cluster is never used by the embedded default: {:?}",
        kube.requests()
    );
    assert!(kube
        .get("", "secrets", "osm-system", "osm-ca-bundle")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rollout_stage_is_an_event_on_meshcas_own_pod() {
    let kube = KubeStandIn::start().await;
    let pod =
        support::process::PodRootRotation::start(env!("CARGO_BIN_EXE_meshca"), kube.kubeconfig());
    eventually("osm-ca-bundle", Duration::from_secs(20), || {
        kube.get("", "secrets", "osm-system", "osm-ca-bundle")
    })
    .await;
    pod.rotate();
    let notes = eventually(
        "rollout Events up to retire",
        Duration::from_secs(30),
        || {
            let notes: Vec<String> = kube
                .list("events.k8s.io", "events", "osm-system")
                .iter()
                .filter(|e| e["reason"] == "SignerRollout" && e["regarding"]["name"] == "meshca-0")
                .map(|e| e["note"].as_str().unwrap_or_default().to_owned())
                .collect();
            notes.iter().any(|n| n.contains("retire")).then_some(notes)
        },
    )
    .await;
    for stage in ["distribute", "switch", "reissue", "retire"] {
        assert!(
            notes.iter().any(|n| n.contains(stage)),
            "{stage} missing from {notes:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_identity_deny_edits_the_configmap_every_replica_follows() {
    let kube = KubeStandIn::start().await;
    let d = TestDaemon::start(&cluster_yaml(&kube)).await;
    let token = d.token("shop", "web");
    let sign = || async {
        let (status, _, body) = d
            .post(
                &d.client().await,
                Some(&token),
                &json!({ "csr": support::named_csr("shop", "web") }),
            )
            .await;
        (status, body)
    };
    assert_eq!(sign().await.0, 200);

    // The CLI, as an admin runs it against the same config (kubeconfig).
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("meshca.yaml");
    std::fs::write(&config, cluster_yaml(&kube)).expect("config");
    let cli = |verb: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
            .current_dir(dir.path())
            .args(["identity", verb, "shop/web", "-c"])
            .arg(&config)
            .output()
            .expect("meshca");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    let said = cli("deny");
    assert!(
        said.contains("ConfigMap osm-system/meshca-denied"),
        "{said}"
    );
    let cm = kube
        .get("", "configmaps", "osm-system", "meshca-denied")
        .expect("the ConfigMap");
    assert!(cm["data"]["denied.yaml"]
        .as_str()
        .is_some_and(|t| t.contains("service_account: web")));
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let (status, body) = sign().await;
        if status == 403 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "still {status} 5 s after the deny"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused["error"]["code"], "identity_denied");
    assert!(d.metrics().await.contains("meshca_identities_denied 1"));
    // The daemon's own state directory never held the list.
    assert!(!d.dir.path().join("denied.yaml").exists());

    cli("allow");
    eventually("signing allowed again", Duration::from_secs(5), || {
        kube.get("", "configmaps", "osm-system", "meshca-denied")
            .filter(|cm| {
                !cm["data"]["denied.yaml"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("web")
            })
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while sign().await.0 != 200 {
        assert!(Instant::now() < deadline, "still refused after allow");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
