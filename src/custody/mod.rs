//! Key custody: the long-lived keys meshca signs with (Tresor's root)
//! held by a custodian that never lets them go (Vault's or OpenBao's
//! Transit engine, or a PKCS#11 token), instead of meshca's files.
//!
//! The seam is [`meshca_provider::crypto::custody`]; this module reads
//! `key_custody:`, connects the custodian, and wraps it so that every
//! signature is timed and the custodian's state is exported:
//! `meshca_key_custody_up{backend}` and
//! `meshca_key_custody_sign_duration_seconds{backend}`.
//!
//! Nothing falls back to a file key: a custodian that cannot be reached
//! at start stops the start (as a provider that cannot be reached does),
//! and one lost later makes signing fail fast with a retry hint until it
//! is back.

mod config;
mod pkcs11;

pub use config::{Backend, CustodyConfig, RawKeyCustody};

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use meshca_provider::crypto::custody::{Custody, CustodyAlgorithm, CustodyError, CustodyKey};
use meshca_vault::Transit;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Labels of the key-custody metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// `transit` or `pkcs11`.
    pub backend: &'static str,
}

/// The key-custody metrics, registered once whether or not custody is in
/// use, so that a custodian rolled in at run time records for real.
#[derive(Clone, Debug)]
pub struct CustodyMetrics {
    up: Family<BackendLabels, Gauge>,
    sign_duration: Family<BackendLabels, Histogram>,
}

impl CustodyMetrics {
    /// Register the metrics in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let sign_duration =
            Family::<BackendLabels, Histogram>::new_with_constructor(sign_buckets as fn() -> _);
        Self {
            up: metrics.register(
                "key_custody_up",
                "Whether the custodian of meshca's CA keys answered its last call (1) or not (0)",
                Family::default(),
            ),
            sign_duration: metrics.register(
                "key_custody_sign_duration_seconds",
                "Time the custodian of meshca's CA keys took to sign",
                sign_duration,
            ),
        }
    }

    fn record(&self, backend: &'static str, outcome: &Result<(), &CustodyError>) {
        let up = match outcome {
            Ok(()) => 1,
            Err(CustodyError::Unavailable { .. }) => 0,
            // Refused or a bad signature: the custodian answered.
            Err(_) => 1,
        };
        self.up.get_or_create(&BackendLabels { backend }).set(up);
    }
}

fn sign_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_5, 2.0, 14))
}

/// Connect the custodian `config` names, returning it with the task that
/// keeps its credentials fresh until `stop`, when it has one (Transit's
/// token; a token's login lasts as long as its sessions).
///
/// # Errors
/// The custodian refused meshca's credentials or cannot be reached.
pub async fn connect(
    config: &CustodyConfig,
    metrics: &CustodyMetrics,
    stop: CancellationToken,
) -> Result<(Arc<dyn Custody>, Option<Task>), CustodyError> {
    let connected: Result<(Arc<dyn Custody>, Option<Task>), _> = match &config.backend {
        Backend::Transit(transit) => Transit::connect(transit, stop).await.map(|(t, task)| {
            (
                Arc::new(t) as Arc<dyn Custody>,
                Some(Box::pin(task) as Task),
            )
        }),
        Backend::Pkcs11(token) => pkcs11::Token::open(token)
            .await
            .map(|t| (Arc::new(t) as Arc<dyn Custody>, None)),
    };
    metrics.record(config.backend.name(), &connected.as_ref().map(drop));
    let (custodian, task) = connected?;
    let observed = Observed {
        inner: custodian,
        metrics: metrics.clone(),
    };
    Ok((Arc::new(observed), task))
}

/// What keeps a custodian's credentials fresh (Transit's token), until
/// the provider using it is stopped.
pub type Task = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A custodian whose calls are measured.
#[derive(Debug)]
struct Observed {
    inner: Arc<dyn Custody>,
    metrics: CustodyMetrics,
}

#[async_trait]
impl Custody for Observed {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn key(
        &self,
        name: &str,
        algorithm: CustodyAlgorithm,
    ) -> Result<Arc<dyn CustodyKey>, CustodyError> {
        let key = self.inner.key(name, algorithm).await;
        self.metrics.record(self.backend(), &key.as_ref().map(drop));
        Ok(Arc::new(ObservedKey {
            inner: key?,
            metrics: self.metrics.clone(),
        }))
    }

    async fn health(&self) -> Result<(), CustodyError> {
        let health = self.inner.health().await;
        self.metrics
            .record(self.backend(), &health.as_ref().copied());
        health
    }

    async fn destroy(&self, name: &str) -> Result<(), CustodyError> {
        self.inner.destroy(name).await
    }
}

/// A key whose signatures are timed.
#[derive(Debug)]
struct ObservedKey {
    inner: Arc<dyn CustodyKey>,
    metrics: CustodyMetrics,
}

#[async_trait]
impl CustodyKey for ObservedKey {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn algorithm(&self) -> CustodyAlgorithm {
        self.inner.algorithm()
    }

    fn public_key(&self) -> &[u8] {
        self.inner.public_key()
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CustodyError> {
        let started = Instant::now();
        let signed = self.inner.sign(message).await;
        let backend = self.backend();
        self.metrics.record(backend, &signed.as_ref().map(drop));
        if signed.is_ok() {
            self.metrics
                .sign_duration
                .get_or_create(&BackendLabels { backend })
                .observe(started.elapsed().as_secs_f64());
        }
        signed
    }
}
