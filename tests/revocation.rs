//! Revocation end to end with real verifiers: `meshca certificate revoke`
//! (the binary), the CRLs at `GET /v1/crl` and in the agent's `crl.pem`,
//! Debian's nginx terminating mTLS with `ssl_crl`, `openssl verify
//! -crl_check`, `curl --crlfile`, and `cryptography` checking every CRL's
//! signature against its issuing CA. The ledger survives a restart, and
//! one that cannot be read stops the start.

use meshca_test_support as support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use meshca::AgentConfig;
use support::TestDaemon;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_meshca");

/// The Kubernetes stand-in, and the config lines that reach it.
async fn stand_in() -> (support::kube::KubeStandIn, String) {
    let kube = support::kube::KubeStandIn::start().await;
    let extra = format!(
        "kubernetes: {{ kubeconfig: {}, lease_duration: 3s }}\n",
        kube.kubeconfig().display()
    );
    (kube, extra)
}

/// The daemon's config, also written to a file for the CLI.
async fn daemon(extra: &str) -> (TestDaemon, PathBuf) {
    let d = TestDaemon::start(extra).await;
    let path = d.dir.path().join("meshca.yaml");
    std::fs::write(&path, support::config_yaml(d.dir.path(), extra)).expect("config file");
    (d, path)
}

fn meshca(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("meshca runs")
}

fn revoke(config: &Path, serial: &str) -> Output {
    meshca(&[
        "certificate",
        "revoke",
        "-c",
        &config.display().to_string(),
        "--serial",
        serial,
        "--reason",
        "drill",
    ])
}

/// An agent for `ns/sa` writing to `out`, following the bundle and the
/// CRLs every half second, until the token is cancelled.
fn agent(d: &TestDaemon, work: &Path, ns: &str, sa: &str) -> (PathBuf, CancellationToken) {
    let token_file = work.join(format!("{sa}.token"));
    std::fs::write(&token_file, d.token(ns, sa)).expect("token file");
    let out = work.join(sa);
    let config = AgentConfig {
        server: d.url(""),
        ca_file: d.bundle_path(),
        token_file: Some(token_file),
        out_dir: Some(out.clone()),
        spiffe_files: false,
        workload_api: None,
        ttl: Some(Duration::from_secs(3600)),
        once: false,
        bundle_refresh: Duration::from_millis(500),
        crl_refresh: Duration::from_millis(500),
        key_algorithm: meshca::KeyAlgorithmName::EcdsaP256,
    };
    let stop = CancellationToken::new();
    tokio::spawn(meshca::run_agent(config, stop.clone()));
    (out, stop)
}

/// `openssl x509 -serial` of `cert.pem` in `out`: the hexadecimal an
/// operator copies.
fn serial_of(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(cert)
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().trim_start_matches("serial=").to_owned()
}

