//! A feature's settings: the sections of the config file it owns, read
//! with what every section may need of the rest ([`Common`]), and the
//! features in force ([`Features`]), found by type.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use meshca_provider::{Identity, TrustDomain};
use serde::de::DeserializeOwned;
use serde_yaml_ng::Mapping;

use super::Feature;
use crate::cluster::KubernetesConfig;
use crate::custody::CustodyConfig;
use crate::issuer::Lifetimes;
use crate::provider::ProviderConfig;

/// What a feature's settings may depend on besides its own sections. A
/// value that did not validate is `None` (its problem is reported once,
/// by its own section).
#[derive(Clone, Copy, Debug)]
pub struct Common<'a> {
    /// The trust domain, when valid.
    pub trust_domain: Option<&'a TrustDomain>,
    /// The trust domain as written.
    pub trust_domain_text: &'a str,
    /// The daemon's identity, when valid.
    pub daemon_identity: Option<&'a Identity>,
    /// Where meshca keeps its files.
    pub state_dir: &'a Path,
    /// Workload certificate lifetimes.
    pub lifetimes: &'a Lifetimes,
    /// The cluster meshca may use.
    pub kubernetes: Option<&'a KubernetesConfig>,
    /// The bundle Secret, `(namespace, name)`, as written.
    pub bundle_secret: (&'a str, &'a str),
    /// The signing provider, when valid.
    pub provider: Option<&'a ProviderConfig>,
    /// The custodian of meshca's long-lived keys (`key_custody:`), when
    /// not meshca's own files.
    pub key_custody: Option<&'a CustodyConfig>,
    /// `rotation.propagation_delay`.
    pub propagation_delay: Duration,
    /// The deny-list file (`auth.denied_file`), used without a cluster.
    pub denied_file: &'a Path,
}

/// A section that does not parse: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Syntax {
    /// The key's path, e.g. `jwt_svids.issuer`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// The top-level sections of the config file, as written.
#[derive(Clone, Copy)]
pub struct Sections<'a> {
    root: &'a Mapping,
    written: &'a BTreeSet<String>,
}

impl<'a> Sections<'a> {
    /// The sections of `root`, in which the key paths `written` were
    /// written (each prefix included).
    pub fn new(root: &'a Mapping, written: &'a BTreeSet<String>) -> Self {
        Self { root, written }
    }

    /// Section `key` as `T`: its defaults when absent.
    ///
    /// # Errors
    /// [`Syntax`], naming the key's path within the file.
    pub fn get<T: DeserializeOwned + Default>(&self, key: &str) -> Result<T, Syntax> {
        let Some(value) = self.root.get(key).filter(|v| !v.is_null()) else {
            return Ok(T::default());
        };
        serde_path_to_error::deserialize(value.clone()).map_err(|e| {
            let inner = e.path().to_string();
            Syntax {
                path: if inner == "." {
                    key.to_owned()
                } else {
                    format!("{key}.{inner}")
                },
                message: e.into_inner().to_string(),
            }
        })
    }

    /// Whether the key path `path` (`ingress.backend_protocol`) was
    /// written in the file: settings that are off warn only when written.
    pub fn written(&self, path: &str) -> bool {
        self.written.contains(path)
    }
}

/// The features in force, each with its settings.
#[derive(Clone, Debug, Default)]
pub struct Features(Arc<[Arc<dyn Feature>]>);

impl Features {
    /// These features.
    pub fn new(features: Vec<Arc<dyn Feature>>) -> Self {
        Self(features.into())
    }

    /// Every feature in force, in the order of the daemon's list.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Feature>> {
        self.0.iter()
    }

    /// The feature of type `T`, when in force.
    pub fn find<T: Feature>(&self) -> Option<&T> {
        self.0.iter().find_map(|f| f.as_any().downcast_ref::<T>())
    }
}

impl PartialEq for Features {
    /// The same features in force: those of one configuration, as read. A
    /// configuration read again is another, and each feature's view of its
    /// own settings decides whether they changed.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
