//! Revocation's costs, each beside its peer or floor in the same run:
//!
//! - A CRL over N revoked serials (10,000 by default) signed by Tresor's
//!   P-256 root, against `openssl ca -gencrl` over the same serials with
//!   the same root (its process start measured with an empty list and
//!   taken off), and against the crypto floor: hashing and signing as
//!   many bytes once with aws-lc-rs.
//! - The ledger: bytes per revoked serial as stored, how many fit in the
//!   ConfigMap `meshca-revocations` (1 MiB of data), and the time to read
//!   back a ledger of N serials.
//!
//! Run: `cargo bench --bench revocation` (optionally `-- --serials N
//! --rounds R`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use meshca::{RevocationLedger, RevokedEntry};
use meshca_provider::revocation::{CrlRequest, Revoked, Serial};
use meshca_provider::Provider;
use meshca_test_support::process::numeric_arg;
use meshca_tresor::{CaCertificate, RootKeyAlgorithm, Tresor};
use time::OffsetDateTime;

/// A ConfigMap's data may hold this much (kube-apiserver's `MaxSecretSize`).
const CONFIGMAP_MAX: usize = 1024 * 1024;

fn main() {
    let serials = numeric_arg("serials", 10_000);
    let rounds = numeric_arg("rounds", 15);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let root = CaCertificate::generate_root(
        RootKeyAlgorithm::EcdsaP256,
        Duration::from_secs(24 * 3600),
        "bench root",
    )
    .expect("root");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.crt"), root.cert_pem()).expect("cert");
    std::fs::write(
        dir.path().join("ca.key"),
        root.key_pem().expect("key").as_bytes(),
    )
    .expect("key");
    let now = OffsetDateTime::now_utc();
    let revoked: Vec<Revoked> = (0..serials)
        .map(|_| Revoked {
            serial: Serial::parse(&hex(&random16())).expect("serial"),
            revoked_at: now,
        })
        .collect();
    println!("revocation: {serials} revoked serials, median of {rounds} rounds");

    let tresor = runtime
        .block_on(Tresor::from_roots(root, None, None))
        .expect("tresor");
    let (meshca, crl_bytes) = meshca_crl(&runtime, &tresor, &revoked, rounds);
    let floor = signing_floor(crl_bytes, rounds);
    let openssl = openssl_crl(dir.path(), &revoked, rounds);
    println!(
        "  CRL: meshca (Tresor) {:.2} ms, {} bytes; openssl ca -gencrl {:.2} ms ({:.3}x meshca); crypto floor (hash and sign {} bytes) {:.3} ms ({:.1}x)",
        ms(meshca),
        crl_bytes,
        ms(openssl),
        openssl.as_secs_f64() / meshca.as_secs_f64(),
        crl_bytes,
        ms(floor),
        meshca.as_secs_f64() / floor.as_secs_f64(),
    );
    ledger(&revoked, rounds);
}

/// The median time Tresor takes to sign a CRL over `revoked` (a new
/// request each round, so nothing is reused), and the CRL's size.
fn meshca_crl(
    runtime: &tokio::runtime::Runtime,
    tresor: &Tresor,
    revoked: &[Revoked],
    rounds: usize,
) -> (Duration, usize) {
    let mut times = Vec::with_capacity(rounds);
    let mut size = 0;
    for round in 0..rounds {
        let at = OffsetDateTime::now_utc() + Duration::from_millis(round as u64);
        let request = CrlRequest {
            revoked: revoked.to_vec(),
            this_update: at,
            next_update: at + Duration::from_secs(600),
        };
        let start = Instant::now();
        let lists = runtime
            .block_on(tresor.revocation_lists(&request))
            .expect("lists");
        times.push(start.elapsed());
        size = lists[0].der.as_ref().len();
    }
    (median(times), size)
}

/// Hashing and signing `bytes` once with P-256: what any CRL of that size
/// costs at least.
fn signing_floor(bytes: usize, rounds: usize) -> Duration {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("key");
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("key");
    let message = vec![0x5a; bytes];
    let times = (0..rounds.max(50))
        .map(|_| {
            let start = Instant::now();
            key.sign(&rng, &message).expect("sign");
            start.elapsed()
        })
        .collect();
    median(times)
}

/// `openssl ca -gencrl` over `revoked` with the same root: the median
/// time of a run, less that of a run over an empty index (the process
/// start and the key's loading).
fn openssl_crl(dir: &Path, revoked: &[Revoked], rounds: usize) -> Duration {
    let config = dir.join("ca.cnf");
    std::fs::write(
        &config,
        format!(
            "[ca]\ndefault_ca = meshca\n[meshca]\ndatabase = {d}/index.txt\ncertificate = {d}/ca.crt\nprivate_key = {d}/ca.key\ndefault_md = sha256\ndefault_crl_days = 1\ncrlnumber = {d}/crlnumber\n",
            d = dir.display()
        ),
    )
    .expect("openssl config");
    let expiry = "351231235959Z";
    let revoked_at = "261206000000Z";
    let index = |entries: &[Revoked]| {
        let lines: String = entries
            .iter()
            .map(|r| {
                format!(
                    "R\t{expiry}\t{revoked_at}\t{}\tunknown\t/CN=x\n",
                    hex(r.serial.as_bytes()).to_uppercase()
                )
            })
            .collect();
        std::fs::write(dir.join("index.txt"), lines).expect("index");
        std::fs::write(dir.join("crlnumber"), "1000\n").expect("crlnumber");
    };
    let run = || {
        let start = Instant::now();
        let out = Command::new("openssl")
            .args(["ca", "-gencrl", "-batch", "-config"])
            .arg(&config)
            .arg("-out")
            .arg(dir.join("openssl.crl"))
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl ca -gencrl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        start.elapsed()
    };
    index(&[]);
    let empty = median((0..rounds).map(|_| run()).collect());
    index(revoked);
    let full = median((0..rounds).map(|_| run()).collect());
    full.saturating_sub(empty)
}

/// The ledger's size per serial, what fits in the ConfigMap, and the time
/// to read back `revoked.len()` serials.
fn ledger(revoked: &[Revoked], rounds: usize) {
    let now = OffsetDateTime::now_utc();
    let mut ledger = RevocationLedger::default();
    for r in revoked {
        ledger.revoke(RevokedEntry {
            serial: r.serial.to_string(),
            revoked_at: now,
            listed_until: now + Duration::from_secs(24 * 3600),
            by: "alice".into(),
            reason: None,
        });
    }
    let bytes = ledger.encode().expect("encode");
    let per_serial = bytes.len() as f64 / revoked.len() as f64;
    let parse = median(
        (0..rounds)
            .map(|_| {
                let start = Instant::now();
                RevocationLedger::parse(&bytes, "bench").expect("parse");
                start.elapsed()
            })
            .collect(),
    );
    println!(
        "  ledger: {} bytes for {} serials ({per_serial:.0} bytes each); the ConfigMap holds {} serials; read back in {:.2} ms",
        bytes.len(),
        revoked.len(),
        (CONFIGMAP_MAX as f64 / per_serial) as usize,
        ms(parse)
    );
}

fn random16() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("random");
    bytes[0] = (bytes[0] & 0x7f).max(1);
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
