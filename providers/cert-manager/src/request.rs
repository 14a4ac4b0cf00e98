//! One CertificateRequest from creation to deletion.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::StreamExt;
use kube::api::{DeleteParams, DynamicObject, ObjectMeta, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use meshca_provider::{LeafProfile, ProviderError};
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};

use crate::{pem_certs, CertManager, MANAGED_BY};

/// What an issued request carried.
pub(crate) struct Outcome {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) ca: Vec<CertificateDer<'static>>,
}

/// Deletes the request when dropped, whatever happened: success, refusal,
/// timeout, or the caller going away mid-wait.
struct Cleanup {
    api: Api<DynamicObject>,
    name: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (api, name) = (self.api.clone(), std::mem::take(&mut self.name));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = api.delete(&name, &DeleteParams::background()).await {
                    tracing::warn!(request = %name, error = %e, "failed to delete a CertificateRequest");
                }
            });
        }
    }
}

fn condition<'a>(cr: &'a Value, kind: &str) -> Option<&'a Value> {
    cr.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

fn text<'a>(c: &'a Value, field: &str) -> &'a str {
    c.get(field).and_then(Value::as_str).unwrap_or("")
}

/// What the request's conditions say now: `None` while pending.
fn judge(cr: &Value) -> Option<Result<Outcome, ProviderError>> {
    if let Some(c) = condition(cr, "Denied").filter(|c| text(c, "status") == "True") {
        return Some(Err(ProviderError::Denied(format!(
            "cert-manager denied the request ({}): {}",
            text(c, "reason"),
            text(c, "message")
        ))));
    }
    if let Some(c) = condition(cr, "Approved").filter(|c| text(c, "status") == "False") {
        return Some(Err(ProviderError::Denied(format!(
            "cert-manager did not approve the request ({}): {}",
            text(c, "reason"),
            text(c, "message")
        ))));
    }
    if let Some(c) = condition(cr, "InvalidRequest").filter(|c| text(c, "status") == "True") {
        return Some(Err(ProviderError::Rejected {
            reason: text(c, "reason").to_owned(),
            message: text(c, "message").to_owned(),
        }));
    }
    let ready = condition(cr, "Ready")?;
    match (text(ready, "status"), text(ready, "reason")) {
        ("True", _) => {
            let decode = |field: &str| {
                cr.pointer(&format!("/status/{field}"))
                    .and_then(Value::as_str)
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .map(|pem| pem_certs(&pem))
                    .unwrap_or_default()
            };
            let chain = decode("certificate");
            if chain.is_empty() {
                return Some(Err(ProviderError::InvalidResponse(
                    "the CertificateRequest is Ready but status.certificate holds no certificate"
                        .into(),
                )));
            }
            Some(Ok(Outcome {
                chain,
                ca: decode("ca"),
            }))
        }
        ("False", "Failed" | "Denied") => Some(Err(ProviderError::Rejected {
            reason: text(ready, "reason").to_owned(),
            message: format!("cert-manager: {}", text(ready, "message")),
        })),
        _ => None,
    }
}

