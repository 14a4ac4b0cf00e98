//! The revocation ledger: every serial revoked, kept until no certificate
//! with it can still be valid. It is trust state: a ledger that exists
//! but cannot be read stops the start (a revocation is never silently
//! forgotten), and every write names what it read, so that two operators
//! revoking at once both land.
//!
//! It lives in `<state_dir>/revocations.json`, or in a cluster in the
//! ConfigMap `meshca-revocations` (key `revocations.json`) that every
//! replica reads. `meshca certificate revoke` writes it; the daemon reads
//! it and makes the CRLs.

use std::path::{Path, PathBuf};

use meshca_provider::revocation::{Revoked, Serial, SerialError};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::store::{fs, Loaded, Over, Store, StoreError};

/// The ConfigMap that holds the ledger in a cluster.
pub const CONFIGMAP: &str = "meshca-revocations";
/// Its key, and the file's name in the state directory.
pub const KEY: &str = "revocations.json";

/// Why the ledger cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// It cannot be read or written.
    #[error("the revocation ledger cannot be used")]
    Store(#[from] StoreError),
    /// It was read but is not a ledger: nothing is revoked or made until
    /// an operator repairs it.
    #[error("the revocation ledger {place} does not parse; repair it from a backup (it lists every revoked serial), nothing is revoked or published until then")]
    Corrupt {
        /// Where it is.
        place: String,
        /// What is wrong.
        #[source]
        source: serde_json::Error,
    },
    /// An entry's serial is not a serial number.
    #[error("the revocation ledger {place} holds an entry that is not a serial number")]
    BadSerial {
        /// Where it is.
        place: String,
        /// What is wrong.
        #[source]
        source: SerialError,
    },
    /// An entry's serial is not written as meshca writes them, so that
    /// one serial could be listed twice under two spellings.
    #[error("the revocation ledger {place} holds the serial {serial:?} not as meshca writes serials (lower-case hexadecimal without leading zeros)")]
    NotCanonical {
        /// Where it is.
        place: String,
        /// The entry's serial.
        serial: String,
    },
    /// The write was interrupted (the runtime shutting down); whether it
    /// landed is for the next read to say.
    #[error("writing the revocation ledger {0} was interrupted; run the command again")]
    Interrupted(String),
    /// Other writers kept changing it.
    #[error("the revocation ledger {0} kept changing while it was written; try again")]
    Busy(String),
}

/// One revoked serial.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The serial, lower-case hexadecimal.
    pub serial: String,
    /// When it was revoked.
    #[serde(with = "time::serde::rfc3339")]
    pub revoked_at: OffsetDateTime,
    /// Until when it is listed: no certificate with this serial can be
    /// valid after (its revocation plus the longest lifetime meshca hands
    /// out, when it was revoked).
    #[serde(with = "time::serde::rfc3339")]
    pub listed_until: OffsetDateTime,
    /// Who revoked it.
    pub by: String,
    /// Why, as the operator said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The ledger as stored.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    #[serde(default)]
    revoked: Vec<Entry>,
}

/// What a revocation changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revoking {
    /// The serial is now revoked.
    Revoked,
    /// It already was.
    AlreadyRevoked,
}

impl Ledger {
    /// Revoke `entry.serial`, and drop the entries no longer listed at
    /// `entry.revoked_at`.
    pub fn revoke(&mut self, entry: Entry) -> Revoking {
        let now = entry.revoked_at;
        self.revoked.retain(|e| e.listed_until > now);
        if self.revoked.iter().any(|e| e.serial == entry.serial) {
            return Revoking::AlreadyRevoked;
        }
        self.revoked.push(entry);
        Revoking::Revoked
    }

    /// Revoke every serial of `entries`; returns those not revoked
    /// already.
    pub fn revoke_all(&mut self, entries: Vec<Entry>) -> Vec<String> {
        let mut revoked = Vec::new();
        for entry in entries {
            let serial = entry.serial.clone();
            if self.revoke(entry) == Revoking::Revoked {
                revoked.push(serial);
            }
        }
        revoked
    }

    /// Whether `serial` is listed at `now`.
    pub fn lists(&self, serial: &str, now: OffsetDateTime) -> bool {
        self.revoked
            .iter()
            .any(|e| e.serial == serial && e.listed_until > now)
    }

