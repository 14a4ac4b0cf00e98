use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of the outcome counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `Issued`, `Denied`, `Failed`, `NotApproved`, `Timeout`, `Deleted`
    /// or `Error`.
    pub reason: String,
}

/// What the cert-manager provider records.
#[derive(Debug)]
pub struct CertManagerMetrics {
    /// CertificateRequests created.
    pub created: Counter,
    /// Outcomes by reason.
    pub outcomes: Family<OutcomeLabels, Counter>,
    /// Seconds from creation to Ready.
    pub time_to_ready: Histogram,
}

impl CertManagerMetrics {
    /// Create the metrics and register them (as `cert_manager_*`) in
    /// `registry`, which the daemon prefixes with `meshca_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            created: Counter::default(),
            outcomes: Family::default(),
            time_to_ready: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
        };
        registry.register(
            "cert_manager_requests_created",
            "CertificateRequests created",
            m.created.clone(),
        );
        registry.register(
            "cert_manager_request_outcomes",
            "CertificateRequest outcomes, by reason",
            m.outcomes.clone(),
        );
        registry.register(
            "cert_manager_time_to_ready_seconds",
            "Time from creating a CertificateRequest to its Ready condition",
            m.time_to_ready.clone(),
        );
        m
    }

    pub(crate) fn outcome(&self, reason: &str) {
        self.outcomes
            .get_or_create(&OutcomeLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}
