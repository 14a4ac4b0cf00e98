//! Shared helpers for the integration tests: an in-process daemon on
//! loopback ports chosen by the kernel, real HTTPS clients, CSR builders
//! and independent verification with rustls-webpki.

#![allow(clippy::disallowed_methods)] // Test support: blocking calls are its business.

pub mod abuse;
pub mod bench;
pub mod chart;
pub mod custody;
pub mod hold;
pub mod istio;
pub mod jwt;
pub mod kube;
pub mod nginx;
pub mod openbao;
pub mod process;
pub mod schemas;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meshca::{Config, Identity, RunningDaemon, TokenStore};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use serde_json::Value;
use tempfile::TempDir;

/// A daemon running in this process with its own state directory.
pub struct TestDaemon {
    pub daemon: Option<RunningDaemon>,
    pub dir: TempDir,
    pub config: Config,
}

/// The repository's root (where `examples/`, `charts/`, `.venv` and
/// `.tools` are), whichever crate asks.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A command-line tool the tests drive (helm, kubectl): `MESHCA_<NAME>`,
/// else `./.tools/bin/<name>` as installed by `.ci/install-k8s-tools`, else
/// the one on PATH.
pub fn tool(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!("MESHCA_{}", name.to_uppercase())) {
        return PathBuf::from(p);
    }
    let local = repo_root().join(".tools/bin").join(name);
    if local.exists() {
        local
    } else {
        PathBuf::from(name)
    }
}

/// YAML for a daemon keeping its state in `dir`, listening on free ports,
/// with `extra` appended (top-level keys).
pub fn config_yaml(dir: &Path, extra: &str) -> String {
    format!(
        "state_dir: {}\nlisten: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\n{extra}",
        dir.display()
    )
}

/// An error and its causes, `outer: inner`, as meshca logs them.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

