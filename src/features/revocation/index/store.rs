//! Where the index's pages are kept: files in `<state_dir>/certificates/`,
//! or in a cluster ConfigMaps of meshca's namespace (one page each, key
//! `page.json`) that every replica and the CLI read.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, ListParams};
use kube::Api;

use super::page::{self, Page, PageError, PREFIX};
use crate::cluster::{is_reason, KubeError, MANAGED_BY};
use crate::store::{fs, Over, Store, StoreError};

/// The key of a page in its ConfigMap.
pub const KEY: &str = "page.json";
/// The directory of pages in the state directory.
pub const DIR: &str = "certificates";

/// Why the index cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A page cannot be read, written or removed.
    #[error("the certificate index cannot be used")]
    Store(#[from] StoreError),
    /// A page was read but is not one.
    #[error(transparent)]
    Page(#[from] PageError),
}

/// The index's pages.
#[derive(Clone)]
pub enum IndexStore {
    /// Files in a directory.
    Dir(PathBuf),
    /// ConfigMaps.
    Cluster {
        /// To write a page's ConfigMap.
        client: kube::Client,
        /// meshca's namespace.
        namespace: String,
    },
}

impl std::fmt::Debug for IndexStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl IndexStore {
    /// In ConfigMaps when meshca reaches a cluster, else in
    /// `<state_dir>/certificates/`.
    pub fn new(state_dir: &Path, cluster: Option<(kube::Client, &str)>) -> Self {
        match cluster {
            Some((client, namespace)) => Self::Cluster {
                client,
                namespace: namespace.to_owned(),
            },
            None => Self::Dir(state_dir.join(DIR)),
        }
    }

    /// Where it is, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Dir(dir) => dir.display().to_string(),
            Self::Cluster { namespace, .. } => format!("the ConfigMaps {namespace}/{PREFIX}*"),
        }
    }

    /// The names of the pages there now.
    ///
    /// # Errors
    /// [`IndexError::Store`]: they cannot be listed.
    pub async fn names(&self) -> Result<Vec<String>, IndexError> {
        Ok(self
            .read(false)
            .await?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    /// Every page, each read and checked: one that cannot be read is an
    /// error naming it, never left out.
    ///
    /// # Errors
    /// [`IndexError`].
    pub async fn pages(&self) -> Result<Vec<Page>, IndexError> {
        let mut pages = Vec::new();
        for (name, bytes) in self.read(true).await? {
            let place = self.place(&name);
            let bytes = bytes.ok_or_else(|| StoreError::MissingKey(place.clone()))?;
            pages.push(Page::parse(&bytes, &place)?);
        }
        Ok(pages)
    }

    /// Write `page` as `name`, replacing what is there (a page has one
    /// writer).
    ///
    /// # Errors
    /// [`IndexError::Store`].
    pub async fn write(&self, name: &str, page: &Page) -> Result<(), IndexError> {
        let bytes = page.encode().map_err(|source| StoreError::Encode {
            what: format!("the certificate index page {name}"),
            source,
        })?;
        let store = match self {
            Self::Dir(dir) => Store::file(dir.join(format!("{name}.json")), 0o600),
            Self::Cluster { client, namespace } => {
                Store::configmap(client.clone(), namespace, name, KEY)
            }
        };
        Ok(store.save(&bytes, Over::Anything).await?)
    }

    /// Remove the page `name`; one already gone is removed.
    ///
    /// # Errors
    /// [`IndexError::Store`].
    pub async fn remove(&self, name: &str) -> Result<(), IndexError> {
        let place = self.place(name);
        match self {
            Self::Dir(dir) => {
                let path = dir.join(format!("{name}.json"));
                tokio::task::spawn_blocking(move || fs::remove_optional(&path))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r)
                    .map_err(|source| StoreError::Write { place, source })?;
            }
            Self::Cluster { client, namespace } => {
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
                match api.delete(name, &DeleteParams::default()).await {
                    Err(e) if !is_reason(&e, 404) => {
                        return Err(
                            StoreError::from(KubeError::api(format!("delete {place}"))(e)).into(),
                        )
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn place(&self, name: &str) -> String {
        match self {
            Self::Dir(dir) => dir.join(format!("{name}.json")).display().to_string(),
            Self::Cluster { namespace, .. } => format!("ConfigMap {namespace}/{name} key {KEY}"),
        }
    }

    /// The pages' names and, with `contents`, what each holds (`None`: a
    /// ConfigMap without the key).
    async fn read(&self, contents: bool) -> Result<Vec<(String, Option<Vec<u8>>)>, IndexError> {
        match self {
            Self::Dir(dir) => {
                let dir = dir.clone();
                let place = dir.display().to_string();
                tokio::task::spawn_blocking(move || read_dir(&dir, contents))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r)
                    .map_err(|source| StoreError::Read { place, source }.into())
            }
            Self::Cluster { client, namespace } => {
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
                let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
                let list = api
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .map_err(KubeError::api(format!(
                        "list the ConfigMaps {namespace}/{PREFIX}*"
                    )))
                    .map_err(StoreError::from)?;
                Ok(list
                    .items
                    .into_iter()
                    .filter_map(|cm| {
                        let name = cm.metadata.name?;
                        page::until_of(&name)?;
                        let bytes = contents
                            .then(|| {
                                cm.data
                                    .and_then(|mut d| d.remove(KEY))
                                    .map(String::into_bytes)
                            })
                            .flatten();
                        Some((name, bytes))
                    })
                    .collect())
            }
        }
    }
}

/// The pages in `dir` (files named as pages, `.json`). Blocking.
fn read_dir(dir: &Path, contents: bool) -> std::io::Result<Vec<(String, Option<Vec<u8>>)>> {
    let mut pages = Vec::new();
    for file in fs::file_names(dir)? {
        let Some(name) = file
            .strip_suffix(".json")
            .filter(|n| page::until_of(n).is_some())
        else {
            continue;
        };
        if !contents {
            pages.push((name.to_owned(), None));
            continue;
        }
        // A page removed since the listing (its window passed) is gone.
        if let Some(bytes) = fs::read_optional(&dir.join(&file))? {
            pages.push((name.to_owned(), Some(bytes)));
        }
    }
    Ok(pages)
}
