//! Building blocks of the benchmarks in `benches/`: a load generator on the
//! other core (wrk), the crypto floor, cfssl as a peer, request bodies, and
//! per-process CPU and memory.
//!
//! Every figure is CPU time of one process (from `/proc/<pid>/stat`), so the
//! load generator's own cost never counts, and every benchmark prints ratios
//! against a peer or the floor measured in the same run: this machine is
//! shared, and absolute figures move with its neighbours.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::process::{cpu_seconds, free_port, pinned, wait_for_port};

/// Where the load generator runs; the server under test gets core 0.
pub const LOAD_CORE: usize = 1;

/// The path of `tool`, or a panic naming the Debian package that has it.
pub fn require(tool: &str, package: &str) -> PathBuf {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    found.unwrap_or_else(|| panic!("this benchmark needs `{tool}`: apt-get install {package}"))
}

/// Move every thread of `pid` (`"self"` for this process) to `core`, when
/// `taskset` exists; threads started later inherit it.
pub fn pin(pid: impl std::fmt::Display, core: usize) {
    let pid = if pid.to_string() == "self" {
        std::process::id().to_string()
    } else {
        pid.to_string()
    };
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", &core.to_string(), &pid])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// One P-256 CSR, as DER and as PEM.
pub struct Csr {
    pub der: Vec<u8>,
    pub pem: String,
}

/// `n` distinct P-256 CSRs with an empty subject, as a sidecar sends them,
/// made on every core before any timing starts.
pub fn p256_csrs(n: usize) -> Vec<Csr> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let count = n / threads + usize::from(t < n % threads);
                s.spawn(move || (0..count).map(|_| one_csr()).collect::<Vec<_>>())
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("CSR worker"))
            .collect()
    })
}

fn one_csr() -> Csr {
    csr_of(&rcgen::PKCS_ECDSA_P256_SHA256)
}

/// `n` distinct ML-DSA-65 CSRs with an empty subject, as a post-quantum
/// workload sends them.
pub fn ml_dsa_65_csrs(n: usize) -> Vec<Csr> {
    (0..n).map(|_| csr_of(&rcgen::PKCS_ML_DSA_65)).collect()
}

fn csr_of(algorithm: &'static rcgen::SignatureAlgorithm) -> Csr {
    let key = rcgen::KeyPair::generate_for(algorithm).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).expect("csr");
    Csr {
        der: csr.der().to_vec(),
        pem: csr.pem().expect("pem"),
    }
}

/// Write one JSON body per line: `{"<field>": "<CSR PEM>"}`.
pub fn write_bodies(path: &Path, field: &str, csrs: &[Csr]) {
    let lines: Vec<String> = csrs
        .iter()
        .map(|c| serde_json::json!({ field: c.pem }).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").expect("bodies");
}

/// aws-lc-rs's P-256 verify (each CSR's own signature, with its own key) plus a
/// P-256 sign of a certificate-sized message: the least any CA spends per
/// certificate. CPU seconds per certificate on this thread.
pub fn crypto_floor(csrs: &[Csr], rounds: usize) -> f64 {
    let parsed = signed_parts(csrs);
    let rng = SystemRandom::new();
    let alg = &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("key");
    let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).expect("key");
    let tbs = [0x5au8; 420];
    let before = cpu_seconds("thread-self");
    for i in 0..rounds {
        let (info, public, signature) = &parsed[i % parsed.len()];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public)
            .verify(info, signature)
            .expect("the CSR verifies");
        key.sign(&rng, &tbs).expect("sign");
    }
    (cpu_seconds("thread-self") - before) / rounds as f64
}

/// Each CSR's signed part, public key and signature.
fn signed_parts(csrs: &[Csr]) -> Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    csrs.iter()
        .map(|c| {
            let (_, csr) = X509CertificationRequest::from_der(&c.der).expect("csr");
            let info = csr.certification_request_info;
            (
                info.raw.to_vec(),
                info.subject_pki.subject_public_key.data.to_vec(),
                csr.signature_value.data.to_vec(),
            )
        })
        .collect()
}

/// As [`crypto_floor`] for ML-DSA-65: each CSR's signature verified, one
/// ML-DSA-65 signature of a certificate-sized message. CPU seconds per
/// certificate on this thread.
pub fn ml_dsa_65_floor(csrs: &[Csr], rounds: usize) -> f64 {
    use aws_lc_rs::signature::{PqdsaKeyPair, ML_DSA_65, ML_DSA_65_SIGNING};
    let parsed = signed_parts(csrs);
    let key = PqdsaKeyPair::generate(&ML_DSA_65_SIGNING).expect("key");
    let tbs = [0x5au8; 2400];
    let mut signature = vec![0; ML_DSA_65_SIGNING.signature_len()];
    let before = cpu_seconds("thread-self");
    for i in 0..rounds {
        let (info, public, sig) = &parsed[i % parsed.len()];
        UnparsedPublicKey::new(&ML_DSA_65, public)
            .verify(info, sig)
            .expect("the CSR verifies");
        key.sign(&tbs, &mut signature).expect("sign");
    }
    (cpu_seconds("thread-self") - before) / rounds as f64
}

