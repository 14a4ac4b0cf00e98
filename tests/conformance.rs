//! One provider conformance suite, run for every provider: the signing API
//! must behave the same whichever backend signs.
//!
//! - `tresor`: meshca's own root, in process;
//! - `vault`: a real OpenBao server (Vault's API), set up with
//!   `examples/vault/setup-pki.sh`;
//! - `cert_manager`: no real cluster or cert-manager can run here, so the
//!   repository's Kubernetes API stand-in plays the API server and its CA
//!   issuer plays cert-manager, signing independently of meshca's code.
//!
//! Each case is generated once per provider (`cargo test --test
//! conformance -- --list`). Tresor signs in process and has no backend to
//! lose or misconfigure after start, so the two backend-fault cases exist
//! for `vault` and `cert_manager` only. Tresor and Vault run with a
//! post-quantum (ML-DSA-65) root beside the classical one, so every case
//! also shows that a second root changes nothing for classical keys.

use meshca_test_support as support;

use rcgen::{KeyPair, SanType};
use serde_json::{json, Value};
use support::kube::{CaIssuer, IssuerBehaviour, KubeStandIn};
use support::openbao::OpenBao;
use support::{certs, csr_with, TestDaemon};

const NS: &str = "bookstore";
const SA: &str = "bookstore";

/// Lifetimes every case runs with: short enough to see the cap.
const LIFETIMES: &str =
    "certificates: { default_ttl: 1h, min_ttl: 10m, max_ttl: 2h }\napi: { per_identity_burst: 1000, per_identity_per_second: 1000 }\njwt_svids: { enabled: true }\n";

#[derive(Clone, Copy, Debug)]
enum Kind {
    Tresor,
    Vault,
    CertManager,
}

/// A daemon signing with one provider, and that provider's backend.
struct Harness {
    daemon: TestDaemon,
    /// The port of its Istio certificate service.
    istio_port: u16,
    bao: Option<OpenBao>,
    kube: Option<KubeStandIn>,
    issuer: Option<CaIssuer>,
}

impl Harness {
    async fn start(kind: Kind) -> Self {
        let istio_port = support::process::free_port();
        // Dialled as localhost, a name the serving certificate has anyway
        // (the Vault role of the tests allows no other).
        let common = format!(
            "{LIFETIMES}istio_ca: {{ enabled: true, listen: '127.0.0.1:{istio_port}', serving_dns_names: [localhost] }}\n"
        );
        match kind {
            Kind::Tresor => Self {
                daemon: TestDaemon::start(&format!(
                    "{common}provider: {{ kind: tresor, tresor: {{ post_quantum: {{ key_algorithm: ml-dsa-65 }} }} }}\n"
                ))
                .await,
                istio_port,
                bao: None,
                kube: None,
                issuer: None,
            },
            Kind::Vault => {
                let bao = OpenBao::dev().await;
                bao.script("setup-pki.sh", &[("POST_QUANTUM_ROLE", "meshca-ml-dsa")]);
                let auth = format!("{{ token_file: {} }}", bao.meshca_token_file().display());
                let pq = "    post_quantum: { role: meshca-ml-dsa }\n";
                let yaml = format!("{common}{}", bao.provider_yaml(&auth, pq));
                Self {
                    daemon: TestDaemon::start(&yaml).await,
                    istio_port,
                    bao: Some(bao),
                    kube: None,
                    issuer: None,
                }
            }
            Kind::CertManager => {
                let kube = KubeStandIn::start().await;
                let issuer = kube.start_ca_issuer("Issuer", "osm-ca");
                let yaml = format!(
                    "{common}kubernetes: {{ kubeconfig: {} }}\nprovider:\n  kind: cert-manager\n  cert_manager: {{ issuer_name: osm-ca, issuer_kind: Issuer, timeout: 3s }}\n",
                    kube.kubeconfig().display()
                );
                Self {
                    daemon: TestDaemon::start(&yaml).await,
                    istio_port,
                    bao: None,
                    kube: Some(kube),
                    issuer: Some(issuer),
                }
            }
        }
    }

