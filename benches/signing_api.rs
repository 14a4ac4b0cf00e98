//! CPU per certificate of `POST /v1/certificates`, beside cfssl and the
//! crypto floor, all measured in the same run.
//!
//! - meshca: the real `meshca serve` (embedded default: Tresor, ECDSA
//!   P-256 root), one worker thread on core 0, HTTPS with a bearer token.
//! - cfssl: `cfssl serve` 1.2 (Debian `golang-cfssl`) with a P-256 CA, on
//!   core 0, plain HTTP (`/api/v1/cfssl/sign`).
//! - The floor: aws-lc-rs's P-256 verify of each CSR plus one P-256 sign, on one
//!   thread in this process: what any CA must spend per certificate.
//!
//! wrk on core 1 drives each server with 8 keep-alive connections for the
//! same time, with the same 64 CSRs sent over and over; meshca is driven a
//! second time with a CSR never sent before on every request. CPU comes
//! from each server's own /proc/<pid>/stat.
//!
//! With `MESHCA_BASELINE=<path to another meshca binary>`, that binary is
//! measured too, alternating with this one (A, B, A, B on the same 64
//! CSRs), and the ratio of their CPU per certificate is printed: an A/B of
//! two builds in one run on a noisy machine.
//!
//! Needs `wrk` and `cfssl` (`apt-get install wrk golang-cfssl`).
//! Run: `cargo bench --bench signing_api` (optionally `-- --seconds N`).

use std::time::Duration;

use meshca_test_support::bench::{
    cfssl, cpu_during, crypto_floor, p256_csrs, peak_rss_mib, pin, write_bodies, wrk, Credential,
    Load, LOAD_CORE,
};
use meshca_test_support::process::{bench_token, numeric_arg, ServeProcess};

const BIN: &str = env!("CARGO_BIN_EXE_meshca");
/// The sustained rate meshca must stay under for "fresh" to mean fresh.
const MAX_RATE: usize = 15_000;

