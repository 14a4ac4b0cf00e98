//! What a feature adds to the daemon, collected as it prepares and starts.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::api::Ready;
use crate::bundle::spiffe::{JwtKeys, PeerBundles};
use crate::bundle::BundleSink;
use crate::issuer::{MintTokens, RecordIssued};
use crate::listener::ServingTls;
use crate::supervisor::Spawner;

/// A listener a feature serves on its own address.
pub struct Listener {
    /// Its name: the task serving it, and logs.
    pub name: &'static str,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its TLS.
    pub tls: ListenerTls,
    /// What it serves.
    pub router: Router,
}

/// The TLS a feature's listener serves with.
pub enum ListenerTls {
    /// meshca's own serving certificate.
    Serving,
    /// A configuration of its own (reloaded by a task of its own).
    Own(ServingTls),
}

/// What features add; the daemon takes each part where it goes.
pub struct Plug {
    spawner: Spawner,
    pub(crate) sinks: Vec<Arc<dyn BundleSink>>,
    pub(crate) tokens: Option<Arc<dyn MintTokens>>,
    pub(crate) records: Vec<Arc<dyn RecordIssued>>,
    pub(crate) crl_url: Option<String>,
    pub(crate) jwt_keys: Option<Arc<dyn JwtKeys>>,
    pub(crate) peers: Option<Arc<dyn PeerBundles>>,
    pub(crate) refresh_hint: Option<std::time::Duration>,
    pub(crate) routes: Vec<Router>,
    pub(crate) listeners: Vec<Listener>,
    pub(crate) ready: Vec<Arc<dyn Ready>>,
    held: HashMap<TypeId, Box<dyn Any + Send>>,
}

impl Plug {
    /// A plug whose tasks `spawner` runs.
    pub(crate) fn new(spawner: Spawner) -> Self {
        Self {
            spawner,
            sinks: Vec::new(),
            tokens: None,
            records: Vec::new(),
            crl_url: None,
            jwt_keys: None,
            peers: None,
            refresh_hint: None,
            routes: Vec::new(),
            listeners: Vec::new(),
            ready: Vec::new(),
            held: HashMap::new(),
        }
    }

    /// Keep `value` from [`Feature::prepare`](super::Feature::prepare) to
    /// [`Feature::start`](super::Feature::start) of this start of the
    /// daemon. A feature's settings are shared by every start made from
    /// the same config, so what one start makes lives here, not in them.
    pub fn hold<T: Any + Send>(&mut self, value: T) {
        self.held.insert(TypeId::of::<T>(), Box::new(value));
    }

    /// What [`Plug::hold`] kept of type `T`, taken.
    pub fn take_held<T: Any>(&mut self) -> Option<T> {
        let held = self.held.remove(&TypeId::of::<T>())?;
        held.downcast().ok().map(|b| *b)
    }

    /// Run the task `make(token)` returns now, under `name`, in the
    /// daemon's supervisor: it stops when `token` is cancelled, and one
    /// that ends while the daemon runs is logged and turns `/readyz`
    /// false.
    pub fn task<F>(&mut self, name: &'static str, make: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawner.spawn_child(name, make);
    }

    /// Follow `source` through `view`: a receiver that wakes only when
    /// what `view` sees changes (a feature's own settings in the features
    /// in force, say).
    pub fn project<S, T>(
        &mut self,
        source: &tokio::sync::watch::Receiver<S>,
        view: impl Fn(&S) -> T + Send + 'static,
    ) -> tokio::sync::watch::Receiver<T>
    where
        S: Send + Sync + 'static,
        T: PartialEq + Send + Sync + 'static,
    {
        crate::watched::project(source, view, &self.spawner)
    }

    /// Publish the trust bundle to `sink` too.
    pub fn sink(&mut self, sink: Arc<dyn BundleSink>) {
        self.sinks.push(sink);
    }

    /// Mint JWT-SVIDs with `tokens`.
    pub fn tokens(&mut self, tokens: Arc<dyn MintTokens>) {
        self.tokens = Some(tokens);
    }

    /// Tell `records` of every certificate the issuer hands out (from
    /// the daemon's own serving certificate on: call it in `prepare`).
    pub fn record_issued(&mut self, records: Arc<dyn RecordIssued>) {
        self.records.push(records);
    }

    /// Name `url` as the CRL distribution point of every leaf the issuer
    /// hands out (call it in `prepare`).
    pub fn crl_url(&mut self, url: String) {
        self.crl_url = Some(url);
    }

    /// Serve `keys` in this trust domain's SPIFFE bundle.
    pub fn jwt_keys(&mut self, keys: Arc<dyn JwtKeys>) {
        self.jwt_keys = Some(keys);
    }

    /// Serve the peers' bundles of `peers` (`?trust_domain=`).
    pub fn peers(&mut self, peers: Arc<dyn PeerBundles>) {
        self.peers = Some(peers);
    }

    /// Ask peers to fetch this trust domain's bundle every `hint`.
    pub fn refresh_hint(&mut self, hint: std::time::Duration) {
        self.refresh_hint = Some(hint);
    }

    /// Serve `router` on the signing API.
    pub fn route(&mut self, router: Router) {
        self.routes.push(router);
    }

    /// Bind and serve `listener`.
    pub fn listener(&mut self, listener: Listener) {
        self.listeners.push(listener);
    }

    /// Report `ready`'s problems on `/readyz`.
    pub fn ready(&mut self, ready: Arc<dyn Ready>) {
        self.ready.push(ready);
    }
}
