//! Tresor's root key on a PKCS#11 token: SoftHSM2 from Debian, checked
//! independently with OpenSC's `pkcs11-tool`. The module is loaded once
//! per process, so this file has its own test binary, one SoftHSM
//! configuration, and a token per test, all made before the first start.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use meshca_test_support::custody::{
    assert_jwt_keys_named_only, every_way_a_workload_asks_verifies, files_under, openssl_verifies,
    private_keys_under, renew_through_rollout, sign,
};
use meshca_test_support::{self as support, TestDaemon};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "5678";

/// The tokens of this binary, each made with `softhsm2-util`.
const TOKENS: [&str; 12] = [
    "modes",
    "example",
    "retire",
    "rsa",
    "jwt",
    "frontends",
    "frontends-leaves",
    "leaves",
    "pin",
    "removed",
    "migrate",
    "extractable",
];

struct SoftHsm {
    dir: tempfile::TempDir,
}

/// SoftHSM's configuration for this process, with every token made.
fn softhsm() -> &'static SoftHsm {
    static HSM: OnceLock<SoftHsm> = OnceLock::new();
    HSM.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).expect("token dir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\n",
                tokens.display()
            ),
        )
        .expect("conf");
        // Set once, before any thread loads the module.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        for label in TOKENS {
            let out = Command::new("softhsm2-util")
                .args([
                    "--init-token",
                    "--free",
                    "--label",
                    label,
                    "--so-pin",
                    "1234",
                    "--pin",
                    PIN,
                ])
                .output()
                .expect("softhsm2-util (apt-get install softhsm2)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::write(dir.path().join("pin"), format!("{PIN}\n")).expect("pin");
        SoftHsm { dir }
    })
}

impl SoftHsm {
    /// The user PIN's file, written once with the tokens.
    fn pin_file(&self) -> PathBuf {
        self.dir.path().join("pin")
    }

    fn tokens(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }

    /// What `pkcs11-tool` lists of the token `label`'s objects.
    fn objects(&self, label: &str) -> String {
        self.tool(&["--token-label", label, "--list-objects"])
    }

