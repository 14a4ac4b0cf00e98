//! Where the bundles of peer trust domains are kept between restarts:
//! one file per trust domain under `<state_dir>/federation/` and, in a
//! cluster, one key per trust domain of the ConfigMap `meshca-federation`
//! (which outlives a pod's state directory, and from which replicas that
//! do not lead take what the leader fetched).
//!
//! A record that exists but cannot be read or no longer validates stops
//! the start: it is the trust meshca holds for a peer, never silently
//! dropped for a fresh fetch that may not come.

use std::path::Path;
use std::sync::Arc;

use meshca_provider::TrustDomain;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::bundle::spiffe::{PeerBundle, Refused};
use crate::store::{Over, Store};

/// A peer's bundle as held: validated, and when it was fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The bundle.
    pub bundle: Arc<PeerBundle>,
    /// When it was fetched (Unix seconds); for the initial bundle, when it
    /// was read.
    pub fetched_at: i64,
}

/// Why a held bundle could not be read or kept.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The record could not be read or written.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
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
}

/// The name of the ConfigMap (in meshca's namespace) of a cluster.
pub const CONFIGMAP: &str = "meshca-federation";

/// A record as meshca writes it.
fn encode(trust_domain: &TrustDomain, held: &Held) -> Result<Vec<u8>, StoreError> {
    let record = Record {
        trust_domain: trust_domain.to_string(),
        fetched_at: held.fetched_at,
        bundle: held.bundle.document.clone(),
    };
    Ok(crate::store::to_json(
        &record,
        &format!("the federated bundle of {trust_domain}"),
    )?)
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
    let bundle = PeerBundle::parse(trust_domain, record.bundle.to_string().as_bytes()).map_err(
        |source| StoreError::Refused {
            place: place.to_owned(),
            source,
        },
    )?;
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

/// Where one peer's bundle is kept: its file under
/// `<state_dir>/federation/` (bundles are public: 0644), or its key of
/// the ConfigMap [`CONFIGMAP`] in meshca's namespace.
#[derive(Clone, Debug)]
pub struct Kept(Store);

impl Kept {
    /// The file of `trust_domain` under `state_dir`.
    pub fn file(state_dir: &Path, trust_domain: &TrustDomain) -> Self {
        let path = state_dir
            .join("federation")
            .join(format!("{trust_domain}.json"));
        Self(Store::file(path, 0o644))
    }

    /// The key of `trust_domain` in the ConfigMap of a cluster.
    pub fn configmap(client: kube::Client, namespace: &str, trust_domain: &TrustDomain) -> Self {
        let key = format!("{trust_domain}.json");
        Self(Store::configmap(client, namespace, CONFIGMAP, &key))
    }

    /// The bundle held for `trust_domain`, if one was kept.
    ///
    /// # Errors
    /// [`StoreError`] when a record exists but cannot be used.
    pub async fn load(&self, trust_domain: &TrustDomain) -> Result<Option<Held>, StoreError> {
        match self.0.load().await? {
            Some(record) => decode(trust_domain, &record.bytes, &self.0.describe()).map(Some),
            None => Ok(None),
        }
    }

    /// Keep `held` for `trust_domain`, whatever was kept before: a newer
    /// fetch stands on its own.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn save(&self, trust_domain: &TrustDomain, held: &Held) -> Result<(), StoreError> {
        let json = encode(trust_domain, held)?;
        Ok(self.0.save(&json, Over::Anything).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> PeerBundle {
        let key = rcgen::KeyPair::generate().expect("as the test set it up");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("as the test set it up");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let der = params
            .self_signed(&key)
            .expect("as the test set it up")
            .der()
            .clone();
        let doc =
            crate::bundle::spiffe::document(&[der], &[], 3, std::time::Duration::from_secs(60));
        PeerBundle::parse(
            &TrustDomain::new("b.test").expect("valid"),
            doc.to_string().as_bytes(),
        )
        .expect("valid")
    }

    #[tokio::test]
    async fn a_kept_bundle_comes_back_and_a_damaged_one_stops_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let td = TrustDomain::new("b.test").expect("valid");
        let store = Kept::file(dir.path(), &td);
        assert_eq!(store.load(&td).await.expect("nothing kept"), None);
        let held = Held {
            bundle: Arc::new(bundle()),
            fetched_at: 1234,
        };
        store.save(&td, &held).await.expect("saved");
        assert_eq!(store.load(&td).await.expect("read"), Some(held));

        let path = dir.path().join("federation/b.test.json");
        std::fs::write(path, b"{\"truncated").expect("write");
        let e = store.load(&td).await.expect_err("refused");
        assert!(e.to_string().contains("b.test.json"), "{e}");
        assert!(matches!(e, StoreError::Corrupt { .. }));
    }
}
