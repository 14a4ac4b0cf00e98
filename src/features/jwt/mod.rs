//! JWT-SVIDs: tokens a workload presents to relying parties that do not
//! speak mTLS (Vault's JWT auth, cloud workload identity federation),
//! signed by keys meshca owns whatever provider signs its certificates.
//!
//! [`JwtSvids`] is the handle the issuer mints with (`MintTokens`) and
//! the SPIFFE bundle reads the public keys from (`JwtKeys`); [`start`]
//! loads the keys (stopping the start when what is stored cannot be
//! used), makes the first one and returns the keeper that rotates them on
//! their [`Schedule`]. The OIDC discovery document and the JWKS are
//! rendered here (`documents`) and served (`api`) by the signing API and
//! the optional `oidc.listen` listener. `feature` plugs it all into the
//! daemon.

mod api;
mod cli;
mod config;
pub mod documents;
mod feature;
mod keyring;
mod schedule;
mod store;

pub use config::{JwtConfig, RawJwtSvids, RawOidc};
pub use feature::{JwtSvidsFeature, FEATURE};
pub use keyring::{Keyring, NewKey};
pub use schedule::Schedule;
pub use store::{KeyStore, StoreError, SECRET_NAME};

use std::sync::Arc;
use std::time::Duration;

use meshca_provider::crypto::custody::{Custody, CustodyError};
use meshca_provider::Identity;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::custody::{self, CustodyConfig, CustodyMetrics};
use crate::jose::{
    self, check_audience, Claims, Jwk, JwtSvid, KeyError, KeyType, MintError, PrivateKey,
    SigningKey, MIN_TTL,
};
use crate::metrics::Metrics;

/// Mints JWT-SVIDs and publishes their keys.
#[derive(Clone, Debug)]
pub struct JwtSvids {
    config: Arc<JwtConfig>,
    schedule: Schedule,
    keys: watch::Receiver<Arc<Keyring>>,
}

impl JwtSvids {
    /// The configuration in force.
    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    /// A token for `identity` (authenticated by the caller's frontend)
    /// meant for `audience`, living `ttl` (the default when `None`, at
    /// most `max_ttl`).
    ///
    /// # Errors
    /// [`MintError`].
    pub async fn mint(
        &self,
        identity: &Identity,
        audience: &[String],
        ttl: Option<Duration>,
    ) -> Result<JwtSvid, MintError> {
        check_audience(audience).map_err(MintError::Audience)?;
        let ttl = ttl
            .unwrap_or(self.config.default_ttl)
            .clamp(MIN_TTL.min(self.config.max_ttl), self.config.max_ttl);
        let now = OffsetDateTime::now_utc();
        let keys = self.keys.borrow().clone();
        let signer = keys.signer(now).ok_or(MintError::NoKey)?.key.clone();
        let expires_at = now + ttl;
        let claims = Claims {
            sub: identity.spiffe_id(),
            aud: audience.to_vec(),
            exp: expires_at.unix_timestamp(),
            iat: Some(now.unix_timestamp()),
            nbf: None,
            iss: Some(self.config.issuer.as_str().to_owned()),
        };
        Ok(JwtSvid {
            token: jose::sign(&signer, &claims).await?,
            spiffe_id: claims.sub,
            expires_at: OffsetDateTime::from_unix_timestamp(claims.exp).unwrap_or(expires_at),
        })
    }

    /// The public keys relying parties must know now, with their `alg`.
    pub fn public_keys(&self) -> Vec<(Jwk, &'static str)> {
        let now = OffsetDateTime::now_utc();
        self.keys
            .borrow()
            .published(&self.schedule, now)
            .map(|k| (k.key.public().clone(), k.key.key_type().alg()))
            .collect()
    }
}

impl crate::bundle::spiffe::JwtKeys for JwtSvids {
    fn jwt_keys(&self) -> Vec<Jwk> {
        self.public_keys().into_iter().map(|(jwk, _)| jwk).collect()
    }
}

#[async_trait::async_trait]
impl crate::issuer::MintTokens for JwtSvids {
    async fn mint(
        &self,
        identity: &Identity,
        audience: &[String],
        ttl: Option<Duration>,
    ) -> Result<JwtSvid, MintError> {
        JwtSvids::mint(self, identity, audience, ttl).await
    }
}