/// The CertificateRequest for one CSR: labelled for cleanup and for the
/// identity it is for, never a CA, with the four usages of a mesh leaf.
fn certificate_request(cm: &CertManager, request_b64: String, leaf: &LeafProfile) -> DynamicObject {
    let c = &cm.config;
    let identity = leaf.identity();
    let mut cr = DynamicObject::new("", &cm.resource);
    cr.metadata = ObjectMeta {
        generate_name: Some("meshca-".into()),
        namespace: Some(c.namespace.clone()),
        labels: Some(BTreeMap::from([
            (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
            (
                "meshca.io/namespace".to_owned(),
                identity.namespace().to_owned(),
            ),
            (
                "meshca.io/service-account".to_owned(),
                identity.service_account().to_owned(),
            ),
        ])),
        annotations: Some(BTreeMap::from([
            ("meshca.io/identity".to_owned(), identity.dns_name()),
            ("meshca.io/spiffe-id".to_owned(), identity.spiffe_id()),
        ])),
        ..ObjectMeta::default()
    };
    cr.data = json!({
        "spec": {
            "request": request_b64,
            "issuerRef": { "name": c.issuer_name, "kind": c.issuer_kind, "group": c.issuer_group },
            // cert-manager's issuers start validity at signing time, so the
            // duration is the whole window.
            "duration": format!("{}s", leaf.lifetime().as_secs()),
            "isCA": false,
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
        }
    });
    cr
}

/// Why a CertificateRequest could not be created: the API server busy or
/// down may pass; a refusal (RBAC, validation, no such namespace) will not
/// until meshca's configuration or permissions change.
fn creation_failed(e: kube::Error, c: &crate::CertManagerConfig) -> ProviderError {
    match &e {
        kube::Error::Api(s)
            if (400..500).contains(&s.code) && !matches!(s.code, 408 | 409 | 429) =>
        {
            ProviderError::Misconfigured(format!(
                "the API server refused to create a CertificateRequest in {} ({} {}): {}",
                c.namespace, s.code, s.reason, s.message
            ))
        }
        _ => ProviderError::Unavailable {
            message: "failed to create a CertificateRequest".into(),
            retry_after: Duration::from_secs(10),
            source: Some(Box::new(e)),
        },
    }
}

/// Create a CertificateRequest for the CSR, wait for its answer (at most
/// `timeout`), count the outcome; the request is deleted whatever happens.
pub(crate) async fn issue(
    cm: &CertManager,
    request_b64: String,
    leaf: &LeafProfile,
) -> Result<Outcome, ProviderError> {
    let c = &cm.config;
    let cr = certificate_request(cm, request_b64, leaf);
    let created = cm
        .api
        .create(&PostParams::default(), &cr)
        .await
        .map_err(|e| creation_failed(e, c))?;
    cm.metrics.created.inc();
    let name = created.metadata.name.clone().unwrap_or_default();
    let _cleanup = Cleanup {
        api: cm.api.clone(),
        name: name.clone(),
    };
    let started = Instant::now();
    // Whether an approver has acted, as last seen: a request nobody
    // approves times out for another reason than an issuer that is down.
    let approved = AtomicBool::new(false);
    let result = match tokio::time::timeout(c.timeout, answer(cm, &name, &approved)).await {
        Ok(r) => r,
        Err(_) => return Err(timed_out(cm, &name, approved.load(Ordering::Relaxed))),
    };
    record(cm, &result, started);
    result
}

/// Watch the request until it is answered (or deleted); notes in
/// `approved` whether an approver has acted.
async fn answer(
    cm: &CertManager,
    name: &str,
    approved: &AtomicBool,
) -> Result<Outcome, ProviderError> {
    let selector = format!("metadata.name={name}");
    let mut events = watcher(cm.api.clone(), watcher::Config::default().fields(&selector))
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                if condition(&o.data, "Approved").is_some() {
                    approved.store(true, Ordering::Relaxed);
                }
                if let Some(done) = judge(&o.data) {
                    return done;
                }
            }
            Ok(watcher::Event::Delete(_)) => {
                return Err(ProviderError::Rejected {
                    reason: "Deleted".into(),
                    message: format!(
                        "CertificateRequest {name} was deleted before it was answered"
                    ),
                })
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(request = %name, error = %e, "watch of a CertificateRequest failed; resuming with backoff");
            }
        }
    }
    Err(ProviderError::Unavailable {
        message: "the watch on the CertificateRequest ended".into(),
        retry_after: Duration::from_secs(10),
        source: None,
    })
}

/// The request went unanswered for `timeout`: nobody approved it, or the
/// issuer did not sign it. Counted here.
fn timed_out(cm: &CertManager, name: &str, approved: bool) -> ProviderError {
    let c = &cm.config;
    let message = if approved {
        cm.metrics.outcome("Timeout");
        format!(
            "{} {:?} did not answer CertificateRequest {name} within {}s",
            c.issuer_kind,
            c.issuer_name,
            c.timeout.as_secs()
        )
    } else {
        cm.metrics.outcome("NotApproved");
        format!(
            "CertificateRequest {name} was not approved within {}s: no approver acted on it (with approver-policy installed, a CertificateRequestPolicy must allow meshca's requests for {} {:?})",
            c.timeout.as_secs(),
            c.issuer_kind,
            c.issuer_name,
        )
    };
    ProviderError::Unavailable {
        message,
        retry_after: c.timeout,
        source: None,
    }
}

/// Count an answered request's outcome.
fn record(cm: &CertManager, result: &Result<Outcome, ProviderError>, started: Instant) {
    match result {
        Ok(_) => {
            cm.metrics.outcome("Issued");
            cm.metrics
                .time_to_ready
                .observe(started.elapsed().as_secs_f64());
        }
        Err(ProviderError::Denied(_)) => cm.metrics.outcome("Denied"),
        Err(ProviderError::Rejected { reason, .. }) => cm.metrics.outcome(reason),
        Err(_) => cm.metrics.outcome("Error"),
    }
}
