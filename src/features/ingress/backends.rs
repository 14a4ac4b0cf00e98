//! What the cluster says about an Ingress's backends: which Ingress API it
//! serves, whether a namespace is monitored, and the ServiceAccount (so the
//! identity) behind a backend Service.

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{ApiResource, GroupVersionKind, ListParams};
use kube::Api;
use serde_json::Value;

use super::config::IngressConfig;
use super::model::IngressModel;
use crate::cluster::KubeError;

/// The label selecting namespaces the mesh monitors.
const MONITORED_BY: &str = "openservicemesh.io/monitored-by";

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

/// Whether Ingresses in `namespace` are meshca's to act on: listed in
/// `ingress.monitored_namespaces`, or labelled `openservicemesh.io/monitored-by`.
///
/// # Errors
/// The Namespace could not be read.
pub async fn is_monitored(
    client: &kube::Client,
    config: &IngressConfig,
    namespace: &str,
) -> Result<bool, KubeError> {
    if config.monitored_namespaces.iter().any(|n| n == namespace) {
        return Ok(true);
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let labelled = namespaces
        .get_opt(namespace)
        .await
        .map_err(KubeError::api(format!("read namespace {namespace}")))?
        .and_then(|n| n.metadata.labels)
        .is_some_and(|l| l.contains_key(MONITORED_BY));
    Ok(labelled)
}

/// The ServiceAccount behind a backend Service: its pods' (by selector),
/// else the `meshca.io/service-account` annotation of the Service or the
/// Ingress. The inner `Err` explains why the backend is skipped.
///
/// # Errors
/// The API server could not answer: nothing is known about the backend,
/// which is not the same as a backend without identity (whose Secret
/// would be swept).
pub async fn backend_service_account(
    client: &kube::Client,
    namespace: &str,
    service: &str,
    ingress: &IngressModel,
) -> Result<Result<String, String>, KubeError> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let Some(svc) = services
        .get_opt(service)
        .await
        .map_err(KubeError::api(format!(
            "read Service {namespace}/{service}"
        )))?
    else {
        return Ok(Err(format!("Service {namespace}/{service} does not exist")));
    };
    let spec = svc.spec.unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(Err(format!(
            "Service {namespace}/{service} is an ExternalName for {}: meshca provisions identities only for backends in the Ingress's own monitored namespace",
            spec.external_name.unwrap_or_default()
        )));
    }
    if let Some(selector) = spec.selector.filter(|s| !s.is_empty()) {
        let labels = selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let list = pods
            .list(&ListParams::default().labels(&labels))
            .await
            .map_err(KubeError::api(format!(
                "list the pods of Service {namespace}/{service}"
            )))?;
        if let Some(sa) = list
            .items
            .into_iter()
            .find_map(|p| p.spec.and_then(|s| s.service_account_name))
        {
            return Ok(Ok(sa));
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
    Ok(annotated.ok_or_else(|| {
        format!("no pod selected by Service {namespace}/{service} and no meshca.io/service-account annotation: its identity is unknown")
    }))
}