    /// The anchors the backend itself says it signs under.
    fn backend_anchors(&self) -> String {
        if let Some(bao) = &self.bao {
            return ["root-1", "pq-root-1"]
                .iter()
                .map(|i| bao.cli(&["read", "-field=certificate", &format!("pki/issuer/{i}")]))
                .collect::<Vec<_>>()
                .join("\n");
        }
        if let Some(issuer) = &self.issuer {
            return issuer.ca_pem.clone();
        }
        ["tresor", "tresor-post-quantum"]
            .iter()
            .map(|d| {
                let root = self.daemon.config.state_dir.join(d).join("root.crt");
                std::fs::read_to_string(root).expect("the generated Tresor root")
            })
            .collect()
    }

    /// Send `csr` with a token for `NS/SA`.
    async fn sign(
        &self,
        csr: String,
        ttl_seconds: u64,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let token = self.daemon.token(NS, SA);
        let body = json!({ "csr": csr, "ttl_seconds": ttl_seconds });
        self.daemon
            .post(&self.daemon.client().await, Some(&token), &body)
            .await
    }

    /// Make the backend unreachable.
    fn take_down(&mut self) {
        if let Some(bao) = &mut self.bao {
            bao.kill();
        } else if let Some(kube) = &self.kube {
            kube.set_unavailable(true);
        }
    }

    /// Break the backend's configuration so that it refuses every request;
    /// returns the status and code meshca must then answer.
    fn misconfigure(&self) -> (u16, &'static str) {
        if let Some(bao) = &self.bao {
            // meshca's policy loses pki/sign: Vault answers 403.
            let policy = self.daemon.config.state_dir.join("no-sign.hcl");
            std::fs::write(
                &policy,
                "path \"pki/issuers\" { capabilities = [\"list\"] }\n",
            )
            .expect("policy file");
            bao.cli(&["policy", "write", "meshca", &policy.display().to_string()]);
            (500, "provider_misconfigured")
        } else if let Some(issuer) = &self.issuer {
            // The issuer's CA key is unusable: every request Fails.
            issuer.set(IssuerBehaviour::Fail);
            (502, "provider_rejected")
        } else {
            unreachable!("Tresor has no backend to misconfigure")
        }
    }
}

/// A CSR from `key` naming exactly the caller's identity (cert-manager
/// signs only what a CSR names).
fn named_csr(key: &KeyPair) -> String {
    support::named_csr_with(key, NS, SA)
}

/// Keys of every type a CSR may carry; RSA from openssl, as operators
/// make them.
fn keys_of_every_type() -> Vec<(&'static str, KeyPair)> {
    let (rsa, _) = support::rsa_key();
    vec![
        (
            "ecdsa-p256",
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key"),
        ),
        (
            "ecdsa-p384",
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key"),
        ),
        (
            "ed25519",
            KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key"),
        ),
        ("rsa-2048", rsa),
    ]
}

fn leaf_of(body: &Value) -> (i64, Vec<String>) {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = certs(body["certificate_chain"].as_str().expect("chain")).remove(0);
    let (_, cert) = X509Certificate::from_der(der.as_ref()).expect("leaf");
    let names = support::san_names(&der);
    (cert.validity().not_after.timestamp(), names)
}

// === the cases ===

async fn a_valid_csr_of_every_key_type_gets_the_callers_identity_chaining_to_the_bundle(
    kind: Kind,
) {
    let h = Harness::start(kind).await;
    let bundle = h.daemon.bundle_pem().await;
    for (name, key) in keys_of_every_type() {
        let (status, _, body) = h.sign(named_csr(&key), 3600).await;
        assert_eq!(status, 200, "{kind:?} {name}: {body}");
        let (_, mut names) = leaf_of(&body);
        names.sort();
        assert_eq!(
            names,
            [
                format!("DNS:{SA}.{NS}.cluster.local"),
                format!("URI:spiffe://cluster.local/ns/{NS}/sa/{SA}"),
            ],
            "{kind:?} {name}"
        );
        let chain = body["certificate_chain"].as_str().expect("chain");
        support::verify(chain, &bundle, webpki::KeyUsage::client_auth())
            .unwrap_or_else(|e| panic!("{kind:?} {name}: the chain does not verify: {e:?}"));
    }
}

