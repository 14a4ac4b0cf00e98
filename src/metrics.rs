//! Prometheus metrics, all prefixed `meshca_`.
//!
//! One [`Metrics`] value is built at start and shared; components record
//! into it and `/metrics` renders it. Label sets are small and bounded
//! (provider kinds, result codes, sink names), never identities.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of `meshca_certificates_issued_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuedLabels {
    /// How the request arrived: `api` (the HTTPS signing API) or
    /// `pod_certificate` (a PodCertificateRequest).
    pub frontend: &'static str,
    /// The provider kind.
    pub provider: &'static str,
    /// `success` or the API error code.
    pub result: &'static str,
}

/// Labels of per-sink bundle metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    /// The sink's name, e.g. `file`.
    pub sink: String,
}

/// Labels of per-sink publish outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    /// The sink's name.
    pub sink: String,
    /// `success` or `failure`.
    pub result: &'static str,
}

/// Every metric meshca exports.
pub struct Metrics {
    registry: Registry,
    /// Certificates issued or refused, by provider and result.
    pub certificates_issued: Family<IssuedLabels, Counter>,
    /// Time spent in the provider per signature.
    pub sign_duration: Histogram,
    /// Earliest NotAfter among the published trust anchors.
    pub trust_anchor_expiry: Gauge,
    /// Bundle publications by sink and result.
    pub bundle_publish: Family<PublishLabels, Counter>,
    /// 1 when a sink holds the current bundle, 0 while it is failing.
    pub bundle_sink_up: Family<SinkLabels, Gauge>,
    /// NotAfter of the daemon's own serving certificate.
    pub serving_cert_expiry: Gauge,
    /// The signer generation (one more at every switch).
    pub rotation_generation: Gauge,
    /// 1 for the rollout stage in force, 0 for the others.
    pub rotation_stage: Family<StageLabels, Gauge>,
    /// Identities on the deny-list, as the last request saw it.
    pub identities_denied: Gauge,
    /// Leaves a provider issued longer than requested (but within
    /// `certificates.max_ttl`).
    pub certificates_longer_than_requested: Counter,
    /// The cert-manager provider's own metrics, registered whether or not
    /// it signs now, so a provider rolled in at run time records for real.
    pub cert_manager: std::sync::Arc<meshca_cert_manager::CertManagerMetrics>,
}

/// Labels of `meshca_rotation_stage`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// The stage's name.
    pub stage: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("meshca");
        let certificates_issued = Family::<IssuedLabels, Counter>::default();
        registry.register(
            "certificates_issued",
            "Certificate requests answered, by provider and result",
            certificates_issued.clone(),
        );
        let sign_duration = Histogram::new(exponential_buckets(0.000_05, 2.0, 20));
        registry.register(
            "sign_duration_seconds",
            "Time the provider took to sign one certificate",
            sign_duration.clone(),
        );
        let trust_anchor_expiry = Gauge::default();
        registry.register(
            "trust_anchor_expiry_timestamp_seconds",
            "Unix time at which the first published trust anchor expires",
            trust_anchor_expiry.clone(),
        );
        let bundle_publish = Family::<PublishLabels, Counter>::default();
        registry.register(
            "bundle_publish",
            "Trust bundle publications, by sink and result",
            bundle_publish.clone(),
        );
        let bundle_sink_up = Family::<SinkLabels, Gauge>::default();
        registry.register(
            "bundle_sink_up",
            "1 when the sink holds the current trust bundle",
            bundle_sink_up.clone(),
        );
        let serving_cert_expiry = Gauge::default();
        registry.register(
            "serving_certificate_expiry_timestamp_seconds",
            "Unix time at which the signing API's own certificate expires",
            serving_cert_expiry.clone(),
        );
        let rotation_generation = Gauge::default();
        registry.register(
            "rotation_generation",
            "Signer generation: one more at every change of signer",
            rotation_generation.clone(),
        );
        let rotation_stage = Family::<StageLabels, Gauge>::default();
        registry.register(
            "rotation_stage",
            "1 for the signer rollout stage in force",
            rotation_stage.clone(),
        );
        let identities_denied = Gauge::default();
        registry.register(
            "identities_denied",
            "Identities on the deny-list (meshca identity deny)",
            identities_denied.clone(),
        );
        let certificates_longer_than_requested = Counter::default();
        registry.register(
            "certificates_longer_than_requested",
            "Leaves issued with a longer lifetime than requested, within certificates.max_ttl",
            certificates_longer_than_requested.clone(),
        );
        let cert_manager = std::sync::Arc::new(meshca_cert_manager::CertManagerMetrics::register(
            &mut registry,
        ));
        Self {
            identities_denied,
            certificates_longer_than_requested,
            cert_manager,
            registry,
            rotation_generation,
            rotation_stage,
            certificates_issued,
            sign_duration,
            trust_anchor_expiry,
            bundle_publish,
            bundle_sink_up,
            serving_cert_expiry,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
