//! meshca on a busy cluster: the Kubernetes stand-in answers meshca's
//! requests with seeded, reproducible faults (429 with Retry-After, 500,
//! 503, slow answers, cut watches, 410 Gone on resume, writes whose answer
//! is lost) while a Tresor root rotation, the ingress reconciler and the
//! pod-certificate signer all run. Then the faults stop.
//!
//! What must hold: every PodCertificateRequest is answered exactly once,
//! validly; no version of the bundle a sink received ever lacks an anchor
//! a live certificate needs; meshca's request rate stays bounded and it
//! waits as long as a 429 asks; `/readyz` says what is wrong; everything
//! converges within 30 s of the faults stopping. The figures are printed.

use meshca_test_support as support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use support::kube::{AuditEntry, FaultPlan, KubeStandIn};
use support::{certs, TestDaemon};
use x509_parser::prelude::{FromDer, X509Certificate};

const SEED: u64 = 20_261_202;
/// Requests made while the cluster is busy, then while it is down.
const BUSY_PCRS: usize = 24;
const PCRS: usize = 30;
const GROUP: &str = "certificates.k8s.io";

fn config(kube: &KubeStandIn, root: &(std::path::PathBuf, std::path::PathBuf)) -> String {
    format!(
        "kubernetes: {{ kubeconfig: {}, lease_duration: 6s }}\nbundle: {{ refresh_interval: 1s }}\n\
         pod_certificates: {{ enabled: true }}\ncertificates: {{ default_ttl: 1h, max_ttl: 48h }}\n\
         rotation: {{ propagation_delay: 2s }}\n\
         ingress: {{ enabled: true, backend_protocol: https }}\n\
         provider:\n  kind: tresor\n  tresor:\n    root_cert_file: {}\n    root_key_file: {}\n",
        kube.kubeconfig().display(),
        root.0.display(),
        root.1.display()
    )
}

fn put_backend_and_ingress(kube: &KubeStandIn) {
    kube.put("", "namespaces", json!({ "metadata": { "name": "shop", "labels": { "openservicemesh.io/monitored-by": "osm" } } }));
    kube.put(
        "",
        "services",
        json!({
            "metadata": { "name": "web", "namespace": "shop" },
            "spec": { "selector": { "app": "web" }, "ports": [{ "port": 8443 }] },
        }),
    );
    kube.put("", "pods", json!({
        "metadata": { "name": "web-1", "namespace": "shop", "labels": { "app": "web" } },
        "spec": { "serviceAccountName": "web", "containers": [{ "name": "web", "image": "web" }] },
    }));
    kube.put("networking.k8s.io", "ingresses", json!({
        "metadata": { "name": "web", "namespace": "shop" },
        "spec": { "rules": [{ "host": "web.example", "http": { "paths": [{ "path": "/", "pathType": "Prefix",
            "backend": { "service": { "name": "web", "port": { "number": 8443 } } } }] } }] },
    }));
}

fn create_pcr(kube: &KubeStandIn, i: usize) {
    let (csr, _) = support::kubelet_stub_csr("ECDSAP256");
    kube.put(GROUP, "podcertificaterequests", json!({
        "metadata": { "name": format!("web-{i}"), "namespace": "shop" },
        "spec": { "signerName": "meshca.io/workload", "podName": format!("web-{i}"), "podUID": format!("u{i}"),
            "serviceAccountName": "web", "serviceAccountUID": "sa", "nodeName": "node-1", "nodeUID": "n1",
            "stubPKCS10Request": STANDARD.encode(csr) },
    }));
}

fn issued(kube: &KubeStandIn, i: usize) -> bool {
    kube.get(GROUP, "podcertificaterequests", "shop", &format!("web-{i}"))
        .is_some_and(|p| p["status"]["conditions"][0]["type"] == "Issued")
}

/// The subject CN of a certificate, or its issuer's.
fn cn(der: &[u8], issuer: bool) -> String {
    let (_, c) = X509Certificate::from_der(der).expect("a certificate");
    let name = if issuer { c.issuer() } else { c.subject() };
    let cn = name
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    cn
}