/// Load the keys from `store` and make the first one if none is stored,
/// then spawn the keeper that rotates them.
///
/// # Errors
/// [`StoreError`]: keys that are stored but cannot be read or used stop
/// the start; they are never replaced behind the operator's back.
pub async fn start(
    config: JwtConfig,
    propagation_delay: Duration,
    store: KeyStore,
    custody: Option<KeyCustody>,
    metrics: Arc<Metrics>,
) -> Result<(JwtSvids, impl FnOnce(CancellationToken) -> Keeping), StoreError> {
    let schedule = schedule(&config, propagation_delay);
    let keeper = Keeper {
        store,
        schedule,
        key_type: config.key_type,
        custody,
        metrics,
    };
    let keyring = keeper
        .advance_retrying(&Keyring::default(), NewKey::WhenDue)
        .await?;
    let (tx, rx) = watch::channel(Arc::new(keyring));
    let svids = JwtSvids {
        config: Arc::new(config),
        schedule,
        keys: rx,
    };
    Ok((svids, move |token| {
        Box::pin(keeper.run(tx, token)) as Keeping
    }))
}

/// The keeper's task.
pub type Keeping = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

fn schedule(config: &JwtConfig, propagation_delay: Duration) -> Schedule {
    Schedule {
        propagation_delay,
        key_lifetime: config.key_lifetime,
        max_ttl: config.max_ttl,
    }
}

/// Make a key now (`meshca rotate jwt-key`) in `store`: it signs once
/// `propagation_delay` has passed plus the time daemons take to read the
/// store; the key it replaces stops signing then. Returns the keys.
///
/// # Errors
/// [`StoreError`]; stored keys that cannot be used are never replaced.
pub async fn rotate_now(
    config: &JwtConfig,
    propagation_delay: Duration,
    store: KeyStore,
    custody: Option<KeyCustody>,
) -> Result<Keyring, StoreError> {
    let keeper = Keeper {
        store,
        schedule: schedule(config, propagation_delay),
        key_type: config.key_type,
        custody,
        metrics: Arc::new(Metrics::new()),
    };
    keeper
        .advance_retrying(&Keyring::default(), NewKey::Now { lead: FOLLOW_EVERY })
        .await
}

/// The custodian new JWT signing keys are made in (`key_custody:`), and
/// what their names start with.
#[derive(Clone, Debug)]
pub struct KeyCustody {
    /// The custodian.
    pub custodian: Arc<dyn Custody>,
    /// `key_custody`'s key prefix: keys are `<prefix>-jwt-<n>`.
    pub prefix: String,
}

impl KeyCustody {
    /// Connect the custodian `config` names for JWT signing keys, with
    /// the task that keeps its credentials fresh until `stop`, if any.
    ///
    /// # Errors
    /// The custodian refused meshca's credentials or cannot be reached:
    /// the start stops, as it does for a provider's custodian.
    pub async fn connect(
        config: &CustodyConfig,
        metrics: &CustodyMetrics,
        stop: CancellationToken,
    ) -> Result<(Self, Option<custody::Task>), CustodyError> {
        let (custodian, task) = custody::connect(config, metrics, stop).await?;
        let custody = Self {
            custodian,
            prefix: config.key_prefix.clone(),
        };
        Ok((custody, task))
    }
}

/// Keeps the stored keys on schedule.
struct Keeper {
    store: KeyStore,
    schedule: Schedule,
    key_type: KeyType,
    custody: Option<KeyCustody>,
    metrics: Arc<Metrics>,
}

/// How often the store is read for keys made elsewhere: by another
/// replica, or by `meshca rotate jwt-key`.
const FOLLOW_EVERY: Duration = Duration::from_secs(10);

