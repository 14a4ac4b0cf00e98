//! The PodCertificateRequest signer, on kube-runtime's [`Controller`].
//!
//! It watches only requests for its own signer name (a field selector, so
//! other signers' requests never reach meshca) and answers each once: only
//! the leader signs, and the status write carries the resourceVersion it
//! read, so a second writer gets a conflict instead of doubling the answer.
//! Signing goes through the [`Issuer`] like every other frontend's (its
//! admission, deny-list and metrics); this module only renders the verdict
//! as the request's status.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::certificates::v1::PodCertificateRequest;
use kube::api::PostParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use meshca_provider::TrustDomain;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::answer::{self, Answer, Next};
use super::config::PodCertificatesConfig;
use crate::cluster::{is_reason, resilient, Cluster, HoldOff, Refusal};
use crate::issuer::{Frontend, Issuer, Request, Unasked};
use crate::metrics::{Metrics, RefusalLabels};
use crate::watched::changes;

/// Signed answers kept for a retried write, at most.
const MAX_UNWRITTEN: usize = 4096;
/// Requests given up or answered, remembered at most (a restart forgets
/// them all).
const MAX_REMEMBERED: usize = 65_536;

/// Why one request could not be handled now; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// The status could not be written, for a reason that may pass.
    #[error("failed to write the status of {name}: {source}")]
    Write {
        /// `namespace/name`.
        name: String,
        /// When the API server asked to be called again, if it did.
        retry_after: Option<Duration>,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// What became of a status write.
enum Written {
    /// Stored.
    Stored,
    /// Nothing to answer any more: deleted, or changed meanwhile (the next
    /// reconcile sees the change).
    Moot,
    /// The API server will never take this status (invalid, forbidden).
    Refused {
        /// The HTTP status.
        code: u16,
        /// The API server's message.
        message: String,
    },
}

struct Context {
    client: kube::Client,
    issuer: Issuer,
    config: PodCertificatesConfig,
    trust_domain: TrustDomain,
    leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    /// Answers signed but not yet stored (the write failed for a reason
    /// that may pass), by request UID: retried as they are, not signed
    /// again, while the API server would still accept them.
    unwritten: Mutex<HashMap<String, Answer>>,
    /// Requests whose every answer the API server refused, by UID: this
    /// replica does not sign them again.
    given_up: Mutex<HashMap<String, ()>>,
    /// Requests answered, by UID, with the resourceVersion the answer
    /// replaced: a reconcile that still sees that version (the cache has
    /// not caught up with the write) waits for the newer one instead of
    /// signing again.
    answered: Mutex<HashMap<String, String>>,
    /// Requests whose write the API server asked to retry later, by UID.
    hold: HoldOff<String>,
}

/// Everything the signer needs besides the cluster.
pub struct SignerDeps {
    /// Signs.
    pub issuer: Issuer,
    /// The mesh's trust domain.
    pub trust_domain: TrustDomain,
    /// Counts answers.
    pub metrics: Arc<Metrics>,
}

/// The signer task, to spawn; it acts only while this replica leads.
pub fn signer(
    cluster: &Cluster,
    config: PodCertificatesConfig,
    deps: SignerDeps,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let api: Api<PodCertificateRequest> = Api::all(cluster.client.clone());
    let selector = format!("spec.signerName={}", config.signer_name.as_str());
    let triggers = futures_util::stream::select_all([
        changes(cluster.leader.clone()),
        changes(deps.issuer.signer().subscribe()),
    ]);
    let ctx = Arc::new(Context {
        client: cluster.client.clone(),
        issuer: deps.issuer,
        config,
        trust_domain: deps.trust_domain,
        leader: cluster.leader.clone(),
        metrics: deps.metrics,
        unwritten: Mutex::default(),
        given_up: Mutex::default(),
        answered: Mutex::default(),
        hold: HoldOff::default(),
    });
    let (reader, writer) = reflector::store();
    let requests = reflector::reflector(
        writer,
        resilient(
            "podcertificaterequests",
            watcher(api, watcher::Config::default().fields(&selector)),
        ),
    )
    .applied_objects();
    let controller = Controller::for_stream(requests, reader)
        .reconcile_all_on(triggers)
        .graceful_shutdown_on(shutdown.cancelled_owned());
    async move {
        controller
            .run(reconcile, error_policy, ctx)
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "pod certificate controller");
                }
            })
            .await;
    }
}

