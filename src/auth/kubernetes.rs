use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::Api;
use meshca_provider::{Identity, TrustDomain};

use super::AuthError;

/// How long a refusal is remembered, so a client retrying a bad token does
/// not turn into a stream of TokenReviews.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Cache entries beyond which expired ones are swept.
const SWEEP_AT: usize = 10_000;

type Outcome = Result<Identity, String>;

/// Checks ServiceAccount tokens with `TokenReview` for one audience and
/// derives the identity from `system:serviceaccount:NS:SA`.
///
/// Answers are cached by the token's SHA-256 (never the token itself) for
/// `ttl`, so a burst of renewals costs one review per token.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    audience: String,
    trust_domain: TrustDomain,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], (Outcome, Instant)>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer for tokens issued for `audience`.
    pub fn new(
        client: kube::Client,
        audience: String,
        trust_domain: TrustDomain,
        ttl: Duration,
    ) -> Self {
        Self {
            api: Api::all(client),
            audience,
            trust_domain,
            ttl,
            cache: Mutex::default(),
        }
    }
}

#[async_trait::async_trait]
impl super::ReviewTokens for TokenReviewer {
    /// The identity `token` authenticates: a token the API server does not
    /// accept for this audience, or that is not a ServiceAccount's, is
    /// rejected; an unreachable API server makes it unavailable.
    async fn review(&self, token: &str) -> Result<Identity, AuthError> {
        let key: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .map_err(|_| AuthError::Store("digest length".into()))?;
        if let Some(hit) = self.cached(&key) {
            return hit.map_err(AuthError::Rejected);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(format!("TokenReview failed: {e}")))?;
        let outcome = self.judge(&answer);
        let ttl = if outcome.is_ok() {
            cache_ttl(self.ttl, unverified_expiry(token), SystemTime::now())
        } else {
            NEGATIVE_TTL
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= SWEEP_AT {
                cache.retain(|_, (_, until)| *until > Instant::now());
            }
            cache.insert(key, (outcome.clone(), Instant::now() + ttl));
        }
        outcome.map_err(AuthError::Rejected)
    }
}

impl TokenReviewer {
    fn cached(&self, key: &[u8; 32]) -> Option<Outcome> {
        let cache = self.cache.lock().ok()?;
        let (outcome, until) = cache.get(key)?;
        (*until > Instant::now()).then(|| outcome.clone())
    }

    fn judge(&self, review: &TokenReview) -> Outcome {
        let status = review
            .status
            .as_ref()
            .ok_or("the TokenReview has no status")?;
        if status.authenticated != Some(true) {
            return Err(format!(
                "the Kubernetes API server did not accept the token: {}",
                status.error.as_deref().unwrap_or("not authenticated")
            ));
        }
        let audiences = status.audiences.clone().unwrap_or_default();
        if !audiences.contains(&self.audience) {
            return Err(format!("the token is not for audience {:?}", self.audience));
        }
        let username = status
            .user
            .as_ref()
            .and_then(|u| u.username.as_deref())
            .unwrap_or_default();
        let mut parts = username.split(':');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("system"), Some("serviceaccount"), Some(ns), Some(sa), None) => {
                Identity::new(self.trust_domain.clone(), ns, sa).map_err(|e| e.to_string())
            }
            _ => Err(format!("{username:?} is not a ServiceAccount")),
        }
    }
}
/// The `exp` claim of a JWT, read without verifying anything: the API
/// server has just vouched for the token, and this only bounds how long
/// that answer is remembered.
fn unverified_expiry(token: &str) -> Option<u64> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_u64()
}

/// How long an accepted token is remembered: `ttl`, but never past the
/// token's own expiry.
fn cache_ttl(ttl: Duration, expiry: Option<u64>, now: SystemTime) -> Duration {
    let Some(exp) = expiry else {
        return ttl;
    };
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    ttl.min(Duration::from_secs(exp.saturating_sub(now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &serde_json::Value) -> String {
        use base64::Engine;
        let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.sig",
            enc(br#"{"alg":"RS256"}"#),
            enc(claims.to_string().as_bytes())
        )
    }

    #[test]
    fn an_accepted_token_is_remembered_no_longer_than_it_lives() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ttl = Duration::from_secs(30);
        let soon = jwt(&serde_json::json!({ "exp": 1_000_010, "sub": "x" }));
        assert_eq!(
            cache_ttl(ttl, unverified_expiry(&soon), now),
            Duration::from_secs(10)
        );
        let later = jwt(&serde_json::json!({ "exp": 2_000_000 }));
        assert_eq!(cache_ttl(ttl, unverified_expiry(&later), now), ttl);
        let gone = jwt(&serde_json::json!({ "exp": 999_000 }));
        assert_eq!(
            cache_ttl(ttl, unverified_expiry(&gone), now),
            Duration::ZERO
        );
        for opaque in [
            "not-a-jwt",
            "a.%%%.c",
            &jwt(&serde_json::json!({ "sub": "no exp" })),
        ] {
            assert_eq!(
                cache_ttl(ttl, unverified_expiry(opaque), now),
                ttl,
                "{opaque}"
            );
        }
    }
}