impl Keeper {
    /// [`Keeper::advance`], reading again after a conflict at once, or
    /// after a transient failure (the API server busy) a moment later;
    /// five times at most.
    async fn advance_retrying(
        &self,
        known: &Keyring,
        new_key: NewKey,
    ) -> Result<Keyring, StoreError> {
        let mut attempts = 0u32;
        loop {
            match self.advance(known, new_key).await {
                Ok(keyring) => return Ok(keyring),
                Err(e) if e.is_transient() && attempts < 5 => {
                    attempts += 1;
                    if !e.is_conflict() {
                        tokio::time::sleep(Duration::from_millis(200) * attempts).await;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Read the stored keys (reusing those `known` holds), make a key as
    /// `new_key` says and store it; a conflict is for the caller to read
    /// again.
    async fn advance(&self, known: &Keyring, new_key: NewKey) -> Result<Keyring, StoreError> {
        let custodian = self.custody.as_ref().map(|c| c.custodian.as_ref());
        let loaded = self.store.load(known, custodian).await?;
        let now = OffsetDateTime::now_utc();
        let new = match loaded.keyring.due(&self.schedule, now, new_key) {
            Some(lead) => Some((self.make(&loaded.keyring).await?, lead)),
            None => None,
        };
        let Some(next) = loaded.keyring.advance(&self.schedule, now, new) else {
            return Ok(loaded.keyring);
        };
        self.store.save(&next, &loaded).await?;
        if let Some(new) = next.keys().last().filter(|k| k.times.published_at == now) {
            tracing::info!(kid = new.key.kid(), custody = new.key.custody().map(|(_, name)| name), signs_from = %new.times.signs_from, store = %self.store.describe(), "published a new JWT signing key");
        }
        self.destroy_retired(&loaded.keyring, &next).await;
        Ok(next)
    }

    /// Destroy in custody the keys `before` held that `after` no longer
    /// does: their last token has expired. Only the replica whose write
    /// retired them gets here (a write over another's fails first). A
    /// failure is logged once and the key left: repeating would not help
    /// a refusal, and a dead key costs only room in the custodian.
    async fn destroy_retired(&self, before: &Keyring, after: &Keyring) {
        let Some(custody) = &self.custody else {
            return;
        };
        let retired = before
            .keys()
            .iter()
            .filter(|k| !after.keys().iter().any(|a| a.key.kid() == k.key.kid()));
        for key in retired {
            let Some((_, name)) = key.key.custody() else {
                continue;
            };
            match custody.custodian.destroy(name).await {
                Ok(()) => tracing::info!(
                    kid = key.key.kid(),
                    name,
                    backend = custody.custodian.backend(),
                    "destroyed a retired JWT signing key in custody"
                ),
                Err(e) => {
                    tracing::warn!(kid = key.key.kid(), name, error = %crate::report::error_chain(&e), "failed to destroy a retired JWT signing key in custody; it signs nothing, delete it there yourself")
                }
            }
        }
    }

    /// A new key: meshca's own, or made in custody under the next name.
    async fn make(&self, keyring: &Keyring) -> Result<SigningKey, StoreError> {
        let Some(custody) = &self.custody else {
            return PrivateKey::generate(self.key_type)
                .map(SigningKey::Own)
                .map_err(StoreError::Generate);
        };
        let name = keyring.next_custody_name(&custody.prefix);
        let made = match SigningKey::custody_algorithm(self.key_type) {
            Some(algorithm) => custody.custodian.key(&name, algorithm).await,
            None => Err(CustodyError::Refused {
                backend: custody.custodian.backend(),
                message: format!("{:?} keys are not held in custody", self.key_type),
            }),
        };
        made.map(|key| SigningKey::in_custody(key, self.key_type))
            .map_err(|source| StoreError::Generate(KeyError::MakeInCustody { name, source }))
    }

    async fn run(self, tx: watch::Sender<Arc<Keyring>>, token: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let known = tx.borrow().clone();
            let wait = match self.advance(&known, NewKey::WhenDue).await {
                Ok(keyring) => {
                    failures = 0;
                    self.metrics.set_horizon(
                        "jwt_key",
                        keyring.signs_until().map(OffsetDateTime::unix_timestamp),
                    );
                    let wait = self.until_next(&keyring);
                    tx.send_if_modified(|current| {
                        let changed = !same_keys(current, &keyring);
                        if changed {
                            *current = Arc::new(keyring);
                        }
                        changed
                    });
                    wait
                }
                Err(e) if e.is_conflict() => Duration::ZERO,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = Duration::from_secs(2u64.saturating_pow(failures.min(6)));
                    tracing::error!(error = %crate::report::error_chain(&e), retry_in = ?wait, "failed to keep the JWT signing keys");
                    wait
                }
            };
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Until the next change of the keys' roles, and no longer than
    /// [`FOLLOW_EVERY`].
    fn until_next(&self, keyring: &Keyring) -> Duration {
        let now = OffsetDateTime::now_utc();
        keyring
            .next_change(&self.schedule, now)
            .map_or(FOLLOW_EVERY, |at| {
                Duration::try_from(at - now).unwrap_or_default() + Duration::from_millis(10)
            })
            .min(FOLLOW_EVERY)
    }
}

/// Whether two keyrings hold the same keys with the same times.
fn same_keys(a: &Keyring, b: &Keyring) -> bool {
    a.keys().len() == b.keys().len()
        && a.keys()
            .iter()
            .zip(b.keys())
            .all(|(x, y)| x.key.kid() == y.key.kid() && x.times == y.times)
}
