//! What holding the root key in custody costs, each backend and mode in
//! the same run: `meshca serve` on one worker thread on core 0, driven by
//! wrk on core 1 with 8 keep-alive connections and 64 P-256 CSRs, for
//!
//! - a file-held root signing leaves, and with an intermediate;
//! - a root in OpenBao's Transit engine (a dev server, on core 1 with the
//!   load) with an intermediate, and signing every leaf;
//! - a root on a SoftHSM2 token (in meshca's process) with an
//!   intermediate, and signing every leaf.
//!
//! Certificates per second, p99, and CPU per certificate of meshca (and of
//! OpenBao where it signs); the intermediate mode in custody against the
//! file-held root with an intermediate (the same chain), which it should
//! match within 10%: the custodian signs only the intermediate, at start.
//!
//! Needs `wrk` (`apt-get install wrk`), OpenBao and SoftHSM2 (`.ci/run`
//! installs both).
//! Run: `cargo bench --bench key_custody` (optionally `-- --seconds N`).

use std::time::Duration;

use meshca_test_support::bench::{
    cpu_during, p256_csrs, pin, write_bodies, wrk, Credential, Load, LOAD_CORE,
};
use meshca_test_support::openbao::OpenBao;
use meshca_test_support::process::{bench_token, numeric_arg, ServeProcess};

const BIN: &str = env!("CARGO_BIN_EXE_meshca");

const LIMITS: &str = "api: { per_identity_per_second: 1000000, per_identity_burst: 1000000 }\n";

fn main() {
    let seconds = numeric_arg("seconds", 10);
    let duration = Duration::from_secs(seconds as u64);
    let dir = tempfile::tempdir().expect("tempdir");
    write_bodies(&dir.path().join("p256"), "csr", &p256_csrs(64));
    let pkcs11 = softhsm(dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let bao = runtime.block_on(OpenBao::dev());
    pin(bao.pid(), LOAD_CORE);
    pin("self", LOAD_CORE);
    let token = bao.transit_custody_token();
    let intermediate = "provider: { kind: tresor, tresor: { intermediate: { validity: 200h } } }\n";
    let setups = [
        (
            "file root",
            "provider: { kind: tresor }\n".to_owned(),
            false,
        ),
        ("file root + intermediate", intermediate.to_owned(), false),
        (
            "transit + intermediate",
            bao.key_custody_yaml(&token, false),
            true,
        ),
        (
            "transit, every leaf",
            bao.key_custody_yaml(&token, true),
            true,
        ),
        (
            "pkcs11 + intermediate",
            format!("{intermediate}{}", pkcs11_yaml(&pkcs11, false)),
            false,
        ),
        (
            "pkcs11, every leaf",
            format!(
                "provider: {{ kind: tresor }}\n{}",
                pkcs11_yaml(&pkcs11, true)
            ),
            false,
        ),
    ];
    println!("key custody: server on core 0, load and OpenBao on core 1, {seconds} s per run");
    let mut per_cert = Vec::new();
    for (name, config, custody) in setups {
        let cost = run(
            name,
            &format!("{LIMITS}{config}"),
            (&bao, custody),
            dir.path(),
            duration,
        );
        per_cert.push(cost);
    }
    println!(
        "transit + intermediate / file root + intermediate: {:.3}x CPU per certificate",
        per_cert[2] / per_cert[1]
    );
    println!(
        "transit, every leaf / file root: {:.3}x meshca CPU per certificate",
        per_cert[3] / per_cert[0]
    );
    println!(
        "pkcs11 + intermediate / file root + intermediate: {:.3}x; pkcs11, every leaf / file root: {:.3}x CPU per certificate",
        per_cert[4] / per_cert[1],
        per_cert[5] / per_cert[0]
    );
}

/// A SoftHSM2 configuration in `dir` with the token `bench` (PIN in
/// `dir/pin`), for meshca's processes to load.
fn softhsm(dir: &std::path::Path) -> std::path::PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).expect("token dir");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}\n", tokens.display()),
    )
    .expect("conf");
    // Before any thread or child starts; the daemons inherit it.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let made = std::process::Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "bench",
            "--so-pin",
            "1234",
            "--pin",
            "5678",
        ])
        .output()
        .expect("softhsm2-util (apt-get install softhsm2)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let pin = dir.join("pin");
    std::fs::write(&pin, "5678").expect("pin");
    pin
}

fn pkcs11_yaml(pin: &std::path::Path, sign_leaves: bool) -> String {
    format!(
        "key_custody:\n  kind: pkcs11\n  sign_leaves: {sign_leaves}\n  pkcs11: {{ module: /usr/lib/softhsm/libsofthsm2.so, token_label: bench, pin_file: {} }}\n",
        pin.display()
    )
}

/// One setup under load: its meshca CPU per certificate.
fn run(
    name: &str,
    config: &str,
    (bao, custody): (&OpenBao, bool),
    dir: &std::path::Path,
    duration: Duration,
) -> f64 {
    let (meshca, state, api) = ServeProcess::with_config(BIN, config);
    let token = state.path().join("bench-token");
    std::fs::write(&token, bench_token(BIN, state.path())).expect("token file");
    let load = Load {
        url: format!("https://127.0.0.1:{api}/v1/certificates"),
        bodies: dir.join("p256"),
        credential: Credential::Bearer(token),
        connections: 8,
        duration,
        stop_after: None,
        statuses: false,
    };
    wrk(&Load {
        duration: Duration::from_secs(2),
        ..load.clone()
    });
    let (outcome, cpu) = cpu_during(&[meshca.pid(), bao.pid()], || wrk(&load));
    outcome.assert_all_answered(name);
    let answers = outcome.answers as f64;
    let bao_cpu = match custody {
        true => format!("  OpenBao {:>7.4} ms/cert", cpu[1] / answers * 1e3),
        false => String::new(),
    };
    println!(
        "{name:<26} {:>8.0} certs/s  p99 {:>6.2} ms  meshca {:>7.4} ms/cert{bao_cpu}",
        outcome.rate(),
        outcome.p99_ms,
        cpu[0] / answers * 1e3
    );
    cpu[0] / answers
}
