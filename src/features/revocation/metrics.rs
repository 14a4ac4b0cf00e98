//! Revocation's metrics: how many serials the CRLs list, and when each
//! list must be replaced.

use meshca_provider::ProviderKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::publisher::Published;
use crate::metrics::Metrics;

/// Labels of `meshca_revoked_certificates`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// The provider whose CRLs list them.
    pub provider: &'static str,
}

/// Labels of `meshca_crl_next_update_timestamp_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerLabels {
    /// The issuing CA's subject.
    pub issuer: String,
}

/// The revocation metrics.
#[derive(Clone, Debug)]
pub struct RevocationMetrics {
    revoked: Family<ProviderLabels, Gauge>,
    next_update: Family<IssuerLabels, Gauge>,
}

impl RevocationMetrics {
    /// Register them with `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        Self {
            revoked: metrics.register(
                "revoked_certificates",
                "Serials the published CRLs list (revoked and not yet expired), by provider",
                Family::default(),
            ),
            next_update: metrics.register(
                "crl_next_update_timestamp_seconds",
                "nextUpdate of the CRL published for each issuing CA (Unix seconds); alert well before it passes",
                Family::default(),
            ),
        }
    }

    /// `published` is what is served now, from `provider`.
    pub fn record(&self, provider: ProviderKind, published: &Published) {
        self.revoked.clear();
        self.revoked
            .get_or_create(&ProviderLabels {
                provider: provider.as_str(),
            })
            .set(i64::try_from(published.request.revoked.len()).unwrap_or(i64::MAX));
        self.next_update.clear();
        let next = published.request.next_update.unix_timestamp();
        for list in &published.lists {
            self.next_update
                .get_or_create(&IssuerLabels {
                    issuer: list.issuer.clone(),
                })
                .set(next);
        }
    }
}
