//! The ingress reconciler, on kube-runtime's [`Controller`]: for each
//! Ingress in a monitored namespace, keep an identity Secret for each HTTPS
//! backend (and, optionally, the controller's annotations); keep the
//! controller's client certificate; delete Secrets no Ingress needs.
//!
//! One Ingress is one reconcile: a failure requeues that Ingress alone
//! (`error_policy`), never the others. Everything is re-reconciled when the
//! `ingress:` settings, the bundle, the signer or the leadership change;
//! a change to one of meshca's Secrets re-reconciles the Ingresses that need
//! it. Events go through kube-runtime's deduplicating [`Recorder`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource, ResourceExt};
use meshca_provider::{Identity, TrustDomain};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::backends::{backend_service_account, is_monitored};
use super::model::IngressModel;
use super::render::{annotations_for, RenderOptions};
use super::{BackendProtocol, IngressConfig};
use crate::bundle::BundleReceiver;
use crate::cluster::FIELD_MANAGER;
use crate::cluster::{resilient, Cluster, HoldOff, KubeError, Refusal, MANAGED_BY};
use crate::issuer::Issuer;
use crate::tls_secret::{self as secrets, SecretError, SecretKey, Wanted, PURPOSE};
use crate::watched::changes;

/// Requeue period of an Ingress with nothing due sooner, so that a
/// namespace's label change is seen.
const RESYNC: Duration = Duration::from_secs(30);
/// How often Secrets no Ingress needs are looked for (in memory).
const SWEEP: Duration = Duration::from_secs(2);

/// The mesh names a pass needs besides the run-time ingress settings.
#[derive(Clone, Debug)]
pub struct Mesh {
    /// The trust domain backend identities are in.
    pub trust_domain: TrustDomain,
}

/// Why one Ingress could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The API server refused or could not be reached.
    #[error(transparent)]
    Kube(#[from] KubeError),
    /// A Secret's certificate was not issued, or the Secret not written.
    #[error(transparent)]
    Secret(#[from] SecretError),
}

impl ReconcileError {
    /// What the failure says about trying again: the API server's verdict,
    /// or the issuer's (a wait it asked for; a refusal or failure that
    /// repeating cannot fix).
    fn refusal(&self) -> Refusal {
        match self {
            Self::Kube(KubeError::Api { source, .. }) => Refusal::of(source),
            Self::Secret(e) => e.refusal(),
            Self::Kube(_) => Refusal::Transient { retry_after: None },
        }
    }
}

/// What every reconcile shares.
struct Context {
    client: kube::Client,
    resource: ApiResource,
    issuer: Issuer,
    mesh: Mesh,
    config: watch::Receiver<IngressConfig>,
    bundle: BundleReceiver,
    leader: watch::Receiver<bool>,
    recorder: Recorder,
    /// The Secrets each Ingress needs, as its last reconcile found.
    needs: Mutex<HashMap<ObjectRef<DynamicObject>, BTreeSet<SecretKey>>>,
    /// Ingresses whose last reconcile failed: held back until their retry
    /// (backing off, the server's Retry-After honoured).
    hold: HoldOff<ObjectRef<DynamicObject>>,
}

impl Context {
    fn acting(&self) -> Option<IngressConfig> {
        let config = self.config.borrow().clone();
        (config.enabled && *self.leader.borrow()).then_some(config)
    }

    fn set_needs(&self, ingress: ObjectRef<DynamicObject>, keys: BTreeSet<SecretKey>) {
        if let Ok(mut needs) = self.needs.lock() {
            needs.insert(ingress, keys);
        }
    }

    fn needing(&self, key: &SecretKey) -> Vec<ObjectRef<DynamicObject>> {
        self.needs.lock().map_or_else(
            |_| Vec::new(),
            |needs| {
                needs
                    .iter()
                    .filter(|(_, keys)| keys.contains(key))
                    .map(|(r, _)| r.clone())
                    .collect()
            },
        )
    }
}

/// The reconciler task, to spawn; it acts only while this replica leads.
pub fn reconciler(
    cluster: &Cluster,
    resource: ApiResource,
    issuer: Issuer,
    mesh: Mesh,
    config: watch::Receiver<IngressConfig>,
    bundle: BundleReceiver,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let client = cluster.client.clone();
    let triggers = futures_util::stream::select_all([
        changes(config.clone()),
        changes(bundle.clone()),
        changes(cluster.leader.clone()),
        changes(issuer.signer().subscribe()),
    ]);
    let ctx = Arc::new(Context {
        client: client.clone(),
        resource: resource.clone(),
        issuer,
        mesh,
        config,
        bundle,
        leader: cluster.leader.clone(),
        recorder: recorder(client.clone()),
        needs: Mutex::default(),
        hold: HoldOff::default(),
    });
    let (secrets_store, secrets_reflector) = secrets_reflector(client.clone());
    let controller = controller(&ctx, resource)
        .reconcile_all_on(triggers)
        .graceful_shutdown_on(shutdown.clone().cancelled_owned());
    let ingresses = controller.store();
    async move {
        let run = controller
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "ingress controller");
                }
            });
        let secrets_reflector = async {
            tokio::select! {
                () = secrets_reflector => {}
                () = shutdown.cancelled() => {}
            }
        };
        tokio::join!(
            run,
            secrets_reflector,
            sweep(ctx, ingresses, secrets_store, shutdown.clone())
        );
    }
}