fn not_after(der: &[u8]) -> i64 {
    let (_, c) = X509Certificate::from_der(der).expect("a certificate");
    c.validity().not_after.timestamp()
}

/// The anchors (CNs) of every version of a bundle sink meshca wrote, with
/// when, in order.
fn bundle_versions(
    writes: &[(Instant, Value)],
    kind: &str,
    name: &str,
    pem: impl Fn(&Value) -> Option<String>,
) -> Vec<(Instant, Vec<String>)> {
    writes
        .iter()
        .filter(|(_, o)| o["kind"] == kind && o["metadata"]["name"] == name)
        .filter_map(|(at, o)| {
            pem(o).map(|p| (*at, certs(&p).iter().map(|c| cn(c, false)).collect()))
        })
        .collect()
}

/// Every leaf meshca handed out through the cluster (pod certificates,
/// ingress backend Secrets): when it was written, its root's CN, its
/// NotAfter.
fn leaves(writes: &[(Instant, Value)]) -> Vec<(Instant, String, i64)> {
    let mut out = Vec::new();
    for (at, o) in writes {
        let chain = match o["kind"].as_str() {
            Some("PodCertificateRequest") => {
                o["status"]["certificateChain"].as_str().map(str::to_owned)
            }
            Some("Secret")
                if o["type"] == "kubernetes.io/tls" && o["metadata"]["namespace"] == "shop" =>
            {
                o["data"]["tls.crt"]
                    .as_str()
                    .and_then(|b| STANDARD.decode(b).ok())
                    .and_then(|b| String::from_utf8(b).ok())
            }
            _ => None,
        };
        if let Some(leaf) = chain
            .as_deref()
            .map(certs)
            .and_then(|c| c.into_iter().next())
        {
            out.push((*at, cn(&leaf, true), not_after(&leaf)));
        }
    }
    out
}

/// Versions of a sink that lacked the root of a certificate live while
/// they were the sink's content.
fn missing_anchors(
    versions: &[(Instant, Vec<String>)],
    leaves: &[(Instant, String, i64)],
    epoch: (Instant, i64),
) -> Vec<String> {
    let unix =
        |t: Instant| epoch.1 + i64::try_from(t.duration_since(epoch.0).as_secs()).unwrap_or(0);
    let mut out = Vec::new();
    for (i, (from, anchors)) in versions.iter().enumerate() {
        let until = versions.get(i + 1).map(|v| v.0);
        for (at, root, expires) in leaves {
            let live = until.is_none_or(|u| *at < u) && *expires > unix(*from);
            if live && !anchors.contains(root) {
                out.push(format!(
                    "version {i} ({anchors:?}) lacks {root:?} of a leaf written {:?} after it",
                    at.saturating_duration_since(*from)
                ));
            }
        }
    }
    out
}

/// What convergence looks at.
#[derive(Debug)]
struct State {
    unanswered: Vec<usize>,
    secret: Vec<String>,
    ctb: Vec<String>,
    ingress_root: Option<String>,
}

impl State {
    fn of(kube: &KubeStandIn) -> Self {
        let anchors = |pem: Option<String>| {
            let mut cns: Vec<String> = pem
                .map(|p| certs(&p).iter().map(|c| cn(c, false)).collect())
                .unwrap_or_default();
            cns.sort();
            cns
        };
        let decoded = |b64: Option<&str>| {
            b64.and_then(|b| STANDARD.decode(b).ok())
                .and_then(|b| String::from_utf8(b).ok())
        };
        let secret = kube.get("", "secrets", "osm-system", "osm-ca-bundle");
        let ctb = kube.get(
            GROUP,
            "clustertrustbundles",
            "",
            "meshca.io:workload:trust-bundle",
        );
        let ingress = kube.get("", "secrets", "shop", "meshca-web-tls");
        Self {
            unanswered: (0..PCRS).filter(|i| !issued(kube, *i)).collect(),
            secret: anchors(
                secret
                    .as_ref()
                    .and_then(|s| decoded(s["data"]["ca.crt"].as_str())),
            ),
            ctb: anchors(
                ctb.as_ref()
                    .and_then(|c| c["spec"]["trustBundle"].as_str().map(str::to_owned)),
            ),
            ingress_root: ingress
                .as_ref()
                .and_then(|s| decoded(s["data"]["tls.crt"].as_str()))
                .and_then(|p| certs(&p).into_iter().next())
                .map(|leaf| cn(&leaf, true)),
        }
    }

