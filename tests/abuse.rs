//! The listeners under attack, with the daemon as its own process on
//! loopback so that its memory is its own: unauthenticated HTTP/2 streams
//! declaring multi-megabyte messages, tens of thousands of header-only
//! streams from hundreds of connections, bodies that never end, streams
//! reset as soon as they are opened, and messages that are not what the
//! contract says. Every attack is a bounded loop; each asserts how the
//! streams ended, the daemon's resident memory against its idle figure,
//! and that a legitimate caller on another connection is answered
//! throughout (its p99 is printed).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use meshca_test_support as support;
use support::abuse::{self, h2, Ended};
use support::process::{bench_token, free_port, wait_for_port, ServeProcess};

const BINARY: &str = env!("CARGO_BIN_EXE_meshca");
const ISTIO: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";
const API: &str = "/v1/certificates";
/// How much more than its idle figure the daemon may hold under attack.
const RSS_BUDGET_KIB: u64 = 64 * 1024;

/// The daemon with Istio's service on a port of its own.
struct Target {
    process: ServeProcess,
    _dir: tempfile::TempDir,
    api: u16,
    istio: u16,
    bundle: String,
    token: String,
}

impl Target {
    fn start() -> Self {
        support::install_crypto_provider();
        let istio = free_port();
        let (process, dir, api) = ServeProcess::with_config(
            BINARY,
            &format!("istio_ca: {{ enabled: true, listen: 127.0.0.1:{istio} }}\n"),
        );
        wait_for_port(istio);
        let bundle =
            std::fs::read_to_string(dir.path().join("meshca-data/bundle/ca.crt")).expect("bundle");
        let token = bench_token(BINARY, dir.path());
        Self {
            process,
            _dir: dir,
            api,
            istio,
            bundle,
            token,
        }
    }

    async fn connect(&self, port: u16) -> h2::client::SendRequest<Bytes> {
        abuse::h2_connect(port, "localhost", &self.bundle)
            .await
            .expect("an HTTP/2 connection")
    }

    fn rss(&self) -> u64 {
        abuse::rss_kib(self.process.pid())
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }
}

