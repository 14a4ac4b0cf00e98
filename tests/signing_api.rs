//! The signing API over real HTTPS (rustls client, in-process daemon on a
//! loopback port): the CSR → certificate round trip, independent chain
//! verification, and every error code of the contract with a real bad input.

use meshca_test_support as support;

use std::time::Duration;

use rcgen::{BasicConstraints, CustomExtension, IsCa, SanType};
use serde_json::json;
use support::{certs, csr, csr_signed_by_another_key, csr_with, key, verify, TestDaemon};
use x509_parser::prelude::{FromDer, X509Certificate};

const RESPONSE_FIELDS: [&str; 8] = [
    "identity",
    "spiffe_id",
    "certificate_chain",
    "trust_bundle",
    "serial",
    "not_before",
    "not_after",
    "renew_after",
];

fn assert_error(status: u16, body: &serde_json::Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(!message.is_empty());
    assert_eq!(body.as_object().expect("object").len(), 1, "{body}");
}

#[tokio::test]
async fn a_csr_with_a_token_becomes_a_certificate_that_verifies_for_server_and_client_auth() {
    let d = TestDaemon::start("").await;
    let token = d.token("bookstore", "bookstore");
    let client = d.client().await;
    let k = key();
    let (status, _, body) = d
        .post(
            &client,
            Some(&token),
            &json!({ "csr": csr(&k), "ttl_seconds": 3600 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let fields: Vec<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = RESPONSE_FIELDS.to_vec();
    want.sort_unstable();
    let mut got = fields.clone();
    got.sort_unstable();
    assert_eq!(got, want, "exactly the contract's fields");
    assert_eq!(body["identity"], "bookstore.bookstore.cluster.local");
    assert_eq!(
        body["spiffe_id"],
        "spiffe://cluster.local/ns/bookstore/sa/bookstore"
    );

    let chain = body["certificate_chain"].as_str().expect("chain");
    let bundle = body["trust_bundle"].as_str().expect("bundle");
    assert_eq!(
        bundle,
        d.bundle_pem().await,
        "the response carries the published bundle"
    );
    verify(chain, bundle, webpki::KeyUsage::server_auth()).expect("valid for serverAuth");
    verify(chain, bundle, webpki::KeyUsage::client_auth()).expect("valid for clientAuth");

    let leaf_der = &certs(chain)[0];
    let ee = webpki::EndEntityCert::try_from(leaf_der).expect("leaf");
    ee.verify_is_valid_for_subject_name(
        &rustls_pki_types::ServerName::try_from("bookstore.bookstore.cluster.local").expect("name"),
    )
    .expect("DNS SAN is the identity");

    let (_, leaf) = X509Certificate::from_der(leaf_der).expect("parse");
    let sans = support::san_names(leaf_der);
    assert_eq!(
        sans,
        [
            "DNS:bookstore.bookstore.cluster.local",
            "URI:spiffe://cluster.local/ns/bookstore/sa/bookstore"
        ]
    );
    assert!(!leaf.is_ca());
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        k.public_key_raw()
    );
    // 128 random bits; fewer than 12 significant bytes would mean 32 leading
    // zero bits, which is a broken random source, not bad luck.
    assert!(leaf.raw_serial().len() >= 12, "128-bit random serial");
    assert_eq!(
        body["serial"]
            .as_str()
            .expect("serial")
            .trim_start_matches('0'),
        leaf.raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .trim_start_matches('0')
    );
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!(
        (3600..=3600 + 120).contains(&lifetime),
        "ttl honoured with a small backdate: {lifetime}"
    );
    let not_after = time::OffsetDateTime::parse(
        body["not_after"].as_str().expect("not_after"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339");
    assert_eq!(
        not_after.unix_timestamp(),
        leaf.validity().not_after.timestamp()
    );
}

#[tokio::test]
async fn the_requested_lifetime_is_clamped_to_the_configured_bounds() {
    let d =
        TestDaemon::start("certificates: { default_ttl: 1h, min_ttl: 30m, max_ttl: 2h }\n").await;
    let token = d.token("ns", "sa");
    let client = d.client().await;
    for (asked, want) in [(Some(60), 1800), (Some(100_000), 7200), (None, 3600)] {
        let mut body = json!({ "csr": csr(&key()) });
        if let Some(a) = asked {
            body["ttl_seconds"] = a.into();
        }
        let (status, _, body) = d.post(&client, Some(&token), &body).await;
        assert_eq!(status, 200, "{body}");
        let (_, window) = X509Certificate::from_der(
            &certs(body["certificate_chain"].as_str().expect("chain"))[0],
        )
        .map(|(r, c)| {
            let v = c.validity();
            (r.len(), v.not_after.timestamp() - v.not_before.timestamp())
        })
        .expect("parse");
        assert_eq!(
            window, want,
            "asked {asked:?}: the whole validity, NotBefore to NotAfter, is the lifetime"
        );
    }
}

#[tokio::test]
async fn a_csr_naming_the_identity_itself_is_accepted() {
    let d = TestDaemon::start("").await;
    let token = d.token("bookstore", "bookstore");
    let pem = csr_with(&key(), |p| {
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            "bookstore.bookstore.cluster.local",
        );
        p.subject_alt_names = vec![
            SanType::DnsName("bookstore.bookstore.cluster.local".try_into().expect("dns")),
            SanType::URI(
                "spiffe://cluster.local/ns/bookstore/sa/bookstore"
                    .try_into()
                    .expect("uri"),
            ),
        ];
    });
    let (status, _, body) = d
        .post(&d.client().await, Some(&token), &json!({ "csr": pem }))
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn malformed_pem_is_invalid_csr() {
    let d = TestDaemon::start("").await;
    let token = d.token("ns", "sa");
    let client = d.client().await;
    for bad in [
        "not a pem at all",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        "-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        let (status, _, body) = d.post(&client, Some(&token), &json!({ "csr": bad })).await;
        assert_error(status, &body, 400, "invalid_csr");
    }
}

#[tokio::test]
async fn a_csr_signed_by_another_key_is_invalid_csr() {
    let d = TestDaemon::start("").await;
    let token = d.token("ns", "sa");
    let pem = csr_signed_by_another_key(&key(), &key());
    let (status, _, body) = d
        .post(&d.client().await, Some(&token), &json!({ "csr": pem }))
        .await;
    assert_error(status, &body, 400, "invalid_csr");
    assert!(body["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("signature"));
}

#[tokio::test]
async fn a_csr_asking_for_a_ca_or_an_unknown_extension_is_invalid_csr() {
    let d = TestDaemon::start("").await;
    let token = d.token("ns", "sa");
    let client = d.client().await;
    let ca = csr_with(&key(), |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
    });
    let (status, _, body) = d.post(&client, Some(&token), &json!({ "csr": ca })).await;
    assert_error(status, &body, 400, "invalid_csr");
    assert!(body["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("CA"));

    let odd = csr_with(&key(), |p| {
        p.custom_extensions = vec![CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 99999, 1],
            vec![0x05, 0x00],
        )];
    });
    let (status, _, body) = d.post(&client, Some(&token), &json!({ "csr": odd })).await;
    assert_error(status, &body, 400, "invalid_csr");
}

#[tokio::test]
async fn a_csr_naming_someone_else_is_identity_mismatch() {
    let d = TestDaemon::start("").await;
    let token = d.token("bookstore", "bookstore");
    let client = d.client().await;
    let cases: [fn(&mut rcgen::CertificateParams); 4] = [
        |p| {
            p.subject_alt_names = vec![SanType::DnsName(
                "bookbuyer.bookbuyer.cluster.local".try_into().expect("dns"),
            )]
        },
        |p| {
            p.subject_alt_names = vec![SanType::URI(
                "spiffe://cluster.local/ns/bookstore/sa/admin"
                    .try_into()
                    .expect("uri"),
            )]
        },
        |p| p.subject_alt_names = vec![SanType::IpAddress("10.0.0.1".parse().expect("ip"))],
        |p| {
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "evil.example.com")
        },
    ];
    for edit in cases {
        let pem = csr_with(&key(), edit);
        let (status, _, body) = d.post(&client, Some(&token), &json!({ "csr": pem })).await;
        assert_error(status, &body, 403, "identity_mismatch");
    }
}

#[tokio::test]
async fn an_oversized_body_is_too_large() {
    let d = TestDaemon::start("").await;
    let token = d.token("ns", "sa");
    let big = "A".repeat(100 * 1024);
    let (status, _, body) = d
        .post(&d.client().await, Some(&token), &json!({ "csr": big }))
        .await;
    assert_error(status, &body, 413, "too_large");
}

#[tokio::test]
async fn a_body_that_is_not_json_is_refused() {
    let d = TestDaemon::start("").await;
    let token = d.token("ns", "sa");
    let client = d.client().await;
    let auth = format!("Bearer {token}");
    let (status, body) = d
        .post_raw(
            &client,
            &[("authorization", &auth), ("content-type", "text/plain")],
            &csr(&key()),
        )
        .await;
    assert_error(status, &body, 415, "unsupported_media_type");

    for bad in [
        "{not json",
        r#"{"csr": 5}"#,
        r#"{"csr": "x", "extra": 1}"#,
        r#"{"csr": "x", "ttl_seconds": 0}"#,
    ] {
        let (status, body) = d
            .post_raw(
                &client,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                bad,
            )
            .await;
        assert_error(status, &body, 400, "invalid_request");
    }
}

#[tokio::test]
async fn a_missing_or_unknown_token_is_unauthenticated() {
    let d = TestDaemon::start("").await;
    let client = d.client().await;
    let body = json!({ "csr": csr(&key()) });
    let (status, headers, b) = d.post(&client, None, &body).await;
    assert_error(status, &b, 401, "unauthenticated");
    assert!(headers.contains_key("www-authenticate"));
    let (status, _, b) = d
        .post(&client, Some("meshca_not-a-real-token"), &body)
        .await;
    assert_error(status, &b, 401, "unauthenticated");
    let (status, b) = d
        .post_raw(
            &client,
            &[
                ("authorization", "Basic dXNlcjpwYXNz"),
                ("content-type", "application/json"),
            ],
            &body.to_string(),
        )
        .await;
    assert_error(status, &b, 401, "unauthenticated");
}

#[tokio::test]
async fn a_valid_client_certificate_renews_the_same_identity_without_a_token() {
    let d = TestDaemon::start("").await;
    let token = d.token("bookstore", "bookstore");
    let k = key();
    let (_, _, first) = d
        .post(&d.client().await, Some(&token), &json!({ "csr": csr(&k) }))
        .await;
    let chain = first["certificate_chain"].as_str().expect("chain");
    let mtls = support::client(&d.bundle_pem().await, Some((chain, &k.serialize_pem())));

    let (status, _, renewed) = d.post(&mtls, None, &json!({ "csr": csr(&key()) })).await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["identity"], "bookstore.bookstore.cluster.local");
    assert_ne!(renewed["serial"], first["serial"]);

    let other = csr_with(&key(), |p| {
        p.subject_alt_names = vec![SanType::DnsName(
            "admin.kube-system.cluster.local".try_into().expect("dns"),
        )];
    });
    let (status, _, body) = d.post(&mtls, None, &json!({ "csr": other })).await;
    assert_error(status, &body, 403, "identity_mismatch");
}

#[tokio::test]
async fn an_expired_client_certificate_is_unauthenticated() {
    let d =
        TestDaemon::start("certificates: { default_ttl: 1h, min_ttl: 1s, max_ttl: 2h }\n").await;
    let token = d.token("bookstore", "bookstore");
    let k = key();
    let (status, _, first) = d
        .post(
            &d.client().await,
            Some(&token),
            &json!({ "csr": csr(&k), "ttl_seconds": 1 }),
        )
        .await;
    assert_eq!(status, 200, "{first}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let chain = first["certificate_chain"].as_str().expect("chain");
    let mtls = support::client(&d.bundle_pem().await, Some((chain, &k.serialize_pem())));
    let (status, _, body) = d.post(&mtls, None, &json!({ "csr": csr(&key()) })).await;
    assert_error(status, &body, 401, "unauthenticated");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("expired"),
        "{body}"
    );
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_unauthenticated() {
    let d = TestDaemon::start("").await;
    let foreign_ca_key = key();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&foreign_ca_key).expect("ca");
    let ca = rcgen::Issuer::new(ca_params, foreign_ca_key);
    let leaf_key = key();
    let mut leaf = rcgen::CertificateParams::default();
    leaf.subject_alt_names = vec![SanType::URI(
        "spiffe://cluster.local/ns/bookstore/sa/bookstore"
            .try_into()
            .expect("uri"),
    )];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = leaf.signed_by(&leaf_key, &ca).expect("leaf");
    let chain = format!("{}{}", leaf.pem(), ca_cert.pem());
    let mtls = support::client(
        &d.bundle_pem().await,
        Some((&chain, &leaf_key.serialize_pem())),
    );
    let (status, _, body) = d.post(&mtls, None, &json!({ "csr": csr(&key()) })).await;
    assert_error(status, &body, 401, "unauthenticated");
}

#[tokio::test]
async fn an_identity_beyond_its_rate_is_rate_limited_while_others_are_not() {
    let d = TestDaemon::start("api: { per_identity_per_second: 1, per_identity_burst: 3 }\n").await;
    let busy = d.token("ns", "busy");
    let quiet = d.token("ns", "quiet");
    let client = d.client().await;
    for _ in 0..3 {
        let (status, _, b) = d
            .post(&client, Some(&busy), &json!({ "csr": csr(&key()) }))
            .await;
        assert_eq!(status, 200, "{b}");
    }
    let (status, headers, b) = d
        .post(&client, Some(&busy), &json!({ "csr": csr(&key()) }))
        .await;
    assert_error(status, &b, 429, "rate_limited");
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("per_identity_per_second")),
        "says which limit: {b}"
    );
    let retry: u64 = headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    let (status, _, b) = d
        .post(&client, Some(&quiet), &json!({ "csr": csr(&key()) }))
        .await;
    assert_eq!(status, 200, "another identity is unaffected: {b}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, b) = d
        .post(&client, Some(&busy), &json!({ "csr": csr(&key()) }))
        .await;
    assert_eq!(status, 200, "the bucket refills: {b}");
}

#[tokio::test]
async fn the_bundle_health_and_metrics_endpoints_answer() {
    let d = TestDaemon::start("").await;
    let client = d.client().await;
    let resp = client.get(d.url("/v1/bundle")).send().await.expect("sent");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-pem-file");
    assert_eq!(resp.text().await.expect("text"), d.bundle_pem().await);

    let plain = reqwest::Client::new();
    let healthz = plain
        .get(d.metrics_url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(healthz.status(), 200);
    let mut ready = false;
    for _ in 0..50 {
        if plain
            .get(d.metrics_url("/readyz"))
            .send()
            .await
            .expect("readyz")
            .status()
            == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "ready once the bundle is published");

    let token = d.token("ns", "sa");
    d.post(&client, Some(&token), &json!({ "csr": csr(&key()) }))
        .await;
    d.post(&client, None, &json!({ "csr": csr(&key()) })).await;
    let metrics = plain
        .get(d.metrics_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .contains(r#"meshca_certificates_issued_total{frontend="api",provider="tresor",result="success"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"meshca_certificates_issued_total{frontend="api",provider="tresor",result="unauthenticated"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(r#"meshca_sign_duration_seconds_count{provider="tresor"}"#));
    let anchor = metrics
        .lines()
        .find(|l| l.starts_with("meshca_trust_anchor_expiry_timestamp_seconds{"))
        .expect("one series per anchor");
    assert!(
        anchor.contains(r#"subject="CN=meshca root CA, O=meshca""#)
            && anchor.contains("fingerprint=\""),
        "{anchor}"
    );
    let value = |name: &str| -> i64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing: {metrics}"))
    };
    let serving = value("meshca_serving_certificate_expiry_timestamp_seconds");
    let to_outage = value("meshca_time_to_outage_seconds");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (serving - now - to_outage).abs() <= 5,
        "the serving certificate expires first here: {to_outage} s vs {serving}"
    );
    assert_eq!(
        value("meshca_intermediate_expiry_timestamp_seconds"),
        0,
        "no intermediate"
    );
}

#[tokio::test]
async fn the_daemons_own_certificate_is_issued_by_its_provider_and_names_its_hosts() {
    let d = TestDaemon::start("").await;
    let bundle = d.bundle_pem().await;
    let roots = certs(&bundle);
    let mut store = rustls::RootCertStore::empty();
    store.add(roots[0].clone()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .expect("tls12")
    .with_root_certificates(store)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let addr = d.daemon.as_ref().expect("running").api_addr();
    for name in ["localhost", "127.0.0.1", "meshca.osm-system.cluster.local"] {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let server_name = rustls_pki_types::ServerName::try_from(name)
            .expect("name")
            .to_owned();
        let tls = connector
            .connect(server_name, tcp)
            .await
            .expect("TLS 1.2 handshake verifies the daemon");
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
    }
}

#[tokio::test]
async fn the_identity_endpoint_tells_an_authenticated_caller_who_it_is() {
    let d = TestDaemon::start("").await;
    let token = d.token("bookstore", "bookstore");
    let client = d.client().await;
    let resp = client
        .get(d.url("/v1/identity"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(
        body,
        json!({
            "identity": "bookstore.bookstore.cluster.local",
            "spiffe_id": "spiffe://cluster.local/ns/bookstore/sa/bookstore",
        })
    );
    let resp = client
        .get(d.url("/v1/identity"))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn the_daemons_serving_certificate_is_renewed_without_a_restart() {
    let d =
        TestDaemon::start("certificates: { default_ttl: 3s, min_ttl: 1s, max_ttl: 1h }\n").await;
    let bundle = d.bundle_pem().await;
    let addr = d.daemon.as_ref().expect("running").api_addr();
    let serial = || {
        let bundle = bundle.clone();
        async move {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(certs(&bundle)[0].clone()).expect("root");
            let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                .connect(
                    rustls_pki_types::ServerName::try_from("localhost")
                        .expect("name")
                        .to_owned(),
                    tcp,
                )
                .await
                .expect("handshake verifies");
            let leaf = tls.get_ref().1.peer_certificates().expect("certs")[0].clone();
            let (_, c) = X509Certificate::from_der(&leaf).expect("parse");
            c.raw_serial().to_vec()
        }
    };
    let first = serial().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if serial().await != first {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the serving certificate was never renewed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_a_certificate_as_the_readme_shows() {
    let d = TestDaemon::start("").await;
    let token = d.token("bookstore", "bookstore");
    let body = json!({ "csr": csr(&key()), "ttl_seconds": 3600 }).to_string();
    let (url, bundle) = (d.url("/v1/certificates"), d.bundle_path());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--fail-with-body", "--tlsv1.2", "--cacert"])
            .arg(&bundle)
            .args([
                "-H",
                &format!("Authorization: Bearer {token}"),
                "-H",
                "Content-Type: application/json",
                "--data",
                &body,
                &url,
            ])
            .output()
            .expect("curl runs (.ci/run installs it)")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(answer["identity"], "bookstore.bookstore.cluster.local");

    // TLS 1.1 is refused at the handshake.
    let url = d.url("/v1/bundle");
    let old = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "-k", "--tlsv1.1", "--tls-max", "1.1", &url])
            .output()
            .expect("curl")
    })
    .await
    .expect("join");
    assert!(!old.status.success(), "TLS 1.1 must not be negotiated");
}

/// The SubjectPublicKeyInfo of `key` with its algorithm identifier's
/// parameters replaced by `parameters` (DER, possibly empty).
fn spki_with_parameters(key: &rcgen::KeyPair, algorithm_oid: &[u8], parameters: &[u8]) -> Vec<u8> {
    use rcgen::PublicKeyData;
    let mut alg = support::der(0x06, algorithm_oid);
    alg.extend(parameters);
    let mut bits = vec![0u8];
    bits.extend(key.der_bytes());
    let mut spki = support::der(0x30, &alg);
    spki.extend(support::der(0x03, &bits));
    support::der(0x30, &spki)
}

const RSA_ENCRYPTION: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const SHA256_WITH_RSA: [u8; 15] = [
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00,
];
const ED25519: [u8; 3] = [0x2b, 0x65, 0x70];
const ED25519_SIGNATURE: [u8; 7] = [0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];

#[tokio::test]
async fn keys_in_a_non_canonical_encoding_are_invalid_csr_not_a_provider_failure() {
    let d = TestDaemon::start("").await;
    let token = d.token("bookstore", "bookstore");
    let client = d.client().await;
    let (rsa, _) = support::rsa_key();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
    for (what, pem, needle) in [
        (
            "RSA without NULL parameters",
            support::csr_from_parts(
                &rsa,
                &spki_with_parameters(&rsa, &RSA_ENCRYPTION, &[]),
                &[],
                &SHA256_WITH_RSA,
            ),
            "NULL",
        ),
        (
            "Ed25519 with parameters",
            support::csr_from_parts(
                &ed,
                &spki_with_parameters(&ed, &ED25519, &[0x05, 0x00]),
                &[],
                &ED25519_SIGNATURE,
            ),
            "Ed25519",
        ),
    ] {
        let (status, headers, body) = d.post(&client, Some(&token), &json!({ "csr": pem })).await;
        assert_error(status, &body, 400, "invalid_csr");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle)),
            "{what}: {body}"
        );
        assert!(!headers.contains_key("retry-after"), "{what}");
    }
    // The canonical encodings are fine.
    for pem in [
        support::csr_from_parts(
            &rsa,
            &spki_with_parameters(&rsa, &RSA_ENCRYPTION, &[0x05, 0x00]),
            &[],
            &SHA256_WITH_RSA,
        ),
        support::csr_from_parts(
            &ed,
            &spki_with_parameters(&ed, &ED25519, &[]),
            &[],
            &ED25519_SIGNATURE,
        ),
    ] {
        let (status, _, body) = d.post(&client, Some(&token), &json!({ "csr": pem })).await;
        assert_eq!(status, 200, "{body}");
    }
    let metrics = d.metrics().await;
    assert!(
        !metrics.contains("result=\"provider_unavailable\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn sha1_signatures_doubled_extension_requests_and_two_pem_blocks_are_refused() {
    let d = TestDaemon::start("").await;
    let token = d.token("bookstore", "bookstore");
    let client = d.client().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, rsa_pem) = support::rsa_key();
    std::fs::write(dir.path().join("k.pem"), &rsa_pem).expect("key file");
    let out = std::process::Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "req",
            "-new",
            "-sha1",
            "-key",
            "k.pem",
            "-subj",
            "/CN=bookstore.bookstore.cluster.local",
        ])
        .output()
        .expect("openssl req");
    let sha1 = String::from_utf8(out.stdout).expect("pem");
    assert!(
        sha1.contains("BEGIN CERTIFICATE REQUEST"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // extensionRequest { SET { Extensions(empty), Extensions(empty) } }
    let ext_req_oid = support::der(
        0x06,
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e],
    );
    let empty = support::der(0x30, &[]);
    let mut values = empty.clone();
    values.extend(empty);
    let mut attribute = ext_req_oid;
    attribute.extend(support::der(0x31, &values));
    let k = key();
    let doubled = support::csr_from_parts(
        &k,
        &rcgen::PublicKeyData::subject_public_key_info(&k),
        &support::der(0x30, &attribute),
        &[
            0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
        ],
    );
    let two_blocks = format!("{}{}", csr(&key()), csr(&key()));
    for (what, pem, needle) in [
        ("sha1WithRSA", sha1, "sha1"),
        (
            "two extensionRequest values",
            doubled,
            "more than one value",
        ),
        ("two PEM blocks", two_blocks, "exactly one"),
    ] {
        let (status, _, body) = d.post(&client, Some(&token), &json!({ "csr": pem })).await;
        assert_error(status, &body, 400, "invalid_csr");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.to_lowercase().contains(needle)),
            "{what}: {body}"
        );
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_two_authorization_headers_are_refused() {
    let d = TestDaemon::start("").await;
    let token = d.token("bookstore", "bookstore");
    let client = d.client().await;
    let body = json!({ "csr": csr(&key()) }).to_string();
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let value = format!("{scheme} {token}");
        let (status, b) = d
            .post_raw(
                &client,
                &[
                    ("authorization", &value),
                    ("content-type", "application/json"),
                ],
                &body,
            )
            .await;
        assert_eq!(status, 200, "{scheme}: {b}");
    }
    // The first header would be valid: neither of two may win silently.
    let good = format!("Bearer {token}");
    let (status, b) = d
        .post_raw(
            &client,
            &[
                ("authorization", &good),
                ("authorization", "Bearer meshca_someone-else"),
                ("content-type", "application/json"),
            ],
            &body,
        )
        .await;
    assert_error(status, &b, 401, "unauthenticated");
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("exactly one")),
        "{b}"
    );
}

