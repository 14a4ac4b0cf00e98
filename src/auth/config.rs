//! `auth:`: how callers authenticate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Caller authentication.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// The static token store (hashes only).
    pub tokens_file: PathBuf,
    /// Identities denied any certificate (`meshca identity deny`).
    pub denied_file: PathBuf,
    /// ServiceAccount tokens checked with TokenReview, used when meshca
    /// runs with a cluster; `None` when the cluster is turned off.
    pub kubernetes: Option<TokenReviewConfig>,
}

/// How ServiceAccount tokens are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenReviewConfig {
    /// The audience the projected tokens are issued for.
    pub audience: String,
    /// How long an accepted token is remembered.
    pub cache_ttl: Duration,
}

/// `auth:` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    tokens_file: Option<PathBuf>,
    denied_file: Option<PathBuf>,
    kubernetes: RawTokenReview,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTokenReview {
    audience: String,
    #[serde(with = "humantime_serde")]
    cache_ttl: Duration,
}

impl Default for RawTokenReview {
    fn default() -> Self {
        Self {
            audience: "meshca".into(),
            cache_ttl: Duration::from_secs(30),
        }
    }
}

impl RawAuth {
    /// The settings; tokens default to `<state_dir>/tokens.yaml`, the
    /// deny-list to `<state_dir>/denied.yaml`. Every value is valid.
    pub fn validate(&self, state_dir: &Path, cluster: bool) -> AuthConfig {
        AuthConfig {
            tokens_file: self
                .tokens_file
                .clone()
                .unwrap_or_else(|| state_dir.join("tokens.yaml")),
            denied_file: self
                .denied_file
                .clone()
                .unwrap_or_else(|| state_dir.join("denied.yaml")),
            kubernetes: cluster.then(|| TokenReviewConfig {
                audience: self.kubernetes.audience.clone(),
                cache_ttl: self.kubernetes.cache_ttl,
            }),
        }
    }
}
