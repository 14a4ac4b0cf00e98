//! The Kubernetes API stand-in refuses what kube-apiserver refuses, with
//! the same status code and reason, as kube-rs (meshca's client) sees it:
//! one test per rule of each object meshca reads or writes, so that the
//! stand-in cannot drift back to accepting everything. The rules are
//! kube-apiserver's (`pkg/apis/*/validation`, KEP-4317); the list is in
//! `docs/ARCHITECTURE.md` (Tests).

use meshca_test_support as support;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::Api;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PublicKeyData};
use serde_json::{json, Value};
use support::kube::KubeStandIn;
use time::OffsetDateTime;

const SIGNER: &str = "meshca.io/workload";

async fn client(kube: &KubeStandIn) -> kube::Client {
    kube.client().await
}

async fn resource(
    kube: &KubeStandIn,
    gvk: (&str, &str, &str),
    plural: &str,
    ns: Option<&str>,
) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(gvk.0, gvk.1, gvk.2), plural);
    match ns {
        Some(ns) => Api::namespaced_with(client(kube).await, ns, &ar),
        None => Api::all_with(client(kube).await, &ar),
    }
}

async fn pcrs(kube: &KubeStandIn) -> Api<DynamicObject> {
    resource(
        kube,
        ("certificates.k8s.io", "v1", "PodCertificateRequest"),
        "podcertificaterequests",
        Some("shop"),
    )
    .await
}

async fn ctbs(kube: &KubeStandIn) -> Api<DynamicObject> {
    resource(
        kube,
        ("certificates.k8s.io", "v1", "ClusterTrustBundle"),
        "clustertrustbundles",
        None,
    )
    .await
}

fn object(body: Value) -> DynamicObject {
    serde_json::from_value(body).expect("an object")
}

/// The API server's refusal of `result`: status code, reason, message.
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (u16, String, String) {
    match result {
        Err(kube::Error::Api(s)) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected the API server to refuse, got {other:?}"),
    }
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, kube::Error>, needle: &str) {
    let (code, reason, message) = refusal(result);
    assert_eq!((code, reason.as_str()), (422, "Invalid"), "{message}");
    assert!(message.contains(needle), "{needle:?} not in {message}");
}

// === PodCertificateRequest ===

struct Stub {
    der: Vec<u8>,
    key: KeyPair,
}

fn stub(key_type: &str) -> Stub {
    let (der, key_pem) = support::kubelet_stub_csr(key_type);
    Stub {
        der,
        key: KeyPair::from_pem(&key_pem).expect("key"),
    }
}

fn pcr(name: &str, signer: &str, stub: &[u8], max: Option<i64>) -> Value {
    let mut spec = json!({
        "signerName": signer, "podName": name, "podUID": format!("uid-{name}"),
        "serviceAccountName": "web", "serviceAccountUID": "uid-web",
        "nodeName": "node-1", "nodeUID": "uid-node-1",
        "stubPKCS10Request": STANDARD.encode(stub),
    });
    if let Some(m) = max {
        spec["maxExpirationSeconds"] = json!(m);
    }
    json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "PodCertificateRequest",
        "metadata": { "name": name, "namespace": "shop" }, "spec": spec,
    })
}

async fn standin() -> KubeStandIn {
    let kube = KubeStandIn::start().await;
    kube.create_namespace("shop");
    kube
}

#[tokio::test]
async fn a_pod_certificate_request_gets_the_default_lifetime_and_a_bounded_one() {
    let kube = standin().await;
    let api = pcrs(&kube).await;
    let s = stub("ECDSAP256");
    let created = api
        .create(
            &PostParams::default(),
            &object(pcr("a", SIGNER, &s.der, None)),
        )
        .await
        .expect("created");
    assert_eq!(
        created.data["spec"]["maxExpirationSeconds"], 86_400,
        "defaulted"
    );
    for (name, max, ok) in [
        ("b", 3599, false),
        ("c", 3600, true),
        ("d", 7_862_400, true),
        ("e", 7_862_401, false),
    ] {
        let r = api
            .create(
                &PostParams::default(),
                &object(pcr(name, SIGNER, &s.der, Some(max))),
            )
            .await;
        if ok {
            r.expect("in range");
        } else {
            assert_invalid(r, "spec.maxExpirationSeconds");
        }
    }
    // kubernetes.io signers are held to a day.
    let r = api
        .create(
            &PostParams::default(),
            &object(pcr(
                "f",
                "kubernetes.io/kube-apiserver-client-pod",
                &s.der,
                Some(86_401),
            )),
        )
        .await;
    assert_invalid(r, "[3600, 86400]");
}