/// Send `head` and `body` over a fresh TLS connection, all of it before
/// reading a byte, as Python's `requests` does; then read the answer.
async fn write_all_then_read(d: &TestDaemon, head: &str, body: &[u8]) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    support::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&d.bundle_pem().await) {
        roots.add(c).expect("anchor");
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(d.daemon.as_ref().expect("running").api_addr())
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake");
    tls.write_all(head.as_bytes()).await.expect("head");
    tls.write_all(body).await.expect("the whole body is taken");
    tls.flush().await.expect("flush");
    // Read the head, then exactly the body it announces.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let complete = |a: &[u8]| {
        let text = String::from_utf8_lossy(a);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })?
            .parse()
            .ok()?;
        (body.len() >= length).then(|| (head.to_owned(), body[..length].to_owned()))
    };
    let (head, json) = loop {
        if let Some(done) = complete(&answer) {
            break done;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(
            n > 0,
            "the connection closed before the answer: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status: {head:?}"));
    (
        status,
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json:?}")),
    )
}

#[tokio::test]
async fn a_client_that_writes_a_whole_oversized_body_before_reading_gets_the_json_answer() {
    let d = TestDaemon::start("").await;
    let token = d.token("bookstore", "bookstore");
    let body = vec![b'x'; 8 * 1024 * 1024];
    for (auth, want, code) in [
        (
            format!("Authorization: Bearer {token}\r\n"),
            413,
            "too_large",
        ),
        (String::new(), 401, "unauthenticated"),
    ] {
        let head = format!(
            "POST /v1/certificates HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n",
            body.len()
        );
        let (status, b) = write_all_then_read(&d, &head, &body).await;
        assert_error(status, &b, want, code);
    }
}
