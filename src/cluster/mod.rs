//! The cluster meshca runs with: how to reach its API server and which
//! replica leads.
//!
//! Only connection and leader election live here. Each feature keeps its
//! own Kubernetes adapter (the bundle Secret under `bundle`, TokenReview
//! under `auth`, the ingress reconciler under `ingress`, the rollout's
//! ConfigMap under `rollout`, the Tresor root Secret under `provider`).

mod config;
pub mod leader;

pub use config::{Discovery, KubernetesConfig, RawKubernetes};

use std::time::Duration;

use thiserror::Error;
use tokio::sync::watch;

use crate::supervisor::Spawner;

/// A connected cluster: the client, meshca's settings for it, and whether
/// this replica leads. Built once at start and shared by every feature.
#[derive(Clone)]
pub struct Cluster {
    /// The API client.
    pub client: kube::Client,
    /// meshca's own namespace and object names.
    pub config: KubernetesConfig,
    /// True while this replica holds the Lease: work that must happen once
    /// (publishing, answering requests that must be answered once) runs on
    /// the leader only.
    pub leader: watch::Receiver<bool>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("namespace", &self.config.namespace)
            .field("leader", &*self.leader.borrow())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connect as `config` says and start leader election, or `None` when
    /// no cluster is to be used here.
    ///
    /// # Errors
    /// [`KubeError::Config`] when a configured cluster cannot be reached.
    pub async fn join(
        config: Option<&KubernetesConfig>,
        spawner: &Spawner,
    ) -> Result<Option<Self>, KubeError> {
        let Some(config) = config else {
            return Ok(None);
        };
        let Some(client) = connect(config).await? else {
            tracing::info!("not in a pod and no kubeconfig configured: running without a cluster");
            return Ok(None);
        };
        let leader = spawner.spawn_with("leader-election", |token| {
            leader::elect(
                client.clone(),
                &config.namespace,
                &config.lease_name,
                leader::replica_identity(),
                config.lease_duration,
                token,
            )
        });
        Ok(Some(Self {
            client,
            config: config.clone(),
            leader,
        }))
    }
}

/// How meshca names itself to the API server.
pub const USER_AGENT: &str = concat!("meshca/", env!("CARGO_PKG_VERSION"));

/// The label every object meshca writes carries.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "meshca");

/// The field manager of everything meshca applies (server-side apply).
pub const FIELD_MANAGER: &str = "meshca";

/// A new ConfigMap of meshca's, labelled as such, holding `key: value`.
pub fn new_configmap(
    name: &str,
    key: &str,
    value: String,
) -> k8s_openapi::api::core::v1::ConfigMap {
    k8s_openapi::api::core::v1::ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(std::collections::BTreeMap::from([(
                MANAGED_BY.0.to_owned(),
                MANAGED_BY.1.to_owned(),
            )])),
            ..kube::api::ObjectMeta::default()
        },
        data: Some(std::collections::BTreeMap::from([(key.to_owned(), value)])),
        ..k8s_openapi::api::core::v1::ConfigMap::default()
    }
}

/// Why a Kubernetes operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KubeError {
    /// No usable client configuration.
    #[error("failed to configure the Kubernetes client: {0}")]
    Config(String),
    /// The API server answered an error or could not be reached.
    #[error("failed to {action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The underlying error.
        #[source]
        source: kube::Error,
    },
    /// A stored object is unusable.
    #[error("{0}")]
    Invalid(String),
}

impl KubeError {
    pub(crate) fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| Self::Api { action, source }
    }

    /// What the error says about trying again: the API server's verdict;
    /// an unusable configuration or object is final.
    pub fn refusal(&self) -> Refusal {
        match self {
            Self::Api { source, .. } => Refusal::of(source),
            Self::Config(message) | Self::Invalid(message) => Refusal::Final {
                code: 0,
                message: message.clone(),
            },
        }
    }
}