#[tokio::test]
async fn a_pod_certificate_request_needs_a_verifiable_stub_csr_of_a_kubelet_key_type() {
    let kube = standin().await;
    let api = pcrs(&kube).await;
    let garbage = api
        .create(
            &PostParams::default(),
            &object(pcr("a", SIGNER, b"junk", None)),
        )
        .await;
    assert_invalid(garbage, "spec.stubPKCS10Request");
    // RSA 2048 is no kubelet key type.
    let (rsa, _) = support::rsa_key();
    let csr = CertificateParams::default()
        .serialize_request(&rsa)
        .expect("csr");
    let r = api
        .create(
            &PostParams::default(),
            &object(pcr("b", SIGNER, csr.der(), None)),
        )
        .await;
    assert_invalid(r, "3072 or 4096");
    // A CSR whose signature does not verify.
    let mut forged = stub("ECDSAP256").der;
    let last = forged.len() - 2;
    forged[last] ^= 0x55;
    let r = api
        .create(
            &PostParams::default(),
            &object(pcr("c", SIGNER, &forged, None)),
        )
        .await;
    assert_invalid(r, "spec.stubPKCS10Request");
}

#[tokio::test]
async fn a_pod_certificate_request_needs_valid_names_and_an_immutable_spec() {
    let kube = standin().await;
    let api = pcrs(&kube).await;
    let s = stub("ED25519");
    for signer in ["meshca.io/a/b", "meshca/workload", "meshca.io/Work_load"] {
        let r = api
            .create(
                &PostParams::default(),
                &object(pcr("x", signer, &s.der, None)),
            )
            .await;
        assert_invalid(r, "spec.signerName");
    }
    let mut bad = pcr("y", SIGNER, &s.der, None);
    bad["spec"]["serviceAccountName"] = json!("Web");
    assert_invalid(
        api.create(&PostParams::default(), &object(bad)).await,
        "spec.serviceAccountName",
    );
    let mut bad = pcr("y", SIGNER, &s.der, None);
    bad["spec"]["podUID"] = json!("");
    assert_invalid(
        api.create(&PostParams::default(), &object(bad)).await,
        "spec.podUID",
    );
    let mut bad = pcr("y", SIGNER, &s.der, None);
    bad["spec"]["unverifiedUserAnnotations"] = json!({ "role": "admin" });
    assert_invalid(
        api.create(&PostParams::default(), &object(bad)).await,
        "domain-prefixed",
    );

    let mut created = api
        .create(
            &PostParams::default(),
            &object(pcr("z", SIGNER, &s.der, None)),
        )
        .await
        .expect("created");
    created.data["spec"]["podName"] = json!("other");
    assert_invalid(
        api.replace("z", &PostParams::default(), &created).await,
        "field is immutable",
    );
}

/// A test CA that signs leaves for a stub CSR's key with chosen times.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca() -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "stand-in test CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let pem = p.self_signed(&key).expect("ca").pem();
    Ca {
        issuer: Issuer::new(p, key),
        pem,
    }
}

