//! What `GET /v1/rotation` answers and `meshca rotate status` prints: the
//! rollout as an operator reads it. Its own type, so that the API changes
//! only on purpose, whatever the ledger's format does.

use serde::Serialize;
use time::format_description::well_known::Rfc3339;

use super::state::RolloutStatus;

/// The rollout, for people and scripts.
#[derive(Debug, Serialize)]
pub struct RotationReport {
    /// `steady`, `distribute`, `switch`, `reissue` or `retire`.
    pub stage: &'static str,
    /// The signer generation (one more at every switch).
    pub generation: u64,
    /// The provider signing now.
    pub provider: String,
    /// The provider being rolled in, during distribute.
    pub incoming: Option<String>,
    /// Anchors kept for certificates of earlier signers.
    pub retained: Vec<RetainedReport>,
    /// Stages entered, oldest first: `[stage, RFC 3339 time]`.
    pub history: Vec<(&'static str, String)>,
}

/// One retained set.
#[derive(Debug, Serialize)]
pub struct RetainedReport {
    /// The generation whose signer they belong to.
    pub generation: Option<u64>,
    /// The anchors, PEM.
    pub pem: String,
    /// When they leave the bundle (RFC 3339); `null` while unknown.
    pub until: Option<String>,
}

impl From<&RolloutStatus> for RotationReport {
    fn from(s: &RolloutStatus) -> Self {
        let time = |t: time::OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
        Self {
            stage: s.stage.as_str(),
            generation: s.generation,
            provider: s.provider.clone(),
            incoming: s.incoming.clone(),
            retained: s
                .retained
                .iter()
                .map(|r| RetainedReport {
                    generation: r.generation,
                    pem: meshca_provider::pem::encode_certificates(&r.anchors),
                    until: r.until.map(time),
                })
                .collect(),
            history: s
                .history
                .iter()
                .map(|(stage, at)| (stage.as_str(), time(*at)))
                .collect(),
        }
    }
}
