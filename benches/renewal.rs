//! A sidecar's renewal: one new TLS connection per renewal, authenticated
//! by the workload's current certificate (mTLS), beside the TLS handshake
//! alone on the same kind of connection.
//!
//! The real `meshca serve` (embedded default: Tresor, P-256) runs with one
//! worker thread on core 0; this process is the client, on core 1. Each of
//! 8 tasks connects, completes a TLS 1.3 handshake presenting the
//! workload's certificate (no session resumption, as a sidecar that
//! restarted), sends `POST /v1/certificates` with a CSR for a new key and
//! `Connection: close`, and reads the answer. The handshake-alone run makes
//! the same connections and closes each right after the handshake. CPU
//! comes from the daemon's own /proc/<pid>/stat.
//!
//! Run: `cargo bench --bench renewal` (optionally `-- --renewals N`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use meshca_test_support::bench::{cpu_during, p256_csrs, pin, LOAD_CORE};
use meshca_test_support::process::{bench_token, numeric_arg, ServeProcess};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const BIN: &str = env!("CARGO_BIN_EXE_meshca");
const CONNECTIONS: usize = 8;

fn main() {
    let renewals = numeric_arg("renewals", 4000);
    let csrs = p256_csrs(renewals);
    pin("self", LOAD_CORE);
    let (server, dir, port) = ServeProcess::with_config(
        BIN,
        "api: { per_identity_per_second: 1000000, per_identity_burst: 1000000 }\n",
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let bundle = std::fs::read(dir.path().join("meshca-data/bundle/ca.crt")).expect("bundle");
    let token = bench_token(BIN, dir.path());
    let workload = runtime.block_on(first_certificate(port, &bundle, &token));
    let connector = TlsConnector::from(Arc::new(client_config(&bundle, workload)));

    let bodies: Vec<String> = csrs
        .iter()
        .map(|c| serde_json::json!({ "csr": c.pem }).to_string())
        .collect();
    println!("renewal over mTLS: a new TLS 1.3 connection per renewal, {CONNECTIONS} at a time, daemon on core 0");
    println!(
        "{:<36} {:>8} {:>10} {:>8} {:>8} {:>12}",
        "", "count", "per s", "p50 ms", "p99 ms", "CPU ms/each"
    );
    let mut costs = Vec::new();
    for (name, with_request) in [
        ("handshake alone (client certificate)", false),
        ("renewal (handshake + new certificate)", true),
        ("handshake alone, again", false),
    ] {
        let batch = bodies.clone();
        let ((latencies, wall), cpu) = cpu_during(&[server.pid()], || {
            runtime.block_on(drive(connector.clone(), port, batch, with_request))
        });
        let per = cpu[0] / renewals as f64;
        costs.push(per);
        println!(
            "{:<36} {:>8} {:>10.0} {:>8.2} {:>8.2} {:>12.4}",
            name,
            renewals,
            renewals as f64 / wall.as_secs_f64(),
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            per * 1e3
        );
    }
    let handshake = (costs[0] + costs[2]) / 2.0;
    println!(
        "renewal / handshake alone: {:.2}x; the renewal's signing beyond the handshake: {:.4} ms",
        costs[1] / handshake,
        (costs[1] - handshake) * 1e3
    );
}

/// A workload's certificate chain and key, as the agent holds them.
struct Workload {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

async fn first_certificate(port: u16, bundle: &[u8], token: &str) -> Workload {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let tls = client_config_roots(bundle).with_no_client_auth();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .expect("client");
    let answer: serde_json::Value = client
        .post(format!("https://127.0.0.1:{port}/v1/certificates"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "csr": csr }))
        .send()
        .await
        .expect("first certificate")
        .json()
        .await
        .expect("JSON");
    let chain_pem = answer["certificate_chain"].as_str().expect("chain");
    Workload {
        chain: CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .map(|c| c.expect("certificate"))
            .collect(),
        key: PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key"),
    }
}

fn client_config_roots(
    bundle: &[u8],
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(bundle) {
        roots.add(c.expect("cert")).expect("root");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(roots)
}

fn client_config(bundle: &[u8], workload: Workload) -> rustls::ClientConfig {
    let mut config = client_config_roots(bundle)
        .with_client_auth_cert(workload.chain, workload.key)
        .expect("client certificate");
    config.resumption = rustls::client::Resumption::disabled();
    config
}

/// `bodies.len()` connections, [`CONNECTIONS`] at a time; with
/// `with_request`, each carries one renewal. Returns each connection's
/// latency (ms) and the wall time.
async fn drive(
    connector: TlsConnector,
    port: u16,
    bodies: Vec<String>,
    with_request: bool,
) -> (Vec<f64>, Duration) {
    let started = Instant::now();
    let queue = Arc::new(std::sync::Mutex::new(bodies));
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (connector, queue) = (connector.clone(), queue.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let Some(body) = queue.lock().expect("queue").pop() else {
                        return latencies;
                    };
                    let t = Instant::now();
                    one_connection(&connector, port, with_request.then_some(body)).await;
                    latencies.push(t.elapsed().as_secs_f64() * 1e3);
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    all.sort_by(f64::total_cmp);
    (all, started.elapsed())
}

async fn one_connection(connector: &TlsConnector, port: u16, body: Option<String>) {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let with_request = body.is_some();
    if let Some(body) = body {
        let request = format!(
            "POST /v1/certificates HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(request.as_bytes()).await.expect("request");
    } else {
        tls.shutdown().await.expect("close_notify");
    }
    // Read to the end, so the daemon has done all its work for this
    // connection before the next one counts.
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    if with_request && with_status(&answer) != Some(200) {
        panic!("renewal refused: {}", String::from_utf8_lossy(&answer));
    }
}

fn with_status(answer: &[u8]) -> Option<u16> {
    std::str::from_utf8(answer.get(9..12)?).ok()?.parse().ok()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