fn leaf(ca: &Ca, key: &impl PublicKeyData, not_before: OffsetDateTime, lifetime: i64) -> String {
    let mut p = CertificateParams::new(vec!["web.shop.cluster.local".into()]).expect("params");
    p.not_before = not_before;
    p.not_after = not_before + time::Duration::seconds(lifetime);
    p.signed_by(key, &ca.issuer).expect("leaf").pem()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .expect("whole seconds")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

fn condition(kind: &str, reason: &str) -> Value {
    json!({ "type": kind, "status": "True", "reason": reason, "message": "m", "lastTransitionTime": rfc3339(OffsetDateTime::now_utc()) })
}

/// An Issued status for `chain`, whose times are `nb` to `nb + lifetime`,
/// refreshing `refresh` seconds after `nb`.
fn issued(chain: String, nb: OffsetDateTime, lifetime: i64, refresh: i64) -> Value {
    json!({
        "certificateChain": chain,
        "notBefore": rfc3339(nb),
        "notAfter": rfc3339(nb + time::Duration::seconds(lifetime)),
        "beginRefreshAt": rfc3339(nb + time::Duration::seconds(refresh)),
        "conditions": [condition("Issued", "Issued")],
    })
}

/// Create a request for `stub` with `max`, then try `status` on it.
async fn write_status(
    api: &Api<DynamicObject>,
    name: &str,
    stub: &Stub,
    max: i64,
    status: Value,
) -> Result<DynamicObject, kube::Error> {
    let mut created = api
        .create(
            &PostParams::default(),
            &object(pcr(name, SIGNER, &stub.der, Some(max))),
        )
        .await
        .expect("created");
    created.data["status"] = status;
    api.replace_status(name, &PostParams::default(), &created)
        .await
}

#[tokio::test]
async fn an_issued_status_must_fit_max_expiration_seconds_backdate_included() {
    let kube = standin().await;
    let api = pcrs(&kube).await;
    let ca = ca();
    let s = stub("ECDSAP256");
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("seconds");
    let nb = now - Duration::from_secs(60);
    let day = 86_400;
    // A day asked for, a day plus the backdate given: what meshca did.
    let r = write_status(
        &api,
        "over",
        &s,
        day,
        issued(leaf(&ca, &s.key, nb, day + 60), nb, day + 60, 3600),
    )
    .await;
    assert_invalid(
        r,
        "leaf certificate lifetime must be <= spec.maxExpirationSeconds (86400)",
    );
    let r = write_status(
        &api,
        "short",
        &s,
        day,
        issued(leaf(&ca, &s.key, nb, 3599), nb, 3599, 1200),
    )
    .await;
    assert_invalid(r, ">= 1 hour");
    let ok = write_status(
        &api,
        "exact",
        &s,
        day,
        issued(leaf(&ca, &s.key, nb, day), nb, day, 3600),
    )
    .await;
    ok.expect("a window of exactly maxExpirationSeconds is accepted");
    let ok = write_status(
        &api,
        "hour",
        &s,
        3600,
        issued(leaf(&ca, &s.key, nb, 3600), nb, 3600, 1200),
    )
    .await;
    ok.expect("an hour for an hour");
}

#[tokio::test]
async fn an_issued_status_must_match_its_leaf_and_the_clock() {
    let kube = standin().await;
    let api = pcrs(&kube).await;
    let ca = ca();
    let s = stub("ECDSAP384");
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("seconds");
    let nb = now - Duration::from_secs(60);
    let h = 7200;
    let mut wrong_nb = issued(leaf(&ca, &s.key, nb, h), nb, h, 3600);
    wrong_nb["notBefore"] = json!(rfc3339(nb + Duration::from_secs(1)));
    assert_invalid(
        write_status(&api, "a", &s, h, wrong_nb).await,
        "status.notBefore",
    );
    let mut wrong_na = issued(leaf(&ca, &s.key, nb, h), nb, h, 3600);
    wrong_na["notAfter"] = json!(rfc3339(nb + Duration::from_secs(7199)));
    assert_invalid(
        write_status(&api, "b", &s, h, wrong_na).await,
        "status.notAfter",
    );
    let old = now - Duration::from_secs(301);
    assert_invalid(
        write_status(
            &api,
            "c",
            &s,
            h,
            issued(leaf(&ca, &s.key, old, h), old, h, 3600),
        )
        .await,
        "within 5 minutes",
    );
    assert_invalid(
        write_status(
            &api,
            "d",
            &s,
            h,
            issued(leaf(&ca, &s.key, nb, h), nb, h, 599),
        )
        .await,
        "10 minutes after",
    );
    assert_invalid(
        write_status(
            &api,
            "e",
            &s,
            h,
            issued(leaf(&ca, &s.key, nb, h), nb, h, h - 599),
        )
        .await,
        "10 minutes before",
    );
    let other = KeyPair::generate().expect("key");
    assert_invalid(
        write_status(
            &api,
            "f",
            &s,
            h,
            issued(leaf(&ca, &other, nb, h), nb, h, 3600),
        )
        .await,
        "not issued to the requested public key",
    );
    let mut junk = issued(leaf(&ca, &s.key, nb, h), nb, h, 3600);
    junk["certificateChain"] = json!("not PEM");
    assert_invalid(
        write_status(&api, "g", &s, h, junk).await,
        "status.certificateChain",
    );
    let mut huge = issued(
        format!("{}{}", leaf(&ca, &s.key, nb, h), ca.pem.repeat(200)),
        nb,
        h,
        3600,
    );
    huge["conditions"] = json!([condition("Issued", "Issued")]);
    assert_invalid(write_status(&api, "h", &s, h, huge).await, "Too long");
}

#[tokio::test]
async fn a_status_has_one_final_condition_and_is_immutable_once_answered() {
    let kube = standin().await;
    let api = pcrs(&kube).await;
    let ca = ca();
    let s = stub("RSA3072");
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("seconds");
    let two = json!({ "conditions": [condition("Denied", "X"), condition("Failed", "Y")] });
    assert_invalid(
        write_status(&api, "a", &s, 3600, two).await,
        "at most one condition",
    );
    let other = json!({ "conditions": [condition("Ready", "X")] });
    assert_invalid(
        write_status(&api, "b", &s, 3600, other).await,
        "Unsupported value",
    );
    let bad_reason = json!({ "conditions": [condition("Denied", "no spaces allowed")] });
    assert_invalid(
        write_status(&api, "c", &s, 3600, bad_reason).await,
        "reason",
    );
    let denied_with_chain =
        json!({ "certificateChain": ca.pem, "conditions": [condition("Denied", "X")] });
    assert_invalid(
        write_status(&api, "d", &s, 3600, denied_with_chain).await,
        "must be empty when denying",
    );
    let pending = json!({ "notBefore": rfc3339(now) });
    assert_invalid(
        write_status(&api, "e", &s, 3600, pending).await,
        "status is immutable unless transitioning",
    );

    // Answered once; a second answer, even the same kind, is refused.
    let mut failed = write_status(
        &api,
        "f",
        &s,
        3600,
        json!({ "conditions": [condition("Failed", "X")] }),
    )
    .await
    .expect("answered");
    failed.data["status"]["conditions"] = json!([condition("Failed", "Y")]);
    let again = api
        .replace_status("f", &PostParams::default(), &failed)
        .await;
    assert_invalid(
        again,
        "immutable after PodCertificateRequest is issued, denied, or failed",
    );
}

#[tokio::test]
async fn pod_certificate_requests_are_selectable_only_by_the_fields_the_api_server_supports() {
    let kube = standin().await;
    let api = pcrs(&kube).await;
    let s = stub("ECDSAP256");
    api.create(
        &PostParams::default(),
        &object(pcr("a", SIGNER, &s.der, None)),
    )
    .await
    .expect("created");
    for ok in [
        format!("spec.signerName={SIGNER}"),
        "spec.podName=a".into(),
        "spec.nodeName=node-1".into(),
        "metadata.name=a".into(),
    ] {
        let listed = api
            .list(&ListParams::default().fields(&ok))
            .await
            .expect(&ok);
        assert_eq!(listed.items.len(), 1, "{ok}");
    }
    let (code, reason, message) = refusal(
        api.list(&ListParams::default().fields("spec.serviceAccountName=web"))
            .await,
    );
    assert_eq!((code, reason.as_str()), (400, "BadRequest"));
    assert!(
        message.contains("field label not supported: spec.serviceAccountName"),
        "{message}"
    );
    let secrets = resource(&kube, ("", "v1", "Secret"), "secrets", Some("shop")).await;
    secrets
        .list(&ListParams::default().fields("type=kubernetes.io/tls"))
        .await
        .expect("Secrets by type");
    let configmaps = resource(&kube, ("", "v1", "ConfigMap"), "configmaps", Some("shop")).await;
    let (code, ..) = refusal(
        configmaps
            .list(&ListParams::default().fields("data.x=y"))
            .await,
    );
    assert_eq!(code, 400);
}

// === ClusterTrustBundle ===

fn ctb(name: &str, signer: Option<&str>, bundle: &str) -> Value {
    let mut spec = json!({ "trustBundle": bundle });
    if let Some(s) = signer {
        spec["signerName"] = json!(s);
    }
    json!({ "apiVersion": "certificates.k8s.io/v1", "kind": "ClusterTrustBundle", "metadata": { "name": name }, "spec": spec })
}

#[tokio::test]
async fn a_cluster_trust_bundle_is_named_after_its_signer_which_never_changes() {
    let kube = KubeStandIn::start().await;
    let api = ctbs(&kube).await;
    let pem = ca().pem;
    let wrong = api
        .create(
            &PostParams::default(),
            &object(ctb("trust-bundle", Some(SIGNER), &pem)),
        )
        .await;
    assert_invalid(wrong, "must be named with prefix meshca.io:workload:");
    let colon = api
        .create(&PostParams::default(), &object(ctb("a:b", None, &pem)))
        .await;
    assert_invalid(colon, "must not have \":\"");
    let mut created = api
        .create(
            &PostParams::default(),
            &object(ctb("meshca.io:workload:trust-bundle", Some(SIGNER), &pem)),
        )
        .await
        .expect("created");
    created.data["spec"]["signerName"] = json!("meshca.io/other");
    let r = api
        .replace(
            "meshca.io:workload:trust-bundle",
            &PostParams::default(),
            &created,
        )
        .await;
    assert_invalid(r, "field is immutable");
}

#[tokio::test]
async fn a_cluster_trust_bundle_holds_only_distinct_ca_certificates_and_at_most_a_mebibyte() {
    let kube = KubeStandIn::start().await;
    let api = ctbs(&kube).await;
    let a = ca().pem;
    let key = KeyPair::generate().expect("key");
    let not_ca = CertificateParams::new(vec!["leaf.example".into()])
        .expect("p")
        .self_signed(&key)
        .expect("leaf")
        .pem();
    for (name, bundle, needle) in [
        ("leaf", not_ca.clone(), "does not have the CA bit set"),
        ("dup", format!("{a}{a}"), "duplicate trust anchor"),
        ("empty", String::new(), "at least one trust anchor"),
        ("key", key.serialize_pem(), "bad block type"),
        ("big", a.repeat(1024 * 1024 / a.len() + 1), "Too long"),
    ] {
        let r = api
            .create(&PostParams::default(), &object(ctb(name, None, &bundle)))
            .await;
        assert_invalid(r, needle);
    }
    let b = ca().pem;
    api.create(
        &PostParams::default(),
        &object(ctb("two", None, &format!("{a}{b}"))),
    )
    .await
    .expect("two distinct CAs");
}

// === Secret, ConfigMap ===

fn secret(name: &str, kind: Option<&str>, data: Value) -> Value {
    let mut s = json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name, "namespace": "shop" }, "data": data });
    if let Some(k) = kind {
        s["type"] = json!(k);
    }
    s
}