/// istio-agent's and ztunnel's CSRs (no subject, the URI SAN alone,
/// marked critical; RSA and EC) through Istio's certificate service, the
/// caller authenticated by a client certificate meshca issued.
async fn istios_agents_get_the_callers_identity_and_nobody_elses(kind: Kind) {
    let h = Harness::start(kind).await;
    let bundle = h.daemon.bundle_pem().await;
    let key = KeyPair::generate().expect("key");
    let (status, _, body) = h.sign(named_csr(&key), 3600).await;
    assert_eq!(status, 200, "{kind:?}: {body}");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, body["certificate_chain"].as_str().expect("chain")).expect("cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("key");
    let caller = format!("spiffe://cluster.local/ns/{NS}/sa/{SA}");
    let call = |uri: &str, key: &str| json!({ "cert": cert, "key_file": key_file, "uri": uri, "key": key, "validity": 3600 });
    let results = support::istio::create_certificates_as(
        h.istio_port,
        "localhost",
        &bundle,
        &json!([
            call(&caller, "rsa"),
            call(&caller, "ec"),
            call("spiffe://cluster.local/ns/kube-system/sa/admin", "ec"),
        ]),
    )
    .await;
    for result in &results[..2] {
        assert_eq!(result["ok"], true, "{kind:?}: {result}");
        assert_eq!(result["leaf_uris"], json!([caller]), "{kind:?}");
        assert_eq!(result["key_matches"], true, "{kind:?}");
        let chain = result["chain"].as_array().expect("chain");
        assert_eq!(chain.last().and_then(Value::as_str), Some(bundle.as_str()));
        let leaf_and_intermediates = support::istio::leaf_and_intermediates(result);
        support::verify(
            &leaf_and_intermediates,
            &bundle,
            webpki::KeyUsage::client_auth(),
        )
        .unwrap_or_else(|e| panic!("{kind:?}: the chain does not verify: {e:?}"));
    }
    assert_eq!(results[2]["ok"], false, "{kind:?}: {}", results[2]);
    assert_eq!(
        results[2]["code"], "PERMISSION_DENIED",
        "{kind:?}: {}",
        results[2]
    );
}

async fn a_requested_lifetime_is_capped_at_max_ttl(kind: Kind) {
    let h = Harness::start(kind).await;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let (status, _, body) = h.sign(named_csr(&key), 10 * 3600).await;
    assert_eq!(status, 200, "{kind:?}: {body}");
    let (not_after, _) = leaf_of(&body);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        not_after <= now + 2 * 3600 + 5,
        "{kind:?}: {}s is beyond certificates.max_ttl (2h)",
        not_after - now
    );
    assert!(
        not_after >= now + 2 * 3600 - 120,
        "{kind:?}: the cap, not less: {}s",
        not_after - now
    );
    let stated = time::OffsetDateTime::parse(
        body["not_after"].as_str().expect("not_after"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339");
    assert_eq!(
        stated.unix_timestamp(),
        not_after,
        "{kind:?}: read from the leaf"
    );
}

async fn ca_requests_foreign_names_and_bad_signatures_are_refused(kind: Kind) {
    let h = Harness::start(kind).await;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let ca = csr_with(&key, |p| {
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    });
    let foreign = csr_with(&key, |p| {
        p.subject_alt_names = vec![SanType::DnsName(
            "payments.payments.cluster.local".try_into().expect("dns"),
        )];
    });
    let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let forged = support::csr_signed_by_another_key(&key, &other);
    for (what, csr, status, code) in [
        ("CA:TRUE", ca, 400, "invalid_csr"),
        ("a foreign name", foreign, 403, "identity_mismatch"),
        ("a bad signature", forged, 400, "invalid_csr"),
    ] {
        let (got, headers, body) = h.sign(csr, 3600).await;
        assert_eq!(got, status, "{kind:?} {what}: {body}");
        assert_eq!(body["error"]["code"], code, "{kind:?} {what}");
        assert!(!headers.contains_key("retry-after"), "{kind:?} {what}");
    }
}

async fn the_backends_anchors_reach_the_bundle(kind: Kind) {
    let h = Harness::start(kind).await;
    let from_backend = certs(&h.backend_anchors());
    let served = h
        .daemon
        .client()
        .await
        .get(h.daemon.url("/v1/bundle"))
        .send()
        .await
        .expect("bundle")
        .text()
        .await
        .expect("text");
    let sorted = |c: Vec<rustls_pki_types::CertificateDer<'static>>| {
        let mut der: Vec<Vec<u8>> = c.iter().map(|c| c.to_vec()).collect();
        der.sort();
        der
    };
    let from_backend = sorted(from_backend);
    assert_eq!(
        sorted(certs(&served)),
        from_backend,
        "{kind:?}: GET /v1/bundle"
    );
    assert_eq!(
        sorted(certs(&h.daemon.bundle_pem().await)),
        from_backend,
        "{kind:?}: the bundle file"
    );
}