/// Whether `crl.pem` (every list) names `serial`, as openssl prints it.
fn crl_lists(crl: &Path, serial: &str) -> bool {
    let Ok(pem) = std::fs::read_to_string(crl) else {
        return false;
    };
    pem.split_inclusive("-----END X509 CRL-----\n")
        .any(|block| {
            let mut child = Command::new("openssl")
                .args(["crl", "-noout", "-text"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("openssl");
            use std::io::Write;
            let _ = child
                .stdin
                .take()
                .expect("stdin")
                .write_all(block.as_bytes());
            let out = child.wait_with_output().expect("openssl");
            String::from_utf8_lossy(&out.stdout).contains(&format!("Serial Number: {serial}"))
        })
}

async fn wait_until_listed(crl: &Path, serial: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !crl_lists(crl, serial) {
        assert!(
            Instant::now() < deadline,
            "{} never listed {serial}",
            crl.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `openssl verify -crl_check` of `cert` against the bundle and the CRLs.
fn openssl_verify(bundle: &Path, crl: &Path, cert: &Path, all: bool) -> (bool, String) {
    let out = Command::new("openssl")
        .arg("verify")
        .arg(if all { "-crl_check_all" } else { "-crl_check" })
        .arg("-CAfile")
        .arg(bundle)
        .arg("-CRLfile")
        .arg(crl)
        .arg("-untrusted")
        .arg(cert)
        .arg(cert)
        .output()
        .expect("openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `openssl verify` with the lists refuses the certificate in `revoked`
/// as revoked and accepts the one in `other`.
fn openssl_refuses_only(bundle: &Path, crl: &Path, revoked: &Path, other: &Path, all: bool) {
    let (ok, text) = openssl_verify(bundle, crl, &revoked.join("cert.pem"), all);
    assert!(!ok && text.contains("certificate revoked"), "{text}");
    let (ok, text) = openssl_verify(bundle, crl, &other.join("cert.pem"), all);
    assert!(ok, "{text}");
}

fn nginx_conf(dir: &Path, port: u16, server: &Path) -> PathBuf {
    let s = server.display();
    let conf = format!(
        "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_protocols TLSv1.2 TLSv1.3;\n\
             ssl_certificate {s}/cert.pem;\n    ssl_certificate_key {s}/key.pem;\n\
             ssl_client_certificate {s}/ca.pem;\n    ssl_verify_client on;\n    ssl_verify_depth 3;\n\
             ssl_crl {s}/crl.pem;\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n",
        d = dir.display(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("conf");
    path
}

/// curl through nginx with `client`'s certificate: the HTTP status, `000`
/// when the handshake failed; `crl` makes curl check nginx's certificate
/// against it.
fn curl(port: u16, ca: &Path, client: &Path, crl: Option<&Path>) -> String {
    let mut command = Command::new("curl");
    command
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(ca)
        .arg("--cert")
        .arg(client.join("cert.pem"))
        .arg("--key")
        .arg(client.join("key.pem"))
        .arg("--resolve")
        .arg(format!("web.app.cluster.local:{port}:127.0.0.1"));
    if let Some(crl) = crl {
        command.arg("--crlfile").arg(crl);
    }
    let out = command
        .arg(format!("https://web.app.cluster.local:{port}/"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).to_string()
}

async fn wait_for_file(path: &Path) {
    support::eventually(&path.display().to_string(), Duration::from_secs(20), || {
        path.exists().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_refuses_a_revoked_client_within_a_minute_and_still_accepts_another() {
    let (d, config) = daemon("revocation: { crl_next_update: 1m }\n").await;
    let work = tempfile::tempdir().expect("tempdir");
    let (web, _web_stop) = agent(&d, work.path(), "app", "web");
    let (a, _a_stop) = agent(&d, work.path(), "app", "client-a");
    let (b, _b_stop) = agent(&d, work.path(), "app", "client-b");
    for dir in [&web, &a, &b] {
        wait_for_file(&dir.join("crl.pem")).await;
    }
    let nginx_dir = work.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).expect("nginx dir");
    let port = support::process::free_port();
    let conf = nginx_conf(&nginx_dir, port, &web);
    let nginx = support::nginx::start(&nginx_dir, &conf, port).await;
    let ca = web.join("ca.pem");
    assert_eq!(curl(port, &ca, &a, None), "200", "before any revocation");
    assert_eq!(curl(port, &ca, &b, None), "200");

    let serial = serial_of(&a.join("cert.pem"));
    let revoked_at = Instant::now();
    let out = revoke(&config, &serial);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until_listed(&web.join("crl.pem"), &serial, Duration::from_secs(50)).await;
    nginx.reload();
    let refused = support::eventually(
        "nginx refusing the revoked client",
        Duration::from_secs(10),
        || (curl(port, &ca, &a, None) == "400").then_some(()),
    );
    refused.await;
    let took = revoked_at.elapsed();
    eprintln!("nginx refused the revoked client {took:?} after meshca certificate revoke");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert_eq!(
        curl(port, &ca, &b, None),
        "200",
        "another workload is still accepted"
    );
    let log = std::fs::read_to_string(nginx_dir.join("error.log")).unwrap_or_default();
    assert!(log.contains("certificate revoked"), "{log}");

    // openssl agrees, with the lists the agent wrote.
    let crl = web.join("crl.pem");
    openssl_refuses_only(&ca, &crl, &a, &b, false);

    // curl agrees when the server's own certificate is revoked: with the
    // lists it refuses nginx, without them it does not know.
    let web_serial = serial_of(&web.join("cert.pem"));
    assert!(revoke(&config, &web_serial).status.success());
    wait_until_listed(&b.join("crl.pem"), &web_serial, Duration::from_secs(20)).await;
    assert_eq!(curl(port, &ca, &b, Some(&b.join("crl.pem"))), "000");
    assert_eq!(curl(port, &ca, &b, None), "200");
}

/// `cryptography` (PyPI) parses each list and checks its signature under
/// the CA named its issuer, among `cas`.
fn cryptography_verifies(crl_pem: &str, cas: &[String], serial: &str) {
    cryptography_in(".venv", crl_pem, cas, serial);
}

/// [`cryptography_verifies`] with the `cryptography` of `venv`.
fn cryptography_in(venv: &str, crl_pem: &str, cas: &[String], serial: &str) {
    let script = r#"
import sys
from cryptography import x509
crls_pem, cas_pem, serial = sys.argv[1], sys.argv[2], int(sys.argv[3], 16)
blocks = [b + "-----END X509 CRL-----\n" for b in crls_pem.split("-----END X509 CRL-----\n") if b.strip()]
cas = x509.load_pem_x509_certificates(cas_pem.encode())
for block in blocks:
    crl = x509.load_pem_x509_crl(block.encode())
    issuer = [c for c in cas if c.subject == crl.issuer]
    assert len(issuer) == 1, crl.issuer
    assert crl.is_signature_valid(issuer[0].public_key()), crl.issuer
    assert crl.next_update_utc > crl.last_update_utc
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    print(crl.issuer.rfc4514_string(), crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
"#;
    let python = support::repo_root().join(venv).join("bin/python");
    let out = Command::new(python)
        .args(["-c", script, crl_pem, &cas.concat(), serial])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        printed.lines().count(),
        crl_pem.matches("BEGIN X509 CRL").count()
    );
}

async fn get_crl(d: &TestDaemon, pem: bool) -> (u16, String, Vec<u8>) {
    let mut request = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("client")
        .get(d.url("/v1/crl"));
    if pem {
        request = request.header("accept", "application/x-pem-file");
    }
    let response = request.send().await.expect("GET /v1/crl");
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, kind, response.bytes().await.expect("body").to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_intermediate_each_ca_signs_its_list_and_verifiers_check_every_level() {
    let (d, config) = daemon(
        "provider:\n  kind: tresor\n  tresor:\n    intermediate: { validity: 720h }\nrevocation: { crl_next_update: 5m }\n",
    )
    .await;
    let work = tempfile::tempdir().expect("tempdir");
    let (a, _a) = agent(&d, work.path(), "app", "a");
    let (b, _b) = agent(&d, work.path(), "app", "b");
    wait_for_file(&a.join("crl.pem")).await;
    wait_for_file(&b.join("crl.pem")).await;
    let serial = serial_of(&a.join("cert.pem"));
    assert!(revoke(&config, &serial).status.success());
    wait_until_listed(&b.join("crl.pem"), &serial, Duration::from_secs(20)).await;

    let (status, kind, pem) = get_crl(&d, true).await;
    assert_eq!((status, kind.as_str()), (200, "application/x-pem-file"));
    let pem = String::from_utf8(pem).expect("PEM");
    assert_eq!(
        pem.matches("BEGIN X509 CRL").count(),
        2,
        "the intermediate's and the root's"
    );
    let chain = std::fs::read_to_string(a.join("cert.pem")).expect("chain");
    let intermediate = chain
        .split_inclusive("-----END CERTIFICATE-----\n")
        .nth(1)
        .expect("an intermediate")
        .to_owned();
    let root = d.bundle_pem().await;
    cryptography_verifies(&pem, &[intermediate, root], &serial);

    // DER: the intermediate's list, which leaves are checked against.
    let (status, kind, der) = get_crl(&d, false).await;
    assert_eq!((status, kind.as_str()), (200, "application/pkix-crl"));
    let (_, crl) = x509_parser::parse_x509_crl(&der).expect("a DER CRL");
    assert!(
        crl.issuer().to_string().contains("intermediate"),
        "{}",
        crl.issuer()
    );

    // openssl checking every level needs both lists; it finds them.
    let crl_file = b.join("crl.pem");
    let bundle = d.bundle_path();
    openssl_refuses_only(&bundle, &crl_file, &a, &b, true);

    let metrics = d.metrics().await;
    assert!(
        metrics.contains("meshca_revoked_certificates{provider=\"tresor\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        metrics
            .matches("meshca_crl_next_update_timestamp_seconds{issuer=")
            .count(),
        2,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_survives_a_restart_and_a_ledger_that_cannot_be_read_stops_the_start() {
    let (mut d, config) = daemon("").await;
    // An empty list is published from the start.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, der) = get_crl(&d, false).await;
        if status == 200 {
            let (_, crl) = x509_parser::parse_x509_crl(&der).expect("a DER CRL");
            assert_eq!(crl.iter_revoked_certificates().count(), 0);
            break;
        }
        assert_eq!(status, 503, "only not_ready before the first lists");
        assert!(Instant::now() < deadline, "no CRL after 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = revoke(&config, "0A:1B:2C");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = revoke(&config, "a1b2c");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already revoked"),
        "the same serial, written another way: {}",
        String::from_utf8_lossy(&again.stderr)
    );

    d.restart().await;
    let listed = |pem: &[u8]| String::from_utf8_lossy(pem).contains("BEGIN X509 CRL");
    let deadline = Instant::now() + Duration::from_secs(10);
    let pem = loop {
        let (status, _, pem) = get_crl(&d, true).await;
        if status == 200 && listed(&pem) {
            break pem;
        }
        assert!(Instant::now() < deadline, "no CRL after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let file = d.dir.path().join("after-restart.pem");
    std::fs::write(&file, &pem).expect("crl");
    assert!(
        crl_lists(&file, "0A1B2C"),
        "the restarted daemon still lists it"
    );

    // A ledger that does not parse: the start stops, naming it; nothing
    // is rewritten.
    d.stop().await;
    let ledger = d.dir.path().join("revocations.json");
    std::fs::write(&ledger, "{\"revoked\": [").expect("corrupt");
    let err = meshca::start(d.config.clone())
        .await
        .expect_err("the start stops");
    let text = support::error_chain(&err);
    assert!(
        text.contains("revocations.json") && text.contains("does not parse"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(&ledger).expect("as written"),
        "{\"revoked\": ["
    );
    let out = revoke(&config, "0b");
    assert!(
        !out.status.success(),
        "the CLI does not write over it either"
    );
    assert_eq!(
        std::fs::read_to_string(&ledger).expect("as written"),
        "{\"revoked\": ["
    );
}

#[test]
fn the_command_refuses_what_is_not_a_serial_and_a_provider_without_revocation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tresor = dir.path().join("tresor.yaml");
    std::fs::write(&tresor, support::config_yaml(dir.path(), "")).expect("config");
    for bad in ["xyz", "00", ""] {
        let out = revoke(&tresor, bad);
        assert_eq!(out.status.code(), Some(64), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is not a certificate serial number"), "{err}");
    }
    assert!(
        !dir.path().join("revocations.json").exists(),
        "nothing written"
    );

    // Commands run at once all land: the file is changed under its lock.
    let running: Vec<_> = (1..=8)
        .map(|i| {
            Command::new(BIN)
                .args(["certificate", "revoke", "-c"])
                .arg(&tresor)
                .args(["--serial", &format!("{i:02x}")])
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("meshca")
        })
        .collect();
    for mut child in running {
        assert!(child.wait().expect("wait").success());
    }
    let ledger = std::fs::read_to_string(dir.path().join("revocations.json")).expect("ledger");
    for i in 1..=8 {
        assert!(
            ledger.contains(&format!("\"serial\":\"{i:02x}\"")),
            "{i}: {ledger}"
        );
    }

    let cert_manager = dir.path().join("cert-manager.yaml");
    let yaml = "kubernetes: { kubeconfig: /nonexistent }\nprovider:\n  kind: cert-manager\n  cert_manager: { issuer_name: osm-ca }\n";
    std::fs::write(&cert_manager, support::config_yaml(dir.path(), yaml)).expect("config");
    let out = revoke(&cert_manager, "0a");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cert-manager provider has no revocation") && err.contains("identity deny"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("revocations.json")).expect("ledger"),
        ledger,
        "nothing written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_the_ledger_and_the_lists_are_configmaps() {
    let (kube, extra) = stand_in().await;
    let (d, config) = daemon(&extra).await;
    let out = revoke(&config, "0a1b2c");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ledger = kube
        .get("", "configmaps", "osm-system", "meshca-revocations")
        .expect("the ledger's ConfigMap");
    let text = ledger["data"]["revocations.json"]
        .as_str()
        .expect("the ledger");
    assert!(text.contains("\"serial\":\"0a1b2c\""), "{text}");
    // Who revoked is the user the API server authenticates the command's
    // kubeconfig as (a SelfSubjectReview), not $USER.
    assert!(
        text.contains(&format!("\"by\":\"{}\"", support::kube::ADMIN_USER)),
        "{text}"
    );
    assert!(
        !d.dir.path().join("revocations.json").exists(),
        "not in the state directory"
    );

    // The leader keeps every list in meshca-crl for in-cluster consumers.
    configmap_lists(&kube, d.dir.path(), &["0A1B2C"]).await;

    // And records who revoked what, about the ledger.
    let event = support::eventually("the revocation's Event", Duration::from_secs(10), || {
        kube.list("events.k8s.io", "events", "osm-system")
            .into_iter()
            .find(|e| e["reason"] == "CertificateRevoked")
    })
    .await;
    let note = event["note"].as_str().expect("a note");
    assert!(
        note.contains("0a1b2c")
            && note.contains(": drill")
            && note.contains(support::kube::ADMIN_USER),
        "{note}"
    );
    assert_eq!(event["regarding"]["name"], "meshca-revocations");
    assert_eq!(event["type"], "Warning");
}

/// Wait until the ConfigMap meshca-crl lists every serial of `serials`
/// (as openssl prints them).
async fn configmap_lists(kube: &support::kube::KubeStandIn, dir: &Path, serials: &[&str]) {
    let file = dir.join("configmap.crl");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pem = kube
            .get("", "configmaps", "osm-system", "meshca-crl")
            .and_then(|cm| cm["data"]["ca.crl"].as_str().map(str::to_owned));
        if let Some(pem) = pem {
            std::fs::write(&file, pem).expect("crl");
            if serials.iter().all(|s| crl_lists(&file, s)) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "meshca-crl never listed {serials:?}: {:?}",
            kube.get("", "configmaps", "osm-system", "meshca-crl"),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_outage_and_a_change_of_leader_lose_no_revocation() {
    let (kube, extra) = stand_in().await;
    let (mut first, config) = daemon(&extra).await;
    let second = TestDaemon::start(&extra).await;
    assert!(revoke(&config, "0a1b2c").status.success());
    configmap_lists(&kube, first.dir.path(), &["0A1B2C"]).await;

    // The API server down: the command fails saying so and writes
    // nothing; every replica keeps serving the lists it made.
    kube.set_unavailable(true);
    let out = revoke(&config, "0d0e0f");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("meshca-revocations"),
        "names the ledger: {err}"
    );
    for replica in [&first, &second] {
        let (status, _, pem) = get_crl(replica, true).await;
        assert_eq!(status, 200);
        let file = replica.dir.path().join("during-outage.pem");
        std::fs::write(&file, pem).expect("crl");
        assert!(crl_lists(&file, "0A1B2C"), "still listed during the outage");
    }
    kube.set_unavailable(false);

    // One replica goes: the other leads (or led) and lists both, the
    // earlier serial read from the ledger, the new one as it lands.
    first.stop().await;
    let out = revoke(&config, "0d0e0f");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    configmap_lists(&kube, second.dir.path(), &["0A1B2C", "0D0E0F"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_openbao_a_revoked_serial_is_in_the_mounts_crl_that_meshca_serves() {
    let bao = support::openbao::OpenBao::dev().await;
    bao.script("setup-pki.sh", &[]);
    let token_file = bao.meshca_token_file();
    let auth = format!("{{ token_file: {} }}", token_file.display());
    let (d, config) = daemon(&bao.provider_yaml(&auth, "")).await;
    let work = tempfile::tempdir().expect("tempdir");
    let (a, _a) = agent(&d, work.path(), "app", "a");
    let (b, _b) = agent(&d, work.path(), "app", "b");
    wait_for_file(&a.join("crl.pem")).await;
    wait_for_file(&b.join("crl.pem")).await;
    let serial = serial_of(&a.join("cert.pem"));
    let out = revoke(&config, &serial);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until_listed(&b.join("crl.pem"), &serial, Duration::from_secs(20)).await;

    // OpenBao revoked it: its own record says so, and the list is the
    // mount's, signed by Vault's root.
    let colons: Vec<String> = serial
        .to_lowercase()
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let revoked_at = bao.cli(&[
        "read",
        "-field=revocation_time",
        &format!("pki/cert/{}", colons.join(":")),
    ]);
    assert_ne!(revoked_at.trim(), "0", "OpenBao records the revocation");
    let (status, kind, der) = get_crl(&d, false).await;
    assert_eq!((status, kind.as_str()), (200, "application/pkix-crl"));
    let (_, crl) = x509_parser::parse_x509_crl(&der).expect("a DER CRL");
    assert!(
        crl.issuer().to_string().contains("meshca Vault root"),
        "{}",
        crl.issuer()
    );
    let vault_root = bao.cli(&["read", "-field=certificate", "pki/issuer/default"]);
    let crl_pem = String::from_utf8(get_crl(&d, true).await.2).expect("PEM");
    cryptography_verifies(&crl_pem, &[vault_root], &serial);

    let bundle = d.bundle_path();
    let crl_file = b.join("crl.pem");
    openssl_refuses_only(&bundle, &crl_file, &a, &b, false);

    // A serial OpenBao never issued is refused by it ("not found") and
    // left out; revocations after it still reach the list.
    let out = revoke(&config, "0badc0de");
    assert!(out.status.success());
    let b_serial = serial_of(&b.join("cert.pem"));
    assert!(revoke(&config, &b_serial).status.success());
    wait_until_listed(&a.join("crl.pem"), &b_serial, Duration::from_secs(20)).await;
    assert!(!crl_lists(&a.join("crl.pem"), "0BADC0DE"));
    let metrics = d.metrics().await;
    assert!(
        metrics.contains("meshca_revoked_certificates{provider=\"vault\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_without_revoke_is_asked_once_not_in_a_loop() {
    let bao = support::openbao::OpenBao::dev_audited().await;
    bao.script("setup-pki.sh", &[]);
    // meshca's policy, less the revoke path.
    let policy = bao.cli(&["policy", "read", "meshca"]);
    let without: String = policy
        .lines()
        .filter(|l| !l.contains("/revoke"))
        .map(|l| format!("{l}\n"))
        .collect();
    let file = bao.audit_log().with_file_name("no-revoke.hcl");
    std::fs::write(&file, without).expect("policy");
    bao.cli(&[
        "policy",
        "write",
        "meshca-no-revoke",
        &file.display().to_string(),
    ]);
    let token = bao.cli(&[
        "token",
        "create",
        "-policy=meshca-no-revoke",
        "-field=token",
    ]);
    let token_file = file.with_file_name("no-revoke-token");
    std::fs::write(&token_file, token.trim()).expect("token");
    let auth = format!("{{ token_file: {} }}", token_file.display());
    let (d, config) = daemon(&bao.provider_yaml(&auth, "")).await;
    let (status, _, _) = get_crl(&d, false).await;
    assert!(status == 200 || status == 503, "{status}");

    assert!(revoke(&config, "0a1b2c").status.success());
    let revokes = || {
        std::fs::read_to_string(bao.audit_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["type"] == "request" && e["request"]["path"] == "pki/revoke")
            .count()
    };
    support::eventually(
        "meshca asking Vault to revoke",
        Duration::from_secs(10),
        || (revokes() > 0).then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        revokes() <= 2,
        "a 403 (asked again once after logging in again) is not retried every tick: {}",
        revokes()
    );
    let (status, _, _) = get_crl(&d, false).await;
    assert_eq!(status, 200, "the mount's list is still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_quantum_root_signs_its_own_list_with_ml_dsa() {
    let (d, config) = daemon(
        "provider: { kind: tresor, tresor: { post_quantum: { key_algorithm: ml-dsa-65 } } }\n",
    )
    .await;
    assert!(revoke(&config, "0a1b2c").status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let pem = loop {
        let (status, _, pem) = get_crl(&d, true).await;
        let pem = String::from_utf8(pem).expect("PEM");
        let file = d.dir.path().join("lists.pem");
        std::fs::write(&file, &pem).expect("crl");
        if status == 200 && crl_lists(&file, "0A1B2C") {
            break pem;
        }
        assert!(Instant::now() < deadline, "never listed: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        pem.matches("BEGIN X509 CRL").count(),
        2,
        "the classical root's and the ML-DSA root's"
    );
    // cryptography 51 (OpenSSL 4) checks the ML-DSA signature under the
    // post-quantum root, and the ECDSA one under the classical root.
    cryptography_in(".venv-pq", &pem, &[d.bundle_pem().await], "0a1b2c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holding_the_current_lists_is_answered_not_modified() {
    let (d, config) = daemon("").await;
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("client");
    let get = |accept: &'static str, tag: Option<String>| {
        let mut request = client.get(d.url("/v1/crl")).header("accept", accept);
        if let Some(tag) = tag {
            request = request.header("if-none-match", tag);
        }
        async move {
            let response = request.send().await.expect("GET /v1/crl");
            let status = response.status().as_u16();
            let etag = response
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (status, etag, response.bytes().await.expect("body").len())
        }
    };
    let pem = "application/x-pem-file";
    let deadline = Instant::now() + Duration::from_secs(10);
    let (_, tag, _) = loop {
        let answer = get(pem, None).await;
        if answer.0 == 200 {
            break answer;
        }
        assert!(Instant::now() < deadline, "no lists");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let tag = tag.expect("an ETag");
    assert_eq!(
        get(pem, Some(tag.clone())).await,
        (304, Some(tag.clone()), 0)
    );
    let (status, der_tag, _) = get("application/pkix-crl", Some(tag.clone())).await;
    assert_eq!(status, 200, "the DER list is another representation");
    assert_ne!(der_tag, Some(tag.clone()));

    assert!(revoke(&config, "0a1b2c").status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, new_tag, len) = get(pem, Some(tag.clone())).await;
        if status == 200 {
            assert!(len > 0 && new_tag.is_some_and(|t| t != tag));
            break;
        }
        assert_eq!(status, 304);
        assert!(Instant::now() < deadline, "the lists never changed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_write_the_api_server_forbids_is_not_repeated_every_tick() {
    let (kube, extra) = stand_in().await;
    let (d, config) = daemon(&extra).await;
    // The first (empty) lists are written, then updates are forbidden.
    support::eventually("meshca-crl", Duration::from_secs(20), || {
        kube.get("", "configmaps", "osm-system", "meshca-crl")
    })
    .await;
    kube.forbid("PUT", "/configmaps/meshca-crl");
    assert!(revoke(&config, "0a1b2c").status.success());
    let puts = || {
        kube.requests()
            .iter()
            .filter(|r| r.starts_with("PUT /api/v1/namespaces/osm-system/configmaps/meshca-crl"))
            .count()
    };
    support::eventually("an update of meshca-crl", Duration::from_secs(20), || {
        (puts() > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        puts(),
        1,
        "a 403 waits, rather than being asked again every 2 s"
    );
    // The daemon still serves what it made.
    let (status, _, pem) = get_crl(&d, true).await;
    assert_eq!(status, 200);
    let file = d.dir.path().join("served.pem");
    std::fs::write(&file, pem).expect("crl");
    assert!(crl_lists(&file, "0A1B2C"));
}

/// `POST /v1/certificates` as `ns/sa`: the status and the body.
async fn ask_for(d: &TestDaemon, ns: &str, sa: &str) -> (u16, serde_json::Value) {
    let (status, _, body) = d
        .post(
            &d.client().await,
            Some(&d.token(ns, sa)),
            &serde_json::json!({ "csr": support::csr(&support::key()) }),
        )
        .await;
    (status, body)
}

/// A certificate for `ns/sa` through the signing API: its serial as the
/// API writes it.
async fn issue_for(d: &TestDaemon, ns: &str, sa: &str) -> String {
    let (status, body) = ask_for(d, ns, sa).await;
    assert_eq!(status, 200, "{body}");
    body["serial"].as_str().expect("a serial").to_owned()
}

/// `meshca certificate revoke --identity` with `extra` arguments.
fn revoke_identity(config: &Path, identity: &str, extra: &[&str]) -> Output {
    let config = config.display().to_string();
    let mut args = vec![
        "certificate",
        "revoke",
        "-c",
        &config,
        "--identity",
        identity,
    ];
    args.extend_from_slice(extra);
    meshca(&args)
}

/// `meshca certificate list --identity`, as it ran.
fn list(config: &Path, identity: &str) -> Output {
    let config = config.display().to_string();
    meshca(&["certificate", "list", "-c", &config, "--identity", identity])
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// `meshca certificate list --identity`: (serial, revoked) per line,
/// ordered by serial (the command orders by the second of issue).
fn listed(config: &Path, identity: &str) -> Vec<(String, String)> {
    let out = list(config, identity);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sorted(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(|l| {
                let cols: Vec<_> = l.split('\t').collect();
                (cols[0].to_owned(), cols[4].to_owned())
            })
            .collect(),
    )
}

async fn wait_until_indexed(config: &Path, identity: &str, serials: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now: Vec<_> = listed(config, identity).into_iter().map(|l| l.0).collect();
        if serials.iter().all(|s| now.iter().any(|n| n == s)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{identity}: {now:?} never held {serials:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait until `GET /v1/crl` (PEM) lists every serial of `serials` (as the
/// API writes them); returns the file it was written to.
async fn served_lists(d: &TestDaemon, serials: &[&str]) -> PathBuf {
    let file = d.dir.path().join("served.pem");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _, pem) = get_crl(d, true).await;
        if status == 200 {
            std::fs::write(&file, &pem).expect("crl");
            if serials.iter().all(|s| crl_lists(&file, &s.to_uppercase())) {
                return file;
            }
        }
        assert!(Instant::now() < deadline, "never listed {serials:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_identity_revokes_every_live_certificate_it_holds_and_denies_it() {
    let (mut d, config) = daemon("").await;
    let web = [
        issue_for(&d, "shop", "web").await,
        issue_for(&d, "shop", "web").await,
    ];
    let db = issue_for(&d, "shop", "db").await;
    wait_until_indexed(&config, "shop/web", &[&web[0], &web[1]]).await;
    assert_eq!(
        listed(&config, "shop/web"),
        sorted(vec![
            (web[0].clone(), "no".into()),
            (web[1].clone(), "no".into())
        ]),
        "both, none revoked"
    );

    let out = revoke_identity(&config, "shop/web", &["--reason", "key leaked"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("revoked 2 certificate(s) of shop/web"),
        "{err}"
    );
    let crl = served_lists(&d, &[&web[0], &web[1]]).await;
    assert!(
        !crl_lists(&crl, &db.to_uppercase()),
        "another identity's stays valid"
    );
    assert_eq!(
        listed(&config, "shop/web"),
        sorted(vec![
            (web[0].clone(), "yes".into()),
            (web[1].clone(), "yes".into())
        ])
    );
    // Implied deny: no new certificate for it.
    let (status, body) = ask_for(&d, "shop", "web").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("identity_denied")),
        "{body}"
    );

    // A certificate issued as the daemon stops is written as it stops;
    // the index outlives the start.
    let late = issue_for(&d, "shop", "db").await;
    d.stop().await;
    let pages = d.dir.path().join("certificates");
    for page in std::fs::read_dir(&pages).expect("the index's pages") {
        let mode = page
            .expect("a page")
            .metadata()
            .expect("metadata")
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }
    let held: Vec<_> = listed(&config, "shop/db")
        .into_iter()
        .map(|l| l.0)
        .collect();
    assert_eq!(held, sorted(vec![db.clone(), late]));
    d.restart().await;
    assert_eq!(
        listed(&config, "shop/web").len(),
        2,
        "read back after a restart"
    );

    // A page that cannot be read stops the start and the commands, naming
    // it; nothing is rewritten.
    d.stop().await;
    let page = std::fs::read_dir(&pages)
        .expect("pages")
        .map(|p| p.expect("a page").path())
        .next()
        .expect("a page");
    std::fs::write(&page, "{\"until\":1,\"records\":[[\"0A\"").expect("corrupt");
    let err = meshca::start(d.config.clone())
        .await
        .expect_err("the start stops");
    let text = support::error_chain(&err);
    let name = page
        .file_name()
        .expect("a name")
        .to_string_lossy()
        .into_owned();
    assert!(
        text.contains(&name) && text.contains("does not parse"),
        "{text}"
    );
    let out = list(&config, "shop/db");
    assert!(
        !out.status.success(),
        "the command does not take it as fewer certificates"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(&name));
    assert_eq!(
        std::fs::read_to_string(&page).expect("as written"),
        "{\"until\":1,\"records\":[[\"0A\""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_to_reissue_only_what_was_issued_before_is_revoked() {
    let (d, config) = daemon("").await;
    let old = issue_for(&d, "shop", "api").await;
    wait_until_indexed(&config, "shop/api", &[&old]).await;
    let out = revoke_identity(
        &config,
        "shop/api",
        &["--issued-before", "2020-01-01T00:00:00Z", "--allow-reissue"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked 0 certificate(s)"));
    let out = revoke_identity(&config, "shop/api", &["--allow-reissue"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("revoked 1 certificate(s)"),
        "{err}"
    );
    assert!(!err.contains("denied"), "{err}");
    // Not denied: the workload gets a new certificate at once, valid.
    let new = issue_for(&d, "shop", "api").await;
    let crl = served_lists(&d, &[&old]).await;
    assert!(!crl_lists(&crl, &new.to_uppercase()));
    // Usage errors say why and change nothing.
    for (args, why) in [
        (vec!["--identity", "shop"], "namespace/service-account"),
        (
            vec!["--identity", "shop/api", "--issued-before", "yesterday"],
            "RFC 3339",
        ),
    ] {
        let config = config.display().to_string();
        let mut all = vec!["certificate", "revoke", "-c", &config];
        all.extend(args);
        let out = meshca(&all);
        assert_eq!(out.status.code(), Some(64));
        assert!(String::from_utf8_lossy(&out.stderr).contains(why));
    }
    assert_eq!(
        listed(&config, "shop/api"),
        sorted(vec![(old, "yes".into()), (new, "no".into())])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_an_identity_is_revoked_from_every_replica() {
    let (kube, extra) = stand_in().await;
    let extra = format!("{extra}revocation: {{ admins: [ops/revoker] }}\n");
    let (first, config) = daemon(&extra).await;
    let second = TestDaemon::start(&extra).await;
    let serials = [
        issue_for(&first, "shop", "web").await,
        issue_for(&second, "shop", "web").await,
    ];
    let db = issue_for(&first, "shop", "db").await;
    wait_until_indexed(&config, "shop/web", &[&serials[0], &serials[1]]).await;
    let pages: Vec<_> = kube
        .list("", "configmaps", "osm-system")
        .into_iter()
        .filter(|cm| {
            cm["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("meshca-certificates-"))
        })
        .collect();
    assert!(pages.len() >= 2, "a page per replica: {pages:?}");
    assert!(
        !first.dir.path().join("certificates").exists(),
        "not in the state directory"
    );

    let out = revoke_identity(&config, "shop/web", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let upper: Vec<_> = serials.iter().map(|s| s.to_uppercase()).collect();
    configmap_lists(&kube, first.dir.path(), &[&upper[0], &upper[1]]).await;
    let denied = kube
        .get("", "configmaps", "osm-system", "meshca-denied")
        .expect("the deny-list");
    assert!(denied.to_string().contains("web"), "{denied}");

    // The admin API of one replica revokes what another issued, through
    // the same ConfigMaps.
    let (status, answer) = ask_to_revoke(
        &second,
        Some(&second.token("ops", "revoker")),
        &format!("{{\"serial\": \"{db}\"}}"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    configmap_lists(
        &kube,
        first.dir.path(),
        &[&upper[0], &upper[1], &db.to_uppercase()],
    )
    .await;
    let ledger = kube
        .get("", "configmaps", "osm-system", "meshca-revocations")
        .expect("the ledger");
    assert!(
        ledger
            .to_string()
            .contains("spiffe://cluster.local/ns/ops/sa/revoker"),
        "{ledger}"
    );
}

/// `openssl verify -crl_download -crl_check`: the CRL fetched from the
/// leaf's CRL Distribution Points, as a relying party without a CRL file
/// does.
fn openssl_fetching(bundle: &Path, cert: &Path) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["verify", "-crl_download", "-crl_check", "-CAfile"])
        .arg(bundle)
        .arg(cert)
        .output()
        .expect("openssl");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_names_its_crl_and_openssl_fetches_it_from_there() {
    // A plain HTTP server for the list, as an operator would publish the
    // ConfigMap meshca-crl or GET /v1/crl.
    let served = tempfile::tempdir().expect("tempdir");
    let port = support::process::free_port();
    let _http = support::bench::Reaped(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(served.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m http.server"),
    );
    support::process::wait_for_port(port);
    let url = format!("http://127.0.0.1:{port}/meshca.crl");
    let (d, config) = daemon(&format!("revocation: {{ crl_url: \"{url}\" }}\n")).await;
    let (status, body) = ask_for(&d, "shop", "web").await;
    assert_eq!(status, 200, "{body}");
    let cert = d.dir.path().join("web.pem");
    std::fs::write(&cert, body["certificate_chain"].as_str().expect("chain")).expect("cert");
    let ext = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "crlDistributionPoints", "-in"])
        .arg(&cert)
        .output()
        .expect("openssl");
    let ext = String::from_utf8_lossy(&ext.stdout);
    assert!(ext.contains(&format!("URI:{url}")), "{ext}");

    let publish = |der: &[u8]| std::fs::write(served.path().join("meshca.crl"), der).expect("crl");
    let deadline = Instant::now() + Duration::from_secs(10);
    let der = loop {
        let (status, _, der) = get_crl(&d, false).await;
        if status == 200 {
            break der;
        }
        assert!(Instant::now() < deadline, "no CRL");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    publish(&der);
    let (ok, text) = openssl_fetching(&d.bundle_path(), &cert);
    assert!(ok, "valid while not revoked: {text}");

    let serial = body["serial"].as_str().expect("serial");
    assert!(revoke(&config, serial).status.success());
    served_lists(&d, &[serial]).await;
    publish(&get_crl(&d, false).await.2);
    let (ok, text) = openssl_fetching(&d.bundle_path(), &cert);
    assert!(!ok && text.contains("certificate revoked"), "{text}");

    // A URL a fetcher cannot use is refused, naming the key.
    let bad = d.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        support::config_yaml(
            d.dir.path(),
            "revocation: { crl_url: \"ldap://x/cn=ca\" }\n",
        ),
    )
    .expect("config");
    let out = meshca(&["config", "check", "-c", &bad.display().to_string()]);
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("revocation.crl_url"), "{text}");
}

/// `POST /v1/revocations` with `body` (JSON text) as `token`'s caller:
/// the status and the body.
async fn ask_to_revoke(
    d: &TestDaemon,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut req = d
        .client()
        .await
        .post(d.url("/v1/revocations"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

fn code(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_revokes_for_the_identities_listed_and_refuses_everyone_else() {
    let (d, config) = daemon("revocation: { admins: [ops/revoker] }\n").await;
    let check = meshca(&["config", "check", "-c", &config.display().to_string()]);
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("POST /v1/revocations open to ops/revoker"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let bad = d.dir.path().join("bad-admins.yaml");
    std::fs::write(
        &bad,
        support::config_yaml(d.dir.path(), "revocation: { admins: [ops] }\n"),
    )
    .expect("config");
    let out = meshca(&["config", "check", "-c", &bad.display().to_string()]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("revocation.admins[0]"),
        "{text}"
    );
    let web = [
        issue_for(&d, "shop", "web").await,
        issue_for(&d, "shop", "web").await,
    ];
    let db = issue_for(&d, "shop", "db").await;
    wait_until_indexed(&config, "shop/web", &[&web[0], &web[1]]).await;
    let ledger = d.dir.path().join("revocations.json");
    let admin = d.token("ops", "revoker");
    let serial = format!("{{\"serial\": \"{db}\"}}");

    // Who may not: refused from the head, before the body is read (one
    // larger than api.max_body_bytes is not answered too_large).
    let large = format!(
        "{{\"serial\": \"{db}\", \"reason\": \"{}\"}}",
        "x".repeat(2 << 20)
    );
    for (token, status, why) in [
        (None, 401, "unauthenticated"),
        (Some(d.token("shop", "web")), 403, "not_permitted"),
    ] {
        for body in [&serial, &large] {
            let (got, answer) = ask_to_revoke(&d, token.as_deref(), body).await;
            assert_eq!((got, code(&answer)), (status, why), "{answer}");
        }
    }
    // What is not a request to revoke one thing.
    for bad in [
        "{}".to_owned(),
        "{\"serial\": \"zz\"}".to_owned(),
        format!("{{\"serial\": \"{db}\", \"identity\": \"shop/web\"}}"),
        format!("{{\"serial\": \"{db}\", \"allow_reissue\": true}}"),
        "{\"identity\": \"shop\"}".to_owned(),
        "{\"identity\": \"shop/web\", \"issued_before\": \"yesterday\"}".to_owned(),
        format!("{{\"serial\": \"{db}\", \"reason\": \"a\\nb\"}}"),
        format!("{{\"serial\": \"{db}\", \"why\": \"x\"}}"),
    ] {
        let (status, answer) = ask_to_revoke(&d, Some(&admin), &bad).await;
        assert_eq!(
            (status, code(&answer)),
            (400, "invalid_request"),
            "{bad}: {answer}"
        );
    }
    assert!(!ledger.exists(), "nothing was revoked");
    assert!(listed(&config, "shop/web").iter().all(|(_, r)| r == "no"));

    // An admin revokes a serial, recorded under its SPIFFE ID; again is
    // no change.
    let (status, answer) = ask_to_revoke(&d, Some(&admin), &serial).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["revoked"][0]["serial"], db.as_str(), "{answer}");
    assert_eq!(answer["identity_denied"], false);
    let (status, again) = ask_to_revoke(&d, Some(&admin), &serial).await;
    assert_eq!(
        (status, again["revoked"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{again}"
    );
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ledger).expect("ledger")).expect("json");
    assert_eq!(
        kept["revoked"][0]["by"], "spiffe://cluster.local/ns/ops/sa/revoker",
        "{kept}"
    );

    // And an identity: both its certificates, denied from now on.
    let (status, answer) = ask_to_revoke(
        &d,
        Some(&admin),
        "{\"identity\": \"shop/web\", \"reason\": \"key leaked\"}",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let revoked: Vec<String> = answer["revoked"]
        .as_array()
        .expect("revoked")
        .iter()
        .map(|c| c["serial"].as_str().expect("serial").to_owned())
        .collect();
    assert_eq!(sorted(revoked), sorted(web.to_vec()), "{answer}");
    assert_eq!(answer["revoked"][0]["frontend"], "api");
    assert_eq!(answer["identity_denied"], true);
    served_lists(&d, &[&db, &web[0], &web[1]]).await;
    let (status, body) = ask_for(&d, "shop", "web").await;
    assert_eq!((status, code(&body)), (403, "identity_denied"), "{body}");
}
