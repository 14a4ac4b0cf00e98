//! The PodCertificateRequest signer, on kube-runtime's [`Controller`].
//!
//! It watches only requests for its own signer name (a field selector, so
//! other signers' requests never reach meshca) and answers each once: only
//! the leader signs, and the status write carries the resourceVersion it
//! read, so a second writer gets a conflict instead of doubling the answer.
//! Signing passes the same [`Admission`] as the HTTPS API; on top, each
//! namespace has a few signing slots of its own, so a namespace flooding
//! requests waits behind itself, not in front of the others.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::certificates::v1::PodCertificateRequest;
use kube::api::PostParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use meshca_provider::TrustDomain;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::answer::{self, Answer, Next};
use super::config::PodCertificatesConfig;
use crate::cluster::{is_reason, Cluster};
use crate::issuer::{Admission, Issuer};
use crate::metrics::{IssuedLabels, Metrics};
use crate::watched::changes;

/// Signing requests of one namespace at once.
const SLOTS_PER_NAMESPACE: usize = 8;
/// After a transient failure without a Retry-After.
const RETRY: Duration = Duration::from_secs(5);

/// Why one request could not be handled now; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// The status could not be written.
    #[error("failed to write the status of {name}: {source}")]
    Write {
        /// `namespace/name`.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// Per-namespace signing slots.
#[derive(Default)]
struct NamespaceSlots {
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl NamespaceSlots {
    /// Wait for one of `namespace`'s slots (FIFO within the namespace).
    async fn enter(&self, namespace: &str) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut slots = self.slots.lock().ok()?;
            // Drop idle namespaces so the map follows the active ones.
            if slots.len() > 1024 {
                slots.retain(|_, s| s.available_permits() < SLOTS_PER_NAMESPACE);
            }
            slots
                .entry(namespace.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(SLOTS_PER_NAMESPACE)))
                .clone()
        };
        semaphore.acquire_owned().await.ok()
    }
}

struct Context {
    client: kube::Client,
    issuer: Issuer,
    admission: Arc<Admission>,
    config: PodCertificatesConfig,
    trust_domain: TrustDomain,
    leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    slots: NamespaceSlots,
}

/// Everything the signer needs besides the cluster.
pub struct SignerDeps {
    /// Signs.
    pub issuer: Issuer,
    /// The limits shared with the HTTPS API.
    pub admission: Arc<Admission>,
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
        admission: deps.admission,
        config,
        trust_domain: deps.trust_domain,
        leader: cluster.leader.clone(),
        metrics: deps.metrics,
        slots: NamespaceSlots::default(),
    });
    let controller = Controller::new(api, watcher::Config::default().fields(&selector))
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
    let provider = ctx.issuer.provider().kind();
    let max_ttl = ctx.issuer.lifetimes().max_ttl;
    let next = answer::decide(
        &pcr,
        &ctx.config.signer_name,
        &ctx.trust_domain,
        provider,
        max_ttl,
    );
    let answer = match next {
        Next::Skip => return Ok(Action::await_change()),
        Next::Answer(a) => a,
        Next::Sign { identity, ttl } => {
            let namespace = pcr.namespace().unwrap_or_default();
            let Some(_slot) = ctx.slots.enter(&namespace).await else {
                return Ok(Action::requeue(RETRY));
            };
            if let Err(wait) = ctx.admission.check_identity(&identity) {
                return Ok(Action::requeue(wait.max(Duration::from_millis(50))));
            }
            let Some(_permit) = ctx.admission.enter() else {
                return Ok(Action::requeue(Duration::from_secs(1)));
            };
            let signed = ctx
                .issuer
                .issue_for(&identity, &pcr.spec.stub_pkc_s10_request.0, ttl)
                .await;
            match answer::after_signing(signed) {
                Ok(a) => a,
                Err(after) => {
                    count(&ctx, provider.as_str(), "unavailable");
                    tracing::info!(pcr = %name_of(&pcr), "the provider is unavailable; retrying");
                    return Ok(Action::requeue(after.unwrap_or(RETRY)));
                }
            }
        }
    };
    write(&ctx, &pcr, &answer).await?;
    count(&ctx, provider.as_str(), answer.metric_result());
    Ok(Action::await_change())
}

/// Write `answer` as the status, guarded by the resourceVersion read.
async fn write(
    ctx: &Context,
    pcr: &PodCertificateRequest,
    answer: &Answer,
) -> Result<(), SignerError> {
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
    match api
        .replace_status(&name, &PostParams::default(), &updated)
        .await
    {
        Ok(_) => {
            log_answer(pcr, answer);
            Ok(())
        }
        // Deleted meanwhile (the pod went away): nothing to answer.
        Err(e) if is_reason(&e, 404) => {
            tracing::debug!(pcr = %name_of(pcr), "deleted before its answer was written");
            Ok(())
        }
        // Answered or changed meanwhile: the next reconcile sees it.
        Err(e) if is_reason(&e, 409) => {
            tracing::debug!(pcr = %name_of(pcr), "changed before its answer was written");
            Ok(())
        }
        Err(source) => Err(SignerError::Write {
            name: name_of(pcr),
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
            tracing::info!(%pcr, reason, message, result = answer.metric_result(), "answered a pod certificate request without a certificate");
        }
    }
}

fn count(ctx: &Context, provider: &'static str, result: &'static str) {
    ctx.metrics
        .certificates_issued
        .get_or_create(&IssuedLabels {
            frontend: "pod_certificate",
            provider,
            result,
        })
        .inc();
}

fn name_of(pcr: &PodCertificateRequest) -> String {
    format!("{}/{}", pcr.namespace().unwrap_or_default(), pcr.name_any())
}

fn error_policy(pcr: Arc<PodCertificateRequest>, error: &SignerError, _: Arc<Context>) -> Action {
    tracing::warn!(pcr = %name_of(&pcr), %error, "failed to answer a pod certificate request; retrying");
    Action::requeue(RETRY)
}
