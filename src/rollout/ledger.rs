//! The rollout state as persisted: `rollout.json` in the state directory
//! and, in a cluster, the ConfigMap `meshca-rollout`. It is the ledger of
//! anchors kept for certificates of earlier signers, so it never fails
//! quietly: a ledger that exists but cannot be read is an error that stops
//! the daemon with the place and the cause, never a fresh start that would
//! drop anchors live certificates still chain to.

use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::state::{Retained, RolloutStatus, Stage};

/// Why the persisted ledger cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The file exists but cannot be read.
    #[error("failed to read the rollout ledger {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// What was read is not a ledger.
    #[error("the rollout ledger in {place} does not parse; it names the old trust anchors that must stay in the bundle, so meshca will not start without it: restore it (from a backup, or from the other store: the state directory's rollout.json or the ConfigMap), or delete it to start afresh knowing that certificates signed under retired roots stop verifying")]
    Parse {
        /// The file or ConfigMap.
        place: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The ConfigMap could not be read.
    #[error("failed to read the rollout ledger ConfigMap")]
    ConfigMap(#[source] crate::cluster::KubeError),
}

/// The file in the state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("rollout.json")
}

/// The ledger in `state_dir`, `None` when there is none.
///
/// # Errors
/// [`LedgerError`] when the file exists but cannot be read or parsed.
pub fn load_file(state_dir: &Path) -> Result<Option<RolloutStatus>, LedgerError> {
    let path = path(state_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text, &path.display().to_string()).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LedgerError::Read { path, source }),
    }
}

/// Parse a ledger read from `place`.
///
/// # Errors
/// [`LedgerError::Parse`].
pub fn parse(json: &str, place: &str) -> Result<RolloutStatus, LedgerError> {
    serde_json::from_str::<Persisted>(json)
        .map(RolloutStatus::from)
        .map_err(|source| LedgerError::Parse {
            place: place.to_owned(),
            source,
        })
}

/// The ledger's JSON.
pub fn encode(status: &RolloutStatus) -> String {
    serde_json::to_string_pretty(&Persisted::from(status)).unwrap_or_default()
}

/// The JSON form: PEM and RFC 3339 text. `GET /v1/rotation` has its own
/// type; this one changes only with a way to read what earlier versions
/// wrote.
#[derive(Serialize, Deserialize)]
struct Persisted {
    stage: Stage,
    generation: u64,
    provider: String,
    incoming: Option<String>,
    retained: Vec<PersistedRetained>,
    #[serde(with = "history")]
    history: Vec<(Stage, OffsetDateTime)>,
}

#[derive(Serialize, Deserialize)]
struct PersistedRetained {
    /// Absent in state saved by older versions.
    #[serde(default)]
    generation: Option<u64>,
    #[serde(with = "pem_certificates")]
    pem: Vec<CertificateDer<'static>>,
    #[serde(with = "rfc3339_option")]
    until: Option<OffsetDateTime>,
}

impl From<&RolloutStatus> for Persisted {
    fn from(s: &RolloutStatus) -> Self {
        Self {
            stage: s.stage,
            generation: s.generation,
            provider: s.provider.clone(),
            incoming: s.incoming.clone(),
            retained: s
                .retained
                .iter()
                .map(|r| PersistedRetained {
                    generation: r.generation,
                    pem: r.anchors.clone(),
                    until: r.until,
                })
                .collect(),
            history: s.history.clone(),
        }
    }
}

impl From<Persisted> for RolloutStatus {
    fn from(p: Persisted) -> Self {
        Self {
            stage: p.stage,
            generation: p.generation,
            provider: p.provider,
            incoming: p.incoming,
            // Not persisted: after a restart the configuration in force signs.
            incoming_anchors: Vec::new(),
            retained: p
                .retained
                .into_iter()
                .map(|r| Retained {
                    generation: r.generation,
                    anchors: r.pem,
                    until: r.until,
                })
                .collect(),
            history: p.history,
        }
    }
}

// === serde of the typed fields: the JSON keeps PEM and RFC 3339 text ===

pub(crate) mod rfc3339_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
        t.map(|t| t.format(&Rfc3339))
            .transpose()
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| OffsetDateTime::parse(&t, &Rfc3339).map_err(serde::de::Error::custom))
            .transpose()
    }
}

pub(crate) mod history {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    use crate::rollout::Stage;

    pub fn serialize<S: Serializer>(
        h: &[(Stage, OffsetDateTime)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        h.iter()
            .map(|(stage, t)| t.format(&Rfc3339).map(|t| (*stage, t)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(Stage, OffsetDateTime)>, D::Error> {
        Vec::<(Stage, String)>::deserialize(d)?
            .into_iter()
            .map(|(stage, t)| {
                OffsetDateTime::parse(&t, &Rfc3339)
                    .map(|t| (stage, t))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

pub(crate) mod pem_certificates {
    use rustls_pki_types::CertificateDer;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        certs: &[CertificateDer<'static>],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&meshca_provider::pem::encode_certificates(certs))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<CertificateDer<'static>>, D::Error> {
        let pem = String::deserialize(d)?;
        meshca_provider::pem::decode_certificates(pem.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ledger_is_none_and_an_unreadable_one_an_error_naming_its_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load_file(dir.path()).expect("missing is fine").is_none());
        std::fs::write(path(dir.path()), "{ not json").expect("write");
        let e = load_file(dir.path()).expect_err("corrupt");
        let text = crate::error_chain(&e);
        assert!(
            text.contains("rollout.json") && text.contains("will not start"),
            "{text}"
        );
    }

    #[test]
    fn what_is_written_reads_back() {
        let mut s = RolloutStatus::fresh("vault");
        s.generation = 3;
        let back = parse(&encode(&s), "test").expect("parses");
        assert_eq!(back, s);
    }
}
