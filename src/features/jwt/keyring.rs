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
use meshca_provider::crypto::custody::{Custody, CustodyError};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::schedule::{KeyTimes, Schedule};
use crate::jose::{KeyError, KeyType, PrivateKey, SigningKey};

/// A key and its times. The key is shared between snapshots: a change of
/// times (a signer cut short by its successor) does not touch it.
#[derive(Debug, Clone)]
pub struct HeldKey {
    /// The signing key.
    pub key: Arc<SigningKey>,
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
    /// A stored key is neither meshca's own nor in custody.
    #[error("the stored JWT signing key {0} has neither key material nor a key in custody")]
    Incomplete(String),
    /// A stored key is recorded as held in custody with a type custody
    /// never holds (meshca makes RS256 keys only as its own).
    #[error("the stored JWT signing key {kid} is recorded as an {alg} key in key custody, which holds only ES256 and ES384 keys: remove the entry (meshca never writes one)")]
    NotCustodial {
        /// The key's ID.
        kid: String,
        /// Its algorithm.
        alg: &'static str,
    },
    /// A stored key is held by a custodian meshca is not configured with.
    #[error("the JWT signing key {kid} is held in {backend} key custody as {name}, but key_custody.kind is {configured}: configure that custodian again")]
    Elsewhere {
        /// The key's ID.
        kid: String,
        /// The custodian that holds it.
        backend: String,
        /// Its name there.
        name: String,
        /// `key_custody.kind` now.
        configured: &'static str,
    },
    /// The custodian could not give a stored key.
    #[error("failed to find the JWT signing key {kid} in key custody")]
    Custody {
        /// The key's ID.
        kid: String,
        /// Why.
        #[source]
        source: CustodyError,
    },
    /// The key of that name in custody is another key than the one stored
    /// (replaced, or made anew after it was deleted).
    #[error("the key {name} in {backend} key custody is not the stored JWT signing key {kid}: it was replaced or deleted there")]
    Replaced {
        /// The stored key's ID.
        kid: String,
        /// The custodian.
        backend: String,
        /// Its name there.
        name: String,
    },
}

impl KeyringError {
    /// When reading again may succeed without anyone acting: the
    /// custodian was unavailable.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Custody { source, .. } => source.retry_after(),
            _ => None,
        }
    }
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
    /// meshca's own key: its PKCS#8, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pkcs8: Option<String>,
    /// A key in custody: where, by name (no key material).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    custody: Option<StoredCustody>,
    #[serde(flatten)]
    times: KeyTimes,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredCustody {
    backend: String,
    name: String,
}

impl Keyring {
    /// Keys read back from their stored form. Keys `known` already holds
    /// (by `kid`) are taken from it; a key in custody is asked of
    /// `custody` and must be the key stored.
    ///
    /// # Errors
    /// The text does not parse, a key is unusable, or a key in custody
    /// cannot be found as stored: never an empty keyring, which would
    /// drop keys live tokens were signed with.
    pub async fn decode(
        text: &[u8],
        known: &Keyring,
        custody: Option<&dyn Custody>,
    ) -> Result<Self, KeyringError> {
        let stored: Stored = serde_json::from_slice(text).map_err(KeyringError::Parse)?;
        let mut keys = Vec::with_capacity(stored.keys.len());
        for k in stored.keys {
            let times = k.times;
            let held = known.keys.iter().find(|h| h.key.kid() == k.kid);
            let key = match held {
                Some(h) => h.key.clone(),
                None => Arc::new(k.key(custody).await?),
            };
            keys.push(HeldKey { key, times });
        }
        Ok(Self { keys })
    }

