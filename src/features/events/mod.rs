//! Kubernetes Events on meshca's own pod, so that `kubectl describe pod`
//! and `kubectl get events` show what an operator must know without the
//! logs: each stage of a signer rollout, and each provider failure and
//! recovery. kube-runtime's [`Recorder`] deduplicates repeats into one
//! Event with a count.
//!
//! The pod is named by the downward API (`POD_NAME`, `POD_NAMESPACE`,
//! `POD_UID`, which the chart sets); outside a pod there is nothing to
//! attach Events to and this task only follows.

use std::future::Future;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod feature;

pub use feature::{EventsFeature, FEATURE};

use crate::cluster::Cluster;
use crate::rollout::{RolloutStatus, Stage};

/// What happened, as one Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// Normal or Warning.
    pub warning: bool,
    /// CamelCase, stable: what alerts and `kubectl get events` key on.
    pub reason: &'static str,
    /// CamelCase. With `reason`, what repeats are deduplicated on (the
    /// note is not), so each rollout stage has its own.
    pub action: &'static str,
    /// For people.
    pub note: String,
}

/// The Events a change of rollout status calls for: one per stage entered
/// since `before`, read from the history (a watch may coalesce stages that
/// follow each other within a moment, switch and reissue for instance).
pub fn rollout_announcements(before: &RolloutStatus, after: &RolloutStatus) -> Vec<Announcement> {
    let seen = before.history.last().map(|(_, at)| *at);
    after
        .history
        .iter()
        .filter(|(_, at)| seen.is_none_or(|seen| *at > seen))
        .map(|(stage, _)| stage_announcement(*stage, after))
        .collect()
}

fn stage_announcement(stage: Stage, status: &RolloutStatus) -> Announcement {
    let note = match (stage, &status.incoming) {
        (Stage::Distribute, Some(incoming)) => format!(
            "distribute: the incoming {incoming} signer's anchors join those of the current {} signer",
            status.provider
        ),
        (stage, _) => format!(
            "signer rollout: {} (provider {}, generation {})",
            stage.as_str(),
            status.provider,
            status.generation
        ),
    };
    let action = match stage {
        Stage::Steady => "Steady",
        Stage::Distribute => "Distribute",
        Stage::Switch => "Switch",
        Stage::Reissue => "Reissue",
        Stage::Retire => "Retire",
    };
    Announcement {
        warning: false,
        reason: "SignerRollout",
        action,
        note,
    }
}

/// The Events a change of health problems calls for: each new provider
/// problem, and the provider's recovery once none is left.
pub fn health_announcements(before: &[String], after: &[String]) -> Vec<Announcement> {
    let provider = |p: &&String| p.starts_with("provider ");
    let mut out: Vec<Announcement> = after
        .iter()
        .filter(provider)
        .filter(|p| !before.contains(p))
        .map(|p| Announcement {
            warning: true,
            reason: "ProviderUnavailable",
            action: "Sign",
            note: p.clone(),
        })
        .collect();
    if before.iter().any(|p| provider(&p)) && !after.iter().any(|p| provider(&p)) {
        out.push(Announcement {
            warning: false,
            reason: "ProviderRecovered",
            action: "Sign",
            note: "the signing provider works again".into(),
        });
    }
    out
}

/// This pod, from the downward API.
fn own_pod() -> Option<ObjectReference> {
    let name = std::env::var("POD_NAME").ok()?;
    Some(ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name),
        namespace: std::env::var("POD_NAMESPACE").ok(),
        uid: std::env::var("POD_UID").ok(),
        ..ObjectReference::default()
    })
}

/// The task: follow the rollout status and the health problems, and
/// record an Event for each announcement while meshca runs in a pod.
pub fn announcer(
    cluster: &Cluster,
    mut rollout: watch::Receiver<RolloutStatus>,
    mut health: watch::Receiver<Vec<String>>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let target = own_pod().map(|pod| {
        let recorder = Recorder::new(
            cluster.client.clone(),
            Reporter {
                controller: "meshca".into(),
                instance: pod.name.clone(),
            },
        );
        (recorder, pod)
    });
    async move {
        let mut last_rollout = rollout.borrow_and_update().clone();
        let mut last_health = health.borrow_and_update().clone();
        loop {
            let announcements = tokio::select! {
                () = shutdown.cancelled() => return,
                changed = rollout.changed() => {
                    if changed.is_err() { return; }
                    let now = rollout.borrow_and_update().clone();
                    let a = rollout_announcements(&last_rollout, &now);
                    last_rollout = now;
                    a
                }
                changed = health.changed() => {
                    if changed.is_err() { return; }
                    let now = health.borrow_and_update().clone();
                    let a = health_announcements(&last_health, &now);
                    last_health = now;
                    a
                }
            };
            if let Some((recorder, pod)) = &target {
                for a in announcements {
                    record(recorder, pod, a).await;
                }
            }
        }
    }
}

async fn record(recorder: &Recorder, pod: &ObjectReference, a: Announcement) {
    let event = Event {
        type_: if a.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: a.reason.into(),
        note: Some(a.note),
        action: a.action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, pod).await {
        tracing::debug!(error = %e, "failed to record an Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_failure_and_its_recovery_are_announced_once() {
        let down = vec!["provider vault: sealed".to_owned()];
        let a = health_announcements(&[], &down);
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].reason, a[0].warning), ("ProviderUnavailable", true));
        assert!(health_announcements(&down, &down).is_empty(), "no repeat");
        let up = health_announcements(&down, &[]);
        assert_eq!(up.len(), 1);
        assert_eq!(up[0].reason, "ProviderRecovered");
        let api_only = vec!["kubernetes API: timeout".to_owned()];
        assert!(
            health_announcements(&[], &api_only).is_empty(),
            "not the provider"
        );
    }

    #[test]
    fn each_new_rollout_stage_is_announced() {
        let steady = RolloutStatus::restored(
            None,
            "tresor",
            std::time::Duration::from_secs(3600),
            time::OffsetDateTime::now_utc(),
        );
        assert!(rollout_announcements(&steady, &steady).is_empty());
        let now = time::OffsetDateTime::now_utc();
        let mut distribute = steady.clone();
        distribute.stage = Stage::Distribute;
        distribute.incoming = Some("vault".into());
        distribute.history.push((Stage::Distribute, now));
        let a = rollout_announcements(&steady, &distribute);
        assert_eq!(a.len(), 1);
        assert!(
            a[0].note.contains("vault") && a[0].note.contains("tresor"),
            "{a:?}"
        );
        // Two stages within one change of the watch: both announced.
        let mut reissue = distribute.clone();
        reissue
            .history
            .push((Stage::Switch, now + std::time::Duration::from_millis(1)));
        reissue
            .history
            .push((Stage::Reissue, now + std::time::Duration::from_millis(2)));
        let actions: Vec<_> = rollout_announcements(&distribute, &reissue)
            .iter()
            .map(|a| a.action)
            .collect();
        assert_eq!(actions, ["Switch", "Reissue"]);
        assert!(rollout_announcements(&reissue, &reissue).is_empty());
    }
}
