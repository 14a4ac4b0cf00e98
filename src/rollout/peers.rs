//! Every replica's latest NotAfter per signer generation, shared through
//! one ConfigMap (`meshca-issued`, one data key per replica), so that a
//! replica retiring a signer keeps its anchors until the last certificate
//! *any* replica issued under it has expired, not only its own.
//!
//! Each replica writes only its own key (a JSON merge patch, which never
//! conflicts with the others), a second after it issues under a new
//! latest NotAfter; the controller reads all keys when it retires.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use tokio_util::sync::CancellationToken;

use super::Signer;
use crate::cluster::{is_reason, new_configmap, KubeError, Refusal};

/// The ConfigMap, in meshca's namespace.
const NAME: &str = "meshca-issued";
/// How long a replica batches its issuance before publishing it; the
/// controller waits as long before it reads.
pub const PUBLISH_AFTER: Duration = Duration::from_secs(1);

/// This replica's view of the shared ledger.
#[derive(Clone, Debug)]
pub struct Peers {
    api: Api<ConfigMap>,
    replica: String,
}

impl Peers {
    /// The ledger in `namespace`; this replica writes under `replica`
    /// (its pod name, or a random name outside a pod).
    pub fn new(client: kube::Client, namespace: &str, replica: String) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            replica: replica_key(&replica),
        }
    }

    /// This replica's name: its pod's (`POD_NAME`), or a random one.
    pub fn this_replica() -> String {
        std::env::var("POD_NAME").unwrap_or_else(|_| {
            // A failed random source leaves zeros: the name is then
            // "replica-000000000000", still one for this process's life.
            let b = crate::crypto::random::<6>().unwrap_or_default();
            format!("replica-{}", base16ct::lower::encode_string(&b))
        })
    }

    /// The latest NotAfter any replica recorded under `generation`;
    /// `None` when no replica recorded one.
    ///
    /// # Errors
    /// The ledger could not be read: what other replicas issued is
    /// unknown, which is not the same as nothing.
    pub async fn latest(&self, generation: u64) -> Result<Option<i64>, KubeError> {
        let cm = self
            .api
            .get_opt(NAME)
            .await
            .map_err(KubeError::api(format!("read ConfigMap {NAME}")))?;
        Ok(cm.and_then(|cm| {
            latest_of(
                cm.data.unwrap_or_default().values().map(String::as_str),
                generation,
            )
        }))
    }

    /// The task publishing this replica's ledger as it grows.
    pub fn publisher(
        self,
        signer: Arc<Signer>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let mut recorded = signer.recorded();
        async move {
            let mut published = BTreeMap::new();
            let mut failures = 0u32;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = recorded.changed() => if changed.is_err() { return },
                }
                tokio::time::sleep(PUBLISH_AFTER).await;
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let mut ledger = signer.issued_until_all();
                ledger.retain(|_, until| *until > now);
                if ledger == published {
                    continue;
                }
                match self.write(&ledger).await {
                    Ok(()) => {
                        published = ledger;
                        failures = 0;
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        let delay = Refusal::of(&e).retry_delay(failures);
                        tracing::warn!(error = %e, retry_in = ?delay, "failed to share this replica's issuance ledger; retrying");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(delay) => {}
                        }
                        recorded.mark_changed();
                    }
                }
            }
        }
    }

    async fn write(&self, ledger: &BTreeMap<u64, i64>) -> Result<(), kube::Error> {
        let value = serde_json::to_string(ledger).unwrap_or_default();
        let patch = serde_json::json!({ "data": { &self.replica: value } });
        match self
            .api
            .patch(NAME, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(e) if is_reason(&e, 404) => {
                let cm = new_configmap(NAME, &self.replica, value);
                match self.api.create(&PostParams::default(), &cm).await {
                    // Another replica created it first: patch it next time.
                    Err(e) if is_reason(&e, 409) => Err(e),
                    other => other.map(drop),
                }
            }
            other => other.map(drop),
        }
    }
}

/// A ConfigMap data key for `name`: only `[-._a-zA-Z0-9]`.
fn replica_key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The latest NotAfter under `generation` among replicas' ledgers (JSON
/// maps of generation to Unix time); unreadable entries are skipped.
fn latest_of<'a>(ledgers: impl Iterator<Item = &'a str>, generation: u64) -> Option<i64> {
    ledgers
        .filter_map(|json| serde_json::from_str::<BTreeMap<u64, i64>>(json).ok())
        .filter_map(|ledger| ledger.get(&generation).copied())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_across_replicas_wins_and_junk_is_skipped() {
        let ledgers = [r#"{"3": 100, "4": 900}"#, r#"{"3": 700}"#, "not json", "{}"];
        assert_eq!(latest_of(ledgers.iter().copied(), 3), Some(700));
        assert_eq!(latest_of(ledgers.iter().copied(), 4), Some(900));
        assert_eq!(latest_of(ledgers.iter().copied(), 5), None);
    }

    #[test]
    fn replica_names_become_valid_keys() {
        assert_eq!(replica_key("meshca-7d9f/x y"), "meshca-7d9f-x-y");
    }
}
