use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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

/// The extra keys the API server sets for a token bound to a pod
/// (`serviceaccount.ServiceAccountTokenPodNodeInfo`, on by default since
/// Kubernetes 1.30).
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const NODE_NAME: &str = "authentication.kubernetes.io/node-name";

type Outcome = Result<Reviewed, String>;

/// What the API server said about an accepted token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reviewed {
    /// The ServiceAccount, as an identity.
    pub identity: Identity,
    /// The pod a bound token belongs to; `None` for a token bound to no
    /// pod (a Secret's, or `kubectl create token`'s).
    pub bound: Option<BoundPod>,
}

/// The pod a bound ServiceAccount token belongs to, from the TokenReview's
/// `extra`: the API server checked that this pod still exists with this
/// UID before it accepted the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundPod {
    /// The pod's name, in the identity's namespace.
    pub name: String,
    /// The pod's UID.
    pub uid: Option<String>,
    /// The node the pod was scheduled to when the token was issued; older
    /// API servers do not say.
    pub node: Option<String>,
}

/// Checks ServiceAccount tokens with `TokenReview` and derives the
/// identity from `system:serviceaccount:NS:SA`.
///
/// One reviewer serves every frontend, each asking for its own audiences
/// ([`TokenReviewer::for_audiences`]), so that one cache and one TTL
/// (`auth.kubernetes.cache_ttl`) decide how long a token stays accepted
/// after its pod is gone. Answers are cached by the SHA-256 of the
/// audiences and the token (never the token itself), so a burst of
/// renewals costs one review per token.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    trust_domain: TrustDomain,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], (Outcome, Instant)>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer remembering an accepted token for `ttl` at most.
    pub fn new(client: kube::Client, trust_domain: TrustDomain, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            api: Api::all(client),
            trust_domain,
            ttl,
            cache: Mutex::default(),
        })
    }

    /// This reviewer, accepting tokens issued for any of `audiences`.
    pub fn for_audiences(self: &Arc<Self>, audiences: Vec<String>) -> Arc<dyn super::ReviewTokens> {
        Arc::new(ForAudiences {
            reviewer: self.clone(),
            audiences,
        })
    }
}

/// A [`TokenReviewer`] asking for a frontend's audiences.
#[derive(Debug)]
struct ForAudiences {
    reviewer: Arc<TokenReviewer>,
    audiences: Vec<String>,
}

#[async_trait::async_trait]
impl super::ReviewTokens for ForAudiences {
    async fn review(&self, token: &str) -> Result<Reviewed, AuthError> {
        self.reviewer.review(token, &self.audiences).await
    }
}

impl TokenReviewer {
    /// The identity `token` authenticates: a token the API server does not
    /// accept for one of `audiences`, or that is not a ServiceAccount's, is
    /// rejected; an unreachable API server makes it unavailable.
    async fn review(&self, token: &str, audiences: &[String]) -> Result<Reviewed, AuthError> {
        let key = cache_key(audiences, token);
        if let Some(hit) = self.cached(&key) {
            return hit.map_err(AuthError::Rejected);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(audiences.to_vec()),
            },
            ..TokenReview::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(format!("TokenReview failed: {e}")))?;
        let outcome = judge(&answer, audiences, &self.trust_domain);
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

/// The cache key of `token` asked for `audiences`: a token accepted for
/// one frontend's audiences says nothing of another's.
fn cache_key(audiences: &[String], token: &str) -> [u8; 32] {
    let mut hash = crate::crypto::Sha256::new();
    for audience in audiences {
        hash.update(audience.as_bytes());
        hash.update(&[0]);
    }
    hash.update(&[0]);
    hash.update(token.as_bytes());
    hash.finish()
}

impl TokenReviewer {
    fn cached(&self, key: &[u8; 32]) -> Option<Outcome> {
        let cache = self.cache.lock().ok()?;
        let (outcome, until) = cache.get(key)?;
        (*until > Instant::now()).then(|| outcome.clone())
    }
}

/// The API server's answer, as an identity: accepted, for one of
/// `audiences`, and a ServiceAccount's.
fn judge(review: &TokenReview, audiences: &[String], trust_domain: &TrustDomain) -> Outcome {
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
    let granted = status.audiences.as_deref().unwrap_or_default();
    if !granted.iter().any(|a| audiences.contains(a)) {
        return Err(format!("the token is not for audience {audiences:?}"));
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.as_deref()).unwrap_or_default();
    let identity = match username.split(':').collect::<Vec<_>>()[..] {
        ["system", "serviceaccount", ns, sa] => {
            Identity::new(trust_domain.clone(), ns, sa).map_err(|e| e.to_string())?
        }
        _ => return Err(format!("{username:?} is not a ServiceAccount")),
    };
    let extra = user.and_then(|u| u.extra.as_ref());
    let one = |key: &str| {
        extra
            .and_then(|e| e.get(key))
            .and_then(|values| values.first())
            .cloned()
    };
    let bound = one(POD_NAME).map(|name| BoundPod {
        name,
        uid: one(POD_UID),
        node: one(NODE_NAME),
    });
    Ok(Reviewed { identity, bound })
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

    fn review(status: serde_json::Value) -> TokenReview {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {},
            "status": status,
        }))
        .expect("a TokenReview")
    }

    fn judged(status: serde_json::Value) -> Outcome {
        let td = TrustDomain::new("cluster.local").expect("trust domain");
        judge(&review(status), &["istio-ca".into(), "meshca".into()], &td)
    }

    #[test]
    fn a_bound_token_names_its_pod_and_node() {
        let reviewed = judged(serde_json::json!({
            "authenticated": true,
            "audiences": ["istio-ca"],
            "user": {
                "username": "system:serviceaccount:istio-system:ztunnel",
                "extra": {
                    "authentication.kubernetes.io/pod-name": ["ztunnel-x7"],
                    "authentication.kubernetes.io/pod-uid": ["u-1"],
                    "authentication.kubernetes.io/node-name": ["node-1"],
                },
            },
        }))
        .expect("accepted");
        assert_eq!(
            reviewed.identity.spiffe_id(),
            "spiffe://cluster.local/ns/istio-system/sa/ztunnel"
        );
        assert_eq!(
            reviewed.bound,
            Some(BoundPod {
                name: "ztunnel-x7".into(),
                uid: Some("u-1".into()),
                node: Some("node-1".into()),
            })
        );
        let unbound = judged(serde_json::json!({
            "authenticated": true,
            "audiences": ["meshca"],
            "user": { "username": "system:serviceaccount:web:web" },
        }))
        .expect("accepted");
        assert_eq!(unbound.bound, None);
    }

    #[test]
    fn a_token_for_another_audience_or_of_a_user_is_refused() {
        let other_audience = judged(serde_json::json!({
            "authenticated": true,
            "audiences": ["vault"],
            "user": { "username": "system:serviceaccount:web:web" },
        }));
        assert!(other_audience.expect_err("refused").contains("audience"));
        let user = judged(serde_json::json!({
            "authenticated": true,
            "audiences": ["istio-ca"],
            "user": { "username": "alice" },
        }));
        assert!(user.expect_err("refused").contains("not a ServiceAccount"));
        let refused = judged(serde_json::json!({
            "authenticated": false,
            "error": "service account token has expired",
        }));
        assert!(refused.expect_err("refused").contains("expired"));
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
