//! Identities that may not be issued a certificate, whatever the path
//! (a token, a renewal by client certificate, an ingress Secret): the file
//! `auth.denied_file` (`<state_dir>/denied.yaml`), kept by `meshca identity
//! deny` / `allow` and followed by the daemon within seconds.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshca_provider::Identity;
use serde::{Deserialize, Serialize};

use crate::watched::{update_yaml, WatchedFile};

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

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyFile {
    #[serde(default)]
    denied: Vec<Denied>,
}

/// The deny-list.
#[derive(Clone, Debug)]
pub struct DenyList {
    file: Arc<WatchedFile<DenyFile>>,
}

impl DenyList {
    /// The list kept in `path`; a missing file denies no one.
    pub fn new(path: PathBuf) -> Self {
        Self {
            file: Arc::new(WatchedFile::new(path)),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Whether `identity` is denied now, and how many identities are (for
    /// the metric), from one look at the list.
    ///
    /// # Errors
    /// The file exists but cannot be read: refuse rather than guess.
    pub fn check(&self, identity: &Identity) -> Result<(bool, usize), String> {
        let file = self.file.get(false)?;
        let denied = file.denied.iter().any(|d| {
            d.namespace == identity.namespace() && d.service_account == identity.service_account()
        });
        Ok((denied, file.denied.len()))
    }

    /// Deny `namespace/service_account`; false if it already was.
    ///
    /// # Errors
    /// The file cannot be read or written.
    pub fn deny(&self, namespace: &str, service_account: &str) -> Result<bool, String> {
        let since = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        self.update(|f| {
            if f.denied
                .iter()
                .any(|d| d.namespace == namespace && d.service_account == service_account)
            {
                return false;
            }
            f.denied.push(Denied {
                namespace: namespace.to_owned(),
                service_account: service_account.to_owned(),
                since,
            });
            true
        })
    }

    /// Allow `namespace/service_account` again; false if it was not denied.
    ///
    /// # Errors
    /// The file cannot be read or written.
    pub fn allow(&self, namespace: &str, service_account: &str) -> Result<bool, String> {
        self.update(|f| {
            let before = f.denied.len();
            f.denied
                .retain(|d| !(d.namespace == namespace && d.service_account == service_account));
            f.denied.len() != before
        })
    }

    fn update<T>(&self, change: impl FnOnce(&mut DenyFile) -> T) -> Result<T, String> {
        update_yaml(
            self.path(),
            "meshca identities denied any certificate. Managed by `meshca identity deny|allow`.",
            change,
        )
    }
}
