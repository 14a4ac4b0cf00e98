//! `meshca rotate root`: the generation of the Tresor root meshca makes.
//!
//! Generation 0 is the root every earlier version made (`state_dir/tresor`,
//! the Secret `<root_secret>`, the custody key `<prefix>-root`); each
//! rotation moves to a new one beside it (`tresor-g<N>`,
//! `<root_secret>-g<N>`, `<prefix>-root-g<N>`), which the daemons make and
//! roll out as they would a config change. The generation is kept where
//! every replica reads it: `state_dir/root-generation.json`, or the
//! ConfigMap `meshca-root-generation` in a cluster. One that cannot be
//! read stops the start: taking it for 0 would sign with a retired root.

use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::OffsetDateTime;

use crate::store::{Over, Store, StoreError};

/// The file in the state directory.
pub const FILE: &str = "root-generation.json";
/// The ConfigMap in a cluster.
pub const CONFIGMAP: &str = "meshca-root-generation";

/// What is kept.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Record {
    /// The root generation in force.
    generation: u32,
    /// When it was set.
    #[serde(with = "time::serde::rfc3339")]
    rotated_at: OffsetDateTime,
    /// Who set it.
    by: String,
}

/// Why the generation cannot be used.
#[derive(Debug, Error)]
pub enum GenerationError {
    /// It cannot be read or written.
    #[error("the root generation cannot be used")]
    Store(#[from] StoreError),
    /// It was read but does not parse: nothing signs until it is repaired.
    #[error("the root generation {place} does not parse; repair it (\"generation\" is the number of `meshca rotate root` runs)")]
    Corrupt {
        /// Where it is.
        place: String,
        /// What is wrong.
        #[source]
        source: serde_json::Error,
    },
    /// Other writers kept changing it.
    #[error("the root generation {0} kept changing while it was written; try again")]
    Busy(String),
}

/// Where the generation is kept.
#[derive(Clone)]
pub struct GenerationStore {
    store: Store,
}

impl GenerationStore {
    /// In the ConfigMap when meshca reaches a cluster, else in `state_dir`.
    pub fn new(state_dir: &Path, cluster: Option<(kube::Client, &str)>) -> Self {
        let store = match cluster {
            Some((client, namespace)) => {
                Store::configmap(client, namespace, CONFIGMAP, "generation.json")
            }
            None => Store::file(state_dir.join(FILE), 0o600),
        };
        Self { store }
    }

    /// Where it is, for messages.
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// The generation in force: 0 when none was ever written.
    ///
    /// # Errors
    /// [`GenerationError`]: it exists but cannot be read or does not parse.
    pub async fn load(&self) -> Result<u32, GenerationError> {
        Ok(self.load_versioned().await?.0)
    }

    async fn load_versioned(&self) -> Result<(u32, Option<crate::store::Loaded>), GenerationError> {
        let Some(loaded) = self.store.load().await? else {
            return Ok((0, None));
        };
        let record: Record =
            serde_json::from_slice(&loaded.bytes).map_err(|source| GenerationError::Corrupt {
                place: self.describe(),
                source,
            })?;
        Ok((record.generation, Some(loaded)))
    }

    /// Move to the next generation, recorded as set by `by`; returns it.
    ///
    /// # Errors
    /// [`GenerationError`]; then the generation is as it was.
    pub async fn advance(&self, by: &str) -> Result<u32, GenerationError> {
        for _ in 0..5 {
            let (now, loaded) = self.load_versioned().await?;
            let record = Record {
                generation: now + 1,
                rotated_at: OffsetDateTime::now_utc(),
                by: by.to_owned(),
            };
            let bytes = serde_json::to_vec(&record).map_err(|source| {
                GenerationError::Store(StoreError::Encode {
                    what: self.describe(),
                    source,
                })
            })?;
            match self.store.save(&bytes, Over::Read(loaded.as_ref())).await {
                Ok(()) => return Ok(record.generation),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(GenerationError::Busy(self.describe()))
    }
}

/// The name of generation `n` of a root kept under `name`: `name` itself
/// for 0, `<name>-g<n>` after.
pub fn named(name: &str, n: u32) -> String {
    match n {
        0 => name.to_owned(),
        n => format!("{name}-g{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_zero_keeps_the_names_of_earlier_versions() {
        assert_eq!(named("meshca-root", 0), "meshca-root");
        assert_eq!(named("meshca-root", 2), "meshca-root-g2");
    }

    #[tokio::test]
    async fn a_generation_advances_and_one_that_does_not_parse_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = GenerationStore::new(dir.path(), None);
        assert_eq!(store.load().await.expect("none yet"), 0);
        assert_eq!(store.advance("ops").await.expect("advanced"), 1);
        assert_eq!(store.advance("ops").await.expect("advanced"), 2);
        assert_eq!(store.load().await.expect("read"), 2);
        std::fs::write(dir.path().join(FILE), "{\"generation\": \"x\"}").expect("corrupt");
        let e = store.load().await.expect_err("not taken for 0");
        assert!(matches!(e, GenerationError::Corrupt { .. }), "{e}");
        assert!(store.advance("ops").await.is_err(), "nor advanced over");
    }
}