/// Whether a kube error is the API server's answer with status `code`.
pub(crate) fn is_reason(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// `text` cut to at most `max_bytes` (on a character boundary, ending in
/// an ellipsis when cut): the API server refuses longer messages in the
/// fields that carry them (a condition's message, an Event's note).
pub fn truncated(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    const ELLIPSIS: &str = "…";
    let mut end = max_bytes.saturating_sub(ELLIPSIS.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &text[..end])
}

/// What the API server's refusal of a request says about trying again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Repeating the same request cannot succeed: it is invalid (422),
    /// forbidden (403), malformed (400) or the like. Give it up, say so.
    Final {
        /// The HTTP status.
        code: u16,
        /// The API server's message.
        message: String,
    },
    /// The server is busy, unavailable or unreachable: the same request
    /// may succeed later, after `retry_after` when the server said so
    /// (API Priority and Fairness' 429 carries it).
    Transient {
        /// The server's own delay, if it gave one.
        retry_after: Option<Duration>,
    },
}

impl Refusal {
    /// Whether the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    /// Classify `e`. 404 (gone) and 409 (conflict) are neither: the
    /// caller decides what they mean for its object, so they count as
    /// transient here (re-read and decide again).
    pub fn of(e: &kube::Error) -> Self {
        match e {
            kube::Error::Api(s) if is_final(s.code) => Self::Final {
                code: s.code,
                message: s.message.clone(),
            },
            kube::Error::Api(s) => Self::Transient {
                retry_after: s
                    .details
                    .as_ref()
                    .map(|d| d.retry_after_seconds)
                    .filter(|s| *s > 0)
                    .map(|s| Duration::from_secs(u64::from(s))),
            },
            _ => Self::Transient { retry_after: None },
        }
    }
}

/// After the first transient failure without a Retry-After.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between tries of a request that may pass: short
/// enough that meshca is back within seconds of the API server.
const RETRY_MOST: Duration = Duration::from_secs(15);
/// The wait before trying again a request that cannot pass by itself: an
/// operator must grant a permission or fix an object, which is not a
/// loop's business; this only notices that someone did.
pub const FINAL_RETRY: Duration = Duration::from_secs(300);

impl Refusal {
    /// How long to wait before the `failures`th retry in a row (1 after
    /// the first failure): the server's Retry-After when it gave one, else
    /// doubling from a second to fifteen; [`FINAL_RETRY`] for a refusal
    /// repeating cannot fix.
    pub fn retry_delay(&self, failures: u32) -> Duration {
        match self {
            Self::Final { .. } => FINAL_RETRY,
            Self::Transient {
                retry_after: Some(after),
            } => *after,
            Self::Transient { retry_after: None } => RETRY_FIRST
                .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
                .min(RETRY_MOST),
        }
    }
}

/// When each of a controller's objects may be tried again. A refusal's
/// delay (the server's Retry-After, or a backoff) holds the object back
/// even when some other event wakes the controller for it meanwhile.
#[derive(Debug)]
pub struct HoldOff<K> {
    until: std::sync::Mutex<std::collections::HashMap<K, (tokio::time::Instant, u32)>>,
}

impl<K> Default for HoldOff<K> {
    fn default() -> Self {
        Self {
            until: std::sync::Mutex::default(),
        }
    }
}

/// Objects held back at most: past it, the oldest holds are forgotten (a
/// controller then merely tries one of them sooner).
const HOLDS_MAX: usize = 65_536;

