//! The ingress reconciler: for Ingresses in monitored namespaces, keep a
//! `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`, `ca.crt`) with the
//! identity of each HTTPS backend in the backend's namespace, renew it,
//! delete it when no Ingress needs it; optionally keep the controller's
//! client certificate and annotate Ingresses for nginx.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Event, Namespace, ObjectReference, Pod, Secret, Service};
use k8s_openapi::ByteString;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, Patch,
    PatchParams, PostParams,
};
use kube::runtime::watcher;
use kube::Api;
use meshca_provider::{Identity, TrustDomain};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{BackendProtocol, IngressConfig};
use crate::bundle::BundleReceiver;
use crate::cluster::Cluster;
use crate::cluster::{KubeError, MANAGED_BY};
use crate::ingress::model::IngressModel;
use crate::ingress::render::{annotations_for, RenderOptions};
use crate::issuer::Issuer;

/// The label selecting namespaces the mesh monitors.
const MONITORED_BY: &str = "openservicemesh.io/monitored-by";
/// Label value of the Secrets this reconciler owns.
const PURPOSE: &str = "meshca.io/purpose";
const RENEW_AFTER: &str = "meshca.io/renew-after";
const IDENTITY: &str = "meshca.io/identity";
/// The signer generation that issued a Secret's certificate: a switch of
/// signer re-issues every Secret at once.
const GENERATION: &str = "meshca.io/generation";
/// Full resync period, on top of watch events.
const RESYNC: Duration = Duration::from_secs(30);

/// Which Ingress API to read: v1 when served, else v1beta1.
///
/// # Errors
/// [`KubeError::Invalid`] when neither is served.
pub async fn discover_ingress_api(client: &kube::Client) -> Result<ApiResource, KubeError> {
    for version in ["v1", "v1beta1"] {
        if let Ok(list) = client
            .list_api_group_resources(&format!("networking.k8s.io/{version}"))
            .await
        {
            if list.resources.iter().any(|r| r.name == "ingresses") {
                tracing::info!(version, "reading networking.k8s.io Ingresses");
                return Ok(ApiResource::from_gvk_with_plural(
                    &GroupVersionKind::gvk("networking.k8s.io", version, "Ingress"),
                    "ingresses",
                ));
            }
        }
    }
    Err(KubeError::Invalid(
        "the cluster serves neither networking.k8s.io/v1 nor networking.k8s.io/v1beta1 Ingress; disable ingress.enabled or upgrade the cluster".into(),
    ))
}

/// What one Secret should hold.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Wanted {
    identity: Identity,
    purpose: &'static str,
    ttl: Option<Duration>,
}

/// The mesh names a pass needs besides the run-time ingress settings.
#[derive(Clone, Debug)]
pub struct Mesh {
    /// The trust domain backend identities are in.
    pub trust_domain: TrustDomain,
    /// meshca's own identity (the anchor of the annotations it removes).
    pub daemon_identity: Identity,
}

