//! The JWT signing keys meshca holds, with their schedule, and how they
//! are stored: JSON holding each key's PKCS#8 and times.
//!
//! The stored form is private key material: a file written 0600 in the
//! state directory, or the Secret `meshca-jwt-keys` in a cluster. It never
//! goes into a bundle.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::schedule::{KeyTimes, Schedule};
use crate::jose::{KeyError, KeyType, PrivateKey};

/// A key and its times. The key is shared between snapshots: a change of
/// times (a signer cut short by its successor) does not touch it.
#[derive(Debug, Clone)]
pub struct HeldKey {
    /// The private key.
    pub key: Arc<PrivateKey>,
    /// When it is published, signs and retires.
    pub times: KeyTimes,
}

/// The keys at one moment: a snapshot, replaced as a whole on change.
#[derive(Debug, Default, Clone)]
pub struct Keyring {
    keys: Vec<HeldKey>,
}

/// Why stored keys could not be used.
#[derive(Debug, Error)]
pub enum KeyringError {
    /// The stored JSON does not parse.
    #[error("the stored JWT signing keys do not parse")]
    Parse(#[source] serde_json::Error),
    /// A stored key's material is not base64.
    #[error("the stored JWT signing key {0} is not base64")]
    Encoding(String),
    /// A stored key is not a usable key.
    #[error(transparent)]
    Key(#[from] KeyError),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    keys: Vec<StoredKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    kid: String,
    key_type: KeyType,
    pkcs8: String,
    #[serde(flatten)]
    times: KeyTimes,
}

impl Keyring {
    /// Keys read back from their stored form.
    ///
    /// # Errors
    /// The text does not parse or a key is unusable: never an empty
    /// keyring, which would drop keys live tokens were signed with.
    pub fn decode(text: &[u8]) -> Result<Self, KeyringError> {
        let stored: Stored = serde_json::from_slice(text).map_err(KeyringError::Parse)?;
        let keys = stored
            .keys
            .into_iter()
            .map(|k| {
                let der = Zeroizing::new(
                    B64.decode(&k.pkcs8)
                        .map_err(|_| KeyringError::Encoding(k.kid.clone()))?,
                );
                let key = PrivateKey::from_pkcs8(k.key_type, der, &k.kid)?;
                Ok(HeldKey {
                    key: Arc::new(key),
                    times: k.times,
                })
            })
            .collect::<Result<_, KeyringError>>()?;
        Ok(Self { keys })
    }

    /// The stored form (private key material).
    ///
    /// # Errors
    /// [`KeyringError::Parse`] if the keys do not serialise (never a
    /// record written empty).
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, KeyringError> {
        let stored = Stored {
            keys: self
                .keys
                .iter()
                .map(|k| StoredKey {
                    kid: k.key.kid().to_owned(),
                    key_type: k.key.key_type(),
                    pkcs8: B64.encode(k.key.pkcs8()),
                    times: k.times,
                })
                .collect(),
        };
        let text = serde_json::to_vec_pretty(&stored).map_err(KeyringError::Parse);
        // The intermediate strings held key material too.
        drop(Zeroizing::new(
            stored.keys.into_iter().map(|k| k.pkcs8).collect::<Vec<_>>(),
        ));
        text.map(Zeroizing::new)
    }

    /// Every key held, retired or not.
    pub fn keys(&self) -> &[HeldKey] {
        &self.keys
    }

    fn times(&self) -> Vec<KeyTimes> {
        self.keys.iter().map(|k| k.times).collect()
    }

    /// The key that signs at `now`.
    pub fn signer(&self, now: OffsetDateTime) -> Option<&HeldKey> {
        Schedule::signer(&self.times(), now).map(|i| &self.keys[i])
    }

    /// The keys a relying party must know at `now`.
    pub fn published<'a>(
        &'a self,
        schedule: &'a Schedule,
        now: OffsetDateTime,
    ) -> impl Iterator<Item = &'a HeldKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| schedule.published(&k.times, now))
    }

    /// The next moment the keys' roles change.
    pub fn next_change(&self, schedule: &Schedule, now: OffsetDateTime) -> Option<OffsetDateTime> {
        schedule.next_change(&self.times(), now)
    }

    /// When the last key stops signing: with no new key by then, no token
    /// can be issued.
    pub fn signs_until(&self) -> Option<OffsetDateTime> {
        self.keys.iter().map(|k| k.times.signs_until).max()
    }

