//! An Event per revocation, in a cluster: `kubectl get events` in meshca's
//! namespace shows who revoked which serial and why, about the ledger's
//! ConfigMap. The leader writes it (every replica reads the ledger); each
//! revocation is its own Event, named after its serial, so that two
//! revocations are never folded into one series.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;

use super::ledger::{Entry, CONFIGMAP};

/// The Events' `reason`.
pub const REASON: &str = "CertificateRevoked";
/// The longest note kube-apiserver accepts.
const NOTE_MAX: usize = 1024;

/// Writes the Events while this replica leads.
pub struct Announcer {
    api: kube::Api<Event>,
    namespace: String,
    leader: watch::Receiver<bool>,
    instance: String,
}

impl Announcer {
    /// Events in `namespace`, written while `leader` is true.
    pub fn new(client: kube::Client, namespace: &str, leader: watch::Receiver<bool>) -> Self {
        Self {
            api: kube::Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            leader,
            instance: std::env::var("POD_NAME").unwrap_or_else(|_| "meshca".into()),
        }
    }

    /// Record `entry`'s revocation, on the leader; a failure is logged
    /// (the log line and the ledger already say it).
    pub async fn revoked(&self, entry: &Entry) {
        if !*self.leader.borrow() {
            return;
        }
        let event = event(entry, &self.namespace, &self.instance);
        if let Err(e) = self.api.create(&PostParams::default(), &event).await {
            tracing::warn!(error = %e, serial = %entry.serial, "failed to record the revocation as an Event");
        }
    }
}

/// The Event of `entry`'s revocation.
fn event(entry: &Entry, namespace: &str, instance: &str) -> Event {
    let mut note = format!(
        "certificate serial {} revoked by {}{}",
        entry.serial,
        entry.by,
        entry
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
    if note.len() > NOTE_MAX {
        let mut end = NOTE_MAX;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    Event {
        metadata: ObjectMeta {
            name: Some(format!(
                "meshca-revoked-{}-{}",
                entry.serial,
                entry.revoked_at.unix_timestamp()
            )),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(
            k8s_openapi::jiff::Timestamp::from_second(entry.revoked_at.unix_timestamp())
                .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now()),
        )),
        action: Some("Revoke".into()),
        reason: Some(REASON.into()),
        note: Some(note),
        type_: Some("Warning".into()),
        reporting_controller: Some("meshca.io/revocation".into()),
        reporting_instance: Some(instance.chars().take(128).collect()),
        regarding: Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
            name: Some(CONFIGMAP.into()),
            namespace: Some(namespace.to_owned()),
            ..ObjectReference::default()
        }),
        ..Event::default()
    }
}