/// The reconciler task, to spawn; it acts only while this replica leads.
pub fn reconciler(
    cluster: &Cluster,
    resource: ApiResource,
    issuer: Issuer,
    mesh: Mesh,
    mut config: watch::Receiver<IngressConfig>,
    mut bundle: BundleReceiver,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let client = cluster.client.clone();
    let mut leader = cluster.leader.clone();
    async move {
        let ingresses: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let mut events = watcher(ingresses, watcher::Config::default()).boxed();
        let mut next_wake = RESYNC;
        let mut seen_generation = issuer.signer().generation();
        let mut generation_check = tokio::time::interval(Duration::from_secs(1));
        loop {
            let cfg = config.borrow().clone();
            if cfg.enabled && *leader.borrow() {
                match reconcile(&client, &resource, &issuer, &cfg, &mesh, &bundle).await {
                    Ok(wake) => next_wake = wake.min(RESYNC),
                    Err(e) => {
                        tracing::warn!(error = %e, "ingress reconciliation failed; retrying");
                        next_wake = Duration::from_secs(2);
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(next_wake) => {}
                r = config.changed() => if r.is_err() { return },
                r = bundle.changed() => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
                _ = generation_check.tick() => {
                    // A new signer: re-issue everything it did not sign.
                    let now = issuer.signer().generation();
                    if now == seen_generation {
                        continue;
                    }
                    seen_generation = now;
                }
                e = events.next() => match e {
                    Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone)) => {}
                    Some(Ok(_)) => continue,
                    Some(Err(err)) => {
                        tracing::debug!(error = %err, "Ingress watch interrupted; resuming");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    None => return,
                },
            }
        }
    }
}

async fn monitored_namespaces(
    client: &kube::Client,
    cfg: &IngressConfig,
) -> Result<BTreeSet<String>, KubeError> {
    let mut set: BTreeSet<String> = cfg.monitored_namespaces.iter().cloned().collect();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let labelled = namespaces
        .list(&ListParams::default().labels(MONITORED_BY))
        .await
        .map_err(KubeError::api("list monitored namespaces"))?;
    set.extend(labelled.items.into_iter().filter_map(|n| n.metadata.name));
    Ok(set)
}

/// The ServiceAccount behind a backend Service: its pods' (by selector),
/// else the `meshca.io/service-account` annotation of the Service or the
/// Ingress. `Err` explains why the backend is skipped.
async fn backend_service_account(
    client: &kube::Client,
    namespace: &str,
    service: &str,
    ingress: &IngressModel,
) -> Result<String, String> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let svc = services
        .get_opt(service)
        .await
        .map_err(|e| format!("failed to read Service {namespace}/{service}: {e}"))?
        .ok_or_else(|| format!("Service {namespace}/{service} does not exist"))?;
    let spec = svc.spec.unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err(format!(
            "Service {namespace}/{service} is an ExternalName for {}: meshca provisions identities only for backends in the Ingress's own monitored namespace",
            spec.external_name.unwrap_or_default()
        ));
    }
    if let Some(selector) = spec.selector.filter(|s| !s.is_empty()) {
        let labels = selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        if let Ok(list) = pods.list(&ListParams::default().labels(&labels)).await {
            if let Some(sa) = list
                .items
                .into_iter()
                .find_map(|p| p.spec.and_then(|s| s.service_account_name))
            {
                return Ok(sa);
            }
        }
    }
    let annotated = svc
        .metadata
        .annotations
        .and_then(|a| a.get("meshca.io/service-account").cloned())
        .or_else(|| {
            ingress
                .object
                .pointer("/metadata/annotations/meshca.io~1backend-service-account")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
    annotated.ok_or_else(|| {
        format!("no pod selected by Service {namespace}/{service} and no meshca.io/service-account annotation: its identity is unknown")
    })
}

async fn record_event(client: &kube::Client, ingress: &IngressModel, message: &str) {
    let events: Api<Event> = Api::namespaced(client.clone(), &ingress.namespace);
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", ingress.name)),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: ingress
                .object
                .get("apiVersion")
                .and_then(Value::as_str)
                .map(str::to_owned),
            kind: Some("Ingress".into()),
            name: Some(ingress.name.clone()),
            namespace: Some(ingress.namespace.clone()),
            ..ObjectReference::default()
        },
        reason: Some("BackendIgnored".into()),
        message: Some(message.to_owned()),
        type_: Some("Warning".into()),
        ..Event::default()
    };
    let _ = events.create(&PostParams::default(), &event).await;
}

/// One pass. Returns how long until the next renewal is due.
async fn reconcile(
    client: &kube::Client,
    resource: &ApiResource,
    issuer: &Issuer,
    icfg: &IngressConfig,
    mesh: &Mesh,
    bundle: &BundleReceiver,
) -> Result<Duration, KubeError> {
    let wanted = wanted_secrets(client, resource, icfg, mesh).await?;
    sync_secrets(client, issuer, &wanted, bundle).await
}