async fn reconcile(
    pcr: Arc<PodCertificateRequest>,
    ctx: Arc<Context>,
) -> Result<Action, SignerError> {
    if !*ctx.leader.borrow() {
        return Ok(Action::await_change());
    }
    let uid = pcr.uid().unwrap_or_default();
    if locked(&ctx.given_up).contains_key(&uid) || answered_already(&ctx, &uid, &pcr) {
        return Ok(Action::await_change());
    }
    // Woken early by another event while the API server asked for a wait.
    if let Some(wait) = ctx.hold.remaining(&uid) {
        return Ok(Action::requeue(wait));
    }
    let next = answer::decide(
        &pcr,
        &ctx.config.signer_name,
        &ctx.trust_domain,
        ctx.issuer.lifetimes(),
    );
    let answer = match next {
        Next::Skip => return Ok(Action::await_change()),
        Next::Refuse(a) => {
            let why = Unasked::Malformed(a.message().to_owned());
            ctx.issuer.refuse(Frontend::PodCertificate, why);
            a
        }
        Next::Sign { identity, bounds } => match unwritten(&ctx, &uid, &pcr) {
            Some(a) => a,
            None => match sign(&ctx, &pcr, &identity, bounds).await {
                Ok(a) => a,
                Err(later) => return Ok(later),
            },
        },
    };
    answer_request(&ctx, &pcr, answer).await
}

/// Whether this replica answered `pcr` in a write the cache has not
/// caught up with; forgets the answer once a newer version is seen.
fn answered_already(ctx: &Context, uid: &str, pcr: &PodCertificateRequest) -> bool {
    let mut answered = locked(&ctx.answered);
    match answered.get(uid) {
        Some(replaced) if Some(replaced) == pcr.metadata.resource_version.as_ref() => true,
        Some(_) => {
            answered.remove(uid);
            false
        }
        None => false,
    }
}

/// Remember `value` for `uid`, forgetting everything once `cap` are kept
/// (a forgotten request costs at most one more signature).
fn remember<V>(map: &Mutex<HashMap<String, V>>, cap: usize, uid: String, value: V) {
    let mut map = locked(map);
    if map.len() >= cap {
        map.clear();
    }
    map.insert(uid, value);
}

/// The answer signed earlier for `uid` and not yet stored, if the API
/// server would still accept it now (its NotBefore must be recent).
fn unwritten(ctx: &Context, uid: &str, pcr: &PodCertificateRequest) -> Option<Answer> {
    let answer = locked(&ctx.unwritten).remove(uid)?;
    let now = time::OffsetDateTime::now_utc();
    answer::acceptable(&answer, pcr.spec.max_expiration_seconds, now)
        .is_ok()
        .then_some(answer)
}

/// Ask the issuer for the request's stub CSR; the answer, or when to try
/// again (the issuer's admission or an unavailable backend).
async fn sign(
    ctx: &Context,
    pcr: &PodCertificateRequest,
    identity: &meshca_provider::Identity,
    bounds: crate::issuer::LifetimeBounds,
) -> Result<Answer, Action> {
    let csr = &pcr.spec.stub_pkc_s10_request.0;
    let request = Request::workload(Frontend::PodCertificate, identity, csr, bounds);
    let verdict = ctx.issuer.issue(request).await;
    let now = time::OffsetDateTime::now_utc();
    answer::after_signing(verdict, pcr.spec.max_expiration_seconds, now).map_err(|after| {
        tracing::debug!(pcr = %name_of(pcr), retry_in = ?after, "not signed now; retrying");
        Action::requeue(after.max(Duration::from_millis(50)))
    })
}

