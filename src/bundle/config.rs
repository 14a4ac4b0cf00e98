//! `bundle:`: where the trust bundle is published.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::SecretRef;
use crate::validation::{is_dns_name, Errors};

/// Where the trust bundle goes.
#[derive(Clone, Debug)]
pub struct BundleConfig {
    /// The bundle file, written atomically.
    pub file: PathBuf,
    /// The bundle Secret (`ca.crt`), written when meshca runs with a
    /// cluster; `None` when the cluster is turned off.
    pub secret: Option<SecretRef>,
    /// How often the provider's anchors are re-read.
    pub refresh_interval: Duration,
}

/// A `{namespace, name}` reference as written; both default to the OSM
/// bundle Secret, `osm-system/osm-ca-bundle`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSecretRef {
    namespace: String,
    name: String,
}

/// The OSM bundle Secret, `(namespace, name)`.
pub const DEFAULT_SECRET: (&str, &str) = ("osm-system", "osm-ca-bundle");

impl Default for RawSecretRef {
    fn default() -> Self {
        Self {
            namespace: DEFAULT_SECRET.0.into(),
            name: DEFAULT_SECRET.1.into(),
        }
    }
}

impl RawSecretRef {
    /// The reference, with problems (under `path`) in `errors`.
    pub fn validate(&self, path: &str, errors: &mut Errors) -> SecretRef {
        for (key, value) in [("namespace", &self.namespace), ("name", &self.name)] {
            if !is_dns_name(value) {
                errors.add(
                    &format!("{path}.{key}"),
                    format!("{value:?} is not a valid Kubernetes name"),
                );
            }
        }
        SecretRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// `bundle:` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawBundle {
    file: Option<PathBuf>,
    kubernetes_secret: RawSecretRef,
    #[serde(with = "humantime_serde")]
    refresh_interval: Option<Duration>,
}

impl RawBundle {
    /// The bundle Secret as written (the ingress settings name it too).
    pub fn secret(&self) -> (&str, &str) {
        (
            &self.kubernetes_secret.namespace,
            &self.kubernetes_secret.name,
        )
    }

    /// The sinks' settings; the file defaults to `<state_dir>/bundle/ca.crt`
    /// and the Secret is kept only while `cluster` may be used.
    pub fn validate(&self, state_dir: &Path, cluster: bool, errors: &mut Errors) -> BundleConfig {
        let refresh_interval = self.refresh_interval.unwrap_or(Duration::from_secs(60));
        if refresh_interval < Duration::from_secs(1) {
            errors.add("bundle.refresh_interval", "must be at least 1s");
        }
        BundleConfig {
            file: self
                .file
                .clone()
                .unwrap_or_else(|| state_dir.join("bundle").join("ca.crt")),
            secret: cluster.then(|| {
                self.kubernetes_secret
                    .validate("bundle.kubernetes_secret", errors)
            }),
            refresh_interval,
        }
    }
}