    /// The serials listed at `now`, in the order they were revoked.
    pub fn listed(&self, now: OffsetDateTime) -> Vec<Revoked> {
        self.revoked
            .iter()
            .filter(|e| e.listed_until > now)
            .filter_map(|e| {
                Some(Revoked {
                    serial: Serial::parse(&e.serial).ok()?,
                    revoked_at: e.revoked_at,
                })
            })
            .collect()
    }

    /// The ledger as stored: compact JSON, so that a cluster's ConfigMap
    /// (1 MiB) holds as many serials as it can.
    ///
    /// # Errors
    /// [`StoreError::Encode`]: never written empty for failing to encode.
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(self).map_err(|source| StoreError::Encode {
            what: "the revocation ledger".into(),
            source,
        })
    }

    /// The entries, for logs.
    pub fn entries(&self) -> &[Entry] {
        &self.revoked
    }

    /// The ledger in `bytes`, read from `place`.
    ///
    /// # Errors
    /// [`LedgerError::Corrupt`], or [`LedgerError::BadSerial`] for an
    /// entry whose serial is not one.
    pub fn parse(bytes: &[u8], place: &str) -> Result<Self, LedgerError> {
        let ledger: Self =
            serde_json::from_slice(bytes).map_err(|source| LedgerError::Corrupt {
                place: place.to_owned(),
                source,
            })?;
        for entry in &ledger.revoked {
            let serial = Serial::parse(&entry.serial).map_err(|source| LedgerError::BadSerial {
                place: place.to_owned(),
                source,
            })?;
            if serial.to_string() != entry.serial {
                return Err(LedgerError::NotCanonical {
                    place: place.to_owned(),
                    serial: entry.serial.clone(),
                });
            }
        }
        Ok(ledger)
    }
}

/// Where the ledger is kept.
#[derive(Clone, Debug)]
pub struct LedgerStore {
    store: Store,
    /// The file, without a cluster: revocations are made under its lock,
    /// since a file has no versions to name what was read.
    file: Option<PathBuf>,
}

impl LedgerStore {
    /// In the ConfigMap when meshca reaches a cluster, else in
    /// `state_dir`.
    pub fn new(state_dir: &Path, cluster: Option<(kube::Client, &str)>) -> Self {
        match cluster {
            Some((client, namespace)) => Self {
                store: Store::configmap(client, namespace, CONFIGMAP, KEY),
                file: None,
            },
            None => {
                let path = state_dir.join(KEY);
                Self {
                    store: Store::file(path.clone(), 0o600),
                    file: Some(path),
                }
            }
        }
    }

    /// Where it is, for messages.
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// The ledger; empty when none was ever written.
    ///
    /// # Errors
    /// [`LedgerError`]: it exists but cannot be read or does not parse.
    pub async fn load(&self) -> Result<Ledger, LedgerError> {
        Ok(self.load_versioned().await?.0)
    }

    async fn load_versioned(&self) -> Result<(Ledger, Option<Loaded>), LedgerError> {
        match self.store.load().await? {
            None => Ok((Ledger::default(), None)),
            Some(loaded) => Ok((
                Ledger::parse(&loaded.bytes, &self.describe())?,
                Some(loaded),
            )),
        }
    }

    /// Revoke `entry.serial`: in the ConfigMap over what was read (another
    /// writer's change in between is read again and kept), in the file
    /// under its lock (two commands at once both land).
    ///
    /// # Errors
    /// [`LedgerError`]: it cannot be read, parsed or written.
    pub async fn revoke(&self, entry: Entry) -> Result<Revoking, LedgerError> {
        Ok(match self.revoke_all(vec![entry]).await?.is_empty() {
            true => Revoking::AlreadyRevoked,
            false => Revoking::Revoked,
        })
    }

