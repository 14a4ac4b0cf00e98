//! Throughput, latency and server CPU cost of `POST /v1/certificates`.
//!
//! Starts the real `meshca serve` (embedded-default layout: Tresor, ECDSA
//! P-256 root) on loopback, then drives it over HTTPS with keep-alive
//! connections from this process at concurrency 1, 8 and 32, each request a
//! fresh P-256 CSR. Server CPU time comes from the daemon's own
//! /proc/<pid>/stat, so the client's cost is not counted.
//!
//! Run: `cargo bench --bench signing_api` (optionally `-- --requests N`).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshca_test_support::process::{numeric_arg, ServeProcess};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

const BIN: &str = env!("CARGO_BIN_EXE_meshca");

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let requests = numeric_arg("requests", 4000);
    let _ = rustls::crypto::ring::default_provider().install_default();

    // One worker thread pinned to one core, so the figure is "CPU per
    // certificate on one core"; the load generator gets the other core.
    let (server, dir, api) = ServeProcess::with_config(
        BIN,
        "api: { per_identity_per_second: 1000000, per_identity_burst: 1000000, max_in_flight: 4096 }\n",
    );
    let bundle_path = dir.path().join("meshca-data/bundle/ca.crt");
    let token = Command::new(BIN)
        .current_dir(dir.path())
        .args([
            "token",
            "create",
            "-c",
            "bench.yaml",
            "--namespace",
            "bench",
            "--service-account",
            "bench",
        ])
        .output()
        .expect("token create");
    let token = String::from_utf8(token.stdout)
        .expect("token")
        .trim()
        .to_owned();

    let bundle = std::fs::read(&bundle_path).expect("bundle");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&bundle) {
        roots.add(c.expect("cert")).expect("root");
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();

    // Distinct P-256 CSRs, made before timing starts.
    let csrs: Arc<Vec<String>> = Arc::new(
        (0..512)
            .map(|_| {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
                let mut p = rcgen::CertificateParams::default();
                p.distinguished_name = rcgen::DistinguishedName::new();
                serde_json::json!({ "csr": p.serialize_request(&key).expect("csr").pem().expect("pem") }).to_string()
            })
            .collect(),
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let url = format!("https://127.0.0.1:{api}/v1/certificates");
    println!("meshca signing API: POST /v1/certificates over HTTPS keep-alive, P-256 CSRs, Tresor P-256 root");
    println!(
        "{:>11} {:>9} {:>12} {:>10} {:>10} {:>22}",
        "concurrency", "requests", "certs/s", "p50 ms", "p99 ms", "server CPU ms/cert"
    );
    for concurrency in [1usize, 8, 32] {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls.clone())
            .pool_max_idle_per_host(concurrency)
            .build()
            .expect("client");
        let run = |n: usize| {
            let client = client.clone();
            let csrs = csrs.clone();
            let url = url.clone();
            let token = token.clone();
            runtime.block_on(async move {
                let per_worker = n / concurrency;
                let workers = (0..concurrency).map(|w| {
                    let client = client.clone();
                    let csrs = csrs.clone();
                    let url = url.clone();
                    let token = token.clone();
                    tokio::spawn(async move {
                        let mut latencies = Vec::with_capacity(per_worker);
                        for i in 0..per_worker {
                            let body = csrs[(w * per_worker + i) % csrs.len()].clone();
                            let started = Instant::now();
                            let resp = client
                                .post(&url)
                                .bearer_auth(&token)
                                .header("content-type", "application/json")
                                .body(body)
                                .send()
                                .await
                                .expect("request");
                            assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
                            let _ = resp.bytes().await.expect("body");
                            latencies.push(started.elapsed());
                        }
                        latencies
                    })
                });
                let mut all = Vec::with_capacity(n);
                for w in futures_util::future::join_all(workers).await {
                    all.extend(w.expect("worker"));
                }
                all
            })
        };
        run(200.max(concurrency * 10)); // warm up connections and caches
        let cpu_before = server.cpu_seconds();
        let started = Instant::now();
        let mut latencies = run(requests);
        let wall = started.elapsed();
        let cpu = server.cpu_seconds() - cpu_before;
        latencies.sort_unstable();
        let n = latencies.len();
        println!(
            "{:>11} {:>9} {:>12.0} {:>10.3} {:>10.3} {:>22.4}",
            concurrency,
            n,
            n as f64 / wall.as_secs_f64(),
            percentile(&latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            cpu / n as f64 * 1e3,
        );
    }
}
