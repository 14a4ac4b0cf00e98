//! Where the JWT signing keys live: a file (0600) in the state directory,
//! or in a cluster the Secret `meshca-jwt-keys`, which every replica reads
//! and any may update (a create that exists already, or an update over a
//! newer version, is a conflict: the writer reads again and re-plans, so
//! replicas starting together converge on one key).

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use thiserror::Error;

use super::keyring::{Keyring, KeyringError};
use crate::cluster::{is_reason, KubeError};

/// The Secret's name.
pub const SECRET_NAME: &str = "meshca-jwt-keys";
/// The key under which the keys are stored, in the Secret and as a file
/// name.
const KEY: &str = "jwt-keys.json";

/// Where the keys are kept.
#[derive(Clone)]
pub enum KeyStore {
    /// `state_dir/jwt-keys.json`.
    File(PathBuf),
    /// The Secret `meshca-jwt-keys` in meshca's namespace.
    Secret(Box<Api<Secret>>),
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The keys as read, with the version a write must replace.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The keys (empty when none was ever stored).
    pub keyring: Keyring,
    version: Option<String>,
}

/// Why the keys could not be read or written.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The file could not be read or written.
    #[error("failed to {action} {path}")]
    File {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// What is stored cannot be used: the start stops rather than make
    /// new keys, which would strand every live token.
    #[error("{0} holds JWT signing keys meshca cannot use; fix or restore it (deleting it makes new keys, and tokens signed with the old ones stop validating)")]
    Unusable(String, #[source] KeyringError),
    /// A new key could not be made.
    #[error("failed to make a JWT signing key")]
    Generate(#[source] super::key::KeyError),
    /// The API server refused or failed.
    #[error(transparent)]
    Kube(#[from] KubeError),
    /// Another replica wrote first: read again.
    #[error("{0} changed since it was read")]
    Conflict(String),
}

impl StoreError {
    /// Whether reading again may help (as opposed to an operator's fix).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Kube(_) | Self::Conflict(_))
    }
}

impl KeyStore {
    /// The Secret in meshca's namespace with a cluster, else the state
    /// directory's file.
    pub fn new(cluster: Option<(kube::Client, &str)>, state_dir: &std::path::Path) -> Self {
        match cluster {
            Some((client, namespace)) => Self::Secret(Box::new(Api::namespaced(client, namespace))),
            None => Self::File(state_dir.to_owned()),
        }
    }

    /// Where the keys are, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::File(dir) => dir.join(KEY).display().to_string(),
            Self::Secret(api) => format!(
                "Secret {}/{SECRET_NAME}",
                api.namespace().unwrap_or_default()
            ),
        }
    }

    /// The stored keys, or none when nothing is stored yet.
    ///
    /// # Errors
    /// [`StoreError`]; what is there but unusable is never "none".
    pub async fn load(&self) -> Result<Loaded, StoreError> {
        let (text, version) = match self {
            Self::File(dir) => {
                let path = dir.join(KEY);
                match std::fs::read(&path) {
                    Ok(text) => (Some(text), None),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, None),
                    Err(source) => {
                        return Err(StoreError::File {
                            action: "read",
                            path,
                            source,
                        })
                    }
                }
            }
            Self::Secret(api) => {
                let secret = api
                    .get_opt(SECRET_NAME)
                    .await
                    .map_err(KubeError::api(format!("read {}", self.describe())))?;
                let version = secret
                    .as_ref()
                    .and_then(|s| s.metadata.resource_version.clone());
                let text = secret
                    .and_then(|s| s.data)
                    .and_then(|mut d| d.remove(KEY))
                    .map(|b| b.0);
                if version.is_some() && text.is_none() {
                    return Err(StoreError::Unusable(
                        self.describe(),
                        KeyringError::Encoding(format!("(no {KEY} key)")),
                    ));
                }
                (text, version)
            }
        };
        let keyring = match text {
            None => Keyring::default(),
            Some(text) => Keyring::decode(&zeroize::Zeroizing::new(text))
                .map_err(|e| StoreError::Unusable(self.describe(), e))?,
        };
        Ok(Loaded { keyring, version })
    }

    /// Store `keyring` over what `over` read.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when another writer came first.
    pub async fn save(&self, keyring: &Keyring, over: &Loaded) -> Result<(), StoreError> {
        let text = keyring.encode();
        match self {
            Self::File(dir) => {
                let path = dir.join(KEY);
                crate::bundle::write_atomically(&path, &text, 0o600).map_err(|source| {
                    StoreError::File {
                        action: "write",
                        path,
                        source,
                    }
                })
            }
            Self::Secret(api) => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(SECRET_NAME.into()),
                        resource_version: over.version.clone(),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/managed-by".to_owned(),
                            "meshca".to_owned(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    type_: Some("Opaque".into()),
                    data: Some(BTreeMap::from([(
                        KEY.to_owned(),
                        ByteString(text.to_vec()),
                    )])),
                    ..Secret::default()
                };
                let pp = PostParams::default();
                let written = match over.version {
                    None => api.create(&pp, &secret).await,
                    Some(_) => api.replace(SECRET_NAME, &pp, &secret).await,
                };
                match written {
                    Ok(_) => Ok(()),
                    // AlreadyExists on create, Conflict on replace.
                    Err(e) if is_reason(&e, 409) => Err(StoreError::Conflict(self.describe())),
                    Err(e) => Err(KubeError::api(format!("write {}", self.describe()))(e).into()),
                }
            }
        }
    }
}