async fn a_backend_that_is_down_is_retryable(kind: Kind) {
    let mut h = Harness::start(kind).await;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let (status, _, body) = h.sign(named_csr(&key), 3600).await;
    assert_eq!(status, 200, "{kind:?}: {body}");
    h.take_down();
    let (status, headers, body) = h.sign(named_csr(&key), 3600).await;
    assert_eq!(status, 503, "{kind:?}: {body}");
    assert_eq!(body["error"]["code"], "provider_unavailable", "{kind:?}");
    let after: u64 = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{kind:?}: Retry-After in seconds: {headers:?}"));
    assert!(after >= 1, "{kind:?}");
}

async fn a_misconfigured_backend_is_not_retryable(kind: Kind) {
    let h = Harness::start(kind).await;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let (status, _, body) = h.sign(named_csr(&key), 3600).await;
    assert_eq!(status, 200, "{kind:?}: {body}");
    let (want_status, want_code) = h.misconfigure();
    let (status, headers, body) = h.sign(named_csr(&key), 3600).await;
    assert_eq!(status, want_status, "{kind:?}: {body}");
    assert_eq!(body["error"]["code"], want_code, "{kind:?}: {body}");
    assert!(
        !headers.contains_key("retry-after"),
        "{kind:?}: repeating cannot help"
    );
}

