//! Where the JWT signing keys live: a record of meshca's store
//! (`crate::store`): a file (0600) in the state directory, or in a
//! cluster the Secret `meshca-jwt-keys`, which every replica reads and any
//! may update. A write names what it read, so another replica's key made
//! in between is a conflict to read again and re-plan: replicas starting
//! together converge on one key.

use meshca_provider::crypto::custody::Custody;
use thiserror::Error;

use super::keyring::{Keyring, KeyringError};
use crate::store::{Over, Store};

/// The Secret's name.
pub const SECRET_NAME: &str = "meshca-jwt-keys";
/// The key under which the keys are stored, in the Secret and as a file
/// name.
const KEY: &str = "jwt-keys.json";

/// Where the keys are kept.
#[derive(Clone, Debug)]
pub struct KeyStore(Store);

/// The keys as read, with what a write must replace.
#[derive(Default)]
pub struct Loaded {
    /// The keys (empty when none was ever stored).
    pub keyring: Keyring,
    record: Option<crate::store::Loaded>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("keyring", &self.keyring)
            .finish_non_exhaustive()
    }
}

/// Why the keys could not be read or written.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// What is stored cannot be used: the start stops rather than make
    /// new keys, which would strand every live token.
    #[error("{0} holds JWT signing keys meshca cannot use; fix or restore it (deleting it makes new keys, and tokens signed with the old ones stop validating)")]
    Unusable(String, #[source] KeyringError),
    /// The keys could not be encoded for storage.
    #[error("failed to encode the JWT signing keys")]
    Encode(#[source] KeyringError),
    /// A new key could not be made.
    #[error("failed to make a JWT signing key")]
    Generate(#[source] crate::jose::KeyError),
    /// The custodian of stored keys cannot be reached now.
    #[error("the custodian of the JWT signing keys is unavailable")]
    CustodyUnavailable(#[source] KeyringError),
}

impl StoreError {
    /// Whether reading again may help (as opposed to an operator's fix).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store(e) => e.is_transient(),
            Self::CustodyUnavailable(_) => true,
            Self::Generate(e) => e.retry_after().is_some(),
            _ => false,
        }
    }

    /// Whether another replica wrote first.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Store(crate::store::StoreError::Conflict(_)))
    }
}

impl KeyStore {
    /// The Secret in meshca's namespace with a cluster, else the state
    /// directory's file.
    pub fn new(cluster: Option<(kube::Client, &str)>, state_dir: &std::path::Path) -> Self {
        Self(match cluster {
            Some((client, namespace)) => Store::secret(client, namespace, SECRET_NAME, KEY),
            None => Store::file(state_dir.join(KEY), 0o600),
        })
    }

    /// Where the keys are, for messages.
    pub fn describe(&self) -> String {
        self.0.describe()
    }

    /// The stored keys, or none when nothing is stored yet: keys `known`
    /// holds are reused, keys in custody found in `custody`.
    ///
    /// # Errors
    /// [`StoreError`]; what is there but unusable is never "none".
    pub async fn load(
        &self,
        known: &Keyring,
        custody: Option<&dyn Custody>,
    ) -> Result<Loaded, StoreError> {
        let Some(record) = self.0.load().await? else {
            return Ok(Loaded::default());
        };
        let keyring = Keyring::decode(&record.bytes, known, custody)
            .await
            .map_err(|e| match e.retry_after() {
                Some(_) => StoreError::CustodyUnavailable(e),
                None => StoreError::Unusable(self.describe(), e),
            })?;
        Ok(Loaded {
            keyring,
            record: Some(record),
        })
    }

    /// Store `keyring` over what `over` read.
    ///
    /// # Errors
    /// A conflict ([`StoreError::is_conflict`]) when another writer came
    /// first.
    pub async fn save(&self, keyring: &Keyring, over: &Loaded) -> Result<(), StoreError> {
        let text = keyring.encode().map_err(StoreError::Encode)?;
        Ok(self.0.save(&text, Over::Read(over.record.as_ref())).await?)
    }
}
