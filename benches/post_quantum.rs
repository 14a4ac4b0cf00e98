//! Post-quantum costs, each beside its floor or peer in the same run:
//!
//! - ML-DSA-65 issuance: `meshca serve` with a post-quantum Tresor root,
//!   one worker thread on core 0, driven by wrk on core 1 with 8
//!   keep-alive connections and 64 ML-DSA-65 CSRs; CPU per certificate
//!   against the floor (aws-lc-rs's ML-DSA-65 verify of each CSR plus one
//!   ML-DSA-65 signature, on one thread here), and against a P-256 leaf
//!   from the same daemon.
//! - Key exchange: full TLS 1.3 handshakes (no resumption) with meshca's
//!   signing API from a rustls client on core 1, offering X25519MLKEM768
//!   only, then X25519 only, alternating; handshakes per second and the
//!   server's CPU per handshake.
//!
//! Needs `wrk` (`apt-get install wrk`).
//! Run: `cargo bench --bench post_quantum` (optionally `-- --seconds N`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use meshca_test_support::bench::{
    cpu_during, crypto_floor, ml_dsa_65_csrs, ml_dsa_65_floor, p256_csrs, pin, write_bodies, wrk,
    Credential, Load, LOAD_CORE,
};
use meshca_test_support::process::{bench_token, numeric_arg, ServeProcess};
use rustls::pki_types::{CertificateDer, ServerName};

const BIN: &str = env!("CARGO_BIN_EXE_meshca");

fn main() {
    let seconds = numeric_arg("seconds", 10);
    let duration = Duration::from_secs(seconds as u64);
    let dir = tempfile::tempdir().expect("tempdir");
    let (ml_dsa, p256) = (ml_dsa_65_csrs(64), p256_csrs(64));
    write_bodies(&dir.path().join("ml-dsa"), "csr", &ml_dsa);
    write_bodies(&dir.path().join("p256"), "csr", &p256);
    pin("self", LOAD_CORE);

    let (meshca, state, api) = ServeProcess::with_config(
        BIN,
        "api: { per_identity_per_second: 1000000, per_identity_burst: 1000000 }\nprovider: { kind: tresor, tresor: { post_quantum: { key_algorithm: ml-dsa-65 } } }\n",
    );
    let token = state.path().join("bench-token");
    std::fs::write(&token, bench_token(BIN, state.path())).expect("token file");
    let url = format!("https://127.0.0.1:{api}/v1/certificates");
    println!("post-quantum: server on core 0, load on core 1, {seconds} s per run");
    issuance(
        &meshca,
        (&url, &token),
        dir.path(),
        duration,
        (&ml_dsa, &p256),
    );
    let bundle = std::fs::read_to_string(state.path().join("meshca-data/bundle/ca.crt"))
        .or_else(|_| std::fs::read_to_string(state.path().join("bundle/ca.crt")))
        .expect("the bundle");
    handshakes(&meshca, api, &bundle, duration);
}

/// CPU per certificate for ML-DSA-65 and P-256 leaves, and the ML-DSA
/// floor.
fn issuance(
    meshca: &ServeProcess,
    (url, token): (&str, &std::path::Path),
    dir: &std::path::Path,
    duration: Duration,
    (ml_dsa, p256): (
        &[meshca_test_support::bench::Csr],
        &[meshca_test_support::bench::Csr],
    ),
) {
    let load = |bodies: &str| Load {
        url: url.to_owned(),
        bodies: dir.join(bodies),
        credential: Credential::Bearer(token.to_owned()),
        connections: 8,
        duration,
        stop_after: None,
        statuses: false,
    };
    let mut per_cert = Vec::new();
    for (name, bodies) in [("ML-DSA-65 leaf", "ml-dsa"), ("P-256 leaf", "p256")] {
        let run = load(bodies);
        wrk(&Load {
            duration: Duration::from_secs(2),
            ..run.clone()
        });
        let (outcome, cpu) = cpu_during(&[meshca.pid()], || wrk(&run));
        outcome.assert_all_answered(name);
        let cost = cpu[0] / outcome.answers as f64;
        println!(
            "{name:<28} {:>8.0} certs/s  p99 {:>6.2} ms  CPU {:>8.4} ms/cert",
            outcome.rate(),
            outcome.p99_ms,
            cost * 1e3
        );
        per_cert.push(cost);
    }
    let ml_floor = ml_dsa_65_floor(ml_dsa, 2_000);
    let p256_floor = crypto_floor(p256, 20_000);
    println!(
        "floors: ML-DSA-65 verify + sign {:.4} ms, P-256 verify + sign {:.4} ms",
        ml_floor * 1e3,
        p256_floor * 1e3
    );
    println!(
        "ML-DSA-65 leaf / its floor: {:.2}x; P-256 leaf / its floor: {:.2}x; ML-DSA-65 / P-256 leaf: {:.2}x",
        per_cert[0] / ml_floor,
        per_cert[1] / p256_floor,
        per_cert[0] / per_cert[1]
    );
}

/// Full handshakes per second with each key exchange group, alternating.
fn handshakes(meshca: &ServeProcess, api: u16, bundle: &str, duration: Duration) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let groups = [
        ("X25519MLKEM768", rustls::NamedGroup::X25519MLKEM768),
        ("X25519", rustls::NamedGroup::X25519),
    ];
    let mut results = [(0.0, 0.0), (0.0, 0.0)];
    for _round in 0..2 {
        for (i, (_, group)) in groups.iter().enumerate() {
            let client = client_for(bundle, *group);
            let ((count, elapsed), cpu) = cpu_during(&[meshca.pid()], || {
                runtime.block_on(handshake_loop(client, api, duration / 2))
            });
            results[i].0 += count as f64 / elapsed;
            results[i].1 += cpu[0] / count as f64;
        }
    }
    for ((name, _), (rate, cpu)) in groups.iter().zip(results) {
        println!(
            "TLS 1.3 full handshake, {name:<15} {:>7.0}/s  server CPU {:>7.4} ms/handshake",
            rate / 2.0,
            cpu / 2.0 * 1e3
        );
    }
    println!(
        "X25519MLKEM768 / X25519: {:.2}x the server CPU per handshake, {:.2}x the rate",
        results[0].1 / results[1].1,
        results[0].0 / results[1].0
    );
}

/// A rustls client trusting `bundle` that offers only `group`, without
/// resumption.
fn client_for(bundle: &str, group: rustls::NamedGroup) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups.retain(|g| g.name() == group);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(cert.expect("anchor")).expect("anchor");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Handshakes completed one after another for `duration`; how many, in
/// how long.
async fn handshake_loop(
    config: Arc<rustls::ClientConfig>,
    api: u16,
    duration: Duration,
) -> (u64, f64) {
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from("localhost").expect("name");
    let started = Instant::now();
    let mut count = 0;
    while started.elapsed() < duration {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", api))
            .await
            .expect("connect");
        let tls = connector
            .connect(name.clone(), tcp)
            .await
            .expect("handshake");
        drop(tls);
        count += 1;
    }
    (count, started.elapsed().as_secs_f64())
}
