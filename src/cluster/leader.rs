//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Every replica serves the signing API; only the leader does work that
//! must happen once (writing the bundle Secret). Holding the Lease is
//! renewed every third of its duration; a leader that cannot renew steps
//! down before the Lease expires, so two replicas never both believe they
//! lead for longer than clock skew.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{is_reason, Refusal, FINAL_RETRY, MANAGED_BY};

/// The result of one election round.
#[derive(Debug, PartialEq, Eq)]
enum Round {
    Leading,
    Following,
}

/// Run leader election for `identity` on Lease `name`. Returns whether this
/// replica leads now (false until the first round) and the task to spawn.
pub fn elect(
    client: kube::Client,
    namespace: &str,
    name: &str,
    identity: String,
    duration: Duration,
    shutdown: CancellationToken,
) -> (
    watch::Receiver<bool>,
    impl Future<Output = ()> + Send + 'static,
) {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let name = name.to_owned();
    let (tx, rx) = watch::channel(false);
    let task = async move {
        let every = duration / 3;
        let mut last_renewed: Option<Instant> = None;
        loop {
            let mut next = every;
            match round(&api, &name, &identity, duration).await {
                Ok(Round::Leading) => {
                    last_renewed = Some(Instant::now());
                    if !*tx.borrow() {
                        tracing::info!(lease = %name, %identity, "became the leader");
                    }
                    tx.send_replace(true);
                }
                Ok(Round::Following) => {
                    if *tx.borrow() {
                        tracing::info!(lease = %name, "lost the leadership");
                    }
                    tx.send_replace(false);
                    last_renewed = None;
                }
                Err(e) => {
                    // Honour the server's Retry-After; a refusal repeating
                    // cannot fix (RBAC) waits long, not a round.
                    next = match Refusal::of(&e) {
                        Refusal::Final { .. } => FINAL_RETRY,
                        Refusal::Transient { retry_after } => {
                            retry_after.unwrap_or(every).max(every)
                        }
                    };
                    tracing::warn!(lease = %name, error = %e, retry_in = ?next, "failed to renew the Lease");
                    // Step down before the Lease can expire under us.
                    if last_renewed.is_some_and(|t| t.elapsed() + next >= duration) {
                        tracing::warn!(lease = %name, "stepping down: the Lease could not be renewed");
                        tx.send_replace(false);
                        last_renewed = None;
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(next) => {}
            }
        }
        // Hand over at once on a clean stop.
        if *tx.borrow() {
            let _ = release(&api, &name, &identity).await;
        }
    };
    (rx, task)
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

async fn round(
    api: &Api<Lease>,
    name: &str,
    identity: &str,
    duration: Duration,
) -> Result<Round, kube::Error> {
    let secs = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.to_owned()),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Round::Leading),
            Err(e) if is_reason(&e, 409) => Ok(Round::Following),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let held_for = spec.lease_duration_seconds.map_or(duration, |s| {
        Duration::from_secs(u64::try_from(s).unwrap_or(0))
    });
    let expired = spec.renew_time.as_ref().is_none_or(|t| {
        let age = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
        age.as_secs() < 0 || Duration::try_from(age).unwrap_or(Duration::ZERO) > held_for
    });
    if holder != identity && !holder.is_empty() && !expired {
        return Ok(Round::Following);
    }
    if holder != identity {
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.holder_identity = Some(identity.to_owned());
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(secs);
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(Round::Leading),
        Err(e) if is_reason(&e, 409) => Ok(Round::Following),
        Err(e) => Err(e),
    }
}

async fn release(api: &Api<Lease>, name: &str, identity: &str) -> Result<(), kube::Error> {
    if let Some(mut lease) = api.get_opt(name).await? {
        if let Some(spec) = lease.spec.as_mut() {
            if spec.holder_identity.as_deref() == Some(identity) {
                spec.holder_identity = None;
                api.replace(name, &PostParams::default(), &lease).await?;
            }
        }
    }
    Ok(())
}

/// This replica's name in the Lease: the pod name when there is one, made
/// unique per process so a restarted pod does not inherit its own lease.
pub fn replica_identity() -> String {
    // A failed read leaves zeros: the pod name alone still identifies it.
    let b = crate::crypto::random::<4>().unwrap_or_default();
    let base = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("meshca-{}", std::process::id()));
    format!("{base}-{:08x}", u32::from_be_bytes(b))
}
