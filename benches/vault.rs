//! The Vault path: meshca in front of a real OpenBao `pki/sign`, beside a
//! client calling `pki/sign` directly, with the same CSRs and the same
//! names, to show what meshca adds to each certificate.
//!
//! OpenBao (dev mode, `examples/vault/setup-pki.sh`: a P-256 root and the
//! `openservicemesh` role) and the real `meshca serve` (one worker thread)
//! share core 0; wrk drives them from core 1 with 8 keep-alive connections.
//! Directly, wrk posts what meshca would (`csr`, `common_name`, `uri_sans`,
//! `ttl`) with meshca's Vault token. Through meshca, it posts to
//! `/v1/certificates` with a bearer token, and meshca verifies the CSR,
//! calls `pki/sign` and checks the answer (chain signature included)
//! before answering. CPU comes from each process's /proc/<pid>/stat.
//!
//! Needs `wrk` (`apt-get install wrk`) and OpenBao in `./.venv` (`.ci/run`
//! installs it). Run: `cargo bench --bench vault` (optionally
//! `-- --seconds N`).

use std::time::Duration;

use meshca_test_support::bench::{cpu_during, p256_csrs, pin, wrk, Credential, Load, LOAD_CORE};
use meshca_test_support::openbao::OpenBao;
use meshca_test_support::process::{bench_token, numeric_arg, ServeProcess};

const BIN: &str = env!("CARGO_BIN_EXE_meshca");

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let seconds = numeric_arg("seconds", 10);
    let csrs = p256_csrs(64);
    pin("self", LOAD_CORE);
    let bao = OpenBao::dev().await;
    bao.script("setup-pki.sh", &[]);
    pin(bao.pid(), 0);
    let token_file = bao.meshca_token_file();
    let vault_token = std::fs::read_to_string(&token_file).expect("token");
    let (meshca, state, api) = ServeProcess::with_config(
        BIN,
        &format!(
            "{}api: {{ per_identity_per_second: 1000000, per_identity_burst: 1000000 }}\n",
            bao.provider_yaml(&format!("{{ token_file: {} }}", token_file.display()), "")
        ),
    );
    let dir = state.path();
    std::fs::write(dir.join("bearer"), bench_token(BIN, dir)).expect("token file");

    let direct: Vec<String> = csrs
        .iter()
        .map(|c| {
            serde_json::json!({
                "csr": c.pem,
                "common_name": "bench.bench.cluster.local",
                "uri_sans": "spiffe://cluster.local/ns/bench/sa/bench",
                "ttl": "86400s",
                "format": "pem",
            })
            .to_string()
        })
        .collect();
    std::fs::write(dir.join("direct"), direct.join("\n") + "\n").expect("bodies");
    meshca_test_support::bench::write_bodies(&dir.join("meshca"), "csr", &csrs);

    let load = |url: String, bodies: &str, credential: Credential| Load {
        url,
        bodies: dir.join(bodies),
        credential,
        connections: 8,
        duration: Duration::from_secs(seconds as u64),
        stop_after: None,
        statuses: false,
    };
    let runs = [
        (
            "client -> OpenBao pki/sign",
            load(
                format!("{}/v1/pki/sign/openservicemesh", bao.addr),
                "direct",
                Credential::VaultToken(vault_token.trim().to_owned()),
            ),
        ),
        (
            "client -> meshca -> OpenBao",
            load(
                format!("https://127.0.0.1:{api}/v1/certificates"),
                "meshca",
                Credential::Bearer(dir.join("bearer")),
            ),
        ),
    ];
    println!("signing through OpenBao: OpenBao and meshca on core 0, wrk on core 1, 8 keep-alive connections, {seconds} s each");
    println!(
        "{:<30} {:>8} {:>8} {:>8} {:>16} {:>16}",
        "", "certs/s", "p50 ms", "p99 ms", "OpenBao ms/cert", "meshca ms/cert"
    );
    let mut costs = Vec::new();
    for (name, load) in &runs {
        wrk(&Load {
            duration: Duration::from_secs(2),
            ..load.clone()
        });
        let (o, cpu) = cpu_during(&[bao.pid(), meshca.pid()], || wrk(load));
        o.assert_all_answered(name);
        let per = |s: f64| s / o.answers as f64 * 1e3;
        println!(
            "{:<30} {:>8.0} {:>8.2} {:>8.2} {:>16.4} {:>16.4}",
            name,
            o.rate(),
            o.p50_ms,
            o.p99_ms,
            per(cpu[0]),
            per(cpu[1])
        );
        costs.push((per(cpu[0]), per(cpu[1])));
    }
    let (direct_bao, _) = costs[0];
    let (via_bao, via_meshca) = costs[1];
    println!(
        "meshca adds {via_meshca:.4} ms of CPU per certificate: {:.2}x OpenBao's own {direct_bao:.4} ms (OpenBao behind meshca: {via_bao:.4} ms)",
        via_meshca / direct_bao
    );
}
