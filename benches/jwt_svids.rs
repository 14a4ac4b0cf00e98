//! CPU per JWT-SVID of `POST /v1/jwt-svids`, beside a certificate of
//! `POST /v1/certificates` from the same daemon and the crypto floor of a
//! token, all measured in the same run.
//!
//! - meshca: the real `meshca serve` (embedded default plus
//!   `jwt_svids.enabled`, ES256), one worker thread on core 0, HTTPS with a
//!   bearer token; the same daemon signs P-256 certificates for comparison.
//! - The floor: one aws-lc-rs P-256 sign of a token-sized message, on one
//!   thread in this process: what minting any ES256 token costs.
//!
//! wrk on core 1 drives each endpoint with 8 keep-alive connections for
//! the same time. CPU comes from the server's own /proc/<pid>/stat.
//!
//! The agent's Workload API: `meshca agent` on core 0 beside the daemon,
//! a gRPC client (py-spiffe's generated stub, in ./.venv) on core 1 calling
//! `FetchJWTSVID` one call after another: with one audience (the agent's
//! cache answers) and with a new audience each call (every call is minted
//! by the daemon); CPU of agent and daemon per call.
//!
//! Needs `wrk` (`apt-get install wrk`) and ./.venv (`.ci/run` makes it).
//! Run: `cargo bench --bench jwt_svids` (optionally `-- --seconds N`).

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use meshca_test_support::bench::{
    cpu_during, p256_csrs, pin, write_bodies, wrk, Credential, Load, LOAD_CORE,
};
use meshca_test_support::process::{bench_token, cpu_seconds, numeric_arg, pinned, ServeProcess};

const BIN: &str = env!("CARGO_BIN_EXE_meshca");

/// aws-lc-rs's ES256 signature over a token's signing input (header and claims
/// of a JWT-SVID are about 300 bytes): CPU seconds per token.
fn token_floor(rounds: usize) -> f64 {
    let rng = SystemRandom::new();
    let alg = &ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("key");
    let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).expect("key");
    let input = [0x65u8; 300];
    let before = cpu_seconds("thread-self");
    for _ in 0..rounds {
        key.sign(&rng, &input).expect("sign");
    }
    (cpu_seconds("thread-self") - before) / rounds as f64
}

/// `meshca agent` serving the Workload API on core 0.
fn agent(dir: &Path, api: u16, token: &Path) -> (Child, std::path::PathBuf) {
    let socket = dir.join("agent.sock");
    let child = pinned(0, BIN)
        .args(["--worker-threads", "1", "agent", "--server"])
        .arg(format!("https://127.0.0.1:{api}"))
        .arg("--ca-file")
        .arg(dir.join("meshca-data/bundle/ca.crt"))
        .arg("--token-file")
        .arg(token)
        .arg("--workload-api-socket")
        .arg(&socket)
        .stderr(Stdio::null())
        .spawn()
        .expect("meshca agent");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the agent never served");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, socket)
}

/// `calls` FetchJWTSVID calls, one after another, from core 1; the
/// seconds they took.
fn fetch_jwt_svids(socket: &Path, calls: usize, fresh: bool) -> f64 {
    let script = r#"
import sys, time, grpc
from spiffe._proto import workload_pb2, workload_pb2_grpc
socket, calls, fresh = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "fresh"
stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(grpc.insecure_channel("unix:" + socket))
meta = [("workload.spiffe.io", "true")]
stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["warm"]), metadata=meta, timeout=30)
start = time.monotonic()
for i in range(calls):
    audience = f"aud-{i}" if fresh else "vault"
    stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=[audience]), metadata=meta, timeout=30)
print(time.monotonic() - start)
"#;
    let python = meshca_test_support::repo_root().join(".venv/bin/python");
    let out = pinned(LOAD_CORE, &python)
        .args(["-c", script])
        .arg(socket)
        .arg(calls.to_string())
        .arg(if fresh { "fresh" } else { "same" })
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("seconds")
}