    /// The stored form: PKCS#8 of meshca's own keys (private key
    /// material), names of keys in custody.
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
                    pkcs8: k.key.pkcs8().map(|der| B64.encode(der)),
                    custody: k.key.custody().map(|(backend, name)| StoredCustody {
                        backend: backend.to_owned(),
                        name: name.to_owned(),
                    }),
                    times: k.times,
                })
                .collect(),
        };
        let text = serde_json::to_vec_pretty(&stored).map_err(KeyringError::Parse);
        // The intermediate strings held key material too.
        drop(Zeroizing::new(
            stored
                .keys
                .into_iter()
                .filter_map(|k| k.pkcs8)
                .collect::<Vec<_>>(),
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

    /// Whether [`Keyring::advance`] at `now` is to add a key, as
    /// `new_key` says: the extra lead before it signs when it is.
    pub fn due(
        &self,
        schedule: &Schedule,
        now: OffsetDateTime,
        new_key: NewKey,
    ) -> Option<Duration> {
        match new_key {
            NewKey::Now { lead } => Some(lead),
            NewKey::WhenDue => {
                let times: Vec<KeyTimes> = self
                    .keys
                    .iter()
                    .filter(|k| schedule.published(&k.times, now))
                    .map(|k| k.times)
                    .collect();
                schedule.needs_key(&times, now).then_some(Duration::ZERO)
            }
        }
    }

    /// This keyring brought up to date at `now`: retired keys dropped,
    /// and `new` added (made because [`Keyring::due`] said so, with the
    /// lead it gave). `None` when nothing changes.
    pub fn advance(
        &self,
        schedule: &Schedule,
        now: OffsetDateTime,
        new: Option<(SigningKey, Duration)>,
    ) -> Option<Self> {
        let mut keys: Vec<HeldKey> = self
            .keys
            .iter()
            .filter(|k| schedule.published(&k.times, now))
            .cloned()
            .collect();
        if new.is_none() && keys.len() == self.keys.len() {
            return None;
        }
        let mut times: Vec<KeyTimes> = keys.iter().map(|k| k.times).collect();
        let new = new.map(|(key, lead)| HeldKey {
            key: Arc::new(key),
            times: schedule.add_key(&mut times, now, lead),
        });
        // add_key may have cut the current signer short: keep its new times.
        for (key, t) in keys.iter_mut().zip(times) {
            key.times = t;
        }
        keys.extend(new);
        Some(Self { keys })
    }

    /// The name the next key in custody gets: `<prefix>-jwt-<n>`, one
    /// past the highest `n` held, so that replicas making the next key
    /// together ask for the same key.
    pub fn next_custody_name(&self, prefix: &str) -> String {
        let stem = format!("{prefix}-jwt-");
        let n = self
            .keys
            .iter()
            .filter_map(|k| k.key.custody()?.1.strip_prefix(&stem)?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        format!("{stem}{}", n + 1)
    }
}

impl StoredKey {
    /// The key this entry names: its PKCS#8, or the key in custody.
    async fn key(self, custody: Option<&dyn Custody>) -> Result<SigningKey, KeyringError> {
        match (self.pkcs8, self.custody) {
            (Some(pkcs8), _) => {
                let der = Zeroizing::new(
                    B64.decode(&pkcs8)
                        .map_err(|_| KeyringError::Encoding(self.kid.clone()))?,
                );
                let key = PrivateKey::from_pkcs8(self.key_type, der, &self.kid)?;
                Ok(SigningKey::Own(key))
            }
            (None, Some(held)) => in_custody(self.kid, self.key_type, held, custody).await,
            (None, None) => Err(KeyringError::Incomplete(self.kid)),
        }
    }
}

/// The stored key `kid` held as `held`, found in `custody`.
async fn in_custody(
    kid: String,
    key_type: KeyType,
    held: StoredCustody,
    custody: Option<&dyn Custody>,
) -> Result<SigningKey, KeyringError> {
    let Some(algorithm) = SigningKey::custody_algorithm(key_type) else {
        return Err(KeyringError::NotCustodial {
            kid,
            alg: key_type.alg(),
        });
    };
    let custody = match custody {
        Some(c) if c.backend() == held.backend => c,
        other => {
            return Err(KeyringError::Elsewhere {
                kid,
                backend: held.backend,
                name: held.name,
                configured: other.map_or("file", |c| c.backend()),
            })
        }
    };
    let found =
        custody
            .key(&held.name, algorithm)
            .await
            .map_err(|source| KeyringError::Custody {
                kid: kid.clone(),
                source,
            })?;
    let key = SigningKey::in_custody(found, key_type);
    if key.kid() != kid {
        return Err(KeyringError::Replaced {
            kid,
            backend: held.backend,
            name: held.name,
        });
    }
    Ok(key)
}

/// When [`Keyring::due`] says a key is to be made.
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

    /// `ring` advanced at `now`, making a P-256 key of meshca's own when
    /// one is due.
    fn advanced(
        ring: &Keyring,
        s: &Schedule,
        now: OffsetDateTime,
        new_key: NewKey,
    ) -> Option<Keyring> {
        let new = ring.due(s, now, new_key).map(|lead| {
            let key = PrivateKey::generate(KeyType::EcP256).expect("as the test set it up");
            (SigningKey::Own(key), lead)
        });
        ring.advance(s, now, new)
    }

    async fn decode(text: &[u8]) -> Result<Keyring, KeyringError> {
        Keyring::decode(text, &Keyring::default(), None).await
    }

    #[tokio::test]
    async fn keys_survive_their_stored_form() {
        let now = OffsetDateTime::now_utc();
        let ring =
            advanced(&Keyring::default(), &schedule(), now, NewKey::WhenDue).expect("a first key");
        let again = decode(&ring.encode().expect("encode"))
            .await
            .expect("decode");
        assert_eq!(again.keys().len(), 1);
        assert_eq!(again.keys()[0].key.kid(), ring.keys()[0].key.kid());
        assert_eq!(again.keys()[0].times, ring.keys()[0].times);
        assert_eq!(
            again.signer(now).map(|k| k.key.kid()),
            Some(ring.keys()[0].key.kid())
        );
    }

    #[tokio::test]
    async fn what_cannot_be_read_is_an_error_never_an_empty_keyring() {
        assert!(matches!(
            decode(b"{\"keys\": [").await.expect_err("refused"),
            KeyringError::Parse(_)
        ));
        let bad = br#"{"keys":[{"kid":"k1","key_type":"ec-p256","pkcs8":"AAAA",
            "published_at":"2026-01-01T00:00:00Z","signs_from":"2026-01-01T00:00:00Z",
            "signs_until":"2026-01-02T00:00:00Z"}]}"#;
        let err = decode(bad).await.expect_err("refused");
        assert!(err.to_string().contains("k1"), "{err}");
        let neither = br#"{"keys":[{"kid":"k2","key_type":"ec-p256",
            "published_at":"2026-01-01T00:00:00Z","signs_from":"2026-01-01T00:00:00Z",
            "signs_until":"2026-01-02T00:00:00Z"}]}"#;
        let err = decode(neither).await.expect_err("refused");
        assert!(
            matches!(&err, KeyringError::Incomplete(k) if k == "k2"),
            "{err}"
        );
        let rsa_held = br#"{"keys":[{"kid":"k5","key_type":"rsa-2048",
            "custody":{"backend":"transit","name":"meshca-jwt-5"},
            "published_at":"2026-01-01T00:00:00Z","signs_from":"2026-01-01T00:00:00Z",
            "signs_until":"2026-01-02T00:00:00Z"}]}"#;
        let err = decode(rsa_held).await.expect_err("refused");
        assert!(
            matches!(&err, KeyringError::NotCustodial { kid, alg: "RS256" } if kid == "k5"),
            "{err}"
        );
        assert!(err.to_string().contains("only ES256 and ES384"), "{err}");
    }

    #[tokio::test]
    async fn a_key_in_custody_without_its_custodian_stops_with_where_it_is() {
        let held = br#"{"keys":[{"kid":"k3","key_type":"ec-p256",
            "custody":{"backend":"transit","name":"meshca-jwt-4"},
            "published_at":"2026-01-01T00:00:00Z","signs_from":"2026-01-01T00:00:00Z",
            "signs_until":"2026-01-02T00:00:00Z"}]}"#;
        let err = decode(held).await.expect_err("refused");
        let message = err.to_string();
        for says in ["k3", "transit", "meshca-jwt-4", "key_custody.kind is file"] {
            assert!(message.contains(says), "{says:?} not in {message}");
        }
        assert_eq!(err.retry_after(), None, "an operator must act");
    }

    #[test]
    fn the_next_key_in_custody_is_named_one_past_the_highest_held() {
        assert_eq!(
            Keyring::default().next_custody_name("meshca"),
            "meshca-jwt-1"
        );
    }

    #[test]
    fn a_forced_rotation_publishes_the_next_key_before_it_signs() {
        let s = schedule();
        let now = OffsetDateTime::now_utc();
        let first =
            advanced(&Keyring::default(), &s, now, NewKey::WhenDue).expect("as the test set it up");
        assert!(advanced(&first, &s, now, NewKey::WhenDue).is_none());
        let both = advanced(
            &first,
            &s,
            now,
            NewKey::Now {
                lead: Duration::ZERO,
            },
        )
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
