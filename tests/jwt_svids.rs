//! JWT-SVIDs end to end, checked by relying parties meshca does not
//! write: PyJWT (through the JWKS) and OpenBao's JWT auth method (through
//! OIDC discovery, as Vault users configure it).

use std::path::PathBuf;
use std::time::Duration;

use meshca_test_support::{self as support, openbao::OpenBao, process::free_port, TestDaemon};
use serde_json::{json, Value};

/// JWT-SVIDs on, the issuer being the public OIDC listener on `port`.
fn jwt_yaml(port: u16, extra: &str) -> String {
    format!(
        "jwt_svids: {{ enabled: true, issuer: \"https://127.0.0.1:{port}\"{extra} }}\noidc: {{ listen: \"127.0.0.1:{port}\" }}\n"
    )
}

async fn start(port: u16) -> TestDaemon {
    TestDaemon::start(&jwt_yaml(port, "")).await
}

/// `POST /v1/jwt-svids` as `token`'s holder.
async fn mint(d: &TestDaemon, token: Option<&str>, body: &Value) -> (u16, Value) {
    let (status, _, body) = support::jwt::mint(d, token, body).await;
    (status, body)
}

async fn token_for(d: &TestDaemon, ns: &str, sa: &str, audience: &str) -> String {
    let (status, body) = mint(
        d,
        Some(&d.token(ns, sa)),
        &json!({ "audience": [audience] }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

/// `GET url` trusting the daemon's bundle: status, headers, JSON.
async fn get(d: &TestDaemon, url: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = d
        .client()
        .await
        .get(url)
        .send()
        .await
        .expect("request sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.expect("JSON body"))
}

fn python() -> PathBuf {
    support::jwt::python()
}

/// PyJWT's verdict on `token` for `audience` against `jwks`: the subject,
/// or the name of the exception it raised.
fn pyjwt(jwks: &Value, token: &str, audience: &str, issuer: &str) -> String {
    support::jwt::pyjwt(jwks, token, audience, issuer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyjwt_verifies_a_workloads_token_through_discovery_and_refuses_the_wrong_audience() {
    let port = free_port();
    let d = start(port).await;
    let issuer = format!("https://127.0.0.1:{port}");
    let (status, body) = mint(
        &d,
        Some(&d.token("shop", "web")),
        &json!({ "audience": ["vault"], "ttl_seconds": 120 }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["spiffe_id"], "spiffe://cluster.local/ns/shop/sa/web");
    let expires = time::OffsetDateTime::parse(
        body["expires_at"].as_str().expect("expires_at"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339");
    let left = expires - time::OffsetDateTime::now_utc();
    assert!(left <= time::Duration::seconds(120) && left > time::Duration::seconds(100));
    let token = body["token"].as_str().expect("token");

    // The public listener: discovery names the issuer and the JWKS.
    let (status, headers, discovery) =
        get(&d, &format!("{issuer}/.well-known/openid-configuration")).await;
    assert_eq!(status, 200);
    assert!(headers[reqwest::header::CACHE_CONTROL]
        .to_str()
        .expect("as the test set it up")
        .contains("max-age"));
    assert_eq!(discovery["issuer"], issuer.as_str());
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );
    assert_eq!(discovery["response_types_supported"], json!(["id_token"]));
    assert_eq!(discovery["subject_types_supported"], json!(["public"]));
    let jwks_uri = discovery["jwks_uri"].as_str().expect("jwks_uri");
    let (status, _, jwks) = get(&d, jwks_uri).await;
    assert_eq!(status, 200);
    assert_eq!(jwks["keys"][0]["use"], "sig");
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    // The signing API's listener serves them too.
    let (status, _, same) = get(&d, &d.url("/keys")).await;
    assert_eq!((status, &same), (200, &jwks));

    let ca = d.dir.path().join("ca-for-pyjwt.pem");
    std::fs::write(&ca, d.bundle_pem().await).expect("write");
    assert_eq!(
        LiveVerifier::start(jwks_uri, &ca, "vault", &issuer).check(token),
        "spiffe://cluster.local/ns/shop/sa/web",
        "PyJWKClient on the discovery document's jwks_uri"
    );
    assert_eq!(pyjwt(&jwks, token, "aws", &issuer), "InvalidAudienceError");
    assert_eq!(
        pyjwt(&jwks, token, "vault", "https://elsewhere.example"),
        "InvalidIssuerError"
    );
    let (head, _) = token.rsplit_once('.').expect("as the test set it up");
    let other = token_for(&d, "shop", "db", "vault").await;
    let forged = format!(
        "{head}.{}",
        other.rsplit_once('.').expect("as the test set it up").1
    );
    assert_eq!(
        pyjwt(&jwks, &forged, "vault", &issuer),
        "InvalidSignatureError"
    );

    let metrics = d.metrics().await;
    assert!(
        metrics.contains(
            r#"meshca_jwt_svids_issued_total{frontend="api",credential="token",result="success"} 2"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_request_without_a_credential_or_an_audience_is_refused_and_lifetimes_are_capped() {
    let port = free_port();
    let d = TestDaemon::start(&jwt_yaml(port, ", max_ttl: 10m, key_lifetime: 1h")).await;
    let token = d.token("shop", "web");
    let cases = [
        (
            None,
            json!({ "audience": ["vault"] }),
            401,
            "unauthenticated",
        ),
        (
            Some(&token),
            json!({ "audience": [] }),
            400,
            "invalid_request",
        ),
        (
            Some(&token),
            json!({ "audience": [""] }),
            400,
            "invalid_request",
        ),
        (
            Some(&token),
            json!({ "audience": "vault" }),
            400,
            "invalid_request",
        ),
        // Bounded: at most 16 audiences of at most 256 printable ASCII
        // characters each.
        (
            Some(&token),
            json!({ "audience": (0..17).map(|i| format!("rp-{i}")).collect::<Vec<_>>() }),
            400,
            "invalid_request",
        ),
        (
            Some(&token),
            json!({ "audience": ["a".repeat(257)] }),
            400,
            "invalid_request",
        ),
        (
            Some(&token),
            json!({ "audience": ["va\u{0}ult"] }),
            400,
            "invalid_request",
        ),
        (
            Some(&token),
            json!({ "audience": ["\u{202e}tluav"] }),
            400,
            "invalid_request",
        ),
        (
            Some(&token),
            json!({ "audience": ["vault"], "ttl_seconds": 0 }),
            400,
            "invalid_request",
        ),
        (
            Some(&token),
            json!({ "audience": ["vault"], "sub": "spiffe://cluster.local/ns/kube-system/sa/admin" }),
            400,
            "invalid_request",
        ),
    ];
    for (credential, body, status, code) in cases {
        let (got, answer) = mint(&d, credential.map(String::as_str), &body).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
    }
    // Lifetimes are capped at max_ttl, and raised to 10 s.
    let lives = |ttl_seconds: u64| {
        let (d, token) = (&d, &token);
        async move {
            let (status, body) = mint(
                d,
                Some(token),
                &json!({ "audience": ["vault"], "ttl_seconds": ttl_seconds }),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            let expires = time::OffsetDateTime::parse(
                body["expires_at"].as_str().expect("as the test set it up"),
                &time::format_description::well_known::Rfc3339,
            )
            .expect("as the test set it up");
            expires - time::OffsetDateTime::now_utc()
        }
    };
    assert!(lives(86400).await <= time::Duration::minutes(10));
    assert!(lives(1).await >= time::Duration::seconds(8));

    // The deny-list applies to tokens as to certificates.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
        .args(["identity", "deny", "shop/web"])
        .current_dir(d.dir.path())
        .arg("--config")
        .arg({
            let path = d.dir.path().join("deny.yaml");
            std::fs::write(&path, support::config_yaml(d.dir.path(), "")).expect("write");
            path
        })
        .output()
        .expect("meshca identity deny");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, answer) = mint(&d, Some(&token), &json!({ "audience": ["vault"] })).await;
        if status == 403 {
            assert_eq!(answer["error"]["code"], "identity_denied");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the deny-list never applied: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let metrics = d.metrics().await;
    for line in [
        r#"meshca_jwt_svids_issued_total{frontend="api",credential="none",result="unauthenticated"} 1"#,
        r#"meshca_jwt_svids_issued_total{frontend="api",credential="token",result="invalid_request"} 6"#,
        r#"meshca_jwt_svids_issued_total{frontend="api",credential="none",result="invalid_request"} 3"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }

    let plain = TestDaemon::start("").await;
    let (status, answer) = mint(
        &plain,
        Some(&plain.token("shop", "web")),
        &json!({ "audience": ["vault"] }),
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (404, Some("not_enabled"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spiffe_bundle_holds_the_x509_anchors_and_the_jwt_keys() {
    let port = free_port();
    let d = start(port).await;
    let (status, _, bundle) = get(&d, &d.url("/v1/bundle/spiffe")).await;
    assert_eq!(status, 200);
    let keys = bundle["keys"].as_array().expect("keys");
    let x509: Vec<&Value> = keys.iter().filter(|k| k["use"] == "x509-svid").collect();
    let jwt: Vec<&Value> = keys.iter().filter(|k| k["use"] == "jwt-svid").collect();
    assert_eq!((x509.len(), jwt.len()), (1, 1), "{bundle}");
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(x509[0]["x5c"][0].as_str().expect("as the test set it up"))
        .expect("as the test set it up");
    let pem = d.bundle_pem().await;
    let anchor = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("as the test set it up");
    assert_eq!(der, anchor.as_ref(), "the anchor of the PEM bundle");
    let (_, _, jwks) = get(&d, &d.url("/keys")).await;
    assert_eq!(jwt[0]["kid"], jwks["keys"][0]["kid"]);
    assert!(
        bundle["spiffe_refresh_hint"]
            .as_u64()
            .expect("as the test set it up")
            > 0
    );
    let sequence = bundle["spiffe_sequence"]
        .as_u64()
        .expect("as the test set it up");
    let (_, _, again) = get(&d, &d.url("/v1/bundle/spiffe")).await;
    assert_eq!(
        again["spiffe_sequence"].as_u64(),
        Some(sequence),
        "nothing changed"
    );
}

use rustls_pki_types::pem::PemObject as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_outlive_a_restart_and_keys_that_cannot_be_read_stop_the_start() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_owned();
    let mut d = TestDaemon::start_in(dir, &jwt_yaml(port, "")).await;
    let token = token_for(&d, "shop", "web", "vault").await;
    let path = state.join("jwt-keys.json");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&path)
        .expect("stored")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let stored = std::fs::read_to_string(&path).expect("as the test set it up");
    assert!(!d.bundle_pem().await.contains("PRIVATE"));
    d.restart().await;
    let issuer = format!("https://127.0.0.1:{port}");
    let (_, _, jwks) = get(&d, &format!("{issuer}/keys")).await;
    assert_eq!(
        pyjwt(&jwks, &token, "vault", &issuer),
        "spiffe://cluster.local/ns/shop/sa/web",
        "the key that signed it is still published"
    );
    d.stop().await;
    let config = meshca::Config::from_yaml(&format!(
        "{}{}",
        support::config_yaml(&state, ""),
        jwt_yaml(port, "")
    ))
    .expect("valid");

    let torn = &stored[..stored.len() / 2];
    std::fs::write(&path, torn).expect("as the test set it up");
    let Err(refused) = meshca::start(config).await else {
        panic!("started over keys it cannot read");
    };
    let said = support::error_chain(&refused);
    assert!(
        said.contains("jwt-keys.json") && said.contains("do not parse"),
        "{said}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).expect("as the test set it up"),
        torn,
        "kept as it was"
    );
}

/// OpenBao's JWT auth method, configured by OIDC discovery against
/// meshca, logs in the workload its role names and no one else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_logs_in_a_workload_by_its_jwt_svid_through_discovery() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_owned();
    let mut d = TestDaemon::start_in(dir, &jwt_yaml(port, "")).await;
    let issuer = format!("https://127.0.0.1:{port}");
    let bao = OpenBao::dev().await;
    let ca = state.join("bundle-for-bao.pem");
    std::fs::write(&ca, d.bundle_pem().await).expect("as the test set it up");
    bao.jwt_auth(
        &issuer,
        &ca,
        Some("spiffe://cluster.local/ns/shop/sa/web"),
        &[
            "expiration_leeway=1",
            "clock_skew_leeway=1",
            "not_before_leeway=1",
        ],
    );
    let login = |jwt: String| bao.jwt_login(&jwt);

    let good = token_for(&d, "shop", "web", "vault").await;
    assert!(login(good.clone()).is_ok_and(|t| !t.trim().is_empty()));
    let someone_else = token_for(&d, "shop", "db", "vault").await;
    assert!(
        login(someone_else)
            .expect_err("OpenBao refused the login")
            .contains("sub"),
        "another SPIFFE ID"
    );
    let other_audience = token_for(&d, "shop", "web", "aws").await;
    assert!(
        login(other_audience)
            .expect_err("OpenBao refused the login")
            .contains("aud"),
        "another audience"
    );
    // The shortest token meshca mints (10 s, whatever is asked), once
    // past its expiry and OpenBao's one second of leeway.
    let (_, short) = mint(
        &d,
        Some(&d.token("shop", "web")),
        &json!({ "audience": ["vault"], "ttl_seconds": 1 }),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let expired = login(
        short["token"]
            .as_str()
            .expect("as the test set it up")
            .to_owned(),
    )
    .expect_err("OpenBao refused the login");
    assert!(expired.contains("expired"), "{expired}");

    // New keys (the old ones lost): OpenBao fetches the new JWKS by
    // itself and refuses what the retired key signed.
    d.stop().await;
    std::fs::remove_file(state.join("jwt-keys.json")).expect("as the test set it up");
    d.restart().await;
    let fresh = token_for(&d, "shop", "web", "vault").await;
    assert!(login(fresh).is_ok(), "a new key, no restart of OpenBao");
    let retired = login(good).expect_err("OpenBao refused the login");
    assert!(
        retired.contains("verify") || retired.contains("key"),
        "{retired}"
    );
}

/// In a cluster the keys are the Secret's: replicas starting together
/// converge on one key (a create that exists already is read again), each
/// serves it, and a Secret that cannot be read stops a start and is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_share_one_key_kept_in_the_secret() {
    use support::kube::KubeStandIn;
    let kube = KubeStandIn::start().await;
    let yaml = format!(
        "kubernetes: {{ kubeconfig: {}, lease_duration: 3s }}\njwt_svids: {{ enabled: true }}\n",
        kube.kubeconfig().display()
    );
    let (a, b) = tokio::join!(TestDaemon::start(&yaml), TestDaemon::start(&yaml));
    let (_, _, keys_a) = get(&a, &a.url("/keys")).await;
    let (_, _, keys_b) = get(&b, &b.url("/keys")).await;
    assert_eq!(keys_a["keys"].as_array().map(Vec::len), Some(1), "{keys_a}");
    assert_eq!(keys_a, keys_b, "one key for both replicas");
    let token = token_for(&a, "shop", "web", "vault").await;
    assert_eq!(
        pyjwt(&keys_b, &token, "vault", "https://meshca.example.com"),
        "spiffe://cluster.local/ns/shop/sa/web"
    );

    let secret = kube
        .get("", "secrets", "osm-system", "meshca-jwt-keys")
        .expect("the keys' Secret");
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "meshca"
    );
    assert!(
        !get(&a, &a.url("/v1/bundle/spiffe"))
            .await
            .2
            .to_string()
            .contains("\"d\""),
        "no private key member in the bundle"
    );

    let mut torn = secret.clone();
    torn["data"]["jwt-keys.json"] = json!("eyJrZXlzIjog");
    kube.put("", "secrets", torn);
    let config = meshca::Config::from_yaml(&support::config_yaml(
        tempfile::tempdir().expect("tempdir").path(),
        &yaml,
    ))
    .expect("valid");
    let Err(refused) = meshca::start(config).await else {
        panic!("started over keys it cannot read");
    };
    let said = support::error_chain(&refused);
    assert!(
        said.contains("Secret osm-system/meshca-jwt-keys") && said.contains("do not parse"),
        "{said}"
    );
    let kept = kube
        .get("", "secrets", "osm-system", "meshca-jwt-keys")
        .expect("kept");
    assert_eq!(kept["data"]["jwt-keys.json"], "eyJrZXlzIjog");
}

fn kid_of(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().expect("a header");
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .expect("base64url"),
    )
    .expect("JSON");
    header["kid"].as_str().expect("kid").to_owned()
}

/// A relying party that checks each token as it arrives: PyJWT's
/// `PyJWKClient` fetching the JWKS again for every token.
struct LiveVerifier {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl LiveVerifier {
    fn start(jwks_uri: &str, ca: &std::path::Path, audience: &str, issuer: &str) -> Self {
        let script = r#"
import ssl, sys, jwt
uri, ca, audience, issuer = sys.argv[1:5]
client = jwt.PyJWKClient(uri, cache_jwk_set=False, ssl_context=ssl.create_default_context(cafile=ca))
for line in iter(sys.stdin.readline, ""):
    token = line.strip()
    try:
        key = client.get_signing_key_from_jwt(token)
        claims = jwt.decode(token, key, algorithms=["ES256"], audience=audience, issuer=issuer)
        print(claims["sub"], flush=True)
    except Exception as e:
        print(type(e).__name__, e, flush=True)
"#;
        let mut child = std::process::Command::new(python())
            .args([
                "-c",
                script,
                jwks_uri,
                &ca.display().to_string(),
                audience,
                issuer,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python runs");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        Self { child, stdout }
    }

    /// The verdict on `token`, checked now.
    fn check(&mut self, token: &str) -> String {
        use std::io::{BufRead as _, Write as _};
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{token}").expect("token written");
        stdin.flush().expect("flushed");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("a verdict");
        line.trim().to_owned()
    }
}

impl Drop for LiveVerifier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keys rotating on schedule under load: each successor is in the JWKS a
/// propagation delay before it signs, the old key stays while its tokens
/// live, every token minted across two rotations verifies with the JWKS
/// of the moment it is checked, and OpenBao follows with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_on_schedule_under_load_and_relying_parties_follow_without_a_restart() {
    let port = free_port();
    let d = TestDaemon::start(&format!(
        "rotation: {{ propagation_delay: 3s }}\n{}",
        jwt_yaml(port, ", default_ttl: 10s, max_ttl: 10s, key_lifetime: 12s")
    ))
    .await;
    let issuer = format!("https://127.0.0.1:{port}");
    let ca = d.dir.path().join("ca-for-relying-parties.pem");
    std::fs::write(&ca, d.bundle_pem().await).expect("write");
    let bao = OpenBao::dev().await;
    bao.jwt_auth(&issuer, &ca, None, &[]);
    let login = |jwt: &str| bao.jwt_login(jwt);
    // One credential, as a workload has, for every token of the run.
    let bearer = d.token("shop", "web");
    let mint_one = || async {
        let (status, body) = mint(&d, Some(&bearer), &json!({ "audience": ["vault"] })).await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().expect("token").to_owned()
    };
    let mut verifier = LiveVerifier::start(&format!("{issuer}/keys"), &ca, "vault", &issuer);
    let kids = || async {
        let (_, _, jwks) = get(&d, &d.url("/keys")).await;
        jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_owned())
            .collect::<Vec<_>>()
    };

    // Mint continuously; note when each key is first published and first
    // signs, and check every token at once as a relying party would.
    let mut published: Vec<(String, std::time::Instant)> = Vec::new();
    let mut signed: Vec<(String, std::time::Instant)> = Vec::new();
    let mut checked = 0;
    let mut last_of_previous: Option<String> = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    while signed.len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "two rotations did not happen: {signed:?}"
        );
        for kid in kids().await {
            if !published.iter().any(|(k, _)| *k == kid) {
                published.push((kid, std::time::Instant::now()));
            }
        }
        let token = mint_one().await;
        let kid = kid_of(&token);
        if !signed.iter().any(|(k, _)| *k == kid) {
            signed.push((kid, std::time::Instant::now()));
            // OpenBao knows only the keys of its last JWKS fetch.
            assert!(login(&token).is_ok(), "a login with the new key");
            if let Some(old) = &last_of_previous {
                assert!(login(old).is_ok(), "a live token of the key before");
            }
        }
        last_of_previous = Some(token.clone());
        assert_eq!(
            verifier.check(&token),
            "spiffe://cluster.local/ns/shop/sa/web",
            "a token checked the moment it was minted"
        );
        checked += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(checked > 50, "{checked} tokens");
    for (kid, first_use) in &signed[1..] {
        let (_, at) = published
            .iter()
            .find(|(k, _)| k == kid)
            .expect("every key that signed was published first");
        assert!(
            first_use.duration_since(*at) >= Duration::from_millis(2500),
            "{kid} signed {:?} after it was published, inside the propagation delay",
            first_use.duration_since(*at)
        );
    }
    let outage: f64 = d
        .metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("meshca_time_to_outage_seconds "))
        .expect("meshca_time_to_outage_seconds")
        .parse()
        .expect("a number");
    assert!(outage <= 13.0, "the last JWT key's end counts: {outage}");
}

/// `meshca rotate jwt-key` publishes a key where the daemon keeps them;
/// the daemon serves it at once and signs with it only after the delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_by_hand_is_published_before_it_signs() {
    let port = free_port();
    let d = TestDaemon::start_from_file(&format!(
        "rotation: {{ propagation_delay: 5s }}\n{}",
        jwt_yaml(port, "")
    ))
    .await;
    let old = kid_of(&token_for(&d, "shop", "web", "vault").await);
    let config = d.dir.path().join("meshca.yaml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
        .args(["rotate", "jwt-key", "--config"])
        .arg(&config)
        .output()
        .expect("meshca rotate jwt-key");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("published JWT signing key"), "{said}");
    let published = std::time::Instant::now();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the new key was never served"
        );
        let (_, _, jwks) = get(&d, &d.url("/keys")).await;
        if jwks["keys"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        kid_of(&token_for(&d, "shop", "web", "vault").await),
        old,
        "not signing before its time"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the new key never signed"
        );
        if kid_of(&token_for(&d, "shop", "web", "vault").await) != old {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(published.elapsed() >= Duration::from_secs(5));

    let plain = tempfile::tempdir().expect("tempdir");
    let plain_config = plain.path().join("meshca.yaml");
    std::fs::write(&plain_config, support::config_yaml(plain.path(), "")).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
        .args(["rotate", "jwt-key", "--config"])
        .arg(&plain_config)
        .output()
        .expect("meshca rotate jwt-key");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("jwt_svids.enabled"));
}
