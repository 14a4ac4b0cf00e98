//! The rollout state as persisted: `rollout.json` in the state directory
//! and, in a cluster, the ConfigMap `meshca-rollout` (both records of
//! `crate::store`). It is the ledger of anchors kept for certificates of
//! earlier signers, so it never fails quietly: a ledger that exists but
//! cannot be read is an error that stops the daemon with the place and the
//! cause, never a fresh start that would drop anchors live certificates
//! still chain to; a ledger that cannot be written is an error logged and
//! counted (`meshca_rotation_ledger_persisted`), and written again whole at
//! the next change.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::state::{Retained, RolloutStatus, Stage};
use crate::metrics::Metrics;
use crate::store::{Over, Store, StoreError};

/// The ConfigMap (in meshca's namespace) holding the ledger.
pub const CONFIGMAP: &str = "meshca-rollout";
/// The file in the state directory, and the ConfigMap's key.
const KEY: &str = "rollout.json";

/// Why the persisted ledger cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The record exists but cannot be read.
    #[error("failed to read the rollout ledger")]
    Read(#[source] StoreError),
    /// What was read is not a ledger.
    #[error("the rollout ledger in {place} does not parse; it names the old trust anchors that must stay in the bundle, so meshca will not start without it: restore it (from a backup, or from the other store: the state directory's rollout.json or the ConfigMap), or delete it to start afresh knowing that certificates signed under retired roots stop verifying")]
    Parse {
        /// The file or ConfigMap.
        place: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Where the ledger is kept: the state directory's file, and (in a
/// cluster) the ConfigMap, which outlives a pod's state directory and is
/// read first.
#[derive(Clone, Debug)]
pub struct Places {
    file: Store,
    configmap: Option<Store>,
}

impl Places {
    /// The ledger of `state_dir`, and of the ConfigMap in `namespace` with
    /// a cluster.
    pub fn new(state_dir: &Path, cluster: Option<(kube::Client, &str)>) -> Self {
        Self {
            file: Store::file(state_dir.join(KEY), 0o600),
            configmap: cluster
                .map(|(client, namespace)| Store::configmap(client, namespace, CONFIGMAP, KEY)),
        }
    }

    /// The ledger as persisted, and where it was read: the ConfigMap's,
    /// else (or when it has none yet) the file's; `None` when neither
    /// holds one.
    ///
    /// # Errors
    /// [`LedgerError`]: a ledger that exists but cannot be read or parsed.
    pub async fn load(&self) -> Result<(Option<RolloutStatus>, String), LedgerError> {
        for store in self.configmap.iter().chain(std::iter::once(&self.file)) {
            if let Some(record) = store.load().await.map_err(LedgerError::Read)? {
                let place = store.describe();
                return Ok((Some(parse(&record.bytes, &place)?), place));
            }
        }
        Ok((None, self.file.describe()))
    }
}

/// Parse a ledger read from `place`.
///
/// # Errors
/// [`LedgerError::Parse`].
pub fn parse(json: &[u8], place: &str) -> Result<RolloutStatus, LedgerError> {
    serde_json::from_slice::<Persisted>(json)
        .map(RolloutStatus::from)
        .map_err(|source| LedgerError::Parse {
            place: place.to_owned(),
            source,
        })
}

/// The ledger's JSON.
///
/// # Errors
/// [`StoreError::Encode`]: never written empty for failing to encode.
pub fn encode(status: &RolloutStatus) -> Result<Vec<u8>, StoreError> {
    crate::store::to_json(&Persisted::from(status), "the rollout ledger")
}

/// Writes the ledger at every change: the file at once, the ConfigMap
/// through [`Writer::run`] while this replica leads.
#[derive(Debug)]
pub struct Writer {
    file: Store,
    configmap: Option<watch::Sender<Arc<RolloutStatus>>>,
    metrics: Arc<Metrics>,
}

impl Writer {
    /// Persist `status`: the file atomically (0600, synced), off the async
    /// workers; the ConfigMap through its task. A failed write is logged
    /// and shown by the metric; the next change writes the whole ledger
    /// again.
    pub async fn save(&self, status: RolloutStatus) {
        let written = match encode(&status) {
            Ok(json) => self.file.save(&json, Over::Anything).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &written {
            tracing::error!(error = %crate::report::error_chain(e), "failed to persist the rollout ledger to the state directory");
        }
        self.metrics
            .record_ledger_persisted("file", written.is_ok());
        if let Some(tx) = &self.configmap {
            tx.send_replace(Arc::new(status));
        }
    }
}

impl Places {
    /// The writer of these places, starting from `restored`, and (in a
    /// cluster) the task that keeps the ConfigMap holding the latest
    /// ledger while `leader` says this replica leads.
    pub fn writer(
        &self,
        restored: &RolloutStatus,
        leader: Option<watch::Receiver<bool>>,
        metrics: Arc<Metrics>,
    ) -> (Writer, Option<ConfigMapTask>) {
        let shared = self.configmap.clone().zip(leader).map(|(store, leader)| {
            // The leader writes the ledger it started from, so that one
            // read from the state directory reaches the ConfigMap too.
            let (tx, rx) = watch::channel(Arc::new(restored.clone()));
            (
                tx,
                ConfigMapTask {
                    store,
                    ledgers: rx,
                    leader,
                    metrics: metrics.clone(),
                },
            )
        });
        let (configmap, task) = shared.unzip();
        let writer = Writer {
            file: self.file.clone(),
            configmap,
            metrics,
        };
        (writer, task)
    }
}

/// Keeps the ConfigMap holding the latest ledger, while this replica
/// leads; failed writes are retried, as the API server's answer allows.
pub struct ConfigMapTask {
    store: Store,
    ledgers: watch::Receiver<Arc<RolloutStatus>>,
    leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
}

impl ConfigMapTask {
    /// Run until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        {
            let mut pending = true;
            let mut failures = 0u32;
            loop {
                let mut retry = Duration::from_secs(3600);
                if pending && *self.leader.borrow() {
                    match self.write().await {
                        Ok(()) => {
                            pending = false;
                            failures = 0;
                        }
                        Err(e) => {
                            failures = failures.saturating_add(1);
                            retry = retry_delay(&e, failures);
                            tracing::error!(error = %crate::report::error_chain(&e), retry_in = ?retry, "failed to persist the rollout ledger to its ConfigMap");
                        }
                    }
                } else if pending {
                    retry = Duration::from_secs(2);
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = self.ledgers.changed() => { if r.is_err() { return } pending = true; }
                    () = tokio::time::sleep(retry) => {}
                }
            }
        }
    }

    async fn write(&mut self) -> Result<(), StoreError> {
        let ledger = self.ledgers.borrow_and_update().clone();
        let written = match encode(&ledger) {
            Ok(json) => self.store.save(&json, Over::Anything).await,
            Err(e) => Err(e),
        };
        self.metrics
            .record_ledger_persisted("configmap", written.is_ok());
        written
    }
}

/// When to write again after `failures` in a row ending with `e`.
fn retry_delay(e: &StoreError, failures: u32) -> Duration {
    match e {
        StoreError::Kubernetes(k) => k.refusal(),
        _ => crate::cluster::Refusal::Transient { retry_after: None },
    }
    .retry_delay(failures)
}

/// The JSON form: PEM and RFC 3339 text. `GET /v1/rotation` has its own
/// type; this one changes only with a way to read what earlier versions
/// wrote.
#[derive(Serialize, Deserialize)]
struct Persisted {
    stage: Stage,
    generation: u64,
    provider: String,
    incoming: Option<String>,
    retained: Vec<PersistedRetained>,
    #[serde(with = "history")]
    history: Vec<(Stage, OffsetDateTime)>,
}

#[derive(Serialize, Deserialize)]
struct PersistedRetained {
    /// Absent in state saved by older versions.
    #[serde(default)]
    generation: Option<u64>,
    #[serde(with = "pem_certificates")]
    pem: Vec<CertificateDer<'static>>,
    #[serde(with = "rfc3339_option")]
    until: Option<OffsetDateTime>,
}

impl From<&RolloutStatus> for Persisted {
    fn from(s: &RolloutStatus) -> Self {
        Self {
            stage: s.stage,
            generation: s.generation,
            provider: s.provider.clone(),
            incoming: s.incoming.clone(),
            retained: s
                .retained
                .iter()
                .map(|r| PersistedRetained {
                    generation: r.generation,
                    pem: r.anchors.clone(),
                    until: r.until,
                })
                .collect(),
            history: s.history.clone(),
        }
    }
}

impl From<Persisted> for RolloutStatus {
    fn from(p: Persisted) -> Self {
        Self {
            stage: p.stage,
            generation: p.generation,
            provider: p.provider,
            incoming: p.incoming,
            // Not persisted: after a restart the configuration in force signs.
            incoming_anchors: Vec::new(),
            retained: p
                .retained
                .into_iter()
                .map(|r| Retained {
                    generation: r.generation,
                    anchors: r.pem,
                    until: r.until,
                })
                .collect(),
            history: p.history,
        }
    }
}

// === serde of the typed fields: the JSON keeps PEM and RFC 3339 text ===

pub(crate) mod rfc3339_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
        t.map(|t| t.format(&Rfc3339))
            .transpose()
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| OffsetDateTime::parse(&t, &Rfc3339).map_err(serde::de::Error::custom))
            .transpose()
    }
}