#[tokio::test]
async fn a_secret_follows_its_type_its_key_names_and_the_size_limit() {
    let kube = standin().await;
    let api = resource(&kube, ("", "v1", "Secret"), "secrets", Some("shop")).await;
    let b64 = |s: &str| STANDARD.encode(s);
    let tls_without_key = secret(
        "a",
        Some("kubernetes.io/tls"),
        json!({ "tls.crt": b64("c") }),
    );
    assert_invalid(
        api.create(&PostParams::default(), &object(tls_without_key))
            .await,
        "data[tls.key]: Required value",
    );
    let bad_key = secret("b", None, json!({ "a/b": b64("x") }));
    assert_invalid(
        api.create(&PostParams::default(), &object(bad_key)).await,
        "data[a/b]",
    );
    let big = secret(
        "c",
        None,
        json!({ "big": STANDARD.encode(vec![0u8; 1024 * 1024 + 1]) }),
    );
    assert_invalid(
        api.create(&PostParams::default(), &object(big)).await,
        "Too long",
    );
    let bad_name = secret("Upper", None, json!({}));
    assert_invalid(
        api.create(&PostParams::default(), &object(bad_name)).await,
        "metadata.name",
    );
    let bad_label = json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "d", "labels": { "a": "not ok" } } });
    assert_invalid(
        api.create(&PostParams::default(), &object(bad_label)).await,
        "metadata.labels",
    );

    let mut created = api
        .create(&PostParams::default(), &object(json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "e" }, "stringData": { "ca.crt": "pem" } })))
        .await
        .expect("created");
    assert_eq!(created.data["type"], "Opaque", "defaulted");
    assert_eq!(
        created.data["data"]["ca.crt"],
        b64("pem"),
        "stringData is merged into data"
    );
    assert!(created.data.get("stringData").is_none());
    created.data["type"] = json!("kubernetes.io/tls");
    created.data["data"] = json!({ "tls.crt": b64("c"), "tls.key": b64("k") });
    assert_invalid(
        api.replace("e", &PostParams::default(), &created).await,
        "type: Invalid value: field is immutable",
    );
}