impl TestDaemon {
    /// Start a daemon with the default Tresor provider plus `extra` config.
    pub async fn start(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, extra).await
    }

    /// Start a daemon on an existing state directory.
    pub async fn start_in(dir: TempDir, extra: &str) -> Self {
        install_crypto_provider();
        let config = Config::from_yaml(&config_yaml(dir.path(), extra)).expect("valid config");
        let daemon = meshca::start(config.clone()).await.expect("daemon starts");
        Self {
            daemon: Some(daemon),
            dir,
            config,
        }
    }

    /// Start a daemon from a config file in its state directory, so that
    /// edits of the file reach it.
    pub async fn start_from_file(extra: &str) -> Self {
        install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meshca.yaml");
        std::fs::write(&path, config_yaml(dir.path(), extra)).expect("config file");
        let config = Config::load(Some(&path)).expect("valid config");
        let daemon = meshca::start(config.clone()).await.expect("daemon starts");
        Self {
            daemon: Some(daemon),
            dir,
            config,
        }
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        install_crypto_provider();
        reqwest::Client::new()
            .get(self.metrics_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// Rewrite the config file (see [`TestDaemon::start_from_file`]).
    pub fn rewrite_config(&self, extra: &str) {
        let path = self.dir.path().join("meshca.yaml");
        // Replace it whole, as editors and the kubelet do.
        let tmp = self.dir.path().join("meshca.yaml.new");
        std::fs::write(&tmp, config_yaml(self.dir.path(), extra)).expect("config file");
        std::fs::rename(&tmp, &path).expect("rename");
    }

    /// Stop the daemon and start it again with the same configuration
    /// and state directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        let daemon = meshca::start(self.config.clone())
            .await
            .expect("daemon restarts");
        self.daemon = Some(daemon);
    }

    /// Stop the daemon and start it again on the same state directory
    /// with `extra` config instead.
    pub async fn restart_with(&mut self, extra: &str) {
        self.stop().await;
        self.config =
            Config::from_yaml(&config_yaml(self.dir.path(), extra)).expect("valid config");
        let daemon = meshca::start(self.config.clone())
            .await
            .expect("daemon restarts");
        self.daemon = Some(daemon);
    }

    pub async fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown().await;
        }
    }

    fn running(&self) -> &RunningDaemon {
        self.daemon.as_ref().expect("daemon running")
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "https://127.0.0.1:{}{path}",
            self.running().api_addr().port()
        )
    }

    pub fn metrics_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running().metrics_addr())
    }

    pub fn bundle_path(&self) -> PathBuf {
        self.config.bundle.file.clone()
    }

    /// The bundle as published to the file sink (waits for the publisher).
    pub async fn bundle_pem(&self) -> String {
        for _ in 0..100 {
            if let Ok(pem) = std::fs::read_to_string(self.bundle_path()) {
                if !pem.is_empty() {
                    return pem;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the bundle file was never written");
    }

    pub fn token(&self, namespace: &str, service_account: &str) -> String {
        let id = Identity::new(self.config.trust_domain.clone(), namespace, service_account)
            .expect("identity");
        TokenStore::new(self.config.auth.tokens_file.clone())
            .create(&id)
            .expect("token")
    }

    /// An HTTPS client trusting only the published bundle.
    pub async fn client(&self) -> reqwest::Client {
        client(&self.bundle_pem().await, None)
    }

    /// `GET /v1/rotation`: the rollout's state.
    pub async fn rotation(&self) -> Value {
        self.client()
            .await
            .get(self.url("/v1/rotation"))
            .send()
            .await
            .expect("rotation")
            .json()
            .await
            .expect("json")
    }

    /// The status and body of `GET /readyz` on the metrics port.
    pub async fn readyz(&self) -> (u16, String) {
        let resp = reqwest::get(self.metrics_url("/readyz"))
            .await
            .expect("request sent");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    /// The status and body of `GET path` on the signing API.
    pub async fn get_status(&self, path: &str) -> (u16, String) {
        let resp = self
            .client()
            .await
            .get(self.url(path))
            .send()
            .await
            .expect("request sent");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    /// POST /v1/certificates with a JSON body.
    pub async fn post(
        &self,
        client: &reqwest::Client,
        token: Option<&str>,
        body: &Value,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = client.post(self.url("/v1/certificates")).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let json = resp.json::<Value>().await.expect("JSON body");
        (status, headers, json)
    }
}

impl TestDaemon {
    /// POST /v1/certificates with exactly these headers and body text.
    pub async fn post_raw(
        &self,
        client: &reqwest::Client,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, Value) {
        let mut req = client
            .post(self.url("/v1/certificates"))
            .body(body.to_owned());
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.expect("JSON body"))
    }
}

/// An HTTPS client (rustls, aws-lc-rs) trusting `bundle_pem`, optionally
/// presenting a client certificate.
pub fn client(bundle_pem: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
        roots.add(c.expect("cert")).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let tls = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(chain.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("chain"),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .expect("client")
}

/// A P-256 key.
pub fn key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key")
}

/// A PEM CSR for `key`, with an empty subject unless `edit` changes it.
pub fn csr_with(key: &KeyPair, edit: impl FnOnce(&mut CertificateParams)) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    edit(&mut params);
    params
        .serialize_request(key)
        .expect("csr")
        .pem()
        .expect("pem")
}

/// A CSR from `key` naming exactly `ns/sa` (CN and DNS SAN `SA.NS.cluster.local`,
/// URI SAN `spiffe://cluster.local/ns/NS/sa/SA`), as `meshca agent` sends it.
pub fn named_csr_with(key: &KeyPair, ns: &str, sa: &str) -> String {
    csr_with(key, |p| {
        let dns = format!("{sa}.{ns}.cluster.local");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, dns.clone());
        p.subject_alt_names = vec![
            rcgen::SanType::DnsName(dns.try_into().expect("dns")),
            rcgen::SanType::URI(
                format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
                    .try_into()
                    .expect("uri"),
            ),
        ];
    })
}

/// [`named_csr_with`] a fresh P-256 key.
pub fn named_csr(ns: &str, sa: &str) -> String {
    named_csr_with(&key(), ns, sa)
}

/// Run `openssl ARGS` in `dir`, failing the test with openssl's message.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An ECDSA P-256 root CA made by the openssl CLI in `dir`, as
/// `(name.crt, name.key)`: what an operator brings to Tresor.
pub fn openssl_root(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.crt"));
    for args in [
        vec![
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            key.to_str().expect("utf8"),
        ],
        vec![
            "req",
            "-x509",
            "-new",
            "-key",
            key.to_str().expect("utf8"),
            "-subj",
            &format!("/CN=root {name}"),
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            cert.to_str().expect("utf8"),
        ],
    ] {
        openssl(Path::new("."), &args);
    }
    (cert, key)
}

/// A 2048-bit RSA key made by openssl, with its PEM.
pub fn rsa_key() -> (KeyPair, String) {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("openssl genpkey");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = String::from_utf8(out.stdout).expect("pem");
    let key = KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).expect("rsa key");
    (key, pem)
}

pub fn csr(key: &KeyPair) -> String {
    csr_with(key, |_| {})
}

pub fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates")
}

/// Verify `chain_pem` (leaf first) against `bundle_pem` for `usage`, now,
/// with rustls-webpki, independently of meshca's own checks.
pub fn verify(
    chain_pem: &str,
    bundle_pem: &str,
    usage: webpki::KeyUsage,
) -> Result<(), webpki::Error> {
    let chain = certs(chain_pem);
    let anchors_der = certs(bundle_pem);
    let anchors: Vec<_> = anchors_der
        .iter()
        .map(|a| webpki::anchor_from_trusted_cert(a).expect("anchor"))
        .collect();
    let ee = webpki::EndEntityCert::try_from(&chain[0]).expect("leaf");
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &chain[1..],
        UnixTime::now(),
        usage,
        None,
        None,
    )
    .map(|_| ())
}