    fn converged(&self) -> bool {
        let both = ["root a", "root b"];
        self.unanswered.is_empty()
            && self.secret == both
            && self.ctb == both
            && self.ingress_root.as_deref() == Some("root b")
    }
}

/// meshca's requests per second, by one-second bucket from `start`.
fn rate(audit: &[AuditEntry], start: Instant, end: Instant) -> Vec<usize> {
    let secs = usize::try_from(end.duration_since(start).as_secs()).unwrap_or(0) + 1;
    let mut buckets = vec![0; secs];
    for e in audit
        .iter()
        .filter(|e| !e.implied && e.at >= start && e.at < end)
    {
        let i = usize::try_from(e.at.duration_since(start).as_secs()).unwrap_or(0);
        buckets[i.min(secs - 1)] += 1;
    }
    buckets
}

/// Requests repeated sooner than the 429 that refused them asked: writes
/// and reads of one named object (several components may list or watch
/// the same resource, so those are not one client's repeats).
fn early_retries(audit: &[AuditEntry], retry_after: Duration) -> Vec<String> {
    let key = |e: &AuditEntry| {
        (
            e.verb,
            e.resource.clone(),
            e.subresource.clone(),
            e.namespace.clone(),
            e.name.clone(),
        )
    };
    let named: Vec<&AuditEntry> = audit
        .iter()
        .filter(|e| !e.implied && e.name.is_some() && e.verb != "watch")
        .collect();
    let mut out = Vec::new();
    for (i, e) in named.iter().enumerate().filter(|(_, e)| e.code == 429) {
        if let Some(next) = named[i + 1..].iter().find(|n| key(n) == key(e)) {
            let gap = next.at.duration_since(e.at);
            if gap + Duration::from_millis(100) < retry_after {
                out.push(format!(
                    "{} {} {:?} again after {gap:?}",
                    e.verb, e.resource, e.name
                ));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_api_faults_every_request_is_answered_once_no_bundle_lacks_an_anchor_and_meshca_converges(
) {
    let kube = KubeStandIn::start().await;
    put_backend_and_ingress(&kube);
    let roots_dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (
        support::openssl_root(roots_dir.path(), "a"),
        support::openssl_root(roots_dir.path(), "b"),
    );
    let d = TestDaemon::start_from_file(&config(&kube, &a)).await;
    let epoch = (
        Instant::now(),
        time::OffsetDateTime::now_utc().unix_timestamp(),
    );
    support::eventually("the backend Secret", Duration::from_secs(15), || {
        kube.get("", "secrets", "shop", "meshca-web-tls")
    })
    .await;

    let plan = FaultPlan::busy(SEED);
    let retry_after = Duration::from_secs(u64::from(plan.retry_after_seconds));
    kube.set_faults(Some(plan));
    let on = Instant::now();
    let mut readiness = Vec::new();
    for i in 0..PCRS {
        if i == BUSY_PCRS {
            // Then the API server goes down altogether for a while, so
            // that every backoff is long when it comes back.
            kube.set_faults(Some(FaultPlan::outage(SEED)));
        }
        create_pcr(&kube, i);
        if i == 5 {
            d.rewrite_config(&config(&kube, &b));
        }
        readiness.push(d.readyz().await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    readiness.push(d.readyz().await);
    kube.set_faults(None);
    let off = Instant::now();

    let converged = loop {
        let now = State::of(&kube);
        if now.converged() {
            break Instant::now();
        }
        assert!(
            off.elapsed() < Duration::from_secs(30),
            "not converged 30 s after the faults stopped: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let converge = converged.duration_since(off);
    while d.readyz().await.0 != 200 {
        assert!(
            off.elapsed() < Duration::from_secs(30),
            "not ready 30 s after the faults stopped: {:?}",
            d.readyz().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let audit: Vec<AuditEntry> = kube
        .audit()
        .into_iter()
        .filter(|e| e.user_agent.starts_with("meshca/"))
        .collect();
    let writes = kube.writes_by_meshca();

    // Every request answered exactly once: one stored Issued status each.
    for i in 0..PCRS {
        let name = format!("web-{i}");
        let stored = audit
            .iter()
            .filter(|e| {
                e.resource == "podcertificaterequests"
                    && e.subresource.as_deref() == Some("status")
                    && e.name.as_deref() == Some(&name)
                    && (200..300).contains(&e.code)
            })
            .count();
        let lost = audit
            .iter()
            .filter(|e| {
                e.resource == "podcertificaterequests"
                    && e.subresource.as_deref() == Some("status")
                    && e.name.as_deref() == Some(&name)
                    && e.code == 0
            })
            .count();
        assert!(
            stored + lost >= 1 && stored <= 1,
            "{name}: {stored} stored answers, {lost} lost"
        );
    }

    // No bundle version a sink received lacked an anchor a live leaf needs.
    let leaves = leaves(&writes);
    assert!(
        leaves.iter().any(|(_, root, _)| root == "root b"),
        "leaves under the new root"
    );
    let secret_versions = bundle_versions(&writes, "Secret", "osm-ca-bundle", |o| {
        String::from_utf8(STANDARD.decode(o["data"]["ca.crt"].as_str()?).ok()?).ok()
    });
    let ctb_versions = bundle_versions(
        &writes,
        "ClusterTrustBundle",
        "meshca.io:workload:trust-bundle",
        |o| o["spec"]["trustBundle"].as_str().map(str::to_owned),
    );
    let mut missing: Vec<String> = missing_anchors(&secret_versions, &leaves, epoch)
        .into_iter()
        .map(|m| format!("osm-ca-bundle {m}"))
        .collect();
    missing.extend(
        missing_anchors(&ctb_versions, &leaves, epoch)
            .into_iter()
            .map(|m| format!("ClusterTrustBundle {m}")),
    );
    assert!(missing.is_empty(), "{missing:#?}");

    // Bounded requests, Retry-After honoured.
    let per_second = rate(&audit, on, off);
    let peak = per_second.iter().copied().max().unwrap_or(0);
    let faulted = audit
        .iter()
        .filter(|e| e.at >= on && e.at < off && (e.code == 0 || e.code >= 429))
        .count();
    let early = early_retries(&audit, retry_after);
    assert!(early.is_empty(), "retried before Retry-After: {early:#?}");

    // /readyz said what was wrong while faults lasted.
    let reasons: BTreeMap<String, usize> = readiness
        .iter()
        .filter(|(s, _)| *s != 200)
        .flat_map(|(_, body)| {
            body.lines()
                .skip(1)
                .map(|l| l.split(':').next().unwrap_or(l).to_owned())
                .collect::<Vec<_>>()
        })
        .fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r).or_insert(0) += 1;
            m
        });
    assert!(
        !reasons.is_empty(),
        "readyz never said anything was wrong: {readiness:?}"
    );

    eprintln!(
        "chaos (seed {SEED}): {} meshca requests during {:?} of faults, {faulted} of them faulted; peak {peak}/s, per second {per_second:?}; \
         converged {converge:?} after the faults stopped; readyz reasons {reasons:?}; {} bundle versions (Secret {}, CTB {}), {} leaves",
        audit.iter().filter(|e| e.at >= on && e.at < off).count(),
        off.duration_since(on),
        secret_versions.len() + ctb_versions.len(),
        secret_versions.len(),
        ctb_versions.len(),
        leaves.len()
    );
    assert!(
        peak <= 60,
        "meshca's request rate ran away during the faults: {per_second:?}"
    );
    assert!(converge <= Duration::from_secs(30));
}
