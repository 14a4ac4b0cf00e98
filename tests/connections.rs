//! Connections as an attacker or an unlucky network makes them: idle
//! after the handshake, headers trickled a byte at a time, a flood under a
//! low open-files limit, and requests for paths and methods that do not
//! exist. Everything runs on loopback against the real server.

use meshca_test_support as support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{certs, TestDaemon};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn tls_connect(
    addr: std::net::SocketAddr,
    bundle: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    support::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(bundle) {
        roots.add(c).expect("anchor");
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake")
}

/// Wait until the server ends `stream` (EOF or error); returns when.
async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(mut stream: S) -> Instant {
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return Instant::now(),
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_header_connections_are_closed_by_the_server_within_75_seconds() {
    let d = TestDaemon::start("").await;
    let addr = d.daemon.as_ref().expect("running").api_addr();
    let bundle = d.bundle_pem().await;
    let started = Instant::now();
    let mut waits = Vec::new();
    for _ in 0..100 {
        let idle = tls_connect(addr, &bundle).await;
        waits.push(tokio::spawn(closed_by_server(idle)));
    }
    for _ in 0..100 {
        let tls = tls_connect(addr, &bundle).await;
        let (reader, mut writer) = tokio::io::split(tls);
        // A byte a second of a request head that never ends.
        tokio::spawn(async move {
            for b in b"POST /v1/certificates HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
                .iter()
                .cycle()
            {
                if writer.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        waits.push(tokio::spawn(closed_by_server(reader)));
    }
    let deadline = started + Duration::from_secs(75);
    for w in waits {
        let at = tokio::time::timeout_at(deadline.into(), w)
            .await
            .expect("closed by the server within 75 s")
            .expect("joined");
        assert!(at <= deadline);
    }
    // The server still serves.
    let (status, _) = d.get_status("/v1/bundle").await;
    assert_eq!(status, 200);
}

/// The daemon under test, killed however the test ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_low_open_files_limit_health_answers_throughout_a_flood_of_the_api_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port")
    };
    let (api, health) = (free(), free());
    std::fs::write(
        dir.path().join("meshca.yaml"),
        format!("listen: 127.0.0.1:{api}\nmetrics_listen: 127.0.0.1:{health}\n"),
    )
    .expect("config");
    let mut child = Command::new("prlimit")
        .args(["--nofile=128:128", "--"])
        .arg(env!("CARGO_BIN_EXE_meshca"))
        .args(["serve", "-c", "meshca.yaml"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit meshca serve");
    let stderr = child.stderr.take().expect("stderr");
    let child = Killed(child);
    let log = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let health_url = format!("http://127.0.0.1:{health}/healthz");
    let plain = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while plain.get(&health_url).send().await.is_err() {
        assert!(Instant::now() < deadline, "meshca did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 200 idle connections to the API port: more than the process could
    // hold open at once.
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(
            tokio::net::TcpStream::connect(("127.0.0.1", api))
                .await
                .expect("the kernel's backlog takes it"),
        );
    }
    for _ in 0..20 {
        let r = tokio::time::timeout(Duration::from_secs(2), plain.get(&health_url).send())
            .await
            .expect("healthz answers in time")
            .expect("healthz");
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(flood);
    // Once the flood is gone, the API serves again.
    let bundle =
        std::fs::read_to_string(dir.path().join("meshca-data/bundle/ca.crt")).expect("bundle");
    let client = support::client(&bundle, None);
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        client
            .get(format!("https://localhost:{api}/v1/bundle"))
            .send(),
    )
    .await
    .expect("the API answers in time")
    .expect("bundle");
    assert_eq!(r.status(), 200);

    drop(child);
    let lines = log.join().expect("log");
    let emfile = lines
        .iter()
        .filter(|l| l.contains("Too many open files"))
        .count();
    assert!(
        emfile <= 1,
        "one warning, not one per failed accept: {emfile}"
    );
}

#[tokio::test]
async fn unknown_paths_methods_and_oversized_headers_get_json_errors() {
    let d = TestDaemon::start("").await;
    let client = d.client().await;
    for (method, path, want, code) in [
        ("GET", "/v1/nothing-here", 404, "not_found"),
        ("DELETE", "/v1/bundle", 405, "method_not_allowed"),
    ] {
        let r = client
            .request(method.parse().expect("method"), d.url(path))
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status().as_u16(), want);
        let body: serde_json::Value = r.json().await.expect("a JSON body");
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    let r = client
        .get(d.url("/v1/bundle"))
        .header("x-padding", "a".repeat(40 * 1024))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 431);
    let body: serde_json::Value = r.json().await.expect("a JSON body");
    assert_eq!(body["error"]["code"], "headers_too_large", "{body}");
    let r = reqwest::Client::new()
        .get(d.metrics_url("/nothing"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 404);
    let body: serde_json::Value = r.json().await.expect("the health port too");
    assert_eq!(body["error"]["code"], "not_found");
}