impl<K: Eq + std::hash::Hash> HoldOff<K> {
    fn map(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<K, (tokio::time::Instant, u32)>> {
        self.until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long `key` must still wait, if at all.
    pub fn remaining(&self, key: &K) -> Option<Duration> {
        let (until, _) = *self.map().get(key)?;
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// `key` failed as `refusal` says: hold it back, one failure in a row
    /// more, and return for how long.
    pub fn failed(&self, key: K, refusal: &Refusal) -> Duration {
        let mut map = self.map();
        if map.len() >= HOLDS_MAX {
            map.clear();
        }
        let entry = map.entry(key).or_insert((tokio::time::Instant::now(), 0));
        entry.1 = entry.1.saturating_add(1);
        let delay = refusal.retry_delay(entry.1);
        entry.0 = tokio::time::Instant::now() + delay;
        delay
    }

    /// `key` succeeded: nothing holds it back any more.
    pub fn succeeded(&self, key: &K) {
        self.map().remove(key);
    }
}

/// A watch stream that survives the API server's refusals as a controller
/// should: each error is logged with what was watched, and the watch
/// resumes after the server's Retry-After, or after a wait doubling from a
/// second to fifteen (five minutes for a refusal repeating cannot fix,
/// such as a missing RBAC grant). Errors never reach the consumer, so no
/// second backoff (a controller's own) stacks on this one.
pub fn resilient<T, S>(
    what: &'static str,
    stream: S,
) -> impl futures_util::Stream<Item = Result<T, kube::runtime::watcher::Error>> + Send
where
    T: Send + 'static,
    S: futures_util::Stream<Item = Result<T, kube::runtime::watcher::Error>> + Send + 'static,
{
    use futures_util::StreamExt;
    futures_util::stream::unfold(
        (stream.boxed(), 0u32),
        move |(mut s, mut failures)| async move {
            loop {
                match s.next().await? {
                    Ok(item) => return Some((Ok(item), (s, 0))),
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        let delay = watch_refusal(&e).retry_delay(failures);
                        tracing::warn!(watch = what, error = %e, retry_in = ?delay, "a watch failed; resuming");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        },
    )
}

/// What a watch error says about trying again.
fn watch_refusal(e: &kube::runtime::watcher::Error) -> Refusal {
    use kube::runtime::watcher::Error;
    match e {
        Error::InitialListFailed(e) | Error::WatchStartFailed(e) | Error::WatchFailed(e) => {
            Refusal::of(e)
        }
        // 410 Gone (history compacted): the watcher lists again at once.
        Error::WatchError(s) if s.code == 410 => Refusal::Transient { retry_after: None },
        Error::WatchError(s) => Refusal::of(&kube::Error::Api(s.clone())),
        Error::NoResourceVersion => Refusal::Transient { retry_after: None },
    }
}

/// The client errors that repeating cannot fix: every 4xx but 404 (the
/// object may come back), 408 (timeout), 409 (conflict) and 429 (busy).
fn is_final(code: u16) -> bool {
    (400..500).contains(&code) && !matches!(code, 404 | 408 | 409 | 429)
}

/// Whether the API server answers now (for `/readyz`).
///
/// # Errors
/// Why it does not, within two seconds.
pub async fn probe(client: &kube::Client) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(2), client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 2s".into()),
    }
}

/// Who the API server takes `client`'s credential for (a
/// `SelfSubjectReview`, Kubernetes 1.28 and later, open to every
/// authenticated user): what an operator's command records as its author.
///
/// # Errors
/// [`KubeError::Api`]: the API server refused or is older; or its answer
/// names no user.
pub async fn user_of(client: &kube::Client) -> Result<String, KubeError> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let reviews: kube::Api<SelfSubjectReview> = kube::Api::all(client.clone());
    let review = reviews
        .create(
            &kube::api::PostParams::default(),
            &SelfSubjectReview::default(),
        )
        .await
        .map_err(KubeError::api(
            "ask the API server who this credential is (SelfSubjectReview)",
        ))?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| KubeError::Invalid("the SelfSubjectReview names no user".into()))
}

/// A client for the configured cluster, or `None` when [`Discovery`]
/// finds none (outside a pod with nothing configured).
///
/// # Errors
/// [`KubeError::Config`] when the configured source yields no usable
/// client configuration.
pub async fn connect(config: &KubernetesConfig) -> Result<Option<kube::Client>, KubeError> {
    let Some(mut client_config) = client_config(&config.discovery).await? else {
        return Ok(None);
    };
    // Fail fast and let each caller decide: kube-rs would otherwise retry a
    // 503 for minutes, holding a signing request (TokenReview) hostage.
    client_config.default_retry = false;
    client_config.connect_timeout = Some(Duration::from_secs(5));
    // Audit logs and API Priority and Fairness name the client by it.
    client_config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    ));
    kube::Client::try_from(client_config)
        .map(Some)
        .map_err(|e| KubeError::Config(e.to_string()))
}

