//! The `meshca` binary as a user runs it: `config check`, `serve` on the
//! embedded layout, `token create`, `agent --once`, `bundle`, JSON logs and
//! a clean stop on SIGTERM.

use meshca_test_support as support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_meshca");

use support::process::free_port;

fn meshca(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .output()
        .expect("meshca runs")
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn config_check_prints_the_plan_and_warns_of_settings_without_effect() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("plan.yaml"),
        "kubernetes: { enabled: false }
bundle: { kubernetes_secret: { name: my-ca } }
listen: 127.0.0.1:8443
",
    )
    .expect("write");
    let out = meshca(dir.path(), &["config", "check", "-c", "plan.yaml"]);
    assert!(out.status.success(), "a warning is not an error");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "provider:  tresor, root in ./meshca-data/tresor",
        "cluster:   none",
        "bundle:    file ./meshca-data/bundle/ca.crt",
        "auth:      bearer tokens from ./meshca-data/tokens.yaml",
        "listeners: signing API https://127.0.0.1:8443; health and metrics http://127.0.0.1:9090",
        "warning: bundle.kubernetes_secret has no effect: kubernetes.enabled is false",
    ] {
        assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");
    }
    assert!(
        !stdout.contains("Secret"),
        "no Secret without a cluster:\n{stdout}"
    );
}

