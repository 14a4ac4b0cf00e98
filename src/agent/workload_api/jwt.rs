//! The JWT profile of the Workload API: `FetchJWTSVID` (minted by the
//! signing API for the agent's own identity, cached per audience and
//! renewed at half its lifetime), `FetchJWTBundles` (the trust domain's
//! JWT keys, pushed when they change) and `ValidateJWTSVID` (checked
//! against those keys).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::watch;
use tonic::Status;

use super::super::client::{MintedToken, SigningApi};
use super::super::{AgentError, Held as Credential};
use crate::jose::{self, Jwk};

/// How old the trust domain's keys may be when a token is validated: a
/// key removed from the bundle stops validating within this.
const KEYS_FRESH_FOR: Duration = Duration::from_secs(1);
/// How long a validation waits for fresher keys before it goes on with
/// those held (the daemon unreachable).
const REFRESH_WAIT: Duration = Duration::from_secs(2);

/// The trust domain's JWT keys as the Workload API serves them.
#[derive(Debug, PartialEq)]
pub(super) struct JwtBundle {
    /// `spiffe://<trust domain>`.
    pub trust_domain_id: String,
    /// The JWKS document, as `FetchJWTBundles` sends it.
    pub jwks: Vec<u8>,
    keys: Vec<Jwk>,
}

impl JwtBundle {
    /// Whether `spiffe_id` belongs to this bundle's trust domain.
    fn owns(&self, spiffe_id: &str) -> bool {
        spiffe_id
            .strip_prefix(self.trust_domain_id.as_str())
            .is_some_and(|path| path.starts_with('/'))
    }

    /// The `jwt-svid` keys of a SPIFFE bundle.
    fn of_spiffe_bundle(trust_domain_id: String, bundle: &Value) -> Self {
        let entries: Vec<Value> = bundle["keys"]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .filter(|k| k["use"] == "jwt-svid")
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let keys = entries
            .iter()
            .filter_map(|k| serde_json::from_value(k.clone()).ok())
            .collect();
        let jwks = serde_json::json!({ "keys": entries })
            .to_string()
            .into_bytes();
        Self {
            trust_domain_id,
            jwks,
            keys,
        }
    }
}

/// Followers of the JWT keys: this trust domain's and the federated
/// ones'.
pub(super) type JwtBundleFollowers = (
    watch::Receiver<Option<Arc<JwtBundle>>>,
    watch::Receiver<Arc<[Arc<JwtBundle>]>>,
);

/// What the agent holds, with the HTTPS client that presents it (built
/// once per certificate, so that calls reuse their connections).
struct Held {
    identity: meshca_provider::Identity,
    client: reqwest::Client,
}

/// A minted token and when it is due for renewal.
#[derive(Clone)]
struct Cached {
    minted: MintedToken,
    renew_at: OffsetDateTime,
}

/// The JWT side of the agent: the signing API, the identity the agent
/// holds (its certificate is the credential when it has no token), the
/// tokens it minted and the keys it follows.
pub(crate) struct Tokens {
    api: Arc<SigningApi>,
    held: watch::Sender<Option<Held>>,
    cache: Mutex<HashMap<Vec<String>, Cached>>,
    bundle: watch::Sender<Option<Arc<JwtBundle>>>,
    /// The federated trust domains' JWT keys, from the held identity's
    /// federated bundles.
    federated: watch::Sender<Arc<[Arc<JwtBundle>]>>,
    /// When this trust domain's keys were last fetched; the lock makes
    /// validations that find them stale fetch them once.
    fetched: tokio::sync::Mutex<Option<Instant>>,
}

impl Tokens {
    pub(crate) fn new(api: Arc<SigningApi>) -> Self {
        Self {
            api,
            held: watch::channel(None).0,
            cache: Mutex::new(HashMap::new()),
            bundle: watch::channel(None).0,
            federated: watch::channel(Arc::from([])).0,
            fetched: tokio::sync::Mutex::new(None),
        }
    }