    /// Revoke every serial of `entries` in one write, as [`Self::revoke`];
    /// returns the serials not revoked already.
    ///
    /// # Errors
    /// [`LedgerError`]: it cannot be read, parsed or written; then none
    /// is revoked.
    pub async fn revoke_all(&self, entries: Vec<Entry>) -> Result<Vec<String>, LedgerError> {
        if let Some(path) = self.file.clone() {
            let place = self.describe();
            let described = place.clone();
            return tokio::task::spawn_blocking(move || revoke_in_file(&path, &place, entries))
                .await
                .unwrap_or(Err(LedgerError::Interrupted(described)));
        }
        for _ in 0..5 {
            let (mut ledger, loaded) = self.load_versioned().await?;
            let revoked = ledger.revoke_all(entries.clone());
            if revoked.is_empty() {
                return Ok(revoked);
            }
            let bytes = ledger.encode()?;
            match self.store.save(&bytes, Over::Read(loaded.as_ref())).await {
                Ok(()) => return Ok(revoked),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(LedgerError::Busy(self.describe()))
    }
}

/// Read, revoke in and write the ledger file under its lock. Blocking:
/// for the blocking pool.
fn revoke_in_file(
    path: &Path,
    place: &str,
    entries: Vec<Entry>,
) -> Result<Vec<String>, LedgerError> {
    let read = |source| {
        LedgerError::Store(StoreError::Read {
            place: place.to_owned(),
            source,
        })
    };
    fs::with_lock(path, || Ok(revoke_locked(path, place, entries))).map_err(read)?
}

fn revoke_locked(
    path: &Path,
    place: &str,
    entries: Vec<Entry>,
) -> Result<Vec<String>, LedgerError> {
    let io = |source, write: bool| {
        let place = place.to_owned();
        LedgerError::Store(match write {
            false => StoreError::Read { place, source },
            true => StoreError::Write { place, source },
        })
    };
    let mut ledger = match fs::read_optional(path).map_err(|e| io(e, false))? {
        Some(bytes) => Ledger::parse(&bytes, place)?,
        None => Ledger::default(),
    };
    let revoked = ledger.revoke_all(entries);
    if !revoked.is_empty() {
        fs::write_atomically(path, &ledger.encode()?, 0o600).map_err(|e| io(e, true))?;
    }
    Ok(revoked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + s).expect("as written")
    }

    fn entry(serial: &str, revoked: i64, until: i64) -> Entry {
        Entry {
            serial: serial.into(),
            revoked_at: at(revoked),
            listed_until: at(until),
            by: "test".into(),
            reason: None,
        }
    }

    #[test]
    fn a_serial_is_listed_once_until_no_certificate_with_it_can_be_valid() {
        let mut ledger = Ledger::default();
        assert_eq!(ledger.revoke(entry("0a", 0, 100)), Revoking::Revoked);
        assert_eq!(ledger.revoke(entry("0a", 5, 200)), Revoking::AlreadyRevoked);
        assert_eq!(ledger.revoke(entry("0b", 10, 300)), Revoking::Revoked);
        let serials = |now| -> Vec<String> {
            ledger
                .listed(at(now))
                .iter()
                .map(|r| r.serial.to_string())
                .collect()
        };
        assert_eq!(serials(50), ["0a", "0b"]);
        assert_eq!(serials(100), ["0b"], "gone at its listed_until");
        assert_eq!(ledger.listed(at(50))[0].revoked_at, at(0));
    }

    #[test]
    fn a_revocation_drops_the_entries_past_their_time() {
        let mut ledger = Ledger::default();
        ledger.revoke(entry("0a", 0, 100));
        ledger.revoke(entry("0b", 150, 300));
        assert_eq!(ledger.entries().len(), 1, "0a was past its time at 150");
        assert_eq!(ledger.entries()[0].serial, "0b");
    }

    #[test]
    fn a_ledger_that_does_not_parse_is_an_error_naming_its_place() {
        let corrupt =
            Ledger::parse(b"{\"revoked\": [", "/state/revocations.json").expect_err("refused");
        assert!(
            matches!(corrupt, LedgerError::Corrupt { .. }),
            "{corrupt:?}"
        );
        assert!(corrupt.to_string().contains("/state/revocations.json"));
        let unknown = Ledger::parse(br#"{"revokd": []}"#, "here").expect_err("refused");
        assert!(
            matches!(unknown, LedgerError::Corrupt { .. }),
            "{unknown:?}"
        );
        let text = |serial: &str| {
            format!(
                r#"{{"revoked": [{{"serial": "{serial}", "revoked_at": "2027-01-01T00:00:00Z", "listed_until": "2027-01-02T00:00:00Z", "by": "x"}}]}}"#
            )
        };
        assert!(Ledger::parse(text("0a1b").as_bytes(), "here").is_ok());
        for bad in ["zz", ""] {
            let e = Ledger::parse(text(bad).as_bytes(), "here").expect_err("refused");
            assert!(matches!(e, LedgerError::BadSerial { .. }), "{bad}: {e:?}");
        }
        for other_spelling in ["0A1B", "00a1b", "0a:1b"] {
            let e = Ledger::parse(text(other_spelling).as_bytes(), "here").expect_err("refused");
            assert!(
                matches!(e, LedgerError::NotCanonical { .. }),
                "{other_spelling}: {e:?}"
            );
        }
    }
}