/// The Secrets the Ingresses in monitored namespaces need, keyed by
/// `(namespace, name)`; managed annotations are kept in step on the way.
async fn wanted_secrets(
    client: &kube::Client,
    resource: &ApiResource,
    icfg: &IngressConfig,
    mesh: &Mesh,
) -> Result<BTreeMap<(String, String), Wanted>, KubeError> {
    let monitored = monitored_namespaces(client, icfg).await?;
    let ingresses: Api<DynamicObject> = Api::all_with(client.clone(), resource);
    let list = ingresses
        .list(&ListParams::default())
        .await
        .map_err(KubeError::api("list Ingresses"))?;

    let mut wanted: BTreeMap<(String, String), Wanted> = BTreeMap::new();
    let https = icfg.backend_protocol == BackendProtocol::Https;
    for obj in list.items {
        let value = serde_json::to_value(&obj).map_err(|e| KubeError::Invalid(e.to_string()))?;
        let ingress = match IngressModel::from_value(value) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "skipping an Ingress meshca cannot read");
                continue;
            }
        };
        if !monitored.contains(&ingress.namespace) {
            tracing::debug!(ingress = %format!("{}/{}", ingress.namespace, ingress.name), "not in a monitored namespace; ignored");
            continue;
        }
        let mut identities = BTreeSet::new();
        for backend in &ingress.backends {
            match backend_service_account(client, &ingress.namespace, &backend.service, &ingress)
                .await
            {
                Ok(sa) => match Identity::new(mesh.trust_domain.clone(), &ingress.namespace, &sa) {
                    Ok(identity) => {
                        identities.insert(identity.clone());
                        if https {
                            wanted.insert(
                                (ingress.namespace.clone(), format!("meshca-{sa}-tls")),
                                Wanted {
                                    identity,
                                    purpose: "ingress-backend",
                                    ttl: None,
                                },
                            );
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "skipping a backend"),
                },
                Err(why) => {
                    tracing::warn!(ingress = %format!("{}/{}", ingress.namespace, ingress.name), %why, "ignoring an Ingress backend");
                    record_event(client, &ingress, &why).await;
                }
            }
        }
        if icfg.manage_annotations {
            annotate(client, resource, &ingress, &identities, https, icfg, mesh).await;
        }
    }
    if let (true, Some(c)) = (https, &icfg.client_certificate) {
        wanted.insert(
            c.secret.clone(),
            Wanted {
                identity: c.identity.clone(),
                purpose: "ingress-client",
                ttl: Some(c.validity),
            },
        );
    }

    Ok(wanted)
}

/// Make meshca's ingress Secrets exactly `wanted`: delete the unneeded,
/// write the missing and those due for renewal (or signed by an earlier
/// signer, or holding an old bundle). Returns when the next is due.
async fn sync_secrets(
    client: &kube::Client,
    issuer: &Issuer,
    wanted: &BTreeMap<(String, String), Wanted>,
    bundle: &BundleReceiver,
) -> Result<Duration, KubeError> {
    // Existing Secrets of ours.
    let secrets: Api<Secret> = Api::all(client.clone());
    let selector = format!("{}={},{PURPOSE}", MANAGED_BY.0, MANAGED_BY.1);
    let existing = secrets
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(KubeError::api("list ingress Secrets"))?;
    let bundle_pem = bundle.borrow().pem().to_owned();
    let now = OffsetDateTime::now_utc();
    let mut next = RESYNC;
    let mut seen = BTreeSet::new();
    for s in existing.items {
        let (Some(ns), Some(name)) = (s.metadata.namespace.clone(), s.metadata.name.clone()) else {
            continue;
        };
        let key = (ns.clone(), name.clone());
        let Some(w) = wanted.get(&key) else {
            Api::<Secret>::namespaced(client.clone(), &ns)
                .delete(&name, &DeleteParams::default())
                .await
                .map_err(KubeError::api(format!("delete Secret {ns}/{name}")))?;
            tracing::info!(secret = %format!("{ns}/{name}"), "deleted an ingress Secret no Ingress needs");
            continue;
        };
        seen.insert(key.clone());
        let annotations = s.metadata.annotations.clone().unwrap_or_default();
        let renew_after = annotations
            .get(RENEW_AFTER)
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
        let same_identity = annotations.get(IDENTITY) == Some(&w.identity.dns_name());
        let same_bundle = s
            .data
            .as_ref()
            .and_then(|d| d.get("ca.crt"))
            .is_some_and(|b| b.0 == bundle_pem.as_bytes());
        let same_signer =
            annotations.get(GENERATION) == Some(&issuer.signer().generation().to_string());
        match renew_after {
            Some(t) if t > now && same_identity && same_bundle && same_signer => {
                next = next.min((t - now).try_into().unwrap_or(Duration::ZERO));
            }
            _ => write_secret(client, issuer, &key, w, &bundle_pem, Some(s)).await?,
        }
    }
    for (key, w) in wanted {
        if !seen.contains(key) {
            write_secret(client, issuer, key, w, &bundle_pem, None).await?;
        }
    }
    Ok(next.max(Duration::from_secs(1)))
}