/// Whether meshca runs in a pod (the kubelet sets this for every
/// container).
pub fn in_pod() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
}

async fn client_config(discovery: &Discovery) -> Result<Option<kube::Config>, KubeError> {
    let config = match discovery {
        Discovery::Kubeconfig(path) => {
            let failed = |e: &dyn std::fmt::Display| KubeError::Config(format!("{}: {e}", path.display()));
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| failed(&e))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| failed(&e))?
        }
        Discovery::Infer => kube::Config::infer().await.map_err(|e| {
            KubeError::Config(format!(
                "kubernetes.enabled is true but no cluster was found (KUBECONFIG, ~/.kube/config, in-cluster): {e}"
            ))
        })?,
        Discovery::InPodOnly if in_pod() => {
            kube::Config::incluster().map_err(|e| KubeError::Config(e.to_string()))?
        }
        Discovery::InPodOnly => return Ok(None),
    };
    Ok(Some(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_to_the_api_servers_limits_on_a_character_boundary() {
        assert_eq!(truncated("short", 10), "short");
        let cut = truncated(&"é".repeat(100), 11);
        assert!(cut.len() <= 11 && cut.ends_with('…'), "{cut}");
        assert_eq!(truncated("abcdefghij", 10), "abcdefghij");
        assert_eq!(truncated("abcdefghijk", 10), "abcdefg…");
    }

    #[test]
    fn retries_double_to_a_minute_honour_retry_after_and_wait_long_on_final_refusals() {
        let transient = Refusal::Transient { retry_after: None };
        let delays: Vec<u64> = (1..=8)
            .map(|n| transient.retry_delay(n).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 15, 15, 15, 15]);
        assert_eq!(transient.retry_delay(u32::MAX), RETRY_MOST);
        let busy = Refusal::Transient {
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(busy.retry_delay(1), Duration::from_secs(7));
        let forbidden = Refusal::Final {
            code: 403,
            message: String::new(),
        };
        assert_eq!(forbidden.retry_delay(1), FINAL_RETRY);
    }

    #[tokio::test(start_paused = true)]
    async fn an_object_refused_is_held_back_until_its_delay_then_backs_off_further() {
        let hold = HoldOff::default();
        assert_eq!(hold.remaining(&"a"), None);
        let busy = Refusal::Transient {
            retry_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(hold.failed("a", &busy), Duration::from_secs(2));
        assert_eq!(hold.remaining(&"b"), None, "others are not held");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(hold.remaining(&"a"), Some(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(hold.remaining(&"a"), None);
        let down = Refusal::Transient { retry_after: None };
        assert_eq!(
            hold.failed("a", &down),
            Duration::from_secs(2),
            "the second failure in a row"
        );
        hold.succeeded(&"a");
        assert_eq!(
            hold.failed("a", &down),
            Duration::from_secs(1),
            "counted afresh"
        );
    }

    #[test]
    fn refusals_that_repeating_cannot_fix_are_final() {
        // As the API server writes them (a 429 from API Priority and
        // Fairness carries details.retryAfterSeconds).
        let api = |code: u16, retry: Option<u32>| {
            let mut status = serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": format!("status {code}"), "reason": "", "code": code,
            });
            if let Some(r) = retry {
                status["details"] = serde_json::json!({ "retryAfterSeconds": r });
            }
            kube::Error::Api(Box::new(serde_json::from_value(status).expect("a Status")))
        };
        for code in [400, 403, 413, 415, 422] {
            assert!(
                matches!(Refusal::of(&api(code, None)), Refusal::Final { code: c, .. } if c == code),
                "{code}"
            );
        }
        for code in [404, 408, 409, 500, 503, 504] {
            assert_eq!(
                Refusal::of(&api(code, None)),
                Refusal::Transient { retry_after: None },
                "{code}"
            );
        }
        assert_eq!(
            Refusal::of(&api(429, Some(3))),
            Refusal::Transient {
                retry_after: Some(Duration::from_secs(3))
            }
        );
    }
}
