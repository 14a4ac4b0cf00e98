//! CPU per certificate over Istio's certificate service, beside the HTTPS
//! signing API and the crypto floor, all measured in the same run.
//!
//! - meshca: the real `meshca serve` (embedded default: Tresor, ECDSA
//!   P-256 root), one worker thread on core 0, serving both APIs; the
//!   caller authenticates with a bearer token on both.
//! - Istio's API: `CreateCertificate` over gRPC (HTTP/2, TLS), the CSR as
//!   istio-agent sends it.
//! - The HTTPS API: `POST /v1/certificates` with the same CSR, also over
//!   HTTP/2, so that only the API differs.
//! - The floor: aws-lc-rs's P-256 verify of the CSR plus one P-256 sign, on one
//!   thread in this process: what any CA must spend per certificate.
//!
//! h2load (nghttp2) on core 1 drives each API with 8 connections, one
//! request in flight on each, for the same time. CPU comes from meshca's
//! /proc/<pid>/stat; every gRPC answer is checked to be a certificate
//! (`meshca_certificates_issued_total{frontend="istio"}` moves by the number
//! of answers).
//!
//! Needs `h2load` (`apt-get install nghttp2-client`).
//! Run: `cargo bench --bench istio_ca` (optionally `-- --seconds N`).

use std::path::Path;

use meshca_test_support::bench::{cpu_during, crypto_floor, p256_csrs, pin, require, LOAD_CORE};
use meshca_test_support::process::{bench_token, free_port, numeric_arg, pinned, ServeProcess};

const BIN: &str = env!("CARGO_BIN_EXE_meshca");
const GRPC_PATH: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// `istio.v1.auth.IstioCertificateRequest`, the fields the bench sends.
#[derive(Clone, PartialEq, prost::Message)]
struct IstioCertificateRequest {
    #[prost(string, tag = "1")]
    csr: String,
    #[prost(int64, tag = "3")]
    validity_duration: i64,
}

/// What h2load reported.
struct Run {
    succeeded: u64,
    failed: u64,
    rate: f64,
}

fn h2load(url: &str, body: &Path, headers: &[String], seconds: u64) -> Run {
    let bin = require("h2load", "nghttp2-client");
    let mut command = pinned(LOAD_CORE, bin);
    command
        .args(["-t1", "-c8", "-m1"])
        .arg(format!("-D{seconds}"))
        .arg("-d")
        .arg(body);
    for h in headers {
        command.arg("-H").arg(h);
    }
    let out = command.arg(url).output().expect("h2load");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "h2load failed:\n{text}");
    let field = |line: &str, after: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.split(after).next())
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {line:?} in h2load's output:\n{text}"))
    };
    Run {
        succeeded: field("requests:", " succeeded") as u64,
        failed: field("requests:", " failed") as u64,
        rate: field("finished in", " req/s"),
    }
}

/// `meshca_certificates_issued_total` for `frontend` and success, read
/// with curl (the bench has no async runtime).
fn issued(metrics_port: u16, frontend: &str) -> u64 {
    let out = std::process::Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{metrics_port}/metrics")])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let series = format!(
        "meshca_certificates_issued_total{{frontend=\"{frontend}\",provider=\"tresor\",result=\"success\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let seconds = numeric_arg("seconds", 10) as u64;
    let dir = tempfile::tempdir().expect("tempdir");
    let csr = p256_csrs(1).remove(0);
    pin("self", LOAD_CORE);

    let (api, metrics, istio) = (free_port(), free_port(), free_port());
    let state = tempfile::tempdir().expect("state");
    std::fs::write(
        state.path().join("bench.yaml"),
        format!(
            "listen: 127.0.0.1:{api}\nmetrics_listen: 127.0.0.1:{metrics}\napi: {{ per_identity_per_second: 1000000, per_identity_burst: 1000000 }}\nistio_ca: {{ enabled: true, listen: '127.0.0.1:{istio}', serving_dns_names: [localhost] }}\n"
        ),
    )
    .expect("config");
    let meshca = ServeProcess::start(BIN, state.path(), "bench.yaml", api);
    let token = bench_token(BIN, state.path());

    let grpc_body = dir.path().join("grpc.bin");
    let message = prost::Message::encode_to_vec(&IstioCertificateRequest {
        csr: csr.pem.clone(),
        validity_duration: 3600,
    });
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(message.len()).expect("size").to_be_bytes());
    framed.extend_from_slice(&message);
    std::fs::write(&grpc_body, framed).expect("gRPC body");
    let json_body = dir.path().join("api.json");
    std::fs::write(
        &json_body,
        serde_json::json!({ "csr": csr.pem }).to_string(),
    )
    .expect("body");
    let bearer = format!("authorization: Bearer {token}");

    println!(
        "signing one P-256 certificate: meshca on core 0, h2load on core 1, 8 HTTP/2 connections, {seconds} s each"
    );
    let grpc_headers = [
        bearer.clone(),
        "content-type: application/grpc".to_owned(),
        "te: trailers".to_owned(),
    ];
    let json_headers = [bearer.clone(), "content-type: application/json".to_owned()];
    let istio_url = format!("https://127.0.0.1:{istio}{GRPC_PATH}");
    let api_url = format!("https://127.0.0.1:{api}/v1/certificates");
    // Warm both paths up outside the measured windows.
    h2load(&istio_url, &grpc_body, &grpc_headers, 1);
    h2load(&api_url, &json_body, &json_headers, 1);

    let floor_before = crypto_floor(std::slice::from_ref(&csr), 20_000);
    let before = issued(metrics, "istio");
    let (istio_run, istio_cpu) = cpu_during(&[meshca.pid()], || {
        h2load(&istio_url, &grpc_body, &grpc_headers, seconds)
    });
    let granted = issued(metrics, "istio") - before;
    let (api_run, api_cpu) = cpu_during(&[meshca.pid()], || {
        h2load(&api_url, &json_body, &json_headers, seconds)
    });
    let floor = (floor_before + crypto_floor(std::slice::from_ref(&csr), 20_000)) / 2.0;
    // A gRPC error is an HTTP 200 too: only the issuance count tells. The
    // requests in flight when h2load's time is up (one per connection) are
    // issued but not counted as answered.
    assert!(
        istio_run.failed == 0 && (istio_run.succeeded..=istio_run.succeeded + 8).contains(&granted),
        "gRPC answers that were not certificates: {} answered, {granted} issued",
        istio_run.succeeded
    );
    assert_eq!(api_run.failed, 0, "HTTPS API answers that were not 200");

    println!(
        "{:<34} {:>9} {:>13} {:>8}",
        "", "certs/s", "CPU ms/cert", "x floor"
    );
    println!(
        "{:<34} {:>9} {:>13.4} {:>8.2}",
        "aws-lc-rs P-256 verify + sign (floor)",
        "",
        floor * 1e3,
        1.0
    );
    for (name, run, cpu) in [
        ("Istio CreateCertificate (gRPC)", &istio_run, istio_cpu[0]),
        ("POST /v1/certificates (HTTP/2)", &api_run, api_cpu[0]),
    ] {
        let per_cert = cpu / run.succeeded as f64;
        println!(
            "{:<34} {:>9.0} {:>13.4} {:>8.2}",
            name,
            run.rate,
            per_cert * 1e3,
            per_cert / floor
        );
    }
}
