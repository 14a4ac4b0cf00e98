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
use meshca::{AgentConfig, KeyAlgorithmName, WorkloadApiConfig};
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use support::TestDaemon;
use tokio_util::sync::CancellationToken;
use x509_parser::prelude::{FromDer, X509Certificate};

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
        Self::start_as(d, "web", ttl, before).await
    }

    /// An agent for the ServiceAccount `shop/<service_account>`.
    async fn start_as(
        d: &TestDaemon,
        service_account: &str,
        ttl: Duration,
        before: impl FnOnce(&Path),
    ) -> Self {
        let refresh = Duration::from_millis(300);
        Self::start_refreshing(
            d,
            (service_account, KeyAlgorithmName::EcdsaP256),
            ttl,
            refresh,
            before,
        )
        .await
    }

    /// As [`Agent::start_as`], reading the bundle and the JWT keys every
    /// `bundle_refresh`.
    async fn start_refreshing(
        d: &TestDaemon,
        (service_account, key_algorithm): (&str, KeyAlgorithmName),
        ttl: Duration,
        bundle_refresh: Duration,
        before: impl FnOnce(&Path),
    ) -> Self {
        let work = tempfile::tempdir().expect("tempdir");
        let socket = work.path().join("run/agent.sock");
        before(&socket);
        let token_file = work.path().join("token");
        std::fs::write(&token_file, d.token("shop", service_account)).expect("token");
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
                bundle_refresh,
                crl_refresh: bundle_refresh,
                key_algorithm,
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
async fn both_x509_messages_carry_the_crls_and_a_revocation_reaches_them() {
    let d = TestDaemon::start_from_file("").await;
    let agent = Agent::start(&d, Duration::from_secs(3600), |_| {}).await;
    let crls = |v: &Value, key: &str| v[key].as_array().expect("a list").clone();
    let first = &agent.run_client(&["crls"]).await[0];
    for key in ["svid_response", "bundles_response"] {
        let lists = crls(first, key);
        assert_eq!(lists.len(), 1, "{key}: the root's list: {first}");
        assert_eq!(lists[0]["revoked"], serde_json::json!([]), "{first}");
    }
    // Revoke the workload's own certificate, as an operator would.
    let pem = std::fs::read_to_string(agent.out.join("cert.pem")).expect("cert.pem");
    let der = support::certs(&pem).remove(0);
    let (_, leaf) = X509Certificate::from_der(&der).expect("leaf");
    let serial = leaf.raw_serial_as_string().replace(':', "");
    let config = d.dir.path().join("meshca.yaml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
        .args(["certificate", "revoke", "--serial", &serial, "-c"])
        .arg(&config)
        .output()
        .expect("meshca");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = serde_json::json!([serial.trim_start_matches('0').to_lowercase()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = &agent.run_client(&["crls"]).await[0];
        if ["svid_response", "bundles_response"]
            .iter()
            .all(|key| crls(now, key)[0]["revoked"] == expected)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the revocation never reached the Workload API: {now}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
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

/// The JWT profile, as py-spiffe uses it: a token for the agent's own
/// identity (cached while young), the trust domain's JWT keys, and
/// validation that refuses what it must.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_fetches_and_validates_a_jwt_svid_and_the_keys_that_sign_it() {
    let port = support::process::free_port();
    let issuer = format!("https://127.0.0.1:{port}");
    let d = TestDaemon::start(&format!(
        "jwt_svids: {{ enabled: true, issuer: \"{issuer}\" }}\noidc: {{ listen: \"127.0.0.1:{port}\" }}\n"
    ))
    .await;
    let agent = Agent::start(&d, Duration::from_secs(3600), |_| {}).await;
    let got = agent.run_client(&["jwt", "vault"]).await;
    let j = &got[0];
    let me = "spiffe://cluster.local/ns/shop/sa/web";
    assert_eq!(j["spiffe_id"], me, "{j}");
    assert_eq!(j["audience"], serde_json::json!(["vault"]));
    assert_eq!(j["cached"], true, "a young token is served again");
    assert_eq!(j["offline_spiffe_id"], me, "py-spiffe's own check");
    assert_eq!(j["validated_spiffe_id"], me, "ValidateJWTSVID");
    let jwks: Value = d
        .client()
        .await
        .get(d.url("/v1/bundle/spiffe"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    let kid = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["use"] == "jwt-svid")
        .expect("a JWT key")["kid"]
        .clone();
    assert_eq!(
        j["bundle_kids"],
        serde_json::json!({ "cluster.local": [kid.clone()] })
    );
    let token = j["token"].as_str().expect("token");

    let check = |token: String, audience: &'static str| {
        let agent = &agent;
        async move { agent.run_client(&["jwt-check", &token, audience]).await[0].clone() }
    };
    let ok = check(token.to_owned(), "vault").await;
    assert_eq!(
        (ok["code"].as_str(), ok["spiffe_id"].as_str()),
        (Some("OK"), Some(me))
    );
    assert_eq!(
        ok["claims"],
        serde_json::json!(["aud", "exp", "iat", "iss", "sub"])
    );
    let wrong_audience = check(token.to_owned(), "aws").await;
    assert_eq!(
        wrong_audience["code"], "INVALID_ARGUMENT",
        "{wrong_audience}"
    );
    let elsewhere = TestDaemon::start("jwt_svids: { enabled: true }\n").await;
    let (status, _, stranger) = {
        let resp = elsewhere
            .client()
            .await
            .post(elsewhere.url("/v1/jwt-svids"))
            .bearer_auth(elsewhere.token("shop", "web"))
            .json(&serde_json::json!({ "audience": ["vault"] }))
            .send()
            .await
            .expect("sent");
        (
            resp.status().as_u16(),
            (),
            resp.json::<Value>().await.expect("JSON"),
        )
    };
    assert_eq!(status, 200);
    let foreign = check(
        stranger["token"]
            .as_str()
            .expect("as the test set it up")
            .to_owned(),
        "vault",
    )
    .await;
    assert_eq!(foreign["code"], "INVALID_ARGUMENT");
    assert!(
        foreign["details"]
            .as_str()
            .expect("as the test set it up")
            .contains("no key"),
        "{foreign}"
    );

    // Another workload, through its own agent, validates this token.
    let db = Agent::start_as(&d, "db", Duration::from_secs(3600), |_| {}).await;
    let by_db = db.run_client(&["jwt-check", token, "vault"]).await;
    assert_eq!(
        (by_db[0]["code"].as_str(), by_db[0]["spiffe_id"].as_str()),
        (Some("OK"), Some(me)),
        "{by_db:?}"
    );
    db.stop().await;

    // OpenBao's JWT auth method, through OIDC discovery, logs in the
    // workload with the token its agent handed it.
    let bao = support::openbao::OpenBao::dev().await;
    let ca = d.dir.path().join("ca-for-bao.pem");
    std::fs::write(&ca, d.bundle_pem().await).expect("write");
    bao.jwt_auth(&issuer, &ca, Some(me), &[]);
    let vault_token = bao.jwt_login(token).expect("OpenBao logs the workload in");
    assert!(!vault_token.trim().is_empty());

    let someone_else = agent
        .run_client(&["jwt-fetch", "vault", "spiffe://cluster.local/ns/shop/sa/db"])
        .await;
    assert_eq!(
        someone_else[0]["code"], "PERMISSION_DENIED",
        "{someone_else:?}"
    );
    let no_audience = agent.run_client(&["jwt-fetch", ""]).await;
    assert_eq!(no_audience[0]["code"], "INVALID_ARGUMENT");
    let streamed = agent.run_client(&["jwt-bundles", "1", "10"]).await;
    assert_eq!(
        streamed[0]["kids"],
        serde_json::json!({ "spiffe://cluster.local": [kid] }),
        "{streamed:?}"
    );
    agent.stop().await;

    // A server without JWT-SVIDs: the profile is unimplemented, plainly.
    let plain = TestDaemon::start("").await;
    let agent = Agent::start(&plain, Duration::from_secs(3600), |_| {}).await;
    let refused = agent.run_client(&["jwt-fetch", "vault"]).await;
    assert_eq!(refused[0]["code"], "UNIMPLEMENTED", "{refused:?}");
    agent.stop().await;
}

/// A key removed from the trust domain's bundle stops validating at once,
/// however long the agent waits between its own reads of the keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_removed_from_the_bundle_stops_validating_at_once() {
    let port = support::process::free_port();
    let d = TestDaemon::start(&format!(
        "jwt_svids: {{ enabled: true, issuer: \"https://127.0.0.1:{port}\" }}\n"
    ))
    .await;
    let agent = Agent::start_refreshing(
        &d,
        ("web", KeyAlgorithmName::EcdsaP256),
        Duration::from_secs(3600),
        Duration::from_secs(300),
        |_| {},
    )
    .await;
    let client = d.client().await;
    let minted: Value = client
        .post(d.url("/v1/jwt-svids"))
        .bearer_auth(d.token("shop", "db"))
        .json(&serde_json::json!({ "audience": ["vault"] }))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    let token = minted["token"].as_str().expect("a token").to_owned();
    let check = agent.run_client(&["jwt-check", &token, "vault"]).await;
    assert_eq!(check[0]["code"], "OK", "{check:?}");

    // The key is lost (its record removed): the daemon makes a new one
    // and publishes only that.
    let kid_of = |bundle: &Value| {
        bundle["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|k| k["use"] == "jwt-svid")
            .map(|k| k["kid"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    let spiffe_bundle = || async {
        client
            .get(d.url("/v1/bundle/spiffe"))
            .send()
            .await
            .expect("sent")
            .json::<Value>()
            .await
            .expect("JSON")
    };
    let old = kid_of(&spiffe_bundle().await);
    std::fs::remove_file(d.dir.path().join("jwt-keys.json")).expect("removed");
    let deadline = Instant::now() + Duration::from_secs(20);
    while kid_of(&spiffe_bundle().await) == old {
        assert!(
            Instant::now() < deadline,
            "the daemon never replaced its key"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let check = agent.run_client(&["jwt-check", &token, "vault"]).await;
    assert_eq!(check[0]["code"], "INVALID_ARGUMENT", "{check:?}");
    assert!(
        check[0]["details"]
            .as_str()
            .is_some_and(|d| d.contains("no key")),
        "{check:?}"
    );
    agent.stop().await;
}

/// An agent asked for a post-quantum identity makes an ML-DSA key, is
/// issued under the post-quantum root, and py-spiffe (over the
/// `cryptography` that reads ML-DSA) receives that SVID with a bundle
/// holding both roots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_receives_an_ml_dsa_svid_and_a_bundle_of_both_roots() {
    let d = TestDaemon::start(
        "provider: { kind: tresor, tresor: { post_quantum: { key_algorithm: ml-dsa-65 } } }\n",
    )
    .await;
    let agent = Agent::start_refreshing(
        &d,
        ("web", KeyAlgorithmName::MlDsa65),
        Duration::from_secs(3600),
        Duration::from_secs(300),
        |_| {},
    )
    .await;
    let fetched = agent.run_client(&["fetch"]).await;
    let f = &fetched[0];
    assert_eq!(f["spiffe_id"], "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(f["key_matches"], true, "{f}");
    assert_eq!(f["ec_key"], false, "an ML-DSA key: {f}");
    let bundle_pem = pem_of(&f["bundle"]);
    assert_eq!(support::certs(&bundle_pem).len(), 2, "both roots");
    support::verify(
        &pem_of(&f["chain"]),
        &bundle_pem,
        webpki::KeyUsage::client_auth(),
    )
    .expect("the ML-DSA SVID chains to the bundle");
    let key = std::fs::read_to_string(agent.out.join("key.pem")).expect("key");
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    agent.stop().await;
}
