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
use rustls_pki_types::CertificateDer;
use std::sync::Mutex;
use x509_parser::prelude::{FromDer, X509Certificate};

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

/// Labels of `meshca_jwt_svids_issued_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// How the request arrived (`api`).
    pub frontend: &'static str,
    /// How the caller proved who it is: `token` or `certificate`.
    pub credential: &'static str,
    /// `success` or the API error code.
    pub result: &'static str,
}

/// Labels of `meshca_trust_anchor_expiry_timestamp_seconds`: one series
/// per anchor in the bundle.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnchorLabels {
    /// The anchor's subject, as OpenSSL prints it.
    pub subject: String,
    /// The first 8 bytes of its SHA-256 fingerprint, in hex.
    pub fingerprint: String,
}

/// Labels of `meshca_sign_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// The provider kind.
    pub provider: &'static str,
}

/// The expiries an outage follows from, as Unix times: once one passes,
/// workloads stop trusting each other or meshca stops signing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Horizons {
    /// The first trust anchor to expire.
    pub anchors: Option<i64>,
    /// The first intermediate (of the serving chain) to expire.
    pub intermediate: Option<i64>,
    /// The signing API's own certificate.
    pub serving: Option<i64>,
    /// The provider's credential, when it cannot be renewed or obtained
    /// again (a Vault token's maximum TTL).
    pub credential: Option<i64>,
    /// The last JWT signing key stops signing.
    pub jwt_key: Option<i64>,
}

impl Horizons {
    /// Seconds from `now` until the first of them, if any is known.
    pub fn time_to_outage(&self, now: i64) -> Option<i64> {
        [
            self.anchors,
            self.intermediate,
            self.serving,
            self.credential,
            self.jwt_key,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|t| t - now)
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn sign_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
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

/// Labels of `meshca_kubernetes_writes_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// What was written, e.g. `podcertificaterequests/status`.
    pub resource: &'static str,
    /// The API server's HTTP status, e.g. `422`.
    pub code: u16,
}

/// Labels of `meshca_istio_impersonations_denied_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ImpersonationLabels {
    /// Why: `untrusted_caller`, `no_node`, `not_on_node`, `foreign_identity`.
    pub reason: &'static str,
}

/// Every metric meshca exports.
pub struct Metrics {
    registry: Registry,
    /// Certificates issued or refused, by provider and result.
    pub certificates_issued: Family<IssuedLabels, Counter>,
    /// `meshca_jwt_svids_issued_total`.
    pub jwt_svids_issued: Family<TokenLabels, Counter>,
    /// Time spent in the provider per signature.
    pub sign_duration: HistogramFamily<ProviderLabels>,
    /// Earliest NotAfter among the published trust anchors.
    pub trust_anchor_expiry: Family<AnchorLabels, Gauge>,
    /// `meshca_intermediate_expiry_timestamp_seconds`.
    pub intermediate_expiry: Gauge,
    /// `meshca_time_to_outage_seconds`, computed at each scrape.
    time_to_outage: Gauge,
    horizons: Mutex<Horizons>,
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
    /// 1 when the latest rollout ledger is written to a store (`file`,
    /// `configmap`), 0 while writing it fails.
    pub rotation_ledger_persisted: Family<StoreLabels, Gauge>,
    /// Identities on the deny-list, as the last request saw it.
    pub identities_denied: Gauge,
    /// Leaves a provider issued longer than requested (but within
    /// `certificates.max_ttl`).
    pub certificates_longer_than_requested: Counter,
    /// Writes the API server refused for good (invalid, forbidden): each
    /// is given up, never retried as it was.
    pub kubernetes_writes_refused: Family<RefusalLabels, Counter>,
    /// Istio node agents refused a certificate on another identity's
    /// behalf, by reason.
    pub istio_impersonations_denied: Family<ImpersonationLabels, Counter>,
    /// The cert-manager provider's own metrics, registered whether or not
    /// it signs now, so a provider rolled in at run time records for real.
    pub cert_manager: std::sync::Arc<meshca_cert_manager::CertManagerMetrics>,
    /// SPIFFE federation: the peers' bundles.
    federation: FederationMetrics,
}

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

