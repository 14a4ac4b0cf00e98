//! A record in one key of a ConfigMap (text) or a Secret (bytes), under
//! the store's conflict policy: a write naming the version it replaces
//! fails with a conflict if the object is newer; one naming none re-reads
//! the object on a conflict and writes again, a few times.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use zeroize::Zeroizing;

use super::{Loaded, StoreError};
use crate::cluster::{is_reason, KubeError, MANAGED_BY};

/// Conflicting writes in a row before a write of [`Version::Any`] fails.
const WRITE_ATTEMPTS: usize = 5;

/// The object a write replaces.
#[derive(Clone, Copy)]
pub(super) enum Version<'a> {
    /// Whatever is there.
    Any,
    /// None: it did not exist when read.
    Absent,
    /// The one of this `resourceVersion`.
    Is(Option<&'a str>),
}

impl Version<'_> {
    /// Whether `current` (the object's `resourceVersion` now, `None` when
    /// there is no object) is still what the write replaces.
    fn matches(self, current: Option<Option<&str>>) -> bool {
        match self {
            Self::Any => true,
            Self::Absent => current.is_none(),
            Self::Is(v) => current == Some(v),
        }
    }
}

fn place(kind: &str, api_namespace: Option<&str>, name: &str, key: &str) -> String {
    format!(
        "{kind} {}/{name} key {key}",
        api_namespace.unwrap_or_default()
    )
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())])
}

/// Key `key` of the ConfigMap `name`.
pub(super) async fn load_configmap(
    api: &Api<ConfigMap>,
    name: &str,
    key: &str,
) -> Result<Option<Loaded>, StoreError> {
    let place = place("ConfigMap", api.namespace(), name, key);
    let Some(cm) = api
        .get_opt(name)
        .await
        .map_err(KubeError::api(format!("read {place}")))?
    else {
        return Ok(None);
    };
    let version = cm.metadata.resource_version;
    Ok(cm.data.and_then(|mut d| d.remove(key)).map(|text| Loaded {
        bytes: Zeroizing::new(text.into_bytes()),
        version,
    }))
}

/// Key `key` of the Secret `name`; a Secret without it is an error, as it
/// holds nothing else.
pub(super) async fn load_secret(
    api: &Api<Secret>,
    name: &str,
    key: &str,
) -> Result<Option<Loaded>, StoreError> {
    let place = place("Secret", api.namespace(), name, key);
    let Some(secret) = api
        .get_opt(name)
        .await
        .map_err(KubeError::api(format!("read {place}")))?
    else {
        return Ok(None);
    };
    let version = secret.metadata.resource_version;
    let bytes = secret
        .data
        .and_then(|mut d| d.remove(key))
        .ok_or(StoreError::MissingKey(place))?;
    Ok(Some(Loaded {
        bytes: Zeroizing::new(bytes.0),
        version,
    }))
}

/// Set key `key` of the ConfigMap `name` (its other keys kept), creating
/// it if missing.
pub(super) async fn save_configmap(
    api: &Api<ConfigMap>,
    name: &str,
    key: &str,
    bytes: &[u8],
    over: Version<'_>,
) -> Result<(), StoreError> {
    let place = place("ConfigMap", api.namespace(), name, key);
    let text = String::from_utf8_lossy(bytes).into_owned();
    for _ in 0..WRITE_ATTEMPTS {
        let current = api
            .get_opt(name)
            .await
            .map_err(KubeError::api(format!("read {place}")))?;
        let now = current
            .as_ref()
            .map(|c| c.metadata.resource_version.as_deref());
        if !over.matches(now) {
            return Err(StoreError::Conflict(place));
        }
        let pp = PostParams::default();
        let written = match current {
            Some(mut cm) => {
                cm.data
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key.to_owned(), text.clone());
                api.replace(name, &pp, &cm).await.map(drop)
            }
            None => {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(name.to_owned()),
                        labels: Some(labels()),
                        ..ObjectMeta::default()
                    },
                    data: Some(BTreeMap::from([(key.to_owned(), text.clone())])),
                    ..ConfigMap::default()
                };
                api.create(&pp, &cm).await.map(drop)
            }
        };
        match written {
            Err(e) if is_reason(&e, 409) && matches!(over, Version::Any) => continue,
            Err(e) if is_reason(&e, 409) => return Err(StoreError::Conflict(place)),
            other => return Ok(other.map_err(KubeError::api(format!("write {place}")))?),
        }
    }
    Err(StoreError::Conflict(place))
}

/// Write the Secret `name` holding `bytes` under `key` (and nothing
/// else): created when it did not exist, else replacing the version read
/// (or, for [`Version::Any`], the one there now).
pub(super) async fn save_secret(
    api: &Api<Secret>,
    name: &str,
    key: &str,
    bytes: &[u8],
    over: Version<'_>,
) -> Result<(), StoreError> {
    let place = place("Secret", api.namespace(), name, key);
    let version = match over {
        Version::Any => api
            .get_opt(name)
            .await
            .map_err(KubeError::api(format!("read {place}")))?
            .map(|s| s.metadata.resource_version),
        Version::Absent => None,
        Version::Is(v) => Some(v.map(str::to_owned)),
    };
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            resource_version: version.clone().flatten(),
            labels: Some(labels()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            key.to_owned(),
            ByteString(bytes.to_vec()),
        )])),
        ..Secret::default()
    };
    let pp = PostParams::default();
    let written = match version {
        None => api.create(&pp, &secret).await,
        Some(_) => api.replace(name, &pp, &secret).await,
    };
    match written {
        Ok(_) => Ok(()),
        // AlreadyExists on create, Conflict on replace.
        Err(e) if is_reason(&e, 409) => Err(StoreError::Conflict(place)),
        Err(e) => Err(KubeError::api(format!("write {place}"))(e).into()),
    }
}