#[tokio::test]
async fn a_config_map_follows_its_key_names_and_the_size_limit() {
    let kube = standin().await;
    let api = resource(&kube, ("", "v1", "ConfigMap"), "configmaps", Some("shop")).await;
    let cm = |name: &str, data: Value, binary: Value| json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": name }, "data": data, "binaryData": binary });
    assert_invalid(
        api.create(
            &PostParams::default(),
            &object(cm("a", json!({ "a b": "x" }), json!({}))),
        )
        .await,
        "data[a b]",
    );
    let big = cm("b", json!({ "x": "y".repeat(1024 * 1024 + 1) }), json!({}));
    assert_invalid(
        api.create(&PostParams::default(), &object(big)).await,
        "Too long",
    );
    let dup = cm(
        "c",
        json!({ "x": "y" }),
        json!({ "x": STANDARD.encode("z") }),
    );
    assert_invalid(
        api.create(&PostParams::default(), &object(dup)).await,
        "duplicate",
    );
}

// === events.k8s.io/v1 Event ===

fn event(name: &str) -> Value {
    json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": { "name": name, "namespace": "shop" },
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "meshca", "reportingInstance": "meshca-0",
        "action": "Reconcile", "reason": "Issued", "note": "n", "type": "Normal",
        "regarding": { "kind": "Ingress", "namespace": "shop", "name": "web" },
    })
}

