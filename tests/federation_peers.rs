//! Federation peers that misbehave: a bundle endpoint that redirects to
//! plain HTTP or elsewhere, answers more than any bundle is, or serves a
//! key that is not a key. `a.test` fetches `b.test`'s bundle over
//! `https_spiffe` from a peer played by this test (its own CA and an
//! endpoint certificate with `b.test`'s SPIFFE ID), and an attacker's plain
//! HTTP server counts every request that reaches it. meshca keeps the last
//! good bundle, counts each refusal, and never leaves the authenticated
//! endpoint.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use meshca_test_support as support;
use serde_json::{json, Value};
use support::TestDaemon;

const ENDPOINT_ID: &str = "spiffe://b.test/ns/mesh/sa/bundle-endpoint";

/// A CA of `b.test`, as a SPIFFE bundle entry, and what signs under it.
fn ca(name: &str) -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://b.test".try_into().expect("uri"),
    )];
    let der = params.self_signed(&key).expect("cert").der().to_vec();
    (rcgen::Issuer::new(params, key), STANDARD.encode(der))
}

fn bundle(authorities: &[&str], extra_keys: &[Value], sequence: u64) -> Value {
    let mut keys: Vec<Value> = authorities
        .iter()
        .map(|a| json!({ "use": "x509-svid", "kty": "EC", "x5c": [a] }))
        .collect();
    keys.extend_from_slice(extra_keys);
    json!({ "keys": keys, "spiffe_sequence": sequence, "spiffe_refresh_hint": 30 })
}

/// What the peer's endpoint answers.
#[derive(Clone)]
enum Answer {
    Bundle(Value),
    Redirect(String),
    Bytes(usize),
}

fn answer(a: &Answer) -> Response {
    match a {
        Answer::Bundle(b) => {
            ([("content-type", "application/json")], b.to_string()).into_response()
        }
        Answer::Redirect(to) => (
            axum::http::StatusCode::FOUND,
            [("location", to.as_str())],
            "",
        )
            .into_response(),
        Answer::Bytes(n) => "x".repeat(*n).into_response(),
    }
}

async fn fetches(d: &TestDaemon, result: &str) -> f64 {
    let metrics = d.metrics().await;
    let prefix = format!(
        "meshca_federated_bundle_fetches_total{{trust_domain=\"b.test\",result=\"{result}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The `x5c` of every authority `a.test` serves for `b.test`, and its
/// sequence.
async fn held(d: &TestDaemon) -> (Vec<String>, Value) {
    let url = d.url("/v1/bundle/spiffe?trust_domain=b.test");
    let held: Value = d
        .client()
        .await
        .get(url)
        .send()
        .await
        .expect("bundle")
        .json()
        .await
        .expect("json");
    let authorities = held["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .map(|k| k["x5c"][0].as_str().expect("x5c").to_owned())
        .collect();
    (authorities, held["spiffe_sequence"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_redirect_oversize_or_poison_its_way_into_the_bundle() {
    support::install_crypto_provider();
    let (peer_ca, peer_ca_b64) = ca("b.test root");
    let (_, attacker_b64) = ca("ATTACKER CA");

    // The peer's endpoint certificate: b.test's endpoint SPIFFE ID.
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    params
        .subject_alt_names
        .push(rcgen::SanType::URI(ENDPOINT_ID.try_into().expect("uri")));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = params
        .signed_by(&key, &peer_ca)
        .expect("leaf")
        .der()
        .clone();

    let serving = Arc::new(Mutex::new(Answer::Bundle(bundle(&[&peer_ca_b64], &[], 2))));
    let router = {
        let serving = serving.clone();
        axum::Router::new().route(
            "/bundle",
            get(move || {
                let a = serving.lock().expect("lock").clone();
                async move { answer(&a) }
            }),
        )
    };
    let port = support::abuse::https_server(router, vec![leaf], key.serialize_der()).await;

    // The attacker's plain HTTP server, serving its own CA with a higher
    // sequence, and counting.
    let hits = Arc::new(AtomicUsize::new(0));
    let poisoned = bundle(&[&peer_ca_b64, &attacker_b64], &[], 100);
    let plain = {
        let hits = hits.clone();
        support::abuse::http_server(axum::Router::new().fallback(move || {
            hits.fetch_add(1, Ordering::SeqCst);
            let p = poisoned.clone();
            async move { answer(&Answer::Bundle(p)) }
        }))
        .await
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let initial = dir.path().join("b.test.json");
    std::fs::write(&initial, bundle(&[&peer_ca_b64], &[], 1).to_string()).expect("write");
    let mut a = TestDaemon::start_in(
        dir,
        &format!(
            "trust_domain: a.test\nfederation:\n  trust_domains:\n  - {{ trust_domain: b.test, bundle_endpoint_url: 'https://127.0.0.1:{port}/bundle', profile: https_spiffe, endpoint_spiffe_id: '{ENDPOINT_ID}', bundle_file: {} }}\n",
            initial.display()
        ),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while fetches(&a, "ok").await < 1.0 {
        assert!(Instant::now() < deadline, "{}", a.metrics().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let good = held(&a).await;
    assert_eq!(good, (vec![peer_ca_b64.clone()], json!(2)));

    let unusable_jwt_key = json!({ "use": "jwt-svid", "kty": "EC", "crv": "P-256", "kid": "k1", "x": "AAAA", "y": "AAAA" });
    let cases = [
        (
            "a redirect to plain HTTP",
            Answer::Redirect(format!("http://127.0.0.1:{plain}/index.json")),
        ),
        (
            "a redirect to another HTTPS path of the same endpoint",
            Answer::Redirect(format!("https://127.0.0.1:{port}/bundle?again")),
        ),
        ("an answer of 2 MiB", Answer::Bytes(2 << 20)),
        (
            "a key that is not a point on its curve",
            Answer::Bundle(bundle(&[&peer_ca_b64], &[unusable_jwt_key], 3)),
        ),
    ];
    for (what, bad) in cases {
        *serving.lock().expect("lock") = bad;
        // A restart fetches at once (and counts from zero).
        a.restart().await;
        let deadline = Instant::now() + Duration::from_secs(15);
        while fetches(&a, "refused").await < 1.0 {
            assert!(
                Instant::now() < deadline,
                "{what}: not refused\n{}",
                a.metrics().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(held(&a).await, good, "{what}: the last good bundle is kept");
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "{what}: the plain hop was never asked"
        );
    }
}