/// Store `answer`. If the API server refuses it for good, say so in a
/// Failed answer instead; if it refuses that too, give the request up.
/// Either way the request is never signed again by this replica.
async fn answer_request(
    ctx: &Context,
    pcr: &PodCertificateRequest,
    answer: Answer,
) -> Result<Action, SignerError> {
    let refused = match write(ctx, pcr, &answer).await {
        Ok(Written::Stored) => {
            let uid = pcr.uid().unwrap_or_default();
            ctx.hold.succeeded(&uid);
            let replaced = pcr.metadata.resource_version.clone().unwrap_or_default();
            remember(&ctx.answered, MAX_REMEMBERED, uid, replaced);
            return Ok(Action::await_change());
        }
        Ok(Written::Moot) => return Ok(Action::await_change()),
        Ok(Written::Refused { code, message }) => (code, message),
        Err(e) => {
            // Keep what was signed for the next attempt.
            let uid = pcr.uid().unwrap_or_default();
            remember(&ctx.unwritten, MAX_UNWRITTEN, uid, answer);
            return Err(e);
        }
    };
    record_refusal(ctx, pcr, &refused, &answer);
    if !matches!(answer, Answer::Failed { .. }) {
        let failed = Answer::Failed {
            reason: "AnswerRefused",
            message: format!(
                "kube-apiserver refused meshca's {} answer ({}): {}",
                answer.kind(),
                refused.0,
                refused.1
            ),
        };
        match write(ctx, pcr, &failed).await? {
            Written::Stored => return Ok(Action::await_change()),
            Written::Moot => return Ok(Action::await_change()),
            Written::Refused { code, message } => {
                record_refusal(ctx, pcr, &(code, message), &failed);
            }
        }
    }
    remember(
        &ctx.given_up,
        MAX_REMEMBERED,
        pcr.uid().unwrap_or_default(),
        (),
    );
    Ok(Action::await_change())
}

/// Count and log, once, a status the API server refused for good.
fn record_refusal(
    ctx: &Context,
    pcr: &PodCertificateRequest,
    (code, message): &(u16, String),
    answer: &Answer,
) {
    ctx.metrics
        .kubernetes_writes_refused
        .get_or_create(&RefusalLabels {
            resource: "podcertificaterequests/status",
            code: *code,
        })
        .inc();
    tracing::error!(
        pcr = %name_of(pcr),
        code,
        %message,
        answer = answer.kind(),
        "kube-apiserver refused the answer to a pod certificate request; it is not retried"
    );
}

/// Write `answer` as the status, guarded by the resourceVersion read.
///
/// # Errors
/// When the write failed for a reason that may pass (the API server busy
/// or unreachable).
async fn write(
    ctx: &Context,
    pcr: &PodCertificateRequest,
    answer: &Answer,
) -> Result<Written, SignerError> {
    let mut updated = pcr.clone();
    updated.status = Some(answer::status(
        answer,
        pcr.metadata.generation,
        time::OffsetDateTime::now_utc(),
    ));
    let name = pcr.name_any();
    let api = Api::<PodCertificateRequest>::namespaced(
        ctx.client.clone(),
        &pcr.namespace().unwrap_or_default(),
    );
    let source = match api
        .replace_status(&name, &PostParams::default(), &updated)
        .await
    {
        Ok(_) => {
            log_answer(pcr, answer);
            return Ok(Written::Stored);
        }
        Err(e) => e,
    };
    if is_reason(&source, 404) {
        tracing::debug!(pcr = %name_of(pcr), "deleted before its answer was written");
        return Ok(Written::Moot);
    }
    if is_reason(&source, 409) {
        tracing::debug!(pcr = %name_of(pcr), "changed before its answer was written");
        return Ok(Written::Moot);
    }
    match Refusal::of(&source) {
        Refusal::Final { code, message } => Ok(Written::Refused { code, message }),
        Refusal::Transient { retry_after } => Err(SignerError::Write {
            name: name_of(pcr),
            retry_after,
            source,
        }),
    }
}

fn log_answer(pcr: &PodCertificateRequest, answer: &Answer) {
    let pcr = name_of(pcr);
    match answer {
        Answer::Issued { not_after, .. } => {
            tracing::info!(%pcr, %not_after, "issued a pod certificate");
        }
        Answer::Denied { reason, message } | Answer::Failed { reason, message } => {
            tracing::info!(%pcr, reason, message, answer = answer.kind(), "answered a pod certificate request without a certificate");
        }
    }
}

/// A std mutex held for a few map operations, never across an await; a
/// poisoned one (a panic elsewhere) still holds usable data.
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn name_of(pcr: &PodCertificateRequest) -> String {
    format!("{}/{}", pcr.namespace().unwrap_or_default(), pcr.name_any())
}

fn error_policy(pcr: Arc<PodCertificateRequest>, error: &SignerError, ctx: Arc<Context>) -> Action {
    let SignerError::Write { retry_after, .. } = error;
    let refusal = Refusal::Transient {
        retry_after: *retry_after,
    };
    let after = ctx.hold.failed(pcr.uid().unwrap_or_default(), &refusal);
    tracing::warn!(pcr = %name_of(&pcr), %error, retry_in = ?after, "failed to answer a pod certificate request; retrying");
    Action::requeue(after)
}
