//! Where the bundles of peer trust domains are kept between restarts:
//! one file per trust domain under `<state_dir>/federation/` and, in a
//! cluster, one key per trust domain of the ConfigMap `meshca-federation`
//! (which outlives a pod's state directory, and from which replicas that
//! do not lead take what the leader fetched).
//!
//! A record that exists but cannot be read or no longer validates stops
//! the start: it is the trust meshca holds for a peer, never silently
//! dropped for a fresh fetch that may not come.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use meshca_provider::TrustDomain;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use super::bundle::{FederatedBundle, Refused};

/// A peer's bundle as held: validated, and when it was fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The bundle.
    pub bundle: Arc<FederatedBundle>,
    /// When it was fetched (Unix seconds); for the initial bundle, when it
    /// was read.
    pub fetched_at: i64,
}

/// Why a held bundle could not be read or kept.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The file exists but cannot be read, or cannot be written.
    #[error("failed to {action} {}", path.display())]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The record is not one meshca wrote.
    #[error("{place} is not a federated bundle record meshca wrote ({reason}); remove it to start from the configured bundle")]
    Corrupt {
        /// The file, or the ConfigMap and key.
        place: String,
        /// What is wrong.
        reason: String,
    },
    /// The bundle it holds no longer validates.
    #[error("the bundle in {place} is refused")]
    Refused {
        /// The file, or the ConfigMap and key.
        place: String,
        /// Why.
        #[source]
        source: Refused,
    },
    /// The ConfigMap could not be read or written.
    #[error(transparent)]
    Kubernetes(#[from] crate::cluster::KubeError),
}

/// The name of the ConfigMap (in meshca's namespace) of a cluster.
pub const CONFIGMAP: &str = "meshca-federation";

/// A record as meshca writes it.
fn encode(trust_domain: &TrustDomain, held: &Held) -> String {
    let record = Record {
        trust_domain: trust_domain.to_string(),
        fetched_at: held.fetched_at,
        bundle: held.bundle.document.clone(),
    };
    serde_json::to_string_pretty(&record).unwrap_or_default()
}

/// A record read from `place`, checked.
fn decode(trust_domain: &TrustDomain, bytes: &[u8], place: &str) -> Result<Held, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        place: place.to_owned(),
        reason,
    };
    let record: Record = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if record.trust_domain != trust_domain.as_str() {
        return Err(corrupt(format!(
            "it is the record of {}",
            record.trust_domain
        )));
    }
    let bundle = FederatedBundle::parse(trust_domain, record.bundle.to_string().as_bytes())
        .map_err(|source| StoreError::Refused {
            place: place.to_owned(),
            source,
        })?;
    Ok(Held {
        bundle: Arc::new(bundle),
        fetched_at: record.fetched_at,
    })
}

/// The persisted form.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    trust_domain: String,
    fetched_at: i64,
    bundle: Value,
}

/// The files under `<state_dir>/federation/`.
#[derive(Clone, Debug)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    /// The store of `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("federation"),
        }
    }

    /// The file of `trust_domain`.
    pub fn path(&self, trust_domain: &TrustDomain) -> PathBuf {
        self.dir.join(format!("{trust_domain}.json"))
    }

    /// The bundle held for `trust_domain`, if one was kept.
    ///
    /// # Errors
    /// [`StoreError`] when a file exists but cannot be used.
    pub fn load(&self, trust_domain: &TrustDomain) -> Result<Option<Held>, StoreError> {
        let path = self.path(trust_domain);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        decode(trust_domain, &text, &path.display().to_string()).map(Some)
    }

    /// Keep `held` for `trust_domain` (atomically; bundles are public, so
    /// the file is 0644).
    ///
    /// # Errors
    /// [`StoreError::Io`].
    pub fn save(&self, trust_domain: &TrustDomain, held: &Held) -> Result<(), StoreError> {
        let path = self.path(trust_domain);
        let json = encode(trust_domain, held);
        crate::bundle::write_atomically(&path, json.as_bytes(), 0o644).map_err(|source| {
            StoreError::Io {
                action: "write",
                path,
                source,
            }
        })
    }
}

/// The ConfigMap [`CONFIGMAP`] in meshca's namespace: one key
/// `<trust domain>.json` per peer.
#[derive(Clone)]
pub struct ConfigMapStore {
    api: kube::Api<ConfigMap>,
    namespace: String,
}

impl std::fmt::Debug for ConfigMapStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConfigMap {}/{CONFIGMAP}", self.namespace)
    }
}

impl ConfigMapStore {
    /// The store of a cluster.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: kube::Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
        }
    }

    fn key(trust_domain: &TrustDomain) -> String {
        format!("{trust_domain}.json")
    }

    /// The record kept for `trust_domain`, if any.
    ///
    /// # Errors
    /// [`StoreError`]: the ConfigMap cannot be read, or the record is
    /// unusable.
    pub async fn load(&self, trust_domain: &TrustDomain) -> Result<Option<Held>, StoreError> {
        let key = Self::key(trust_domain);
        let action = format!("read ConfigMap {}/{CONFIGMAP}", self.namespace);
        let Some(text) = self
            .api
            .get_opt(CONFIGMAP)
            .await
            .map_err(crate::cluster::KubeError::api(action))?
            .and_then(|cm| cm.data)
            .and_then(|mut data| data.remove(&key))
        else {
            return Ok(None);
        };
        let place = format!("ConfigMap {}/{CONFIGMAP} key {key}", self.namespace);
        decode(trust_domain, text.as_bytes(), &place).map(Some)
    }

    /// Keep `held` for `trust_domain`.
    ///
    /// # Errors
    /// [`StoreError::Kubernetes`].
    pub async fn save(&self, trust_domain: &TrustDomain, held: &Held) -> Result<(), StoreError> {
        let key = Self::key(trust_domain);
        let json = encode(trust_domain, held);
        Ok(crate::cluster::write_configmap_key(&self.api, CONFIGMAP, &key, &json).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> FederatedBundle {
        let key = rcgen::KeyPair::generate().expect("as the test set it up");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("as the test set it up");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let der = params
            .self_signed(&key)
            .expect("as the test set it up")
            .der()
            .clone();
        let doc = crate::jwt::documents::spiffe_bundle(
            &[der],
            None,
            3,
            std::time::Duration::from_secs(60),
        );
        FederatedBundle::parse(
            &TrustDomain::new("b.test").expect("valid"),
            doc.to_string().as_bytes(),
        )
        .expect("valid")
    }

    #[test]
    fn a_kept_bundle_comes_back_and_a_damaged_one_stops_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(dir.path());
        let td = TrustDomain::new("b.test").expect("valid");
        assert_eq!(store.load(&td).expect("nothing kept"), None);
        let held = Held {
            bundle: Arc::new(bundle()),
            fetched_at: 1234,
        };
        store.save(&td, &held).expect("saved");
        assert_eq!(store.load(&td).expect("read"), Some(held));

        std::fs::write(store.path(&td), b"{\"truncated").expect("write");
        let e = store.load(&td).expect_err("refused");
        assert!(e.to_string().contains("b.test.json"), "{e}");
        assert!(matches!(e, StoreError::Corrupt { .. }));
    }
}