async fn write_secret(
    client: &kube::Client,
    issuer: &Issuer,
    (ns, name): &(String, String),
    w: &Wanted,
    bundle_pem: &str,
    current: Option<Secret>,
) -> Result<(), KubeError> {
    let fail = |m: String| {
        KubeError::Invalid(format!(
            "failed to issue {} for Secret {ns}/{name}: {m}",
            w.identity
        ))
    };
    let key = crate::keys::generate().map_err(|e| fail(e.to_string()))?;
    let csr = crate::keys::request_for(&key, &w.identity, &[]).map_err(|e| fail(e.to_string()))?;
    let issued = issuer
        .issue(&w.identity, csr.der(), w.ttl)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let chain = meshca_provider::pem::encode_certificates(issued.issued.chain());
    let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
    let mut secret = current.unwrap_or_default();
    secret.metadata.name = Some(name.clone());
    secret.metadata.namespace = Some(ns.clone());
    let labels = secret.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    labels.insert(PURPOSE.into(), w.purpose.into());
    let annotations = secret
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    annotations.insert(IDENTITY.into(), w.identity.dns_name());
    annotations.insert(GENERATION.into(), issued.generation.to_string());
    annotations.insert(
        RENEW_AFTER.into(),
        issued.renew_after.format(&Rfc3339).unwrap_or_default(),
    );
    secret.type_ = Some("kubernetes.io/tls".into());
    secret.data = Some(BTreeMap::from([
        ("tls.crt".into(), ByteString(chain.into_bytes())),
        ("tls.key".into(), ByteString(key_pem.as_bytes().to_vec())),
        ("ca.crt".into(), ByteString(bundle_pem.as_bytes().to_vec())),
    ]));
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let result = if secret.metadata.resource_version.is_some() {
        api.replace(name, &PostParams::default(), &secret)
            .await
            .map(drop)
    } else {
        api.create(&PostParams::default(), &secret).await.map(drop)
    };
    result.map_err(KubeError::api(format!("write Secret {ns}/{name}")))?;
    tracing::info!(secret = %format!("{ns}/{name}"), identity = %w.identity, "wrote an ingress certificate Secret");
    Ok(())
}

/// Keep the controller's annotations on an Ingress in step with the mode.
async fn annotate(
    client: &kube::Client,
    resource: &ApiResource,
    ingress: &IngressModel,
    identities: &BTreeSet<Identity>,
    https: bool,
    icfg: &IngressConfig,
    mesh: &Mesh,
) {
    let mut options = RenderOptions::new(mesh.trust_domain.clone());
    options.bundle_secret = icfg.bundle_secret.clone();
    options.client_secret = icfg.client_certificate.as_ref().map(|c| c.secret.clone());
    let patch = match (https, identities.len()) {
        (true, 1) => {
            let Some(identity) = identities.iter().next() else {
                return;
            };
            let map: serde_json::Map<String, Value> =
                annotations_for(icfg.controller, identity, &options)
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), json!(v)))
                    .collect();
            json!({ "metadata": { "annotations": map } })
        }
        (true, _) => {
            tracing::warn!(ingress = %ingress.name, "backends of several identities: not annotating; split the Ingress");
            return;
        }
        (false, _) => {
            let anchor = annotations_for(icfg.controller, &mesh.daemon_identity, &options);
            let map: serde_json::Map<String, Value> = anchor
                .into_iter()
                .map(|(k, _)| (k.to_owned(), Value::Null))
                .collect();
            json!({ "metadata": { "annotations": map } })
        }
    };
    let api_ns: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ingress.namespace, resource);
    if let Err(e) = api_ns
        .patch(
            &ingress.name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        tracing::warn!(ingress = %ingress.name, error = %e, "failed to annotate the Ingress");
    }
}