#[tokio::test]
async fn an_event_names_its_reporter_action_and_reason_within_their_limits() {
    let kube = standin().await;
    let api = resource(
        &kube,
        ("events.k8s.io", "v1", "Event"),
        "events",
        Some("shop"),
    )
    .await;
    for (field, value, needle) in [
        (
            "reportingController",
            json!(""),
            "reportingController: Required value",
        ),
        (
            "reportingInstance",
            json!("i".repeat(129)),
            "at most 128 characters",
        ),
        ("action", json!(""), "action: Required value"),
        ("reason", json!("r".repeat(129)), "at most 128 characters"),
        ("note", json!("n".repeat(1025)), "at most 1024 characters"),
        ("type", json!("Info"), "has invalid value"),
        ("eventTime", Value::Null, "eventTime: Required value"),
        ("deprecatedCount", json!(3), "needs to be unset"),
        (
            "series",
            json!({ "count": 1, "lastObservedTime": "2026-01-01T00:00:00.000000Z" }),
            "should be at least 2",
        ),
    ] {
        let mut e = event("e");
        e[field] = value;
        assert_invalid(api.create(&PostParams::default(), &object(e)).await, needle);
    }
    let mut created = api
        .create(&PostParams::default(), &object(event("ok")))
        .await
        .expect("created");
    created.data["series"] =
        json!({ "count": 2, "lastObservedTime": "2026-01-01T00:01:00.000000Z" });
    let counted = api
        .replace("ok", &PostParams::default(), &created)
        .await
        .expect("a series is added");
    let mut changed = counted;
    changed.data["reason"] = json!("Other");
    assert_invalid(
        api.replace("ok", &PostParams::default(), &changed).await,
        "reason: Invalid value: field is immutable",
    );
}
