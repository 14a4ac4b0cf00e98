//! Prometheus metrics, all prefixed `meshca_`.
//!
//! One [`Metrics`] value is built at start and shared; components record
//! into it and `/metrics` renders it. Label sets are small and bounded
//! (provider kinds, result codes, sink names), never identities.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};
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

/// The expiries an outage follows from, as Unix times, by what expires
/// (`anchors`, `intermediate`, `serving`, `credential`, and what features
/// add, `jwt_key`): once one passes, workloads stop trusting each other or
/// meshca stops signing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Horizons(std::collections::BTreeMap<&'static str, i64>);

impl Horizons {
    /// Set (or, `None`, forget) the horizon `what`.
    pub fn set(&mut self, what: &'static str, at: Option<i64>) {
        match at {
            Some(t) => {
                self.0.insert(what, t);
            }
            None => {
                self.0.remove(what);
            }
        }
    }

    /// Seconds from `now` until the first of them, if any is known.
    pub fn time_to_outage(&self, now: i64) -> Option<i64> {
        self.0.values().min().map(|t| t - now)
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

/// Every metric meshca exports.
pub struct Metrics {
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
    /// The cert-manager provider's own metrics, registered whether or not
    /// it signs now, so a provider rolled in at run time records for real.
    pub cert_manager: std::sync::Arc<meshca_cert_manager::CertManagerMetrics>,
    /// The registry every metric is in, features' included.
    registry: Mutex<Registry>,
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
    /// Create and register every metric of the daemon's core; features
    /// register theirs with [`Metrics::register`].
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("meshca");
        let (certificates_issued, jwt_svids_issued, sign_duration) = issuance(&mut r);
        let (identities_denied, certificates_longer_than_requested, kubernetes_writes_refused) =
            refusals(&mut r);
        let (trust_anchor_expiry, intermediate_expiry, serving_cert_expiry, time_to_outage) =
            expiries(&mut r);
        let (rotation_generation, rotation_stage, rotation_ledger_persisted) = rotation(&mut r);
        let bundle_publish = add(
            &mut r,
            "bundle_publish",
            "Trust bundle publications, by sink and result",
            Family::default(),
        );
        let bundle_sink_up = add(
            &mut r,
            "bundle_sink_up",
            "1 when the sink holds the current trust bundle",
            Family::default(),
        );
        let cert_manager =
            std::sync::Arc::new(meshca_cert_manager::CertManagerMetrics::register(&mut r));
        Self {
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
            rotation_generation,
            rotation_stage,
            rotation_ledger_persisted,
            identities_denied,
            certificates_longer_than_requested,
            kubernetes_writes_refused,
            cert_manager,
            registry: Mutex::new(r),
        }
    }

    /// Register `metric` as `meshca_<name>`: how a feature adds its own.
    pub fn register<M: Metric + Clone>(&self, name: &str, help: &str, metric: M) -> M {
        if let Ok(mut registry) = self.registry.lock() {
            registry.register(name, help, metric.clone());
        }
        metric
    }

    /// Register `collector`, whose values are computed at each scrape.
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.register_collector(collector);
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
        self.set_horizon("anchors", earliest);
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
        self.set_horizon("serving", serving);
        self.set_horizon("intermediate", intermediate);
    }

    /// When the provider's credential can no longer be renewed, if ever.
    pub fn record_credential_expiry(&self, expiry: Option<i64>) {
        self.set_horizon("credential", expiry);
    }

    /// When `what` expires (or, `None`, that nothing of it will): one of
    /// the horizons of `meshca_time_to_outage_seconds`.
    pub fn set_horizon(&self, what: &'static str, at: Option<i64>) {
        if let Ok(mut h) = self.horizons.lock() {
            h.set(what, at);
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
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }
}

/// Register `metric` in `r` and return it.
fn add<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

type Issuance = (
    Family<IssuedLabels, Counter>,
    Family<TokenLabels, Counter>,
    HistogramFamily<ProviderLabels>,
);

fn issuance(r: &mut Registry) -> Issuance {
    (
        add(
            r,
            "certificates_issued",
            "Certificate requests answered, by frontend, provider and result",
            Family::default(),
        ),
        add(
            r,
            "jwt_svids_issued",
            "JWT-SVID requests answered, by frontend, credential and result",
            Family::default(),
        ),
        add(
            r,
            "sign_duration_seconds",
            "Time the provider took to sign one certificate, by provider",
            Family::new_with_constructor(sign_histogram),
        ),
    )
}

fn refusals(r: &mut Registry) -> (Gauge, Counter, Family<RefusalLabels, Counter>) {
    (
        add(r, "identities_denied", "Identities on the deny-list (meshca identity deny)", Gauge::default()),
        add(r, "certificates_longer_than_requested", "Leaves issued with a longer lifetime than requested, within certificates.max_ttl", Counter::default()),
        add(r, "kubernetes_writes_refused", "Writes the Kubernetes API server refused for good (invalid, forbidden), by resource and status; none is retried as it was", Family::default()),
    )
}

fn expiries(r: &mut Registry) -> (Family<AnchorLabels, Gauge>, Gauge, Gauge, Gauge) {
    (
        add(r, "trust_anchor_expiry_timestamp_seconds", "Unix time at which each published trust anchor expires", Family::default()),
        add(r, "intermediate_expiry_timestamp_seconds", "Unix time at which the first intermediate of the chain meshca hands out expires (0: none)", Gauge::default()),
        add(r, "serving_certificate_expiry_timestamp_seconds", "Unix time at which the signing API's own certificate expires", Gauge::default()),
        add(r, "time_to_outage_seconds", "Seconds until the first of: a trust anchor, an intermediate or the serving certificate expires, the provider's credential reaches its maximum TTL, or the last JWT signing key stops signing", Gauge::default()),
    )
}

fn rotation(
    r: &mut Registry,
) -> (
    Gauge,
    Family<StageLabels, Gauge>,
    Family<StoreLabels, Gauge>,
) {
    (
        add(r, "rotation_generation", "Signer generation: one more at every change of signer", Gauge::default()),
        add(r, "rotation_stage", "1 for the signer rollout stage in force", Family::default()),
        add(r, "rotation_ledger_persisted", "1 when the latest rollout ledger is written to the store (file, configmap), 0 while writing it fails", Family::default()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outage_is_the_first_horizon() {
        let mut h = Horizons::default();
        assert_eq!(h.time_to_outage(100), None, "nothing known");
        h.set("anchors", Some(10_000));
        h.set("serving", Some(500));
        assert_eq!(h.time_to_outage(100), Some(400));
        h.set("credential", Some(300));
        assert_eq!(
            h.time_to_outage(100),
            Some(200),
            "a Vault token at its max TTL"
        );
        h.set("intermediate", Some(50));
        assert_eq!(h.time_to_outage(100), Some(-50), "already past: negative");
        h.set("intermediate", None);
        assert_eq!(h.time_to_outage(100), Some(200), "forgotten");
    }
}
