//! `rotation:`: how a change of signer is rolled out.

use std::time::Duration;

use serde::Deserialize;

/// How a change of signer is rolled out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationConfig {
    /// How long the bundle with old and new anchors must have been
    /// published before the new signer signs: long enough for every agent
    /// to fetch it (twice the agents' bundle refresh by default).
    pub propagation_delay: Duration,
}

/// `rotation:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRotation {
    #[serde(with = "humantime_serde")]
    propagation_delay: Duration,
}

impl Default for RawRotation {
    fn default() -> Self {
        Self {
            propagation_delay: Duration::from_secs(120),
        }
    }
}

impl RawRotation {
    /// Every value is valid.
    pub fn validate(&self) -> RotationConfig {
        RotationConfig {
            propagation_delay: self.propagation_delay,
        }
    }
}