/// Events on Ingresses, as meshca (this pod, when it knows its name).
fn recorder(client: kube::Client) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: "meshca".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    )
}

/// The selector of meshca's own ingress Secrets.
fn ours() -> watcher::Config {
    watcher::Config::default().labels(&format!("{}={},{PURPOSE}", MANAGED_BY.0, MANAGED_BY.1))
}

/// meshca's own Secrets, in memory, for the sweep: the store and the
/// reflector that fills it.
fn secrets_reflector(
    client: kube::Client,
) -> (Store<Secret>, impl Future<Output = ()> + Send + 'static) {
    let (store, writer) = reflector::store();
    let reflector = reflector::reflector(
        writer,
        resilient(
            "ingress Secrets",
            watcher(Api::<Secret>::all(client), ours()),
        ),
    )
    .applied_objects()
    .for_each(|_| std::future::ready(()));
    (store, reflector)
}

/// One reconcile per Ingress; a change to one of meshca's Secrets
/// reconciles the Ingresses that need it.
fn controller(ctx: &Arc<Context>, resource: ApiResource) -> Controller<DynamicObject> {
    let client = ctx.client.clone();
    let ingress_writer = reflector::store::Writer::new(resource.clone());
    let ingress_store = ingress_writer.as_reader();
    let ingresses = reflector::reflector(
        ingress_writer,
        resilient(
            "ingresses",
            watcher(
                Api::<DynamicObject>::all_with(client.clone(), &resource),
                watcher::Config::default(),
            ),
        ),
    )
    .applied_objects();
    let mapper_ctx = ctx.clone();
    Controller::for_stream_with(ingresses, ingress_store, resource).watches_stream(
        resilient(
            "ingress Secrets",
            watcher(Api::<Secret>::all(client), ours()),
        )
        .touched_objects(),
        move |s: Secret| {
            let key = (s.namespace().unwrap_or_default(), s.name_any());
            mapper_ctx.needing(&key)
        },
    )
}

async fn reconcile(
    object: Arc<DynamicObject>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let reference = ObjectRef::from_obj_with(&*object, ctx.resource.clone());
    // Woken early by another event while its retry is not due.
    if let Some(wait) = ctx.hold.remaining(&reference) {
        return Ok(Action::requeue(wait));
    }
    let result = reconcile_one(&object, &ctx).await;
    if result.is_ok() {
        ctx.hold.succeeded(&reference);
    }
    result
}

