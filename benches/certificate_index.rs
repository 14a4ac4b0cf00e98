//! The certificate index at scale, beside the crypto floor in the same
//! run:
//!
//! - taking note of a certificate as it is issued (`Pages::add`, on the
//!   request's path), per certificate, against the least any CA spends
//!   per certificate (a P-256 CSR verify and certificate sign, aws-lc-rs);
//! - the memory one replica holds for N live certificates (100,000 by
//!   default): its resident set before and after taking note of them;
//! - what is stored: bytes per certificate, pages (ConfigMaps in a
//!   cluster), the largest page against a ConfigMap's 1 MiB;
//! - reading every page back and picking one identity's certificates,
//!   what `meshca certificate revoke --identity` and `list` do.
//!
//! Run: `cargo bench --bench certificate_index` (optionally `--
//! --certificates N --rounds R`).

use std::time::{Duration, Instant};

use meshca::{CertificateIndexPage, CertificateIndexPages, IndexedCertificate};
use meshca_provider::revocation::Serial;
use meshca_test_support::bench::{crypto_floor, p256_csrs};
use meshca_test_support::process::numeric_arg;

/// A ConfigMap's data may hold this much (kube-apiserver's `MaxSecretSize`).
const CONFIGMAP_MAX: usize = 1024 * 1024;
/// The default longest lifetime, and the window width it gives.
const MAX_TTL: i64 = 24 * 3600;
const WINDOW: i64 = 600;
/// Certificates per identity: a few pods per service account, each
/// holding its current and renewed certificate.
const PER_IDENTITY: usize = 10;

fn main() {
    let n = numeric_arg("certificates", 100_000);
    let rounds = numeric_arg("rounds", 5);
    println!("certificate index: {n} live certificates, median of {rounds} rounds");
    let now = 1_800_000_000;
    let records: Vec<IndexedCertificate> = (0..n).map(|i| record(i, n, now)).collect();

    // First, before any other allocation is freed for the allocator to
    // reuse: the resident set grows by what the pages hold.
    let before = resident_bytes();
    let mut pages = CertificateIndexPages::new("0a1b2c3d".into(), WINDOW);
    for r in records.clone() {
        assert!(pages.add(r), "within the bound");
    }
    let held = resident_bytes().saturating_sub(before);
    let mut add = Vec::new();
    for _ in 0..rounds {
        let fresh = records.clone();
        let started = Instant::now();
        let mut again = CertificateIndexPages::new("0a1b2c3d".into(), WINDOW);
        for r in fresh {
            again.add(r);
        }
        add.push(started.elapsed());
    }
    let per_record = median(add).as_secs_f64() / n as f64;
    let floor = crypto_floor(&p256_csrs(16), 400);
    println!(
        "  take note of a certificate: {:.2} µs; crypto floor per certificate {:.1} µs; noting adds {:.2}% to the least an issuance costs",
        per_record * 1e6,
        floor * 1e6,
        100.0 * per_record / floor
    );
    println!(
        "  memory held by one replica: {:.1} MiB for {n} certificates ({} bytes each)",
        held as f64 / (1024.0 * 1024.0),
        held / n
    );
    stored(&pages, n, rounds);
}

/// What the pages of `pages` take as stored, and reading them back.
fn stored(pages: &CertificateIndexPages, n: usize, rounds: usize) {
    let written: Vec<Vec<u8>> = pages
        .to_write()
        .into_iter()
        .map(|w| w.page.encode().expect("encodes"))
        .collect();
    let total: usize = written.iter().map(Vec::len).sum();
    let largest = written.iter().map(Vec::len).max().unwrap_or(0);
    println!(
        "  stored: {:.1} MiB, {} bytes per certificate, {} pages (ConfigMaps in a cluster), the largest {} KiB ({:.0}% of a ConfigMap's 1 MiB)",
        total as f64 / (1024.0 * 1024.0),
        total / n,
        written.len(),
        largest / 1024,
        100.0 * largest as f64 / CONFIGMAP_MAX as f64
    );
    assert!(largest < CONFIGMAP_MAX, "every page fits a ConfigMap");
    let mut read = Vec::new();
    let mut found = 0;
    for _ in 0..rounds {
        let started = Instant::now();
        found = written
            .iter()
            .map(|bytes| CertificateIndexPage::parse(bytes, "bench").expect("parses"))
            .flat_map(|p| p.records)
            .filter(|r| r.identity == "ns-7/sa-7")
            .count();
        read.push(started.elapsed());
    }
    assert_eq!(found, PER_IDENTITY, "one identity's certificates");
    println!(
        "  read every page and pick one identity's {found}: {:.1} ms",
        median(read).as_secs_f64() * 1000.0
    );
}

/// The `i`th of `n` live certificates: issued over the last `MAX_TTL`,
/// each living `MAX_TTL`, `PER_IDENTITY` per identity.
fn record(i: usize, n: usize, now: i64) -> IndexedCertificate {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).expect("random");
    serial[0] = (serial[0] & 0x7f).max(1);
    let hex: String = serial.iter().map(|b| format!("{b:02x}")).collect();
    let identity = i / PER_IDENTITY;
    let issued_at = now - MAX_TTL + (i as i64 * MAX_TTL) / n as i64;
    IndexedCertificate {
        serial: Serial::parse(&hex).expect("a serial"),
        identity: format!("ns-{identity}/sa-{identity}"),
        frontend: if i.is_multiple_of(3) { "istio" } else { "api" }.into(),
        issued_at,
        not_after: issued_at + MAX_TTL,
    }
}

/// This process's resident set, from /proc.
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}