/// The federation metrics; the ages are computed at each scrape.
struct FederationMetrics {
    age: Family<DomainLabels, Gauge>,
    sequence: Family<DomainLabels, Gauge>,
    fetches: Family<FetchLabels, Counter>,
    fetched_at: Mutex<std::collections::BTreeMap<String, i64>>,
}

impl FederationMetrics {
    fn register(registry: &mut Registry) -> Self {
        let this = Self {
            age: Family::default(),
            sequence: Family::default(),
            fetches: Family::default(),
            fetched_at: Mutex::default(),
        };
        registry.register(
            "federated_bundle_age_seconds",
            "Seconds since the bundle held for a federated trust domain was fetched",
            this.age.clone(),
        );
        registry.register(
            "federated_bundle_sequence",
            "spiffe_sequence of the bundle held for a federated trust domain",
            this.sequence.clone(),
        );
        registry.register(
            "federated_bundle_fetches",
            "Fetches of federated bundles, by trust domain and result (ok, refused, unreachable, setup)",
            this.fetches.clone(),
        );
        this
    }

    fn update_ages(&self, now: i64) {
        let Ok(fetched) = self.fetched_at.lock() else {
            return;
        };
        for (trust_domain, at) in fetched.iter() {
            self.age
                .get_or_create(&DomainLabels {
                    trust_domain: trust_domain.clone(),
                })
                .set(now.saturating_sub(*at));
        }
    }
}