/// The port and path of each attacked service, and whether it speaks gRPC.
fn services(t: &Target) -> [(u16, &'static str, bool); 2] {
    [(t.istio, ISTIO, true), (t.api, API, false)]
}

/// A complete, valid request for a certificate as `bench/bench`.
fn valid_body(grpc: bool) -> Bytes {
    let csr = support::named_csr("bench", "bench");
    if grpc {
        istio_message(&csr)
    } else {
        Bytes::from(serde_json::json!({ "csr": csr }).to_string())
    }
}

/// A gRPC frame of `IstioCertificateRequest { csr }`: field 1's tag, a
/// varint length, the bytes.
fn istio_message(csr: &str) -> Bytes {
    let mut message = vec![0x0a];
    let mut len = csr.len();
    while len >= 0x80 {
        message.push(u8::try_from(len & 0x7f).expect("seven bits") | 0x80);
        len >>= 7;
    }
    message.push(u8::try_from(len).expect("seven bits"));
    message.extend_from_slice(csr.as_bytes());
    let mut framed = abuse::grpc_prefix(u32::try_from(message.len()).expect("small")).to_vec();
    framed.extend_from_slice(&message);
    Bytes::from(framed)
}

/// One Istio call with `body`, whole; its gRPC status code and message.
async fn call_istio(
    send: &h2::client::SendRequest<Bytes>,
    authorization: &str,
    body: Bytes,
) -> (String, String) {
    let mut ready = send.clone().ready().await.expect("ready");
    let head = abuse::post(ISTIO, true, Some(authorization));
    let (response, mut stream) = ready.send_request(head, false).expect("sent");
    let _ = stream.send_data(body, true);
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("answered at once")
        .expect("a response");
    let headers = response.headers().clone();
    let mut body = response.into_body();
    while let Some(Ok(c)) = body.data().await {
        let _ = body.flow_control().release_capacity(c.len());
    }
    let trailers = body.trailers().await.ok().flatten().unwrap_or_default();
    let field = |name: &str| {
        [&headers, &trailers]
            .iter()
            .find_map(|h| h.get(name).and_then(|v| v.to_str().ok()))
            .unwrap_or_default()
            .to_owned()
    };
    (
        field("grpc-status"),
        percent_decoded(&field("grpc-message")),
    )
}

/// A `grpc-message` as written, before percent-encoding (gRPC over HTTP/2).
fn percent_decoded(text: &str) -> String {
    let mut out = Vec::new();
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        let hex = |b: Option<u8>| char::from(b.unwrap_or(b'0')).to_digit(16).unwrap_or(0);
        if b == b'%' {
            let (hi, lo) = (hex(bytes.next()), hex(bytes.next()));
            out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
        } else {
            out.push(b);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One legitimate call; panics unless it is answered with a certificate.
async fn legitimate(
    send: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    grpc: bool,
    authorization: &str,
) -> Duration {
    let started = Instant::now();
    let head = abuse::post(path, grpc, Some(authorization));
    let mut ready = send.clone().ready().await.expect("a stream for the caller");
    let (response, mut stream) = ready.send_request(head, false).expect("sent");
    stream.send_data(valid_body(grpc), true).expect("body sent");
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("answered within 10 s")
        .expect("a response");
    let status = response.status();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("the answer");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.ok().flatten();
    let grpc_status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok());
    if grpc {
        assert_eq!(
            grpc_status,
            Some("0"),
            "the legitimate caller got a certificate"
        );
    } else {
        assert_eq!(status, 200, "the legitimate caller got a certificate");
    }
    started.elapsed()
}

/// The daemon's peak resident memory while `attack` runs, sampled every
/// 20 ms, with a legitimate caller asking every 10 ms on a connection of
/// its own; returns the attack's output, the peak and the caller's
/// latencies.
async fn under_attack<T>(
    t: &Target,
    service: (u16, &str, bool),
    attack: impl std::future::Future<Output = T>,
) -> (T, u64, Vec<Duration>) {
    let (port, path, grpc) = service;
    let peak = Arc::new(AtomicU64::new(t.rss()));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, pid) = (peak.clone(), done.clone(), t.process.pid());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(abuse::rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut caller = t.connect(port).await;
    let bearer = t.bearer();
    let caller_done = done.clone();
    let path = path.to_owned();
    let calls = tokio::spawn(async move {
        let mut latencies = Vec::new();
        while !caller_done.load(Ordering::Relaxed) {
            latencies.push(legitimate(&mut caller, &path, grpc, &bearer).await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        latencies
    });
    let out = attack.await;
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let latencies = calls
        .await
        .expect("the legitimate caller was answered throughout");
    (out, peak.load(Ordering::Relaxed), latencies)
}

fn report(what: &str, idle: u64, peak: u64, latencies: &mut [Duration]) {
    let p99 = abuse::percentile(latencies, 99);
    eprintln!(
        "{what}: RSS idle {} MiB, peak {} MiB (+{} MiB); legitimate caller: {} calls, p99 {:?}",
        idle / 1024,
        peak / 1024,
        peak.saturating_sub(idle) / 1024,
        latencies.len(),
        p99
    );
    assert!(
        peak.saturating_sub(idle) < RSS_BUDGET_KIB,
        "{what}: RSS grew from {idle} KiB to {peak} KiB"
    );
    assert!(!latencies.is_empty(), "{what}: the caller was answered");
    assert!(p99 < Duration::from_secs(5), "{what}: p99 {p99:?}");
}

/// The idle figure: after a few legitimate calls, so that what a first
/// request allocates once is counted as idle.
async fn idle_rss(t: &Target) -> u64 {
    for (port, path, grpc) in services(t) {
        let mut send = t.connect(port).await;
        for _ in 0..20 {
            legitimate(&mut send, path, grpc, &t.bearer()).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    t.rss()
}

fn unauthenticated_code(grpc: bool) -> &'static str {
    if grpc {
        "grpc-16"
    } else {
        "401"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_unauthenticated_bodies_are_refused_before_they_are_read() {
    let t = Target::start();
    let idle = idle_rss(&t).await;
    for service in services(&t) {
        let (_, path, grpc) = service;
        // Messages declared as 4,000,000 bytes, 3.9 MB of each sent.
        let mut body = abuse::grpc_prefix(4_000_000).to_vec();
        body.resize(3_900_000, b'A');
        let attack = unauthenticated_streams(&t, service, 5, 5, Bytes::from(body));
        let (ended, peak, mut latencies) = under_attack(&t, service, attack).await;
        for (how, after, sent) in &ended {
            assert_eq!(how.code(), unauthenticated_code(grpc), "{path}: {how:?}");
            assert!(
                *after < Duration::from_secs(2),
                "{path}: answered after {after:?}"
            );
            assert!(
                *sent <= 128 * 1024,
                "{path}: {sent} bytes of an unauthenticated body were let through"
            );
        }
        let most = ended.iter().map(|(_, _, s)| *s).max().unwrap_or_default();
        eprintln!(
            "{path}: 25 unauthenticated 3.9 MB bodies, at most {most} bytes of one let through"
        );
        report(path, idle, peak, &mut latencies);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_unauthenticated_bodies_to_the_revocation_endpoint_are_refused_unread() {
    let t = Target::start();
    let idle = idle_rss(&t).await;
    let attacked = (t.api, "/v1/revocations", false);
    let attack = unauthenticated_streams(&t, attacked, 5, 5, Bytes::from(vec![b'{'; 3_900_000]));
    // The legitimate caller keeps asking for certificates meanwhile.
    let (ended, peak, mut latencies) = under_attack(&t, (t.api, API, false), attack).await;
    for (how, after, sent) in &ended {
        assert_eq!(how.code(), "401", "{how:?}");
        assert!(*after < Duration::from_secs(2), "answered after {after:?}");
        assert!(
            *sent <= 128 * 1024,
            "{sent} bytes of an unauthenticated body were let through"
        );
    }
    report(attacked.1, idle, peak, &mut latencies);
}

/// `streams` streams without a credential on each of `connections`
/// connections to `port`, each sending `body` (as flow control lets it)
/// and never ending; how each ended, after how long, with how many bytes
/// of its body let through.
async fn unauthenticated_streams(
    t: &Target,
    (port, path, grpc): (u16, &'static str, bool),
    connections: usize,
    streams: usize,
    body: Bytes,
) -> Vec<(Ended, Duration, usize)> {
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let send = t.connect(port).await;
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            for _ in 0..streams {
                let (mut send, body) = (send.clone(), body.clone());
                held.push(tokio::spawn(async move {
                    let head = abuse::post(path, grpc, None);
                    abuse::send_unfinished(&mut send, head, body, Duration::from_secs(20)).await
                }));
            }
            let mut ended = Vec::new();
            for h in held {
                ended.push(h.await.expect("joined"));
            }
            ended
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("joined"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tens_of_thousands_of_held_header_only_streams_hold_no_memory() {
    let t = Target::start();
    let idle = idle_rss(&t).await;
    for service in services(&t) {
        let started = Instant::now();
        let flood = unauthenticated_streams(&t, service, 250, 200, Bytes::new());
        let (ended, peak, mut latencies) = under_attack(&t, service, flood).await;
        let ended: Vec<Ended> = ended.into_iter().map(|(how, _, _)| how).collect();
        let took = started.elapsed();
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for e in &ended {
            *counts.entry(e.code()).or_default() += 1;
        }
        eprintln!(
            "{}: 250 connections x 200 header-only streams ended in {took:?}: {counts:?}",
            service.1
        );
        assert_eq!(ended.len(), 50_000);
        // Each stream is answered (unauthenticated; or over the listener's
        // requests at once), or refused by HTTP/2 as one stream too many
        // on its connection (REFUSED_STREAM); none is left open.
        let overloaded = if service.2 { "grpc-14" } else { "503" };
        let allowed = |code: &str| {
            code == unauthenticated_code(service.2)
                || code == overloaded
                || code.contains("refused stream before processing")
        };
        assert!(
            counts.keys().all(|code| allowed(code)),
            "every stream answered or refused, none left open: {counts:?}"
        );
        assert!(
            counts
                .get(unauthenticated_code(service.2))
                .copied()
                .unwrap_or_default()
                > 0,
            "{counts:?}"
        );
        report(service.1, idle, peak, &mut latencies);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_bodies_that_never_end_are_cut_at_the_body_deadline() {
    let t = Target::start();
    for (port, path, grpc) in services(&t) {
        let send = t.connect(port).await;
        let mut held = Vec::new();
        for i in 0..32 {
            let mut send = send.clone();
            let head = abuse::post(path, grpc, Some(&t.bearer()));
            // Half never send a byte of body, half trickle part of one.
            let body = if i % 2 == 0 {
                Bytes::new()
            } else {
                valid_body(grpc).slice(..20)
            };
            held.push(tokio::spawn(async move {
                abuse::send_unfinished(&mut send, head, body, Duration::from_secs(20)).await
            }));
        }
        for h in held {
            let (how, after, _) = h.await.expect("joined");
            assert!(
                !matches!(&how, Ended::Reset(why) if why == "not ended in time"),
                "{path}: a stream outlived the deadline"
            );
            assert!(
                (Duration::from_secs(9)..Duration::from_secs(13)).contains(&after),
                "{path}: ended after {after:?} ({how:?}), not at the 10 s body deadline"
            );
        }
        // The connection still serves.
        let mut send = send;
        legitimate(&mut send, path, grpc, &t.bearer()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_reset_as_soon_as_opened_are_survived() {
    let t = Target::start();
    let idle = idle_rss(&t).await;
    for service in services(&t) {
        let (port, path, grpc) = service;
        let attack = async {
            let mut send = t.connect(port).await;
            let mut opened = 0usize;
            for _ in 0..10_000 {
                let Ok(ready) = send.clone().ready().await else {
                    break;
                };
                send = ready;
                let Ok((_, mut stream)) = send.send_request(abuse::post(path, grpc, None), false)
                else {
                    break;
                };
                stream.send_reset(h2::Reason::CANCEL);
                opened += 1;
            }
            opened
        };
        let (opened, peak, mut latencies) = under_attack(&t, service, attack).await;
        eprintln!("{path}: {opened} streams opened and reset at once before the connection ended");
        report(path, idle, peak, &mut latencies);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_messages_out_of_contract_are_refused_as_the_callers_mistake() {
    let t = Target::start();
    let mut send = t.connect(t.istio).await;
    let bearer = t.bearer();

    // Not protobuf: the caller's mistake, not the server's.
    let mut garbage = abuse::grpc_prefix(6).to_vec();
    garbage.extend_from_slice(&[0xff; 6]);
    let (code, message) = call_istio(&send, &bearer, Bytes::from(garbage)).await;
    assert_eq!(code, "3", "INVALID_ARGUMENT: {message}");

    // A message declared larger than the contract allows: refused from its
    // prefix, before it is read.
    let (code, message) = call_istio(
        &send,
        &bearer,
        Bytes::copy_from_slice(&abuse::grpc_prefix(1 << 20)),
    )
    .await;
    assert_eq!(code, "11", "OUT_OF_RANGE: {message}");

    // A CSR with text after it.
    let csr = format!(
        "{}{}",
        support::named_csr("bench", "bench"),
        "junk ".repeat(2000)
    );
    let (code, message) = call_istio(&send, &bearer, istio_message(&csr)).await;
    assert_eq!(code, "3", "{message}");
    assert!(message.contains("outside the PEM block"), "{message}");

    legitimate(&mut send, ISTIO, true, &bearer).await;
}