/// Peak resident memory of `pid` (VmHWM), in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM");
    kib / 1024.0
}

/// A process killed on drop.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cfssl serve` (Debian `golang-cfssl`) with its own P-256 CA in `dir`,
/// pinned to core 0 as the daemon is; returns it and its sign URL.
pub fn cfssl(dir: &Path) -> (Reaped, String) {
    let bin = require("cfssl", "golang-cfssl");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cfssl benchmark CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&key).expect("CA");
    std::fs::write(dir.join("cfssl-ca.pem"), ca.pem()).expect("ca");
    std::fs::write(dir.join("cfssl-ca-key.pem"), key.serialize_pem()).expect("ca key");
    let port = free_port();
    let child = pinned(0, &bin)
        .current_dir(dir)
        .args(["serve", "-address", "127.0.0.1", "-port", &port.to_string()])
        .args(["-ca", "cfssl-ca.pem", "-ca-key", "cfssl-ca-key.pem"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cfssl serve");
    wait_for_port(port);
    (
        Reaped(child),
        format!("http://127.0.0.1:{port}/api/v1/cfssl/sign"),
    )
}

/// How the load generator authenticates each request.
#[derive(Clone, Debug)]
pub enum Credential {
    /// No credential (cfssl).
    None,
    /// `Authorization: Bearer <token>`, the tokens taken in turn from a
    /// file of one per line.
    Bearer(PathBuf),
    /// `X-Vault-Token: <token>`.
    VaultToken(String),
}

/// A load: POST one body per request, taken in turn from a file (GET
/// when `bodies` is empty).
#[derive(Clone, Debug)]
pub struct Load {
    pub url: String,
    pub bodies: PathBuf,
    pub credential: Credential,
    pub connections: usize,
    pub duration: Duration,
    /// Stop after this many answers (for "every identity once").
    pub stop_after: Option<usize>,
    /// Count answers by status (costs the load generator time per answer).
    pub statuses: bool,
}

/// What the load generator saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub answers: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub statuses: BTreeMap<u16, u64>,
    /// 429 answers without a `Retry-After` header.
    pub bare_429s: u64,
    /// Connect, read, write and timeout errors.
    pub socket_errors: u64,
    /// Answers with a status outside 200..399.
    pub non_2xx: u64,
}

impl Outcome {
    /// Fail the benchmark unless every request was answered with a 2xx
    /// (a figure over failed answers would mislead).
    pub fn assert_all_answered(&self, name: &str) {
        assert!(
            self.answers > 0 && self.non_2xx == 0 && self.socket_errors == 0,
            "{name}: not every request was answered 2xx: {self:?}"
        );
    }

    /// Answers per second.
    pub fn rate(&self) -> f64 {
        self.answers as f64 / self.seconds
    }

    /// How many answers had `status`.
    pub fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }
}

