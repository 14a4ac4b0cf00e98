use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
                token: Some(token.to_owned()),
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
            self.ttl
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
