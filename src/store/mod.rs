//! meshca's persisted state, kept one way: a record (bytes) under a name,
//! in a file of the state directory (written atomically, on the blocking
//! pool) or in one key of a ConfigMap or Secret in meshca's namespace
//! (which outlives a pod's state directory and every replica reads).
//!
//! - **Loading fails loudly.** A record that exists but cannot be read is
//!   a [`StoreError`] naming the place, never "nothing stored"; the
//!   caller's decoding of what was read is its own typed error, which
//!   stops the start where the record is trust state.
//! - **One conflict policy** ([`Over`]). A read-modify-write names what
//!   it read (a record, or nothing), so that another replica's change in
//!   between is a [`StoreError::Conflict`] to read again and re-plan, never
//!   lost; a write of a value that stands on its own replaces whatever is
//!   there, re-reading the object on a conflicting write a few times.
//! - **No blocking call on the async workers.** File I/O goes through
//!   [`fs`], the one module that may call `std::fs`.

mod error;
pub mod fs;
mod kube_key;

pub use error::StoreError;

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use zeroize::Zeroizing;

/// Where one record is kept.
#[derive(Clone)]
enum Place {
    /// A file, with its mode.
    File { path: PathBuf, mode: u32 },
    /// A key of a ConfigMap.
    ConfigMap {
        api: kube::Api<ConfigMap>,
        name: String,
        key: String,
    },
    /// A key of a Secret.
    Secret {
        api: kube::Api<Secret>,
        name: String,
        key: String,
    },
}

/// What a write replaces.
#[derive(Clone, Copy)]
pub enum Over<'a> {
    /// Whatever is there: the value stands on its own (the latest ledger,
    /// a fetched bundle).
    Anything,
    /// What was read: `None` when nothing was. A newer object (or, for
    /// `None`, any) is a conflict.
    Read(Option<&'a Loaded>),
}

/// One record of meshca's state.
#[derive(Clone)]
pub struct Store {
    place: Place,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// A record as read, and the version of the object it was read from.
pub struct Loaded {
    /// The bytes (wiped from memory when dropped: some records hold keys).
    pub bytes: Zeroizing<Vec<u8>>,
    /// The object's `resourceVersion`; `None` for a file.
    pub version: Option<String>,
}

impl Store {
    /// The file `path`, written with `mode` (0600 for anything secret).
    pub fn file(path: PathBuf, mode: u32) -> Self {
        Self {
            place: Place::File { path, mode },
        }
    }

    /// Key `key` of the ConfigMap `name` in `namespace`.
    pub fn configmap(client: kube::Client, namespace: &str, name: &str, key: &str) -> Self {
        Self {
            place: Place::ConfigMap {
                api: kube::Api::namespaced(client, namespace),
                name: name.to_owned(),
                key: key.to_owned(),
            },
        }
    }

    /// Key `key` of the Secret `name` in `namespace`.
    pub fn secret(client: kube::Client, namespace: &str, name: &str, key: &str) -> Self {
        Self {
            place: Place::Secret {
                api: kube::Api::namespaced(client, namespace),
                name: name.to_owned(),
                key: key.to_owned(),
            },
        }
    }

    /// Where the record is, for messages: the file, or the object and key.
    pub fn describe(&self) -> String {
        match &self.place {
            Place::File { path, .. } => path.display().to_string(),
            Place::ConfigMap { api, name, key } => format!(
                "ConfigMap {}/{name} key {key}",
                api.namespace().unwrap_or_default()
            ),
            Place::Secret { api, name, key } => format!(
                "Secret {}/{name} key {key}",
                api.namespace().unwrap_or_default()
            ),
        }
    }

    /// The record, `None` when none was ever written.
    ///
    /// # Errors
    /// [`StoreError`]: it exists but cannot be read now.
    pub async fn load(&self) -> Result<Option<Loaded>, StoreError> {
        match &self.place {
            Place::File { path, .. } => {
                let bytes =
                    fs::read_optional_off_runtime(path.clone())
                        .await
                        .map_err(|source| StoreError::Read {
                            place: self.describe(),
                            source,
                        })?;
                Ok(bytes.map(|b| Loaded {
                    bytes: Zeroizing::new(b),
                    version: None,
                }))
            }
            Place::ConfigMap { api, name, key } => kube_key::load_configmap(api, name, key).await,
            Place::Secret { api, name, key } => kube_key::load_secret(api, name, key).await,
        }
    }

    /// Write `bytes` over what `over` says. A file has no versions: its
    /// writes replace it whatever the policy.
    ///
    /// # Errors
    /// [`StoreError::Conflict`]: the object changed since it was read;
    /// any other failure to write, the record then being as it was.
    pub async fn save(&self, bytes: &[u8], over: Over<'_>) -> Result<(), StoreError> {
        let version = match over {
            Over::Anything => kube_key::Version::Any,
            Over::Read(None) => kube_key::Version::Absent,
            Over::Read(Some(loaded)) => kube_key::Version::Is(loaded.version.as_deref()),
        };
        match &self.place {
            Place::File { path, mode } => {
                fs::write_atomically_off_runtime(path.clone(), bytes.to_vec(), *mode)
                    .await
                    .map_err(|source| StoreError::Write {
                        place: self.describe(),
                        source,
                    })
            }
            Place::ConfigMap { api, name, key } => {
                kube_key::save_configmap(api, name, key, bytes, version).await
            }
            Place::Secret { api, name, key } => {
                kube_key::save_secret(api, name, key, bytes, version).await
            }
        }
    }
}

/// `value` as pretty JSON, or the error that says what could not be
/// encoded: a record is never written empty because it failed to encode.
///
/// # Errors
/// [`StoreError::Encode`].
pub fn to_json<T: serde::Serialize>(value: &T, what: &str) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec_pretty(value).map_err(|source| StoreError::Encode {
        what: what.to_owned(),
        source,
    })
}