const WRK_SCRIPT: &str = r#"
local bodies, tokens = {}, {}
local body_file = os.getenv("BODIES")
if body_file ~= "" then
  for line in io.lines(body_file) do bodies[#bodies + 1] = line end
end
local token_file = os.getenv("TOKENS")
if token_file ~= "" then
  for line in io.lines(token_file) do tokens[#tokens + 1] = line end
end
local header, prefix = os.getenv("AUTH_HEADER"), os.getenv("AUTH_PREFIX")
local fixed_token = os.getenv("TOKEN")
local stop_after = tonumber(os.getenv("STOP_AFTER"))
local sent, answered, bare_429s = 0, 0, 0
statuses = {}
-- Without bodies, GET.
wrk.method = #bodies > 0 and "POST" or "GET"

function request()
  sent = sent + 1
  local h = {}
  local body = nil
  if #bodies > 0 then
    h["Content-Type"] = "application/json"
    body = bodies[(sent - 1) % #bodies + 1]
  end
  if #tokens > 0 then
    h[header] = prefix .. tokens[(sent - 1) % #tokens + 1]
  elseif fixed_token ~= "" then
    h[header] = prefix .. fixed_token
  end
  return wrk.format(nil, nil, h, body)
end

-- Reading every answer costs wrk time, so only when asked for.
if os.getenv("STATUSES") == "1" then
  function response(status, headers, body)
    local key = tostring(status)
    statuses[key] = (statuses[key] or 0) + 1
    if status == 429 and not (headers["retry-after"] or headers["Retry-After"]) then
      bare_429s = bare_429s + 1
    end
    answered = answered + 1
    if stop_after and answered == stop_after then
      -- wrk's main thread sleeps out the duration unless interrupted:
      -- the benchmark interrupts it once this thread has stopped.
      wrk.thread:stop()
      io.open(os.getenv("STOP_FILE"), "w"):close()
    end
  end
end

local threads = {}
function setup(thread) table.insert(threads, thread) end

function done(summary, latency, requests)
  local parts = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do parts[#parts + 1] = k .. "=" .. v end
    bare_429s = bare_429s + (t:get("bare_429s") or 0)
  end
  local e = summary.errors
  io.write(string.format("WRK answers=%d micros=%d p50=%d p99=%d socket_errors=%d bare_429s=%d non_2xx=%d statuses=%s\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, bare_429s, e.status, table.concat(parts, ",")))
end
"#;

/// Run `load` with wrk (one thread, on core 1) and read its summary.
pub fn wrk(load: &Load) -> Outcome {
    let bin = require("wrk", "wrk");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("load.lua");
    std::fs::write(&script, WRK_SCRIPT).expect("script");
    let (header, prefix, tokens, token) = match &load.credential {
        Credential::None => ("", "", PathBuf::new(), String::new()),
        Credential::Bearer(file) => ("Authorization", "Bearer ", file.clone(), String::new()),
        Credential::VaultToken(t) => ("X-Vault-Token", "", PathBuf::new(), t.clone()),
    };
    let stop_file = dir.path().join("stopped");
    let mut child = pinned(LOAD_CORE, &bin)
        .args(["-t1", &format!("-c{}", load.connections)])
        .arg(format!("-d{}s", load.duration.as_secs().max(1)))
        .args(["--timeout", "10s", "-s"])
        .arg(&script)
        .arg(&load.url)
        .env("BODIES", &load.bodies)
        .env("TOKENS", tokens)
        .env("TOKEN", token)
        .env("AUTH_HEADER", header)
        .env("AUTH_PREFIX", prefix)
        .env("STATUSES", if load.statuses { "1" } else { "0" })
        .env(
            "STOP_AFTER",
            load.stop_after.map(|n| n.to_string()).unwrap_or_default(),
        )
        .env("STOP_FILE", &stop_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wrk");
    // After the script stops its thread, SIGINT ends wrk's wait for the
    // full duration (its only thread left is the waiting one).
    while child.try_wait().expect("wrk").is_none() {
        if stop_file.exists() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let output = child.wait_with_output().expect("wrk");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("WRK "))
        .unwrap_or_else(|| {
            panic!(
                "wrk printed no summary: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    parse_summary(line)
}

fn parse_summary(line: &str) -> Outcome {
    let mut out = Outcome::default();
    for field in line.split_whitespace() {
        let (key, value) = field.split_once('=').expect("key=value");
        let number = || value.parse::<f64>().unwrap_or(0.0);
        match key {
            "answers" => out.answers = number() as u64,
            "micros" => out.seconds = number() / 1e6,
            "p50" => out.p50_ms = number() / 1e3,
            "p99" => out.p99_ms = number() / 1e3,
            "socket_errors" => out.socket_errors = number() as u64,
            "bare_429s" => out.bare_429s = number() as u64,
            "non_2xx" => out.non_2xx = number() as u64,
            "statuses" => {
                for pair in value.split(',').filter(|p| !p.is_empty()) {
                    let (status, n) = pair.split_once('=').expect("status=n");
                    *out.statuses
                        .entry(status.parse().expect("status"))
                        .or_default() += n.parse::<u64>().expect("count");
                }
            }
            _ => {}
        }
    }
    out
}

/// Run `work` and return its result with the CPU seconds each of `pids`
/// spent meanwhile.
pub fn cpu_during<T>(pids: &[u32], work: impl FnOnce() -> T) -> (T, Vec<f64>) {
    let before: Vec<f64> = pids.iter().map(cpu_seconds).collect();
    let result = work();
    let spent = pids
        .iter()
        .zip(before)
        .map(|(p, b)| cpu_seconds(p) - b)
        .collect();
    (result, spent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrk_summary_reads_back() {
        let o = parse_summary(
            "answers=1200 micros=2000000 p50=1500 p99=4200 socket_errors=0 bare_429s=1 non_2xx=200 statuses=200=1000,429=200",
        );
        assert_eq!(o.answers, 1200);
        assert!((o.rate() - 600.0).abs() < 1e-9);
        assert!((o.p99_ms - 4.2).abs() < 1e-9);
        assert_eq!((o.count(200), o.count(429), o.count(500)), (1000, 200, 0));
        assert_eq!((o.bare_429s, o.non_2xx), (1, 200));
    }
}