/// A DER TLV (short or long length form).
pub fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    der_tlv(tag, body)
}

/// A PEM CSR assembled by hand, so that a test can send what no library
/// would produce: `spki` and `attributes` (the contents of the `[0]`
/// attribute set) as given, the request info signed by `key` under the
/// signature algorithm identifier `signature_algorithm`.
pub fn csr_from_parts(
    key: &KeyPair,
    spki: &[u8],
    attributes: &[u8],
    signature_algorithm: &[u8],
) -> String {
    use rcgen::SigningKey;
    let mut info = der_tlv(0x02, &[0]);
    info.extend(der_tlv(0x30, &[]));
    info.extend(spki);
    info.extend(der_tlv(0xa0, attributes));
    let info = der_tlv(0x30, &info);
    let mut bits = vec![0u8];
    bits.extend(key.sign(&info).expect("sign"));
    let mut body = info;
    body.extend(signature_algorithm);
    body.extend(der_tlv(0x03, &bits));
    let mut pem = String::new();
    meshca_provider::pem::encode_block("CERTIFICATE REQUEST", &der_tlv(0x30, &body), &mut pem);
    pem
}

/// DER length prefix.
fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend(&bytes[skip..]);
    }
}

fn der_tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    der_len(body.len(), &mut out);
    out.extend(body);
    out
}

/// A CSR naming `subject_key`'s public key but signed with `signer`: what
/// someone without the key would have to send.
pub fn csr_signed_by_another_key(subject_key: &KeyPair, signer: &KeyPair) -> String {
    use rcgen::SigningKey;
    use x509_parser::prelude::FromDer;
    let original =
        rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr(subject_key).as_bytes())
            .expect("csr");
    let (_, parsed) =
        x509_parser::certification_request::X509CertificationRequest::from_der(original.as_ref())
            .expect("parse");
    let info = parsed.certification_request_info.raw;
    let signature = signer.sign(info).expect("sign");
    // ecdsa-with-SHA256
    let alg = [
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
    ];
    let mut bits = vec![0u8];
    bits.extend(signature);
    let mut body = info.to_vec();
    body.extend(alg);
    body.extend(der_tlv(0x03, &bits));
    let der = der_tlv(0x30, &body);
    let mut pem = String::new();
    meshca_provider::pem::encode_block("CERTIFICATE REQUEST", &der, &mut pem);
    pem
}

/// Poll `f` every 100 ms until it gives a value, failing the test after
/// `within`.
pub async fn eventually<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A stub CSR as kubelet makes it for a pod certificate: a key of
/// `key_type` (the PodCertificateRequest names: `ECDSAP256`, `ECDSAP384`,
/// `ECDSAP521`, `ED25519`, `RSA3072`, `RSA4096`), an empty subject and
/// nothing else, DER. Made by the openssl CLI; returns the CSR and the
/// key's PEM.
pub fn kubelet_stub_csr(key_type: &str) -> (Vec<u8>, String) {
    let algorithm: &[&str] = match key_type {
        "ECDSAP256" => &["EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "ECDSAP384" => &["EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        "ECDSAP521" => &["EC", "-pkeyopt", "ec_paramgen_curve:P-521"],
        "ED25519" => &["ED25519"],
        "RSA3072" => &["RSA", "-pkeyopt", "rsa_keygen_bits:3072"],
        "RSA4096" => &["RSA", "-pkeyopt", "rsa_keygen_bits:4096"],
        other => panic!("kubelet has no key type {other}"),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut genpkey = vec!["genpkey", "-algorithm"];
    genpkey.extend_from_slice(algorithm);
    genpkey.extend_from_slice(&["-out", "key.pem"]);
    openssl(dir.path(), &genpkey);
    openssl(
        dir.path(),
        &[
            "req", "-new", "-key", "key.pem", "-subj", "/", "-outform", "DER", "-out", "csr.der",
        ],
    );
    (
        std::fs::read(dir.path().join("csr.der")).expect("csr"),
        std::fs::read_to_string(dir.path().join("key.pem")).expect("key"),
    )
}

/// A stub CSR that the API server admits (it parses and its signature
/// verifies) but that asks to be a CA, which meshca refuses: DER.
pub fn ca_stub_csr() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    openssl(
        dir.path(),
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "key.pem",
            "-subj",
            "/",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-outform",
            "DER",
            "-out",
            "csr.der",
        ],
    );
    std::fs::read(dir.path().join("csr.der")).expect("csr")
}

/// The subjectAltNames of a DER certificate as `DNS:…`, `URI:…`, `IP:…`,
/// in order (empty without the extension).
pub fn san_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).expect("a certificate");
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("DNS:{d}"),
            GeneralName::URI(u) => format!("URI:{u}"),
            GeneralName::IPAddress(ip) => format!("IP:{ip:?}"),
            other => format!("{other:?}"),
        })
        .collect()
}
