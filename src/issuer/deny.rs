//! Identities that may not be issued a certificate, whatever the path
//! (a token, a renewal by client certificate, an ingress Secret, a pod
//! certificate): the file `auth.denied_file` (`<state_dir>/denied.yaml`)
//! and, in a cluster, the ConfigMap `meshca-denied` that every replica
//! follows (see [`configmap`](super::deny_configmap)). `meshca identity
//! deny` / `allow` edits the ConfigMap when the config reaches a cluster,
//! else the file; the daemon applies either within seconds.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshca_provider::Identity;
use serde::{Deserialize, Serialize};

use crate::watched::{update_yaml, FileError, WatchedFile};

/// Why the deny-list cannot be consulted; nobody is issued a certificate
/// until it can.
#[derive(Debug, thiserror::Error)]
pub enum DenyListError {
    /// The file exists but cannot be read or parsed.
    #[error("the deny-list file cannot be used")]
    File(#[source] Arc<FileError>),
    /// The cluster's ConfigMap has not been read yet, or does not parse.
    #[error("the deny-list ConfigMap has not been read, or does not parse")]
    ConfigMap,
}

/// One denied identity.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Denied {
    /// Its namespace.
    pub namespace: String,
    /// Its service account.
    pub service_account: String,
    /// When it was denied (RFC 3339).
    pub since: String,
}

/// The list as written, in the file or the ConfigMap's `denied.yaml`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DenyFile {
    #[serde(default)]
    denied: Vec<Denied>,
}

/// The header written above the list.
pub const HEADER: &str =
    "meshca identities denied any certificate. Managed by `meshca identity deny|allow`.";

impl DenyFile {
    fn denies(&self, identity: &Identity) -> bool {
        self.denied.iter().any(|d| {
            d.namespace == identity.namespace() && d.service_account == identity.service_account()
        })
    }

    /// Deny (`deny`) or allow `namespace/service_account`; false when
    /// nothing changed.
    pub fn change(&mut self, namespace: &str, service_account: &str, deny: bool) -> bool {
        let this = |d: &Denied| d.namespace == namespace && d.service_account == service_account;
        match (deny, self.denied.iter().any(this)) {
            (true, false) => {
                self.denied.push(Denied {
                    namespace: namespace.to_owned(),
                    service_account: service_account.to_owned(),
                    since: time::OffsetDateTime::now_utc()
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                });
                true
            }
            (false, true) => {
                self.denied.retain(|d| !this(d));
                true
            }
            _ => false,
        }
    }
}

/// What the cluster's list holds: `None` until it has been read (nobody is
/// issued a certificate until then, rather than risk a denied identity).
pub type ClusterDenyList = tokio::sync::watch::Receiver<Option<Arc<DenyFile>>>;

/// The deny-list.
#[derive(Clone, Debug)]
pub struct DenyList {
    file: Arc<WatchedFile<DenyFile>>,
    cluster: Option<ClusterDenyList>,
}

impl DenyList {
    /// The list kept in `path`; a missing file denies no one.
    pub fn new(path: PathBuf) -> Self {
        Self {
            file: Arc::new(WatchedFile::new(path)),
            cluster: None,
        }
    }

    /// As [`DenyList::new`], read on the blocking pool: for the daemon.
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed: the daemon does not
    /// start on a deny-list it cannot read.
    pub async fn open(path: PathBuf) -> Result<Self, Arc<FileError>> {
        Ok(Self {
            file: Arc::new(WatchedFile::open(path).await?),
            cluster: None,
        })
    }

    /// Also follow the cluster's list.
    pub fn with_cluster(mut self, cluster: ClusterDenyList) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The task that keeps the daemon's view of the file current until
    /// `shutdown` (see [`WatchedFile::follow`]).
    pub fn follow_file(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.file.clone().follow(shutdown)
    }

    /// Whether `identity` is denied now, and how many identities are (for
    /// the metric), from one look at the list.
    ///
    /// # Errors
    /// The file exists but cannot be read, or the cluster's list has not
    /// been read: refuse rather than guess.
    pub fn check(&self, identity: &Identity) -> Result<(bool, usize), DenyListError> {
        let file = self.file.get().map_err(DenyListError::File)?;
        let (mut denied, mut count) = (file.denies(identity), file.denied.len());
        if let Some(cluster) = &self.cluster {
            let list = cluster.borrow().clone().ok_or(DenyListError::ConfigMap)?;
            denied |= list.denies(identity);
            count += list.denied.len();
        }
        Ok((denied, count))
    }

    /// Deny (`deny`) or allow `namespace/service_account` in the file;
    /// false when nothing changed.
    ///
    /// # Errors
    /// The file cannot be read or written.
    pub fn change(
        &self,
        namespace: &str,
        service_account: &str,
        deny: bool,
    ) -> Result<bool, FileError> {
        update_yaml(self.path(), HEADER, |f: &mut DenyFile| {
            f.change(namespace, service_account, deny)
        })
    }
}