    /// OpenSC's `pkcs11-tool`, logged in, with `args`.
    fn tool(&self, args: &[&str]) -> String {
        let out = Command::new("pkcs11-tool")
            .args(["--module", MODULE, "--login", "--pin", PIN])
            .args(args)
            .env("SOFTHSM2_CONF", self.dir.path().join("softhsm2.conf"))
            .output()
            .expect("pkcs11-tool (apt-get install opensc)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// `pkcs11-tool`'s listing `objects` holds the EC private key `label`,
/// sensitive and never extractable.
fn assert_held_on_token(objects: &str, label: &str) {
    assert_held_as(objects, label, "EC");
}

/// As [`assert_held_on_token`], for a key `pkcs11-tool` describes as
/// `kind` (`EC`, `RSA`).
fn assert_held_as(objects: &str, label: &str, kind: &str) {
    let private = objects
        .split("Private Key Object")
        .skip(1)
        .find(|o| o.contains(&format!("label:      {label}\n")))
        .unwrap_or_else(|| panic!("no private key {label} on the token: {objects}"));
    assert!(private.starts_with(&format!("; {kind}")), "{objects}");
    let access = private
        .lines()
        .find(|l| l.contains("Access:"))
        .expect("access");
    let flags: Vec<&str> = access
        .split_once(':')
        .map(|(_, f)| f.split(',').map(str::trim).collect())
        .unwrap_or_default();
    assert!(flags.contains(&"sensitive"), "{access}");
    assert!(flags.contains(&"never extractable"), "{access}");
    assert!(!flags.contains(&"extractable"), "{access}");
}

fn custody_yaml(token: &str, sign_leaves: bool) -> String {
    let hsm = softhsm();
    let tresor = match sign_leaves {
        true => "provider: { kind: tresor }\n",
        false => "provider: { kind: tresor, tresor: { intermediate: { validity: 200h } } }\n",
    };
    format!(
        "{tresor}key_custody:\n  kind: pkcs11\n  sign_leaves: {sign_leaves}\n  pkcs11: {{ module: {MODULE}, token_label: {token}, pin_file: {} }}\n",
        hsm.pin_file().display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_key_is_made_on_the_token_sensitive_and_not_extractable_in_both_modes() {
    for (token, sign_leaves) in [("modes", false), ("leaves", true)] {
        let hsm = softhsm();
        let mut d = TestDaemon::start(&custody_yaml(token, sign_leaves)).await;
        assert_held_on_token(&hsm.objects(token), "meshca-root");

        let (status, _, body) = sign(&d).await;
        assert_eq!(status, 200, "{body}");
        let chain = body["certificate_chain"].as_str().expect("chain");
        assert_eq!(support::certs(chain).len(), if sign_leaves { 1 } else { 2 });
        let work = tempfile::tempdir().expect("tempdir");
        assert!(
            openssl_verifies(work.path(), chain, &d.bundle_path()),
            "{token}"
        );
        let metrics = d.metrics().await;
        assert!(
            metrics.contains("meshca_key_custody_up{backend=\"pkcs11\"} 1"),
            "{metrics}"
        );

        let bundle = d.bundle_pem().await;
        d.restart().await;
        assert_eq!(
            d.bundle_pem().await,
            bundle,
            "the same root after a restart"
        );
        let (status, _, body) = sign(&d).await;
        assert_eq!(status, 200, "{body}");
        let custody_dir = d.dir.path().join("tresor-pkcs11/meshca-root");
        assert!(custody_dir.join("root.crt").exists());
        let keys = private_keys_under(d.dir.path());
        assert!(keys.is_empty(), "no private key in state_dir: {keys:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rsa_root_is_made_on_the_token_and_signs_the_intermediate() {
    let hsm = softhsm();
    let yaml = custody_yaml("rsa", false).replace(
        "tresor: { intermediate",
        "tresor: { key_algorithm: rsa-2048, intermediate",
    );
    let d = TestDaemon::start(&yaml).await;
    let objects = hsm.objects("rsa");
    assert_held_as(&objects, "meshca-root", "RSA");
    let public = objects
        .split("Public Key Object")
        .skip(1)
        .find(|o| o.contains("label:      meshca-root\n"))
        .expect("the public key");
    assert!(public.starts_with("; RSA 2048 bits"), "{objects}");
    let private = objects
        .split("Private Key Object")
        .nth(1)
        .expect("the private key");
    let usage = private
        .lines()
        .find(|l| l.contains("Usage:"))
        .expect("usage");
    assert_eq!(usage.trim(), "Usage:      sign", "a CA key only signs");

    let bundle = d.bundle_pem().await;
    let anchors = support::certs(&bundle);
    let (_, root) = x509_parser::parse_x509_certificate(&anchors[0]).expect("root");
    assert_eq!(
        root.signature_algorithm.algorithm.to_id_string(),
        "1.2.840.113549.1.1.11",
        "sha256WithRSAEncryption, signed on the token"
    );
    let (status, _, body) = sign(&d).await;
    assert_eq!(status, 200, "{body}");
    let chain = body["certificate_chain"].as_str().expect("chain");
    let work = tempfile::tempdir().expect("tempdir");
    assert!(openssl_verifies(work.path(), chain, &d.bundle_path()));
    let keys = private_keys_under(d.dir.path());
    assert!(keys.is_empty(), "no private key in state_dir: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_or_a_missing_token_stops_the_start_and_nothing_is_made() {
    let hsm = softhsm();
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong = hsm.dir.path().join("wrong-pin");
    std::fs::write(&wrong, "0000").expect("pin");
    for (yaml, says) in [
        (
            custody_yaml("pin", false).replace(
                &hsm.pin_file().display().to_string(),
                &wrong.display().to_string(),
            ),
            "Login failed: PinIncorrect",
        ),
        (
            custody_yaml("no-such-token", false),
            "no token labelled \"no-such-token\"",
        ),
        (
            custody_yaml("pin", false).replace(MODULE, "/usr/lib/no-such-module.so"),
            "cannot load the PKCS#11 module /usr/lib/no-such-module.so",
        ),
    ] {
        let yaml = support::config_yaml(dir.path(), &yaml);
        let config = meshca::Config::from_yaml(&yaml).expect("valid config");
        support::install_crypto_provider();
        let err = meshca::start(config).await.expect_err("refused");
        let text = support::error_chain(&err);
        assert!(text.contains(says), "{says} in {text}");
        assert!(!dir.path().join("tresor").exists(), "no file root instead");
        assert!(!dir.path().join("tresor-pkcs11").exists());
    }
    assert!(
        !hsm.objects("pin").contains("meshca-root"),
        "nothing made on the token"
    );

    // A key of meshca's label that can be extracted is refused, not used.
    hsm.tool(&[
        "--token-label",
        "extractable",
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "meshca-root",
        "--usage-sign",
        "--extractable",
    ]);
    let yaml = support::config_yaml(dir.path(), &custody_yaml("extractable", true));
    let config = meshca::Config::from_yaml(&yaml).expect("valid config");
    let err = meshca::start(config).await.expect_err("refused");
    let text = support::error_chain(&err);
    assert!(
        text.contains("can leave it (CKA_SENSITIVE false or CKA_EXTRACTABLE true)"),
        "{text}"
    );
    assert!(!dir.path().join("tresor-pkcs11").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_token_fails_fast_with_retry_after_and_meshca_recovers_when_it_is_back() {
    let hsm = softhsm();
    let d = TestDaemon::start(&custody_yaml("removed", true)).await;
    let (status, _, body) = sign(&d).await;
    assert_eq!(status, 200, "{body}");
    // Take the token's directory away, as pulling an HSM's card does.
    let slot = files_under(&hsm.tokens())
        .into_iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .find(|d| {
            std::fs::read(d.join("token.object"))
                .is_ok_and(|b| String::from_utf8_lossy(&b).contains("removed"))
        })
        .expect("the token's directory");
    let aside = hsm.dir.path().join("pulled");
    std::fs::rename(&slot, &aside).expect("pull the token");
    for _ in 0..3 {
        let started = Instant::now();
        let (status, headers, body) = sign(&d).await;
        assert_eq!(status, 503, "{body}");
        assert!(headers.contains_key("retry-after"), "{headers:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "fails fast");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ready, why) = d.readyz().await;
        if ready == 503 {
            assert!(why.contains("pkcs11"), "{why}");
            break;
        }
        assert!(Instant::now() < deadline, "readyz stayed {ready}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::fs::rename(&aside, &slot).expect("put the token back");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = sign(&d).await;
        if status == 200 {
            let work = tempfile::tempdir().expect("tempdir");
            let chain = body["certificate_chain"].as_str().expect("chain");
            assert!(openssl_verifies(work.path(), chain, &d.bundle_path()));
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_file_root_onto_the_token_is_a_staged_rollout_no_workload_sees_an_untrusted_chain()
{
    let common = "certificates: { default_ttl: 1h, min_ttl: 1s, max_ttl: 2h }\nbundle: { refresh_interval: 1s }\nrotation: { propagation_delay: 2s }\n";
    let d = TestDaemon::start_from_file(common).await;
    let file_root = support::certs(&d.bundle_pem().await);
    let before = d.rotation().await["generation"].as_u64();
    d.rewrite_config(&format!("{common}{}", custody_yaml("migrate", false)));
    let renewals = renew_through_rollout(&d, before).await;
    let work = tempfile::tempdir().expect("tempdir");
    let anchors = support::certs(&d.bundle_pem().await);
    assert!(anchors.contains(&file_root[0]));
    assert_eq!(anchors.len(), 2);
    let (status, _, body) = sign(&d).await;
    assert_eq!(status, 200, "{body}");
    let token_root = d.dir.path().join("tresor-pkcs11/meshca-root/root.crt");
    let chain = body["certificate_chain"].as_str().expect("chain");
    assert!(
        openssl_verifies(work.path(), chain, &token_root),
        "new leaves chain to the root on the token"
    );
    assert!(renewals > 3, "renewed through the rollout ({renewals})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_a_workload_asks_gets_a_chain_to_the_root_on_the_token_in_both_modes() {
    for (token, sign_leaves) in [("frontends", false), ("frontends-leaves", true)] {
        every_way_a_workload_asks_verifies(&custody_yaml(token, sign_leaves), sign_leaves).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_svids_are_signed_on_the_token_and_verify_with_pyjwt() {
    let hsm = softhsm();
    let issuer = "https://meshca.example.com";
    let mut d = TestDaemon::start(&format!(
        "{}jwt_svids: {{ enabled: true, issuer: \"{issuer}\", key_type: ecdsa-p384 }}\n",
        custody_yaml("jwt", false)
    ))
    .await;
    assert_held_on_token(&hsm.objects("jwt"), "meshca-jwt-1");

    let ask = serde_json::json!({ "audience": ["vault"] });
    let (status, _, body) = support::jwt::mint(&d, Some(&d.token("shop", "web")), &ask).await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().expect("token").to_owned();
    let keys = support::jwt::jwks(&d).await;
    assert_eq!(keys["keys"][0]["alg"], "ES384", "{keys}");
    assert_eq!(
        support::jwt::pyjwt(&keys, &token, "vault", issuer),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert_jwt_keys_named_only(d.dir.path(), "pkcs11");

    d.restart().await;
    assert_eq!(
        support::jwt::jwks(&d).await,
        keys,
        "the same key after a restart, found on the token"
    );
}

/// The labels of the private keys `pkcs11-tool` lists on token `label`.
fn private_key_labels(hsm: &SoftHsm, token: &str) -> Vec<String> {
    hsm.objects(token)
        .split("Private Key Object")
        .skip(1)
        .filter_map(|o| {
            o.lines()
                .find_map(|l| l.trim().strip_prefix("label:"))
                .map(|l| l.trim().to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_jwt_key_is_destroyed_on_the_token() {
    let hsm = softhsm();
    let d = TestDaemon::start(&format!(
        "rotation: {{ propagation_delay: 2s }}\n{}jwt_svids: {{ enabled: true, issuer: \"https://meshca.example.com\", default_ttl: 10s, max_ttl: 10s, key_lifetime: 12s }}\n",
        custody_yaml("retire", false)
    ))
    .await;
    let ask = serde_json::json!({ "audience": ["vault"] });
    let (status, _, body) = support::jwt::mint(&d, Some(&d.token("shop", "web")), &ask).await;
    assert_eq!(status, 200, "{body}");
    assert!(private_key_labels(hsm, "retire").contains(&"meshca-jwt-1".to_owned()));
    // The first key is succeeded after 10 s and retired once its last
    // token (10 s) has expired.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = private_key_labels(hsm, "retire");
        if !held.contains(&"meshca-jwt-1".to_owned()) {
            assert!(
                held.iter()
                    .any(|l| l.starts_with("meshca-jwt-") && l != "meshca-jwt-1"),
                "its successors stay: {held:?}"
            );
            assert!(
                !hsm.tool(&[
                    "--token-label",
                    "retire",
                    "--list-objects",
                    "--type",
                    "pubkey"
                ])
                .contains("label:      meshca-jwt-1\n"),
                "the public half is gone too"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "meshca-jwt-1 was never destroyed: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The keys in force still sign.
    let (status, _, body) = support::jwt::mint(&d, Some(&d.token("shop", "web")), &ask).await;
    assert_eq!(status, 200, "{body}");
}

/// `examples/hsm/meshca-pkcs11.yaml` as written, but for its own state
/// directory, listeners, and this run's token and PIN file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_service_example_runs_with_softhsm() {
    let hsm = softhsm();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hsm/meshca-pkcs11.yaml"),
    )
    .expect("the example");
    let pin = "/run/credentials/meshca.service/pkcs11-pin";
    assert!(example.contains("token_label: meshca") && example.contains(pin));
    let extra: String = example
        .lines()
        .filter(|l| {
            !["state_dir:", "listen:", "metrics_listen:"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace("token_label: meshca", "token_label: example")
        .replace(pin, &hsm.pin_file().display().to_string());
    let d = TestDaemon::start(&extra).await;
    assert_held_on_token(&hsm.objects("example"), "meshca-root");
    let (status, _, body) = sign(&d).await;
    assert_eq!(status, 200, "{body}");
    let chain = body["certificate_chain"].as_str().expect("chain");
    assert_eq!(support::certs(chain).len(), 2, "leaf and intermediate");
    let work = tempfile::tempdir().expect("tempdir");
    assert!(openssl_verifies(work.path(), chain, &d.bundle_path()));
}
