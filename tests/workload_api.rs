//! The agent's SPIFFE Workload API against py-spiffe (PyPI `spiffe`, a
//! third-party client, installed into ./.venv by .ci/run), with the agent
//! fed by a real daemon over HTTPS: the SVID and bundle as the library
//! validates them, renewals and bundle changes pushed on open streams, the
//! security header, the socket's mode and a stale socket from a crash.

use meshca_test_support as support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use meshca::{AgentConfig, WorkloadApiConfig};
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use support::TestDaemon;
use tokio_util::sync::CancellationToken;

const TRUST_DOMAIN_ID: &str = "spiffe://cluster.local";

fn python() -> PathBuf {
    let p = support::repo_root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "py-spiffe is missing: `python3 -m venv .venv && .venv/bin/pip install --require-hashes -r tests/requirements-spiffe.txt` (.ci/run does this)"
    );
    p
}

/// An agent serving the Workload API (and writing files, whose change
/// times tell when it delivered each certificate).
struct Agent {
    socket: PathBuf,
    out: PathBuf,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), meshca::AgentError>>,
    _work: tempfile::TempDir,
}

impl Agent {
    async fn start(d: &TestDaemon, ttl: Duration, before: impl FnOnce(&Path)) -> Self {
        let work = tempfile::tempdir().expect("tempdir");
        let socket = work.path().join("run/agent.sock");
        before(&socket);
        let token_file = work.path().join("token");
        std::fs::write(&token_file, d.token("shop", "web")).expect("token");
        let out = work.path().join("out");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(meshca::run_agent(
            AgentConfig {
                server: d.url(""),
                ca_file: d.bundle_path(),
                token_file: Some(token_file),
                out_dir: Some(out.clone()),
                spiffe_files: true,
                workload_api: Some(WorkloadApiConfig {
                    socket: socket.clone(),
                    mode: 0o600,
                }),
                ttl: Some(ttl),
                once: false,
                bundle_refresh: Duration::from_millis(300),
            },
            shutdown.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() || !out.join("cert.pem").exists() {
            assert!(Instant::now() < deadline, "the agent never served");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            socket,
            out,
            shutdown,
            task,
            _work: work,
        }
    }

    /// Run the py-spiffe client with `args`; one JSON value per line.
    fn client(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(python());
        cmd.arg(support::repo_root().join("tests/spiffe/client.py"))
            .args(args)
            .env(
                "SPIFFE_ENDPOINT_SOCKET",
                format!("unix://{}", self.socket.display()),
            )
            .kill_on_drop(true);
        cmd
    }

    async fn run_client(&self, args: &[&str]) -> Vec<Value> {
        let out = self.client(args).output().await.expect("python runs");
        assert!(
            out.status.success(),
            "client {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lines(&out.stdout)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the agent stops promptly")
            .expect("join");
        ended.expect("the agent ends cleanly");
    }
}

fn lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Certificates the client printed as base64 DER.
fn ders(values: &Value) -> Vec<CertificateDer<'static>> {
    values
        .as_array()
        .expect("a list")
        .iter()
        .map(|v| {
            let der = STANDARD
                .decode(v.as_str().expect("base64"))
                .expect("base64");
            CertificateDer::from(der)
        })
        .collect()
}

fn pem_of(values: &Value) -> String {
    meshca_provider::pem::encode_certificates(&ders(values))
}

fn seconds_since_epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_gets_a_valid_svid_and_bundle_and_renewals_arrive_on_an_open_stream() {
    let d =
        TestDaemon::start("certificates: { default_ttl: 1h, min_ttl: 3s, max_ttl: 2h }\n").await;
    let agent = Agent::start(&d, Duration::from_secs(6), |_| {}).await;

    let fetched = agent.run_client(&["fetch"]).await;
    let f = &fetched[0];
    assert_eq!(f["spiffe_id"], "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(f["key_matches"], true, "{f}");
    assert_eq!(f["ec_key"], true);
    assert_eq!(
        f["bundle_trust_domains"],
        serde_json::json!(["cluster.local"])
    );
    let chain_pem = pem_of(&f["chain"]);
    let bundle_pem = pem_of(&f["bundle"]);
    assert_eq!(
        support::certs(&bundle_pem),
        support::certs(&d.bundle_pem().await),
        "the Workload API bundle is the daemon's"
    );
    support::verify(&chain_pem, &bundle_pem, webpki::KeyUsage::client_auth())
        .expect("the SVID chains to the bundle");

    // The SPIFFE file layout beside the usual files.
    let credential =
        std::fs::read_to_string(agent.out.join("credential-bundle.pem")).expect("file");
    assert!(
        credential.starts_with("-----BEGIN PRIVATE KEY-----"),
        "key first"
    );
    let mode = std::fs::metadata(agent.out.join("credential-bundle.pem"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(agent.out.join("cluster.local.trust-bundle.pem").exists());

    // A 6 s certificate is renewed at about two thirds of its life; the
    // open stream must receive it without reconnecting.
    let watched = agent.run_client(&["watch", "2", "20"]).await;
    assert!(
        watched.iter().all(|w| w.get("error").is_none()),
        "{watched:?}"
    );
    assert_eq!(
        watched.len(),
        2,
        "a renewal arrived on the stream: {watched:?}"
    );
    assert_ne!(watched[0]["serial"], watched[1]["serial"]);
    let delivered = std::fs::symlink_metadata(agent.out.join("..data"))
        .expect("data link")
        .modified()
        .expect("mtime");
    let latency =
        watched[1]["received_at"].as_f64().expect("time") - seconds_since_epoch(delivered);
    eprintln!(
        "push latency from renewal to py-spiffe: {:.1} ms",
        latency * 1000.0
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_the_security_header_is_an_invalid_argument() {
    let d = TestDaemon::start("").await;
    let agent = Agent::start(&d, Duration::from_secs(3600), |_| {}).await;
    let answer = agent.run_client(&["no-header"]).await;
    assert_eq!(answer[0]["code"], "INVALID_ARGUMENT", "{answer:?}");
    assert!(
        answer[0]["details"]
            .as_str()
            .is_some_and(|d| d.contains("workload.spiffe.io")),
        "{answer:?}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_stale_socket_the_agent_serves_two_clients_at_once_then_removes_its_socket() {
    let d = TestDaemon::start("").await;
    let agent = Agent::start(&d, Duration::from_secs(3600), |socket| {
        std::fs::create_dir_all(socket.parent().expect("parent")).expect("dir");
        // What a crashed agent leaves: a socket nobody listens on.
        drop(std::os::unix::net::UnixListener::bind(socket).expect("stale socket"));
    })
    .await;
    let mode = std::fs::metadata(&agent.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "only the agent's user may connect");

    // One client holds a stream open meanwhile; two others fetch.
    let mut holder = agent.client(&["watch", "99", "30"]).spawn().expect("spawn");
    let (a, b) = tokio::join!(agent.run_client(&["fetch"]), agent.run_client(&["fetch"]));
    assert_eq!(a[0]["spiffe_id"], b[0]["spiffe_id"]);
    assert_eq!(
        a[0]["serial"], b[0]["serial"],
        "both see the agent's one SVID"
    );
    let socket = agent.socket.clone();
    agent.stop().await;
    let _ = holder.kill().await;
    assert!(!socket.exists(), "the socket is removed on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tresor_root_rotation_reaches_an_open_bundles_stream() {
    let roots = tempfile::tempdir().expect("tempdir");
    let a = support::openssl_root(roots.path(), "a");
    let b = support::openssl_root(roots.path(), "b");
    let yaml = |root: &(PathBuf, PathBuf)| {
        format!(
            "certificates: {{ default_ttl: 1h, min_ttl: 1s, max_ttl: 2h }}\nbundle: {{ refresh_interval: 1s }}\nrotation: {{ propagation_delay: 1s }}\nprovider:\n  kind: tresor\n  tresor:\n    root_cert_file: {}\n    root_key_file: {}\n",
            root.0.display(),
            root.1.display()
        )
    };
    let root_b = support::certs(&std::fs::read_to_string(&b.0).expect("root b")).remove(0);
    let d = TestDaemon::start_from_file(&yaml(&a)).await;
    let agent = Agent::start(&d, Duration::from_secs(3600), |_| {}).await;

    let mut stream = agent.client(&["bundles", "2", "30"]);
    let stream = stream
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Let the stream's first message arrive before the root changes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    d.rewrite_config(&yaml(&b));
    let out = tokio::time::timeout(Duration::from_secs(40), stream.wait_with_output())
        .await
        .expect("the stream ends after two messages")
        .expect("output");
    let messages = lines(&out.stdout);
    assert_eq!(messages.len(), 2, "{messages:?}");
    let bundle_of = |m: &Value| ders(&m["bundles"][TRUST_DOMAIN_ID]);
    assert!(!bundle_of(&messages[0]).contains(&root_b));
    assert!(
        bundle_of(&messages[1]).contains(&root_b),
        "the new root was pushed on the open stream"
    );
    agent.stop().await;
}