/// The JWT-SVID and the certificate one caller gets name the same
/// SPIFFE ID, and the token verifies with the published key, whichever
/// provider signs certificates (JWT keys are meshca's own).
async fn a_jwt_svid_names_the_caller_as_its_certificate_does(kind: Kind) {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine as _;
    let h = Harness::start(kind).await;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let (status, _, cert) = h.sign(named_csr(&key), 3600).await;
    assert_eq!(status, 200, "{kind:?}: {cert}");
    let d = &h.daemon;
    let client = d.client().await;
    let minted: Value = client
        .post(d.url("/v1/jwt-svids"))
        .bearer_auth(d.token(NS, SA))
        .json(&json!({ "audience": ["vault"] }))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(minted["spiffe_id"], cert["spiffe_id"], "{kind:?}");
    let token = minted["token"].as_str().expect("token");
    let (input, signature) = token.rsplit_once('.').expect("a JWS");
    let part = |i: usize| -> Value {
        let text = input.split('.').nth(i).expect("a part");
        serde_json::from_slice(&B64.decode(text).expect("base64url")).expect("JSON")
    };
    let (header, claims) = (part(0), part(1));
    assert_eq!(claims["sub"], cert["spiffe_id"], "{kind:?}");
    assert_eq!(claims["aud"], json!(["vault"]));
    let jwks: Value = client
        .get(d.url("/keys"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    let jwk = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the signing key is published");
    let coordinate = |name: &str| {
        B64.decode(jwk[name].as_str().expect(name))
            .expect("base64url")
    };
    let point = [vec![4u8], coordinate("x"), coordinate("y")].concat();
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        point,
    )
    .verify(input.as_bytes(), &B64.decode(signature).expect("base64url"))
    .expect("the token verifies with the published key");
}

/// A CSR of an ML-DSA-65 key (made by rcgen, naming the caller) is signed
/// under the provider's post-quantum root, whose chain `cryptography` 51
/// verifies too; a provider that signs no ML-DSA refuses it by name, as a
/// request to change, never a server error.
async fn an_ml_dsa_csr_is_signed_under_the_post_quantum_root_or_refused_by_name(kind: Kind) {
    let h = Harness::start(kind).await;
    let key = KeyPair::generate_for(&rcgen::PKCS_ML_DSA_65).expect("key");
    let (status, headers, body) = h.sign(named_csr(&key), 3600).await;
    if let Kind::CertManager = kind {
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "invalid_csr", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("cert-manager") && message.contains("ML-DSA"),
            "{message}"
        );
        assert!(headers.get("retry-after").is_none());
        return;
    }
    assert_eq!(status, 200, "{kind:?}: {body}");
    let chain = body["certificate_chain"].as_str().expect("chain");
    let bundle = h.daemon.bundle_pem().await;
    support::verify(chain, &bundle, webpki::KeyUsage::client_auth())
        .unwrap_or_else(|e| panic!("{kind:?}: rustls-webpki refused the chain: {e:?}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let (chain_file, bundle_file) = (dir.path().join("chain.pem"), dir.path().join("bundle.pem"));
    std::fs::write(&chain_file, chain).expect("chain");
    std::fs::write(&bundle_file, &bundle).expect("bundle");
    let repo = support::repo_root();
    let out = std::process::Command::new(repo.join(".venv-pq/bin/python"))
        .arg(repo.join("tests/pq/verify.py"))
        .arg("chain")
        .args([&chain_file, &bundle_file])
        .output()
        .expect("cryptography 51 runs (.ci/run installs it in .venv-pq)");
    let seen: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(seen["ok"], true, "{kind:?}: {seen}");
    assert_eq!(
        seen["chain"][0]["signature"], "ML-DSA-65",
        "{kind:?}: {seen}"
    );
    assert_eq!(seen["anchor_key"], "MLDSA65PublicKey", "{kind:?}: {seen}");
}

/// One module per provider, each case named with it: the cases every
/// provider passes, plus the `also` cases about a remote backend.
macro_rules! conformance {
    ($provider:ident, $kind:expr $(, also: [$($extra:ident),* $(,)?])?) => {
        mod $provider {
            conformance!(@case $kind, a_valid_csr_of_every_key_type_gets_the_callers_identity_chaining_to_the_bundle);
            conformance!(@case $kind, a_requested_lifetime_is_capped_at_max_ttl);
            conformance!(@case $kind, ca_requests_foreign_names_and_bad_signatures_are_refused);
            conformance!(@case $kind, the_backends_anchors_reach_the_bundle);
            conformance!(@case $kind, a_jwt_svid_names_the_caller_as_its_certificate_does);
            conformance!(@case $kind, istios_agents_get_the_callers_identity_and_nobody_elses);
            conformance!(@case $kind, an_ml_dsa_csr_is_signed_under_the_post_quantum_root_or_refused_by_name);
            $($(conformance!(@case $kind, $extra);)*)?
        }
    };
    (@case $kind:expr, $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            super::$case($kind).await;
        }
    };
}

conformance!(tresor, super::Kind::Tresor);
conformance!(
    vault,
    super::Kind::Vault,
    also: [a_backend_that_is_down_is_retryable, a_misconfigured_backend_is_not_retryable]
);
conformance!(
    cert_manager,
    super::Kind::CertManager,
    also: [a_backend_that_is_down_is_retryable, a_misconfigured_backend_is_not_retryable]
);