    /// A token for `audience`, from the cache while it is in its first
    /// half of life.
    pub(super) async fn fetch(
        &self,
        audience: &[String],
        spiffe_id: &str,
    ) -> Result<MintedToken, Status> {
        if audience.is_empty() || audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let (identity, client) = self.held()?;
        let mine = identity.spiffe_id();
        if !spiffe_id.is_empty() && spiffe_id != mine {
            return Err(Status::permission_denied(format!(
                "this workload is {mine}, not {spiffe_id}"
            )));
        }
        let mut key = audience.to_vec();
        key.sort();
        key.dedup();
        let now = OffsetDateTime::now_utc();
        if let Some(hit) = self.cached(&key).filter(|c| now < c.renew_at) {
            return Ok(hit.minted);
        }
        let minted = self.api.jwt_svid(&client, &key).await.map_err(status_of)?;
        let expires = OffsetDateTime::parse(&minted.expires_at, &Rfc3339)
            .map_err(|e| Status::internal(format!("the server's expires_at: {e}")))?;
        let cached = Cached {
            renew_at: now + (expires - now) / 2,
            minted: minted.clone(),
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|_, c| c.renew_at > now);
            cache.insert(key, cached);
        }
        Ok(minted)
    }

    fn cached(&self, key: &[String]) -> Option<Cached> {
        self.cache.lock().ok()?.get(key).cloned()
    }

    /// The identity the agent holds now: the tokens' subject, and its
    /// credential when it has no token.
    pub(crate) fn hold(&self, held: &Credential) {
        let federated: Arc<[Arc<JwtBundle>]> = held
            .federated
            .iter()
            .map(|(id, b)| JwtBundle::of_spiffe_bundle(id.clone(), &b.document))
            .filter(|b| !b.keys.is_empty())
            .map(Arc::new)
            .collect();
        self.federated.send_if_modified(|current| {
            let changed = *current != federated;
            *current = federated;
            changed
        });
        match self.api.jwt_client(held) {
            Ok(client) => {
                self.held.send_replace(Some(Held {
                    identity: held.identity.clone(),
                    client,
                }));
            }
            Err(e) => tracing::error!(error = %e, "cannot ask for JWT-SVIDs with this certificate"),
        }
    }

    /// The identity held now and its client.
    fn held(&self) -> Result<(meshca_provider::Identity, reqwest::Client), Status> {
        self.held
            .borrow()
            .as_ref()
            .map(|h| (h.identity.clone(), h.client.clone()))
            .ok_or_else(|| Status::unavailable("the agent holds no identity yet"))
    }

    /// Fetch the trust domain's JWT keys and publish them if they changed.
    pub(crate) async fn refresh(&self) -> Result<(), AgentError> {
        let mut fetched = self.fetched.lock().await;
        self.fetch_keys().await?;
        *fetched = Some(Instant::now());
        Ok(())
    }

    /// Fetch the keys when those held are older than [`KEYS_FRESH_FOR`],
    /// waiting at most [`REFRESH_WAIT`]; concurrent callers fetch once.
    async fn refresh_if_stale(&self) {
        let mut fetched = self.fetched.lock().await;
        if fetched.is_some_and(|at| at.elapsed() < KEYS_FRESH_FOR) {
            return;
        }
        match tokio::time::timeout(REFRESH_WAIT, self.fetch_keys()).await {
            Ok(Ok(())) => *fetched = Some(Instant::now()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "validating with the JWT keys held: they could not be refreshed");
            }
            Err(_) => {
                tracing::warn!("validating with the JWT keys held: refreshing them timed out")
            }
        }
    }

    async fn fetch_keys(&self) -> Result<(), AgentError> {
        let Ok((identity, client)) = self.held() else {
            return Ok(());
        };
        let bundle = self.api.spiffe_bundle(&client).await?;
        let td = format!("spiffe://{}", identity.trust_domain());
        let next = JwtBundle::of_spiffe_bundle(td, &bundle);
        self.bundle.send_if_modified(|current| {
            let changed = current.as_deref() != Some(&next);
            if changed {
                *current = Some(Arc::new(next));
            }
            changed
        });
        Ok(())
    }

    /// Changes of the keys, for `FetchJWTBundles`: this trust domain's
    /// and the federated ones'.
    pub(super) fn bundles(&self) -> JwtBundleFollowers {
        (self.bundle.subscribe(), self.federated.subscribe())
    }

    /// The SPIFFE ID and claims of `token` when valid for `audience`,
    /// under this trust domain's keys as the daemon holds them now (at
    /// most [`KEYS_FRESH_FOR`] old), so that a key removed from the bundle
    /// stops validating at once.
    pub(super) async fn validate(
        &self,
        audience: &str,
        token: &str,
    ) -> Result<jose::Claims, Status> {
        if audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if token.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        self.refresh_if_stale().await;
        let own =
            self.bundle.borrow().clone().ok_or_else(|| {
                Status::unavailable("the trust domain's JWT keys are not known yet")
            })?;
        let federated = self.federated.borrow().clone();
        let now = OffsetDateTime::now_utc();
        // A token is valid under the keys of its subject's trust domain
        // only: a federated key never vouches for this mesh's identities.
        let mut first_error = None;
        for bundle in std::iter::once(&own).chain(federated.iter()) {
            match jose::validate(token, &bundle.keys, audience, now) {
                Ok(claims) if bundle.owns(&claims.sub) => return Ok(claims),
                Ok(claims) => {
                    first_error.get_or_insert_with(|| {
                        format!(
                            "{} is not of {}, whose key signed it",
                            claims.sub, bundle.trust_domain_id
                        )
                    });
                }
                Err(e) => {
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        Err(Status::invalid_argument(first_error.unwrap_or_default()))
    }
}

/// The signing API's refusal as a gRPC status: a feature the server does
/// not have is `Unimplemented`, the caller's mistakes `InvalidArgument`,
/// a denial `PermissionDenied`, anything else `Unavailable` (retry).
fn status_of(e: AgentError) -> Status {
    match &e {
        AgentError::Refused { code, message, .. } => match code.as_str() {
            "not_enabled" => Status::unimplemented(format!("JWT-SVIDs: {message}")),
            "invalid_request" => Status::invalid_argument(message.clone()),
            "identity_denied" | "unauthenticated" => Status::permission_denied(message.clone()),
            _ => Status::unavailable(message.clone()),
        },
        _ => Status::unavailable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_vouches_only_for_its_own_trust_domain() {
        let bundle = JwtBundle::of_spiffe_bundle("spiffe://b.test".into(), &serde_json::json!({}));
        assert!(bundle.owns("spiffe://b.test/ns/a/sa/b"));
        for foreign in [
            "spiffe://b.test.evil/ns/a/sa/b",
            "spiffe://a.test/ns/a/sa/b",
            "spiffe://b.test",
        ] {
            assert!(!bundle.owns(foreign), "{foreign}");
        }
    }
}
