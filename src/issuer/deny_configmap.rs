//! The cluster's deny-list: the ConfigMap `meshca-denied` in meshca's
//! namespace, whose `denied.yaml` has the file's format. Every replica
//! follows it by watch; `meshca identity deny|allow` edits it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::PostParams;
use kube::runtime::watcher;
use kube::Api;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::deny::{ClusterDenyList, DenyFile, HEADER};
use crate::cluster::{is_reason, new_configmap};

/// The ConfigMap's name.
pub const NAME: &str = "meshca-denied";
const KEY: &str = "denied.yaml";

fn parse(cm: &ConfigMap) -> Result<DenyFile, String> {
    match cm.data.as_ref().and_then(|d| d.get(KEY)) {
        None => Ok(DenyFile::default()),
        Some(text) => serde_yaml_ng::from_str::<Option<DenyFile>>(text)
            .map(Option::unwrap_or_default)
            .map_err(|e| format!("ConfigMap {NAME} {KEY}: {e}")),
    }
}

/// The list as the cluster holds it, and the task that keeps it current.
/// A list that does not parse refuses everyone until it is fixed.
pub fn follow(
    client: kube::Client,
    namespace: &str,
    shutdown: CancellationToken,
) -> (ClusterDenyList, impl Future<Output = ()> + Send + 'static) {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let (tx, rx) = watch::channel(None);
    let task = async move {
        let config = watcher::Config::default().fields(&format!("metadata.name={NAME}"));
        let mut events =
            crate::cluster::resilient("deny-list ConfigMap", watcher(api, config)).boxed();
        let mut seen = false;
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                e = events.next() => e,
            };
            let update = match event {
                None => return,
                Some(Ok(watcher::Event::Init)) => {
                    seen = false;
                    continue;
                }
                Some(Ok(watcher::Event::InitApply(cm) | watcher::Event::Apply(cm))) => {
                    seen = true;
                    Some(parse(&cm))
                }
                Some(Ok(watcher::Event::Delete(_))) => Some(Ok(DenyFile::default())),
                Some(Ok(watcher::Event::InitDone)) if !seen => Some(Ok(DenyFile::default())),
                Some(Ok(watcher::Event::InitDone)) => None,
                // `resilient` logs and waits; none reaches here.
                Some(Err(_)) => None,
            };
            match update {
                Some(Ok(list)) => {
                    tx.send_replace(Some(Arc::new(list)));
                }
                Some(Err(e)) => {
                    tracing::error!(error = %e, "the deny-list does not parse; refusing every certificate until it is fixed");
                    tx.send_replace(None);
                }
                None => {}
            }
        }
    };
    (rx, task)
}

/// Deny (`deny`) or allow `namespace/service_account` in the cluster's
/// list; false when nothing changed.
///
/// # Errors
/// The API server refused or the list does not parse.
pub async fn change(
    client: kube::Client,
    namespace: &str,
    identity: (&str, &str),
    deny: bool,
) -> Result<bool, String> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    for _ in 0..5 {
        let current = api.get_opt(NAME).await.map_err(|e| e.to_string())?;
        let mut list = current.as_ref().map(parse).transpose()?.unwrap_or_default();
        if !list.change(identity.0, identity.1, deny) {
            return Ok(false);
        }
        let text = format!(
            "# {HEADER}\n{}",
            serde_yaml_ng::to_string(&list).map_err(|e| e.to_string())?
        );
        let result = match current {
            Some(mut cm) => {
                cm.data
                    .get_or_insert_with(BTreeMap::new)
                    .insert(KEY.into(), text);
                api.replace(NAME, &PostParams::default(), &cm)
                    .await
                    .map(drop)
            }
            None => {
                let cm = new_configmap(NAME, KEY, text);
                api.create(&PostParams::default(), &cm).await.map(drop)
            }
        };
        match result {
            Ok(()) => return Ok(true),
            // Edited meanwhile: read again.
            Err(e) if is_reason(&e, 409) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!("ConfigMap {NAME} kept changing; try again"))
}

/// Deny (`deny`) or allow `identity` (`(namespace, service_account)`)
/// where the daemons read it: the ConfigMap in `cluster` when meshca
/// reaches one, else the file `denied_file`. Returns whether it changed
/// and where it is kept.
///
/// # Errors
/// The list cannot be read or written, as one line.
pub async fn change_where_kept(
    denied_file: &std::path::Path,
    cluster: Option<(kube::Client, &str)>,
    identity: (&str, &str),
    deny: bool,
) -> Result<(bool, String), String> {
    match cluster {
        Some((client, namespace)) => change(client, namespace, identity, deny)
            .await
            .map(|changed| (changed, format!("ConfigMap {namespace}/{NAME}"))),
        None => {
            let list = super::DenyList::new(denied_file.to_owned());
            let (namespace, service_account) = (identity.0.to_owned(), identity.1.to_owned());
            let place = list.path().display().to_string();
            tokio::task::spawn_blocking(move || list.change(&namespace, &service_account, deny))
                .await
                .map_err(|e| e.to_string())?
                .map(|changed| (changed, place))
                .map_err(|e| crate::report::error_chain(&e))
        }
    }
}
