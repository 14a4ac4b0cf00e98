//! Federation's metrics: the sequence and age of each peer's bundle held,
//! and its fetches by result. The ages are computed at each scrape.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::Metrics;

/// Labels of the federated bundle gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DomainLabels {
    /// The peer trust domain.
    pub trust_domain: String,
}

/// Labels of `meshca_federated_bundle_fetches_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    /// The peer trust domain.
    pub trust_domain: String,
    /// `ok`, `refused`, `unreachable` or `setup`.
    pub result: &'static str,
}

/// When each peer's bundle held was fetched (Unix seconds).
type FetchedAt = Arc<Mutex<BTreeMap<String, i64>>>;

/// The federation metrics.
#[derive(Clone, Debug)]
pub struct FederationMetrics {
    sequence: Family<DomainLabels, Gauge>,
    fetches: Family<FetchLabels, Counter>,
    fetched_at: FetchedAt,
}

impl FederationMetrics {
    /// Register them with `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let fetched_at = FetchedAt::default();
        metrics.register_collector(Box::new(Ages(fetched_at.clone())));
        Self {
            sequence: metrics.register(
                "federated_bundle_sequence",
                "spiffe_sequence of the bundle held for a federated trust domain",
                Family::default(),
            ),
            fetches: metrics.register(
                "federated_bundle_fetches",
                "Fetches of federated bundles, by trust domain and result (ok, refused, unreachable, setup)",
                Family::default(),
            ),
            fetched_at,
        }
    }

    /// The bundle now held for `trust_domain`.
    pub fn record_bundle(&self, trust_domain: &str, fetched_at: i64, sequence: Option<u64>) {
        if let Ok(mut fetched) = self.fetched_at.lock() {
            fetched.insert(trust_domain.to_owned(), fetched_at);
        }
        let sequence = sequence.map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX));
        self.sequence
            .get_or_create(&DomainLabels {
                trust_domain: trust_domain.to_owned(),
            })
            .set(sequence);
    }

    /// One fetch of `trust_domain`'s bundle and its `result`.
    pub fn record_fetch(&self, trust_domain: &str, result: &'static str) {
        self.fetches
            .get_or_create(&FetchLabels {
                trust_domain: trust_domain.to_owned(),
                result,
            })
            .inc();
    }
}

/// `meshca_federated_bundle_age_seconds`, from the fetch times, at each
/// scrape.
#[derive(Debug)]
struct Ages(FetchedAt);

impl Collector for Ages {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let ages = Family::<DomainLabels, Gauge>::default();
        if let Ok(fetched) = self.0.lock() {
            for (trust_domain, at) in fetched.iter() {
                ages.get_or_create(&DomainLabels {
                    trust_domain: trust_domain.clone(),
                })
                .set(now.saturating_sub(*at));
            }
        }
        let metric = encoder.encode_descriptor(
            "federated_bundle_age_seconds",
            "Seconds since the bundle held for a federated trust domain was fetched",
            None,
            ages.metric_type(),
        )?;
        ages.encode(metric)
    }
}
