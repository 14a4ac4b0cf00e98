//! The rollout's stage, its persisted form, and its public view.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where a signer change stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// No change under way.
    Steady,
    /// The bundle holds old and new anchors; waiting for it to spread.
    Distribute,
    /// The new provider signs.
    Switch,
    /// Certificates are being re-issued by the new provider.
    Reissue,
    /// Waiting for the last old certificate to expire.
    Retire,
}

impl Stage {
    /// Every stage, in rollout order.
    pub const ALL: [Stage; 5] = [
        Self::Steady,
        Self::Distribute,
        Self::Switch,
        Self::Reissue,
        Self::Retire,
    ];

    /// The name used in JSON, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Steady => "steady",
            Self::Distribute => "distribute",
            Self::Switch => "switch",
            Self::Reissue => "reissue",
            Self::Retire => "retire",
        }
    }
}

/// What `GET /v1/rotation` answers and `rollout.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RolloutStatus {
    /// The stage.
    pub stage: Stage,
    /// The signer generation (one more at every switch).
    pub generation: u64,
    /// The provider signing now.
    pub provider: String,
    /// The provider being rolled in, during distribute.
    pub incoming: Option<String>,
    /// Anchors kept for certificates of earlier providers, with when they
    /// may go (RFC 3339; absent while still unknown).
    pub retained: Vec<Retained>,
    /// Stages entered, oldest first, with their times (RFC 3339).
    pub history: Vec<(Stage, String)>,
}

/// Anchors kept beyond their provider's time.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Retained {
    /// The anchors, PEM.
    pub pem: String,
    /// When they may leave the bundle.
    pub until: Option<String>,
}

impl RolloutStatus {
    /// The file that keeps it across restarts.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("rollout.json")
    }

    /// Load the persisted status, if any.
    pub fn load(state_dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(Self::path(state_dir)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Parse a persisted state.
    pub fn parse(json: &str) -> Option<Self> {
        serde_json::from_str(json).ok()
    }
}

/// Where the rollout state is persisted: always the state directory, and,
/// in a cluster, a ConfigMap (written by the leader) that outlives pods.
#[derive(Debug)]
pub struct StateStore {
    /// The state directory.
    pub state_dir: PathBuf,
    /// The ConfigMap writer's input, in a cluster.
    pub cluster: Option<tokio::sync::watch::Sender<String>>,
}

impl StateStore {
    /// Persist `status` (the file atomically, 0600).
    pub fn save(&self, status: &RolloutStatus) {
        match serde_json::to_string_pretty(status) {
            Ok(json) => {
                let path = RolloutStatus::path(&self.state_dir);
                if let Err(e) = crate::bundle::write_atomically(&path, json.as_bytes(), 0o600) {
                    tracing::warn!(error = %e, "failed to persist the rollout state");
                }
                if let Some(tx) = &self.cluster {
                    tx.send_replace(json);
                }
            }
            Err(e) => tracing::warn!(error = %e, "failed to encode the rollout state"),
        }
    }
}
