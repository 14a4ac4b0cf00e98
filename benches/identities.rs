//! A fleet's first requests: 10,000 distinct identities, each with its own
//! token, each sending its first certificate request, at concurrency 256,
//! beside one identity sending as many requests the same way.
//!
//! The real `meshca serve` (embedded default: Tresor, P-256) runs with one
//! worker thread on core 0; wrk drives it from core 1 over 256 keep-alive
//! HTTPS connections, every request with a CSR never sent before. The
//! per-identity rate is raised so that the single identity is not held to
//! it (one request per identity never meets it); every other limit is the
//! default. Every answer's status is counted: the only acceptable refusal
//! is a 429 with `Retry-After` (docs/api.md).
//!
//! Needs `wrk` (`apt-get install wrk`).
//! Run: `cargo bench --bench identities` (optionally `-- --identities N`).

use std::path::Path;
use std::time::Duration;

use meshca::{Identity, TokenStore, TrustDomain};
use meshca_test_support::bench::{
    cpu_during, p256_csrs, pin, write_bodies, wrk, Credential, Load, Outcome, LOAD_CORE,
};
use meshca_test_support::process::{numeric_arg, ServeProcess};

const BIN: &str = env!("CARGO_BIN_EXE_meshca");
const CONCURRENCY: usize = 256;

fn main() {
    let count = numeric_arg("identities", 10_000);
    let dir = tempfile::tempdir().expect("tempdir");
    // Fresh CSRs for the warm-up, both single-identity runs and the fleet.
    let csrs = p256_csrs(count * 4);
    for (i, name) in ["warm", "single-1", "fleet", "single-2"].iter().enumerate() {
        write_bodies(
            &dir.path().join(name),
            "csr",
            &csrs[i * count..(i + 1) * count],
        );
    }
    pin("self", LOAD_CORE);
    let (server, state, api) = ServeProcess::with_config(
        BIN,
        "api: { per_identity_per_second: 1000000, per_identity_burst: 1000000 }\n",
    );
    let store = TokenStore::new(state.path().join("meshca-data/tokens.yaml"));
    let td = TrustDomain::new("cluster.local").expect("trust domain");
    let fleet: Vec<Identity> = (0..count)
        .map(|i| {
            Identity::new(
                td.clone(),
                &format!("team-{}", i / 100),
                &format!("sa-{}", i % 100),
            )
            .expect("identity")
        })
        .collect();
    let single = Identity::new(td, "bench", "bench").expect("identity");
    write_tokens(
        &dir.path().join("fleet-tokens"),
        &store.create_all(&fleet).expect("tokens"),
    );
    write_tokens(
        &dir.path().join("single-token"),
        &store.create_all(&[single]).expect("token"),
    );

    let load = |bodies: &str, tokens: &str| Load {
        url: format!("https://127.0.0.1:{api}/v1/certificates"),
        bodies: dir.path().join(bodies),
        credential: Credential::Bearer(dir.path().join(tokens)),
        connections: CONCURRENCY,
        duration: Duration::from_secs(120),
        stop_after: Some(count),
        statuses: true,
    };
    wrk(&load("warm", "single-token"));

    println!("{count} requests at concurrency {CONCURRENCY}, each with a fresh CSR; daemon on core 0, wrk on core 1");
    println!(
        "{:<40} {:>9} {:>8} {:>8} {:>8} {:>7} {:>12}",
        "", "certs/s", "p50 ms", "p99 ms", "429 %", "other", "CPU ms/cert"
    );
    let mut rates = Vec::new();
    for (name, bodies, tokens) in [
        ("one identity", "single-1", "single-token"),
        ("10,000 identities, each its first", "fleet", "fleet-tokens"),
        ("one identity, again", "single-2", "single-token"),
    ] {
        let (o, cpu) = cpu_during(&[server.pid()], || wrk(&load(bodies, tokens)));
        report(name, &o, cpu[0]);
        rates.push(o.count(200) as f64 / o.seconds);
    }
    println!(
        "fleet / one identity throughput: {:.3}x (goal: within 10%)",
        rates[1] / ((rates[0] + rates[2]) / 2.0)
    );
}

fn write_tokens(path: &Path, tokens: &[String]) {
    std::fs::write(path, tokens.join("\n") + "\n").expect("tokens");
}

fn report(name: &str, o: &Outcome, cpu: f64) {
    let refused = o.count(429);
    let other = o.answers - o.count(200) - refused;
    println!(
        "{:<40} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>12.4}",
        name,
        o.count(200) as f64 / o.seconds,
        o.p50_ms,
        o.p99_ms,
        100.0 * refused as f64 / o.answers as f64,
        other + o.socket_errors,
        cpu / o.count(200).max(1) as f64 * 1e3
    );
    assert_eq!(o.bare_429s, 0, "{name}: a 429 without Retry-After");
    assert_eq!(
        other + o.socket_errors,
        0,
        "{name}: answers other than 200 and 429: {o:?}"
    );
}