async fn reconcile_one(object: &DynamicObject, ctx: &Context) -> Result<Action, ReconcileError> {
    let Some(config) = ctx.acting() else {
        return Ok(Action::await_change());
    };
    let reference = ObjectRef::from_obj_with(object, ctx.resource.clone());
    let value = serde_json::to_value(object).map_err(|e| KubeError::Invalid(e.to_string()))?;
    let ingress = match IngressModel::from_value(value) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "skipping an Ingress meshca cannot read");
            ctx.set_needs(reference, BTreeSet::new());
            return Ok(Action::await_change());
        }
    };
    if !is_monitored(&ctx.client, &config, &ingress.namespace).await? {
        tracing::debug!(ingress = %format!("{}/{}", ingress.namespace, ingress.name), "not in a monitored namespace; ignored");
        ctx.set_needs(reference, BTreeSet::new());
        return Ok(Action::requeue(RESYNC));
    }
    let (wanted, identities) = wanted_for(ctx, object, &ingress, &config).await?;
    ctx.set_needs(reference, wanted.keys().cloned().collect());
    let mut next = RESYNC;
    for (key, w) in &wanted {
        next = next.min(ensure(ctx, key, w).await?);
    }
    if config.manage_annotations {
        annotate(ctx, &ingress, &identities, &config).await?;
    }
    Ok(Action::requeue(next.max(Duration::from_secs(1))))
}

/// Retry a failed Ingress alone: backing off while the API server is busy
/// or down (its Retry-After honoured), and only after a long wait when it
/// refused for good (RBAC, an invalid object), which repeating cannot fix.
fn error_policy(object: Arc<DynamicObject>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let reference = ObjectRef::from_obj_with(&*object, ctx.resource.clone());
    let ingress = format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    );
    let refusal = error.refusal();
    let delay = ctx.hold.failed(reference, &refusal);
    let error = crate::report::error_chain(error);
    if matches!(refusal, Refusal::Final { .. }) {
        tracing::error!(%ingress, %error, retry_in = ?delay, "an ingress Secret cannot be written until the cause is fixed; repeating cannot help");
    } else {
        tracing::warn!(%ingress, %error, retry_in = ?delay, "ingress reconciliation failed; retrying");
    }
    Action::requeue(delay)
}

/// The backend Secrets `ingress` needs (HTTPS only) and its backends'
/// identities. A backend whose identity is unknown is skipped with a
/// Warning Event on the Ingress.
///
/// # Errors
/// The API server could not say: the reconcile fails and is retried, and
/// the Secrets the Ingress needed stay.
async fn wanted_for(
    ctx: &Context,
    object: &DynamicObject,
    ingress: &IngressModel,
    config: &IngressConfig,
) -> Result<(BTreeMap<SecretKey, Wanted>, BTreeSet<Identity>), KubeError> {
    let https = config.backend_protocol == BackendProtocol::Https;
    let mut wanted = BTreeMap::new();
    let mut identities = BTreeSet::new();
    for backend in &ingress.backends {
        let identity =
            backend_service_account(&ctx.client, &ingress.namespace, &backend.service, ingress)
                .await?
                .and_then(|sa| {
                    Identity::new(ctx.mesh.trust_domain.clone(), &ingress.namespace, &sa)
                        .map(|i| (sa, i))
                        .map_err(|e| e.to_string())
                });
        match identity {
            Ok((sa, identity)) => {
                if https {
                    wanted.insert(
                        (ingress.namespace.clone(), format!("meshca-{sa}-tls")),
                        Wanted::ingress(identity.clone(), "ingress-backend", None),
                    );
                }
                identities.insert(identity);
            }
            Err(why) => {
                tracing::warn!(ingress = %format!("{}/{}", ingress.namespace, ingress.name), %why, "ignoring an Ingress backend");
                publish_warning(ctx, object, &why).await;
            }
        }
    }
    Ok((wanted, identities))
}