#[test]
fn config_check_names_both_roots_and_refuses_a_post_quantum_root_of_a_classical_algorithm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write =
        |name: &str, yaml: &str| std::fs::write(dir.path().join(name), yaml).expect("write");
    write(
        "pq.yaml",
        "kubernetes: { enabled: false }\nprovider: { kind: tresor, tresor: { post_quantum: { key_algorithm: ml-dsa-87 } } }\n",
    );
    let out = meshca(dir.path(), &["config", "check", "-c", "pq.yaml"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("post-quantum root in ./meshca-data/tresor-post-quantum (ml-dsa-87, generated when absent) for ML-DSA keys"),
        "{stdout}"
    );
    write(
        "classical.yaml",
        "provider: { kind: tresor, tresor: { post_quantum: { key_algorithm: ecdsa-p256 } } }\n",
    );
    let out = meshca(dir.path(), &["config", "check", "-c", "classical.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("provider.tresor.post_quantum.key_algorithm")
            && stderr.contains("ml-dsa-44, ml-dsa-65, ml-dsa-87"),
        "{stderr}"
    );
}

#[test]
fn config_check_prints_the_jwt_svid_plan_and_refuses_an_issuer_relying_parties_cannot_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("jwt.yaml"),
        "kubernetes: { enabled: false }\njwt_svids: { enabled: true, issuer: \"https://meshca.a.example\", key_type: rsa-2048 }\noidc: { listen: 127.0.0.1:8444 }\n",
    )
    .expect("write");
    let out = meshca(dir.path(), &["config", "check", "-c", "jwt.yaml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let want = "jwt-svids: issuer https://meshca.a.example (RS256, tokens 5m by default, at most 1h; a new key every 1day, published 2m before it signs; keys in ./meshca-data/jwt-keys.json); discovery at https://meshca.a.example/.well-known/openid-configuration on the signing API, and on https://127.0.0.1:8444";
    assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");

    std::fs::write(
        dir.path().join("bad.yaml"),
        "jwt_svids: { enabled: true, issuer: \"http://meshca.a.example/\", max_ttl: 48h }\noidc: { listen: 127.0.0.1:9443 }\n",
    )
    .expect("write");
    let out = meshca(dir.path(), &["config", "check", "-c", "bad.yaml"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        "jwt_svids.issuer: \"http://meshca.a.example/\" must be an https:// URL",
        "jwt_svids.key_lifetime: must exceed jwt_svids.max_ttl (2days)",
        "oidc.listen: 127.0.0.1:9443 would take the port of listen 127.0.0.1:9443",
    ] {
        assert!(stderr.contains(want), "{want:?} missing from:\n{stderr}");
    }
}

#[test]
fn config_check_accepts_a_good_file_and_names_the_bad_key_of_a_bad_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("good.yaml"),
        "trust_domain: mesh.example\ncertificates: { default_ttl: 2h }\n",
    )
    .expect("write");
    let out = meshca(dir.path(), &["config", "check", "-c", "good.yaml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));

    std::fs::write(
        dir.path().join("bad.yaml"),
        "certificates:\n  max_tll: 2h\n",
    )
    .expect("write");
    let out = meshca(dir.path(), &["config", "check", "-c", "bad.yaml"]);
    assert_eq!(out.status.code(), Some(64), "EX_USAGE");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("certificates") && err.contains("max_tll"),
        "{err}"
    );

    let out = meshca(dir.path(), &["config", "check", "-c", "missing.yaml"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.yaml"));
}

#[test]
fn the_runtime_runs_as_many_workers_as_asked_by_flag_or_environment() {
    for (flag, env) in [(Some("7"), None), (None, Some("3"))] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = vec!["--log-format", "json", "--log-level", "debug"];
        if let Some(n) = flag {
            args.extend(["--worker-threads", n]);
        }
        args.extend(["config", "check", "-c", "missing.yaml"]);
        let mut command = Command::new(BIN);
        command.current_dir(dir.path()).args(&args);
        if let Some(n) = env {
            command.env("MESHCA_WORKER_THREADS", n);
        }
        let out = command.output().expect("runs");
        let workers = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["fields"]["message"] == "async runtime ready")
            .and_then(|l| l["fields"]["workers"].as_u64());
        let want: u64 = flag.or(env).and_then(|n| n.parse().ok()).expect("n");
        assert_eq!(
            workers,
            Some(want),
            "{:?}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn serve_token_agent_and_bundle_work_together_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (api, metrics) = (free_port(), free_port());
    std::fs::write(
        dir.path().join("meshca.yaml"),
        format!("listen: 127.0.0.1:{api}\nmetrics_listen: 127.0.0.1:{metrics}\n"),
    )
    .expect("write");
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .args(["--log-format", "json", "serve", "-c", "meshca.yaml"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut serve = Serve(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let serving = line.contains("meshca is serving");
            lines.push(line);
            if serving {
                break;
            }
        }
    }
    assert!(
        lines.iter().any(|l| l.contains("meshca is serving")),
        "{lines:#?}"
    );
    for l in &lines {
        serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    }
    assert!(
        !lines.iter().any(|l| l.contains("PRIVATE KEY")),
        "no key material in logs"
    );

    let data = dir.path().join("meshca-data");
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("tresor/root.key"))
            .expect("root key")
            .permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);
    let bundle = std::fs::read_to_string(data.join("bundle/ca.crt")).expect("bundle file");
    assert!(bundle.starts_with("-----BEGIN CERTIFICATE-----") && !bundle.contains("PRIVATE"));

    let out = meshca(
        dir.path(),
        &[
            "token",
            "create",
            "-c",
            "meshca.yaml",
            "--namespace",
            "bookstore",
            "--service-account",
            "bookstore",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("utf8");
    std::fs::write(dir.path().join("token"), token.trim()).expect("write");
    let tokens = std::fs::read_to_string(data.join("tokens.yaml")).expect("store");
    assert!(!tokens.contains(token.trim()), "only the hash is stored");

    let out = meshca(
        dir.path(),
        &[
            "agent",
            "--server",
            &format!("https://127.0.0.1:{api}"),
            "--ca-file",
            "meshca-data/bundle/ca.crt",
            "--token-file",
            "token",
            "--out-dir",
            "out",
            "--once",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["cert.pem", "key.pem", "ca.pem"] {
        assert!(dir.path().join("out").join(f).exists(), "{f}");
    }
    let verify = Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "verify",
            "-CAfile",
            "out/ca.pem",
            "-purpose",
            "sslserver",
            "out/cert.pem",
        ])
        .output()
        .expect("openssl");
    assert!(
        verify.status.success(),
        "openssl verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    let out = meshca(dir.path(), &["bundle", "-c", "meshca.yaml"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), bundle);

    // SIGTERM stops it cleanly.
    let pid = serve.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = serve.0.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn config_check_refuses_what_serve_would_clashing_listeners_and_unusable_root_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, yaml, needle) in [
        (
            "clash.yaml",
            "listen: 127.0.0.1:9443\nmetrics_listen: 0.0.0.0:9443\n",
            "metrics_listen",
        ),
        (
            "missing.yaml",
            "provider:\n  kind: tresor\n  tresor: { root_cert_file: ./nope.crt, root_key_file: ./nope.key }\n",
            "provider.tresor.root_cert_file",
        ),
    ] {
        std::fs::write(dir.path().join(name), yaml).expect("write");
        let out = meshca(dir.path(), &["config", "check", "-c", name]);
        assert_eq!(out.status.code(), Some(64), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{name}: {err}");
    }
}

#[tokio::test]
async fn revoked_tokens_are_refused_by_a_running_daemon_within_5s_and_list_never_shows_a_token() {
    let d = support::TestDaemon::start("").await;
    let config = d.dir.path().join("cli.yaml");
    std::fs::write(
        &config,
        format!(
            "auth: {{ tokens_file: {} }}\n",
            d.config.auth.tokens_file.display()
        ),
    )
    .expect("config");
    let config = config.display().to_string();
    let create = |ns: &str, sa: &str| {
        let out = meshca(
            d.dir.path(),
            &[
                "token",
                "create",
                "-c",
                &config,
                "--namespace",
                ns,
                "--service-account",
                sa,
            ],
        );
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let (first, second, other) = (
        create("bookstore", "bookstore"),
        create("bookstore", "bookstore"),
        create("payments", "payments"),
    );
    let list = meshca(d.dir.path(), &["token", "list", "-c", &config]);
    let listed = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(
        listed.contains("bookstore/bookstore") && listed.contains("payments/payments"),
        "{listed}"
    );
    for token in [&first, &second, &other] {
        assert!(!listed.contains(token.as_str()), "a token in the listing");
    }
    let ids: Vec<String> = meshca::TokenStore::new(d.config.auth.tokens_file.clone())
        .list()
        .expect("list")
        .iter()
        .map(|r| r.id().to_owned())
        .collect();
    assert!(ids.iter().all(|id| listed.contains(id.as_str())));

    let client = d.client().await;
    let works = |token: String| {
        let (d, client) = (&d, client.clone());
        async move {
            let body = serde_json::json!({ "csr": support::csr(&support::key()) });
            d.post(&client, Some(&token), &body).await.0
        }
    };
    assert_eq!(works(first.clone()).await, 200);

    let out = meshca(
        d.dir.path(),
        &["token", "revoke", "-c", &config, "--id", &ids[0]],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while works(first.clone()).await != 401 {
        assert!(
            Instant::now() < deadline,
            "the revoked token still works after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(works(second.clone()).await, 200, "only that one");

    let out = meshca(
        d.dir.path(),
        &[
            "token",
            "revoke",
            "-c",
            &config,
            "--namespace",
            "bookstore",
            "--service-account",
            "bookstore",
        ],
    );
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while works(second.clone()).await != 401 {
        assert!(
            Instant::now() < deadline,
            "the identity's tokens still work after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(works(other).await, 200, "another identity keeps its token");
    let out = meshca(
        d.dir.path(),
        &["token", "revoke", "-c", &config, "--id", "nothing"],
    );
    assert_eq!(out.status.code(), Some(1), "nothing matched");
}

#[tokio::test]
async fn a_denied_identity_gets_nothing_by_token_or_by_renewal_until_allowed() {
    let d = support::TestDaemon::start("").await;
    let config = d.dir.path().join("cli.yaml");
    std::fs::write(
        &config,
        format!(
            "auth: {{ tokens_file: {}, denied_file: {} }}\n",
            d.config.auth.tokens_file.display(),
            d.config.auth.denied_file.display()
        ),
    )
    .expect("config");
    let config = config.display().to_string();
    let token = d.token("bookstore", "bookstore");
    let client = d.client().await;
    let k = support::key();
    let (status, _, first) = d
        .post(
            &client,
            Some(&token),
            &serde_json::json!({ "csr": support::csr(&k) }),
        )
        .await;
    assert_eq!(status, 200, "{first}");
    let mtls = support::client(
        &d.bundle_pem().await,
        Some((
            first["certificate_chain"].as_str().expect("chain"),
            &k.serialize_pem(),
        )),
    );
    let by_token = || async {
        let body = serde_json::json!({ "csr": support::csr(&support::key()) });
        d.post(&client, Some(&token), &body).await
    };
    let by_renewal = || async {
        let body = serde_json::json!({ "csr": support::csr(&support::key()) });
        d.post(&mtls, None, &body).await
    };

    let out = meshca(
        d.dir.path(),
        &["identity", "deny", "bookstore/bookstore", "-c", &config],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, body) = by_token().await;
        if status == 403 {
            assert_eq!(body["error"]["code"], "identity_denied", "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "still issued after 5 s: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _, body) = by_renewal().await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("identity_denied")),
        "{body}"
    );
    let other = d.token("payments", "payments");
    let body = serde_json::json!({ "csr": support::csr(&support::key()) });
    assert_eq!(
        d.post(&client, Some(&other), &body).await.0,
        200,
        "others unaffected"
    );
    assert!(d.metrics().await.contains("meshca_identities_denied 1"));

    let out = meshca(
        d.dir.path(),
        &["identity", "allow", "bookstore/bookstore", "-c", &config],
    );
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while by_renewal().await.0 != 200 {
        assert!(Instant::now() < deadline, "still denied after allow");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(by_token().await.0, 200);
    let out = meshca(
        d.dir.path(),
        &["identity", "deny", "not-an-identity", "-c", &config],
    );
    assert_eq!(out.status.code(), Some(64));
}
