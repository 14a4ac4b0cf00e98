//! Repair triggers shared by the Kubernetes sinks: a change or deletion of
//! the sink's object, or a change of leadership, wakes the publisher.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt;
use kube::runtime::watcher;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// A task that wakes `resync` whenever the object `name` read through
/// `api` changes or disappears, and whenever `leader` changes, so that an
/// edit or a deletion is repaired within seconds.
pub(crate) fn follow_object<K>(
    api: Api<K>,
    name: &str,
    mut leader: watch::Receiver<bool>,
    resync: Arc<Notify>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let selector = format!("metadata.name={name}");
    let what = K::kind(&Default::default()).into_owned();
    async move {
        let mut events = crate::cluster::resilient(
            "bundle object",
            watcher(api, watcher::Config::default().fields(&selector)),
        )
        .boxed();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = leader.changed() => {
                    if changed.is_err() { return; }
                    resync.notify_one();
                }
                event = events.next() => match event {
                    Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone)) => resync.notify_one(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::debug!(error = %e, kind = %what, "bundle object watch"),
                    None => return,
                }
            }
        }
    }
}