async fn publish_warning(ctx: &Context, object: &DynamicObject, why: &str) {
    let event = Event {
        type_: EventType::Warning,
        reason: "BackendIgnored".into(),
        note: Some(why.to_owned()),
        action: "ProvisionBackendIdentity".into(),
        secondary: None,
    };
    let reference = object.object_ref(&ctx.resource);
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        tracing::debug!(error = %e, "failed to record an Event");
    }
}

/// Write `key` unless what it holds is fresh; returns when it is due.
async fn ensure(
    ctx: &Context,
    key: &SecretKey,
    wanted: &Wanted,
) -> Result<Duration, ReconcileError> {
    Ok(secrets::ensure(&ctx.client, &ctx.issuer, &ctx.bundle, key, wanted).await?)
}

/// Apply the controller's annotations for the mode in force. meshca owns
/// them by server-side apply: in HTTP mode it applies none, so the ones
/// it applied before are removed and anyone else's stay.
async fn annotate(
    ctx: &Context,
    ingress: &IngressModel,
    identities: &BTreeSet<Identity>,
    config: &IngressConfig,
) -> Result<(), KubeError> {
    let https = config.backend_protocol == BackendProtocol::Https;
    let annotations: serde_json::Map<String, Value> = match (https, identities.len()) {
        (true, 1) => {
            let mut options = RenderOptions::new(ctx.mesh.trust_domain.clone());
            options.bundle_secret = config.bundle_secret.clone();
            options.client_secret = config.client_certificate.as_ref().map(|c| c.secret.clone());
            identities
                .iter()
                .flat_map(|identity| annotations_for(config.controller, identity, &options))
                .map(|(k, v)| (k.to_owned(), json!(v)))
                .collect()
        }
        (true, _) => {
            tracing::warn!(ingress = %ingress.name, "backends of several identities: not annotating; split the Ingress");
            return Ok(());
        }
        (false, _) => serde_json::Map::new(),
    };
    let patch = json!({
        "apiVersion": ctx.resource.api_version,
        "kind": ctx.resource.kind,
        "metadata": { "name": ingress.name, "namespace": ingress.namespace, "annotations": annotations },
    });
    Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ingress.namespace, &ctx.resource)
        .patch(
            &ingress.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(KubeError::api(format!(
            "annotate Ingress {}/{}",
            ingress.namespace, ingress.name
        )))?;
    Ok(())
}

/// Keep the controller's client certificate, and delete the Secrets no
/// Ingress needs: every [`SWEEP`], from the stores of Ingresses and of
/// meshca's Secrets, in memory.
async fn sweep(
    ctx: Arc<Context>,
    ingresses: Store<DynamicObject>,
    ours: Store<Secret>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(SWEEP) => {}
        }
        if let Some(config) = ctx.acting() {
            if let Err(e) = sweep_once(&ctx, &ingresses, &ours, &config).await {
                tracing::warn!(error = %e, "failed to clean up ingress Secrets; retrying");
            }
        }
    }
}

async fn sweep_once(
    ctx: &Context,
    ingresses: &Store<DynamicObject>,
    ours: &Store<Secret>,
    config: &IngressConfig,
) -> Result<(), ReconcileError> {
    let mut needed: BTreeSet<SecretKey> = match ctx.needs.lock() {
        Ok(mut needs) => {
            needs.retain(|r, _| ingresses.get(r).is_some());
            needs.values().flatten().cloned().collect()
        }
        Err(_) => return Ok(()),
    };
    let https = config.backend_protocol == BackendProtocol::Https;
    if let (true, Some(c)) = (https, &config.client_certificate) {
        let wanted = Wanted::ingress(c.identity.clone(), "ingress-client", Some(c.validity));
        ensure(ctx, &c.secret, &wanted).await?;
        needed.insert(c.secret.clone());
    }
    for s in ours.state() {
        let key = (s.namespace().unwrap_or_default(), s.name_any());
        if !needed.contains(&key) {
            secrets::delete(&ctx.client, &key).await?;
        }
    }
    Ok(())
}