pub(crate) mod history {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    use crate::rollout::Stage;

    pub fn serialize<S: Serializer>(
        h: &[(Stage, OffsetDateTime)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        h.iter()
            .map(|(stage, t)| t.format(&Rfc3339).map(|t| (*stage, t)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(Stage, OffsetDateTime)>, D::Error> {
        Vec::<(Stage, String)>::deserialize(d)?
            .into_iter()
            .map(|(stage, t)| {
                OffsetDateTime::parse(&t, &Rfc3339)
                    .map(|t| (stage, t))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

pub(crate) mod pem_certificates {
    use rustls_pki_types::CertificateDer;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        certs: &[CertificateDer<'static>],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&meshca_provider::pem::encode_certificates(certs))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<CertificateDer<'static>>, D::Error> {
        let pem = String::deserialize(d)?;
        meshca_provider::pem::decode_certificates(pem.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_ledger_is_none_and_an_unreadable_one_an_error_naming_its_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let places = Places::new(dir.path(), None);
        assert!(places.load().await.expect("missing is fine").0.is_none());
        std::fs::write(dir.path().join(KEY), "{ not json").expect("write");
        let e = places.load().await.expect_err("corrupt");
        let text = crate::report::error_chain(&e);
        assert!(
            text.contains("rollout.json") && text.contains("will not start"),
            "{text}"
        );
    }

    #[test]
    fn what_is_written_reads_back() {
        let mut s = RolloutStatus::fresh("vault");
        s.generation = 3;
        let back = parse(&encode(&s).expect("encodes"), "test").expect("parses");
        assert_eq!(back, s);
    }
}