fn main() {
    let seconds = numeric_arg("seconds", 10);
    let duration = Duration::from_secs(seconds as u64);
    let dir = tempfile::tempdir().expect("tempdir");
    let csrs = p256_csrs(64);
    write_bodies(&dir.path().join("certificates"), "csr", &csrs);
    std::fs::write(
        dir.path().join("tokens"),
        "{\"audience\": [\"vault\"]}\n{\"audience\": [\"sts.amazonaws.com\"], \"ttl_seconds\": 600}\n",
    )
    .expect("bodies");
    pin("self", LOAD_CORE);

    let (meshca, state, api) = ServeProcess::with_config(
        BIN,
        "api: { per_identity_per_second: 1000000, per_identity_burst: 1000000 }\njwt_svids: { enabled: true }\n",
    );
    let token = state.path().join("bench-token");
    std::fs::write(&token, bench_token(BIN, state.path())).expect("token file");
    let load = |path: &str, bodies: &str| Load {
        url: format!("https://127.0.0.1:{api}{path}"),
        bodies: dir.path().join(bodies),
        credential: Credential::Bearer(token.clone()),
        connections: 8,
        duration,
        stop_after: None,
        statuses: false,
    };
    let runs = [
        ("meshca, JWT-SVIDs", load("/v1/jwt-svids", "tokens")),
        (
            "meshca, certificates",
            load("/v1/certificates", "certificates"),
        ),
    ];

    println!("one ES256 JWT-SVID against one P-256 certificate: server on core 0, wrk on core 1, 8 keep-alive connections, {seconds} s each");
    let floor_before = token_floor(20_000);
    let mut results = Vec::new();
    for (name, load) in &runs {
        wrk(&Load {
            duration: Duration::from_secs(2),
            ..load.clone()
        });
        let (outcome, cpu) = cpu_during(&[meshca.pid()], || wrk(load));
        outcome.assert_all_answered(name);
        results.push((*name, cpu[0] / outcome.answers as f64, outcome));
    }
    let floor = (floor_before + token_floor(20_000)) / 2.0;

    println!(
        "{:<28} {:>9} {:>8} {:>8} {:>14} {:>8}",
        "", "answers/s", "p50 ms", "p99 ms", "CPU ms/answer", "x floor"
    );
    println!(
        "{:<28} {:>9} {:>8} {:>8} {:>14.4} {:>8.2}",
        "aws-lc-rs ES256 sign (floor)",
        "",
        "",
        "",
        floor * 1e3,
        1.0
    );
    for (name, cost, o) in &results {
        println!(
            "{:<28} {:>9.0} {:>8.2} {:>8.2} {:>14.4} {:>8.2}",
            name,
            o.rate(),
            o.p50_ms,
            o.p99_ms,
            cost * 1e3,
            cost / floor
        );
    }
    println!(
        "JWT-SVID / certificate: {:.2}x CPU",
        results[0].1 / results[1].1
    );

    let (mut agent, socket) = agent(state.path(), api, &token);
    let agent_pid = agent.id();
    println!(
        "{:<28} {:>9} {:>22} {:>20}",
        "the agent's FetchJWTSVID", "calls/s", "agent CPU ms/call", "daemon CPU ms/call"
    );
    for (name, calls, fresh) in [
        ("cache hits (one audience)", 20_000, false),
        ("minted (new audience)", 2_000, true),
    ] {
        let (elapsed, cpu) = cpu_during(&[agent_pid, meshca.pid()], || {
            fetch_jwt_svids(&socket, calls, fresh)
        });
        println!(
            "{:<28} {:>9.0} {:>22.4} {:>20.4}",
            name,
            calls as f64 / elapsed,
            cpu[0] / calls as f64 * 1e3,
            cpu[1] / calls as f64 * 1e3,
        );
    }
    let _ = agent.kill();
    let _ = agent.wait();
}