fn main() {
    let seconds = numeric_arg("seconds", 10);
    let duration = Duration::from_secs(seconds as u64);
    let dir = tempfile::tempdir().expect("tempdir");

    let same = p256_csrs(64);
    let fresh = p256_csrs(MAX_RATE * seconds);
    write_bodies(&dir.path().join("meshca-same"), "csr", &same);
    write_bodies(&dir.path().join("meshca-fresh"), "csr", &fresh);
    write_bodies(&dir.path().join("cfssl-same"), "certificate_request", &same);
    // This process measures the floor; it and wrk keep off the servers' core.
    pin("self", LOAD_CORE);

    let (meshca, state, api) = ServeProcess::with_config(
        BIN,
        "api: { per_identity_per_second: 1000000, per_identity_burst: 1000000 }\n",
    );
    let token = state.path().join("bench-token");
    std::fs::write(&token, bench_token(BIN, state.path())).expect("token file");
    let (cfssl, cfssl_url) = cfssl(dir.path());

    let load = |url: &str, bodies: &str, credential: Credential| Load {
        url: url.to_owned(),
        bodies: dir.path().join(bodies),
        credential,
        connections: 8,
        duration,
        stop_after: None,
        statuses: false,
    };
    let meshca_url = format!("https://127.0.0.1:{api}/v1/certificates");
    let bearer = Credential::Bearer(token.clone());
    let runs = [
        (
            "cfssl 1.2 serve (HTTP)",
            cfssl.0.id(),
            load(&cfssl_url, "cfssl-same", Credential::None),
        ),
        (
            "meshca, same 64 CSRs",
            meshca.pid(),
            load(&meshca_url, "meshca-same", bearer.clone()),
        ),
        (
            "meshca, fresh CSRs",
            meshca.pid(),
            load(&meshca_url, "meshca-fresh", bearer),
        ),
    ];

    println!(
        "signing one P-256 certificate: server on core 0, wrk on core 1, 8 keep-alive connections, {seconds} s each"
    );
    let floor_before = crypto_floor(&same, 20_000);
    let mut results = Vec::new();
    for (name, pid, load) in &runs {
        let warm = Load {
            duration: Duration::from_secs(2),
            ..load.clone()
        };
        wrk(&warm);
        let (outcome, cpu) = cpu_during(&[*pid], || wrk(load));
        outcome.assert_all_answered(name);
        results.push((*name, cpu[0] / outcome.answers as f64, outcome));
    }
    let floor = (floor_before + crypto_floor(&same, 20_000)) / 2.0;

    println!(
        "{:<34} {:>9} {:>8} {:>8} {:>13} {:>8}",
        "", "certs/s", "p50 ms", "p99 ms", "CPU ms/cert", "x floor"
    );
    println!(
        "{:<34} {:>9} {:>8} {:>8} {:>13.4} {:>8.2}",
        "aws-lc-rs P-256 verify + sign (floor)",
        "",
        "",
        "",
        floor * 1e3,
        1.0
    );
    for (name, per_cert, o) in &results {
        println!(
            "{:<34} {:>9.0} {:>8.2} {:>8.2} {:>13.4} {:>8.2}",
            name,
            o.rate(),
            o.p50_ms,
            o.p99_ms,
            per_cert * 1e3,
            per_cert / floor
        );
    }
    let (cfssl_cost, same_cost, fresh_cost) = (results[0].1, results[1].1, results[2].1);
    println!(
        "meshca / floor: {:.2}x (target at most 1.45x); cfssl / meshca: {:.2}x (target at least 2.4x)",
        same_cost / floor,
        cfssl_cost / same_cost
    );
    println!(
        "meshca fresh / same CSRs: {:.3}x; meshca peak RSS {:.1} MiB (target under 64 MiB)",
        fresh_cost / same_cost,
        peak_rss_mib(meshca.pid())
    );
    if let Ok(baseline) = std::env::var("MESHCA_BASELINE") {
        let same = load(&meshca_url, "meshca-same", Credential::None);
        compare(&baseline, (&meshca, &meshca_url, &token), &same);
    }
    if results[2].2.answers as usize > fresh.len() {
        println!(
            "note: the fresh run outran its {} CSRs and reused some",
            fresh.len()
        );
    }
}

/// CPU per certificate of this build and of `baseline`, alternating, on
/// the same CSRs; prints both and their ratio.
fn compare(
    baseline: &str,
    (this, this_url, this_token): (&ServeProcess, &str, &std::path::Path),
    same: &Load,
) {
    let (other, other_state, other_api) = ServeProcess::with_config(
        baseline,
        "api: { per_identity_per_second: 1000000, per_identity_burst: 1000000 }\n",
    );
    let other_token = other_state.path().join("bench-token");
    std::fs::write(&other_token, bench_token(baseline, other_state.path())).expect("token file");
    let other_url = format!("https://127.0.0.1:{other_api}/v1/certificates");
    let sides = [
        (this.pid(), this_url.to_owned(), this_token.to_owned()),
        (other.pid(), other_url, other_token),
    ];
    let mut per_cert = [Vec::new(), Vec::new()];
    for _round in 0..2 {
        for (side, (pid, url, token)) in sides.iter().enumerate() {
            let load = Load {
                url: url.clone(),
                credential: Credential::Bearer(token.clone()),
                ..same.clone()
            };
            wrk(&Load {
                duration: Duration::from_secs(2),
                ..load.clone()
            });
            let (outcome, cpu) = cpu_during(&[*pid], || wrk(&load));
            outcome.assert_all_answered("A/B");
            per_cert[side].push(cpu[0] / outcome.answers as f64);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (a, b) = (mean(&per_cert[0]), mean(&per_cert[1]));
    println!(
        "A/B, same 64 CSRs, alternating twice: this build {:.4} ms/cert, {baseline} {:.4} ms/cert; this / baseline {:.3}x",
        a * 1e3,
        b * 1e3,
        a / b
    );
}
