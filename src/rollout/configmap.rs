//! The rollout state in a ConfigMap, so that a restarted pod (whose state
//! directory is an emptyDir) still knows which anchors it must keep.

use std::future::Future;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::{KubeError, Refusal};

const KEY: &str = "rollout.json";

/// Read the persisted state, if any.
///
/// # Errors
/// The API server could not be asked.
pub async fn load(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<String>, KubeError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .get_opt(name)
        .await
        .map_err(KubeError::api(format!("read ConfigMap {namespace}/{name}")))?
        .and_then(|c| c.data)
        .and_then(|d| d.get(KEY).cloned()))
}

/// Keep the ConfigMap holding the latest state sent on `states`, while this
/// replica leads; failed writes are retried.
pub fn writer(
    client: kube::Client,
    namespace: String,
    name: String,
    mut states: watch::Receiver<String>,
    leader: watch::Receiver<bool>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    async move {
        let mut pending = true;
        let mut failures = 0u32;
        loop {
            let mut retry = std::time::Duration::from_secs(3600);
            if pending && *leader.borrow() {
                let json = states.borrow_and_update().clone();
                match write(&api, &name, &json).await {
                    Ok(()) => {
                        pending = false;
                        failures = 0;
                        metrics.record_ledger_persisted("configmap", true);
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        metrics.record_ledger_persisted("configmap", false);
                        retry = match &e {
                            KubeError::Api { source, .. } => Refusal::of(source),
                            _ => Refusal::Transient { retry_after: None },
                        }
                        .retry_delay(failures);
                        tracing::error!(error = %crate::error_chain(&e), retry_in = ?retry, "failed to persist the rollout ledger to its ConfigMap");
                    }
                }
            } else if pending {
                retry = std::time::Duration::from_secs(2);
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                r = states.changed() => { if r.is_err() { return } pending = true; }
                () = tokio::time::sleep(retry) => {}
            }
        }
    }
}

async fn write(api: &Api<ConfigMap>, name: &str, json: &str) -> Result<(), KubeError> {
    crate::cluster::write_configmap_key(api, name, KEY, json).await
}