    /// This keyring brought up to date at `now`: retired keys dropped,
    /// and a new key of `key_type` made when one is due, or by hand
    /// ([`NewKey::Now`]). `None` when nothing changes.
    ///
    /// # Errors
    /// A key could not be generated.
    pub fn advance(
        &self,
        schedule: &Schedule,
        key_type: KeyType,
        now: OffsetDateTime,
        new_key: NewKey,
    ) -> Result<Option<Self>, KeyError> {
        let mut keys: Vec<HeldKey> = self
            .keys
            .iter()
            .filter(|k| schedule.published(&k.times, now))
            .cloned()
            .collect();
        let kept = keys.len();
        let mut times: Vec<KeyTimes> = keys.iter().map(|k| k.times).collect();
        let lead = match new_key {
            NewKey::Now { lead } => Some(lead),
            NewKey::WhenDue if schedule.needs_key(&times, now) => Some(Duration::ZERO),
            NewKey::WhenDue => None,
        };
        let new = if let Some(lead) = lead {
            let key_times = schedule.add_key(&mut times, now, lead);
            Some(HeldKey {
                key: Arc::new(PrivateKey::generate(key_type)?),
                times: key_times,
            })
        } else {
            None
        };
        if new.is_none() && kept == self.keys.len() {
            return Ok(None);
        }
        // add_key may have cut the current signer short: keep its new times.
        for (key, t) in keys.iter_mut().zip(times) {
            key.times = t;
        }
        keys.extend(new);
        Ok(Some(Self { keys }))
    }
}

/// When [`Keyring::advance`] makes a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewKey {
    /// When the schedule says so.
    WhenDue,
    /// Now (`meshca rotate jwt-key`); it signs `lead` later than the
    /// propagation delay alone would say, the time daemons take to read it.
    Now {
        /// The extra wait.
        lead: Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Schedule {
        Schedule {
            propagation_delay: Duration::from_secs(120),
            key_lifetime: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(600),
        }
    }

    #[test]
    fn keys_survive_their_stored_form() {
        let now = OffsetDateTime::now_utc();
        let ring = Keyring::default()
            .advance(&schedule(), KeyType::EcP256, now, NewKey::WhenDue)
            .expect("generate")
            .expect("a first key");
        let again = Keyring::decode(&ring.encode().expect("encode")).expect("decode");
        assert_eq!(again.keys().len(), 1);
        assert_eq!(again.keys()[0].key.kid(), ring.keys()[0].key.kid());
        assert_eq!(again.keys()[0].times, ring.keys()[0].times);
        assert_eq!(
            again.signer(now).map(|k| k.key.kid()),
            Some(ring.keys()[0].key.kid())
        );
    }

    #[test]
    fn what_cannot_be_read_is_an_error_never_an_empty_keyring() {
        assert!(matches!(
            Keyring::decode(b"{\"keys\": [").expect_err("refused"),
            KeyringError::Parse(_)
        ));
        let bad = br#"{"keys":[{"kid":"k1","key_type":"ec-p256","pkcs8":"AAAA",
            "published_at":"2026-01-01T00:00:00Z","signs_from":"2026-01-01T00:00:00Z",
            "signs_until":"2026-01-02T00:00:00Z"}]}"#;
        let err = Keyring::decode(bad).expect_err("refused");
        assert!(err.to_string().contains("k1"), "{err}");
    }

    #[test]
    fn a_forced_rotation_publishes_the_next_key_before_it_signs() {
        let s = schedule();
        let now = OffsetDateTime::now_utc();
        let first = Keyring::default()
            .advance(&s, KeyType::EcP256, now, NewKey::WhenDue)
            .expect("as the test set it up")
            .expect("as the test set it up");
        assert!(first
            .advance(&s, KeyType::EcP256, now, NewKey::WhenDue)
            .expect("as the test set it up")
            .is_none());
        let both = first
            .advance(
                &s,
                KeyType::EcP256,
                now,
                NewKey::Now {
                    lead: Duration::ZERO,
                },
            )
            .expect("as the test set it up")
            .expect("as the test set it up");
        assert_eq!(both.keys().len(), 2);
        let old = both.keys()[0].key.kid();
        assert_eq!(both.signer(now).map(|k| k.key.kid()), Some(old));
        let later = now + Duration::from_secs(121);
        assert_ne!(both.signer(later).map(|k| k.key.kid()), Some(old));
        assert_eq!(
            both.published(&s, later).count(),
            2,
            "the old key's tokens live on"
        );
    }
}
