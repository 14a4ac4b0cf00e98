//! 1,000 PodCertificateRequests created at once: the time until every one
//! is issued, requests per second, and meshca's CPU per request beside the
//! crypto floor measured in the same run.
//!
//! No kube-apiserver can run here: the Kubernetes API stand-in plays it, in
//! this process (its CPU is reported too, as the API server's share). The
//! real `meshca serve` runs as its own process (one worker thread, pinned to
//! core 0 when `taskset` exists), so its CPU time, read from
//! /proc/<pid>/stat, is meshca's alone. The requests come from 100
//! identities (10 namespaces × 10 ServiceAccounts), as a rollout of many
//! Deployments would; each has its own P-256 stub CSR, made before timing.
//!
//! Run: `cargo bench --bench pod_certificates` (optionally `-- --requests N`).

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use meshca_test_support::bench::{crypto_floor, p256_csrs};
use meshca_test_support::kube::KubeStandIn;
use meshca_test_support::process::{cpu_seconds, numeric_arg, ServeProcess};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_meshca");
const SIGNER: &str = "meshca.io/workload";

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let requests = numeric_arg("requests", 1000);
    let kube = KubeStandIn::start().await;
    let namespaces: Vec<String> = (0..10).map(|i| format!("team-{i}")).collect();
    for ns in &namespaces {
        kube.create_namespace(ns);
    }
    let (server, _dir, _) = ServeProcess::with_config(
        BIN,
        &format!(
            "kubernetes: {{ kubeconfig: {}, lease_duration: 3s }}\npod_certificates: {{ enabled: true }}\n",
            kube.kubeconfig().display()
        ),
    );
    // Leading, with the trust bundle out: ready to sign.
    let deadline = Instant::now() + Duration::from_secs(30);
    while kube
        .get(
            "certificates.k8s.io",
            "clustertrustbundles",
            "",
            "meshca.io:workload:trust-bundle",
        )
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "meshca never published its ClusterTrustBundle"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let csrs = p256_csrs(requests);
    let objects: Vec<_> = (0..requests)
        .map(|i| {
            let ns = &namespaces[i % namespaces.len()];
            json!({
                "apiVersion": "certificates.k8s.io/v1",
                "kind": "PodCertificateRequest",
                "metadata": { "namespace": ns, "name": format!("pod-{i}") },
                "spec": {
                    "signerName": SIGNER,
                    "podName": format!("pod-{i}"),
                    "podUID": format!("uid-{i}"),
                    "serviceAccountName": format!("sa-{}", (i / namespaces.len()) % 10),
                    "serviceAccountUID": "uid",
                    "nodeName": "node", "nodeUID": "uid-node",
                    "maxExpirationSeconds": 86_400,
                    "stubPKCS10Request": STANDARD.encode(&csrs[i].der),
                }
            })
        })
        .collect();

    let (meshca_before, ours_before) = (server.cpu_seconds(), cpu_seconds("self"));
    let started = Instant::now();
    for object in objects {
        kube.put("certificates.k8s.io", "podcertificaterequests", object);
    }
    let created = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    let issued = loop {
        let issued = namespaces
            .iter()
            .flat_map(|ns| kube.list("certificates.k8s.io", "podcertificaterequests", ns))
            .filter(|p| p["status"]["certificateChain"].is_string())
            .count();
        if issued == requests || Instant::now() > deadline {
            break issued;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let elapsed = started.elapsed();
    let meshca_cpu = server.cpu_seconds() - meshca_before;
    let standin_cpu = cpu_seconds("self") - ours_before;
    let floor = Duration::from_secs_f64(crypto_floor(&csrs, 20_000));

    let per = |seconds: f64| Duration::from_secs_f64(seconds / requests as f64);
    let meshca_per = per(meshca_cpu);
    println!("pod certificates: {requests} PodCertificateRequests created at once ({created:.2?} to create)");
    println!("  issued:                  {issued}/{requests} in {elapsed:.2?}");
    println!(
        "  throughput:              {:.0} PCRs/s",
        issued as f64 / elapsed.as_secs_f64()
    );
    println!("  meshca CPU per PCR:      {meshca_per:.3?}");
    println!(
        "  stand-in API server CPU per PCR (this process, polling included): {:.3?}",
        per(standin_cpu)
    );
    println!("  crypto floor (aws-lc-rs P-256 verify + sign): {floor:.3?}");
    println!(
        "  meshca / floor:          {:.2}x",
        meshca_per.as_secs_f64() / floor.as_secs_f64()
    );
    assert_eq!(issued, requests, "every request issued");
}