/// Labels of `meshca_rotation_ledger_persisted`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// `file` or `configmap`.
    pub store: &'static str,
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
        let jwt_svids_issued = Family::<TokenLabels, Counter>::default();
        registry.register(
            "jwt_svids_issued",
            "JWT-SVID requests answered, by frontend, credential and result",
            jwt_svids_issued.clone(),
        );
        let sign_duration: HistogramFamily<ProviderLabels> =
            Family::new_with_constructor(sign_histogram);
        registry.register(
            "sign_duration_seconds",
            "Time the provider took to sign one certificate, by provider",
            sign_duration.clone(),
        );
        let trust_anchor_expiry = Family::<AnchorLabels, Gauge>::default();
        registry.register(
            "trust_anchor_expiry_timestamp_seconds",
            "Unix time at which each published trust anchor expires",
            trust_anchor_expiry.clone(),
        );
        let intermediate_expiry = Gauge::default();
        registry.register(
            "intermediate_expiry_timestamp_seconds",
            "Unix time at which the first intermediate of the chain meshca hands out expires (0: none)",
            intermediate_expiry.clone(),
        );
        let time_to_outage = Gauge::default();
        registry.register(
            "time_to_outage_seconds",
            "Seconds until the first of: a trust anchor, an intermediate or the serving certificate expires, or the provider's credential reaches its maximum TTL",
            time_to_outage.clone(),
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
        let rotation_ledger_persisted = Family::<StoreLabels, Gauge>::default();
        registry.register(
            "rotation_ledger_persisted",
            "1 when the latest rollout ledger is written to the store (file, configmap), 0 while writing it fails",
            rotation_ledger_persisted.clone(),
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
        let istio_impersonations_denied = Family::<ImpersonationLabels, Counter>::default();
        registry.register(
            "istio_impersonations_denied",
            "Certificates an Istio node agent asked for on another identity's behalf and was refused, by reason",
            istio_impersonations_denied.clone(),
        );
        let kubernetes_writes_refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "kubernetes_writes_refused",
            "Writes the Kubernetes API server refused for good (invalid, forbidden), by resource and status; none is retried as it was",
            kubernetes_writes_refused.clone(),
        );
        let cert_manager = std::sync::Arc::new(meshca_cert_manager::CertManagerMetrics::register(
            &mut registry,
        ));
        Self {
            identities_denied,
            certificates_longer_than_requested,
            kubernetes_writes_refused,
            istio_impersonations_denied,
            cert_manager,
            federation: FederationMetrics::register(&mut registry),
            registry,
            rotation_generation,
            rotation_stage,
            rotation_ledger_persisted,
            certificates_issued,
            jwt_svids_issued,
            sign_duration,
            trust_anchor_expiry,
            intermediate_expiry,
            time_to_outage,
            horizons: Mutex::default(),
            bundle_publish,
            bundle_sink_up,
            serving_cert_expiry,
        }
    }

    /// Whether the latest rollout ledger reached `store`.
    pub fn record_ledger_persisted(&self, store: &'static str, persisted: bool) {
        self.rotation_ledger_persisted
            .get_or_create(&StoreLabels { store })
            .set(i64::from(persisted));
    }

    /// One series per anchor of the bundle now published.
    pub fn record_anchors(&self, anchors: &[CertificateDer<'_>]) {
        self.trust_anchor_expiry.clear();
        let mut earliest = None::<i64>;
        for der in anchors {
            let Ok((_, cert)) = X509Certificate::from_der(der) else {
                continue;
            };
            let not_after = cert.validity().not_after.timestamp();
            earliest = Some(earliest.map_or(not_after, |e| e.min(not_after)));
            let digest = crate::crypto::sha256(der);
            let fingerprint = base16ct::lower::encode_string(&digest[..8]);
            self.trust_anchor_expiry
                .get_or_create(&AnchorLabels {
                    subject: cert.subject().to_string(),
                    fingerprint,
                })
                .set(not_after);
        }
        self.update_horizons(|h| h.anchors = earliest);
    }

    /// The serving certificate just issued, leaf first: its expiry and
    /// that of the first intermediate to expire.
    pub fn record_serving_chain(&self, chain: &[CertificateDer<'_>]) {
        let not_after = |der: &CertificateDer<'_>| {
            X509Certificate::from_der(der)
                .ok()
                .map(|(_, c)| c.validity().not_after.timestamp())
        };
        let serving = chain.first().and_then(not_after);
        let intermediate = chain.iter().skip(1).filter_map(not_after).min();
        self.serving_cert_expiry.set(serving.unwrap_or_default());
        self.intermediate_expiry
            .set(intermediate.unwrap_or_default());
        self.update_horizons(|h| {
            h.serving = serving;
            h.intermediate = intermediate;
        });
    }

    /// When the provider's credential can no longer be renewed, if ever.
    pub fn record_credential_expiry(&self, expiry: Option<i64>) {
        self.update_horizons(|h| h.credential = expiry);
    }

    /// When the last JWT signing key stops signing.
    pub fn record_jwt_key_expiry(&self, expiry: Option<i64>) {
        self.update_horizons(|h| h.jwt_key = expiry);
    }

    /// The bundle now held for a federated trust domain.
    pub fn record_federated_bundle(
        &self,
        trust_domain: &str,
        fetched_at: i64,
        sequence: Option<u64>,
    ) {
        if let Ok(mut fetched) = self.federation.fetched_at.lock() {
            fetched.insert(trust_domain.to_owned(), fetched_at);
        }
        let labels = DomainLabels {
            trust_domain: trust_domain.to_owned(),
        };
        let sequence = sequence.map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX));
        self.federation
            .sequence
            .get_or_create(&labels)
            .set(sequence);
    }

    /// One fetch of a federated bundle and its `result`.
    pub fn record_federated_fetch(&self, trust_domain: &str, result: &'static str) {
        self.federation
            .fetches
            .get_or_create(&FetchLabels {
                trust_domain: trust_domain.to_owned(),
                result,
            })
            .inc();
    }

    fn update_horizons(&self, f: impl FnOnce(&mut Horizons)) {
        if let Ok(mut h) = self.horizons.lock() {
            f(&mut h);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if let Some(left) = self
            .horizons
            .lock()
            .ok()
            .and_then(|h| h.time_to_outage(now))
        {
            self.time_to_outage.set(left);
        }
        self.federation.update_ages(now);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outage_is_the_first_horizon() {
        let mut h = Horizons::default();
        assert_eq!(h.time_to_outage(100), None, "nothing known");
        h.anchors = Some(10_000);
        h.serving = Some(500);
        assert_eq!(h.time_to_outage(100), Some(400));
        h.credential = Some(300);
        assert_eq!(
            h.time_to_outage(100),
            Some(200),
            "a Vault token at its max TTL"
        );
        h.intermediate = Some(50);
        assert_eq!(h.time_to_outage(100), Some(-50), "already past: negative");
    }
}
