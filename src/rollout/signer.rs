//! The provider that signs now, swappable while the daemon runs, with a
//! record of how long certificates from each earlier provider stay valid.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use meshca_provider::Checked;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The current signer and its generation (incremented at every switch).
#[derive(Debug)]
pub struct Signer {
    slot: ArcSwap<Checked>,
    /// Stops the task of the provider in the slot.
    stop: Mutex<CancellationToken>,
    generation: AtomicU64,
    /// Tells followers (the ingress reconciler) of a switch.
    switched: watch::Sender<u64>,
    /// Latest NotAfter (unix seconds) issued under each generation.
    issued_until: Mutex<BTreeMap<u64, i64>>,
    /// Changes whenever `issued_until` grows (for sharing with replicas).
    recorded: watch::Sender<u64>,
}

impl Signer {
    /// Start with `provider` at `generation`; `stop` stops its task.
    pub fn new(provider: Checked, stop: CancellationToken, generation: u64) -> Arc<Self> {
        Arc::new(Self {
            slot: ArcSwap::from_pointee(provider),
            stop: Mutex::new(stop),
            generation: AtomicU64::new(generation),
            switched: watch::channel(generation).0,
            issued_until: Mutex::default(),
            recorded: watch::channel(0).0,
        })
    }

    /// The provider signing now and its generation.
    pub fn current(&self) -> (Arc<Checked>, u64) {
        // Read the generation first: a switch in between makes the pair
        // err towards the older generation, whose anchors are retained.
        let generation = self.generation.load(Ordering::SeqCst);
        (self.slot.load_full(), generation)
    }

    /// The generation signing now.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The generation signing now, changing at every switch.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.switched.subscribe()
    }

    /// Make `provider` the signer; returns the previous generation and the
    /// token that stops the previous provider's task, for the caller to
    /// cancel once that provider's in-flight signatures are done.
    pub fn switch(&self, provider: Checked, stop: CancellationToken) -> (u64, CancellationToken) {
        self.slot.store(Arc::new(provider));
        let old_stop = match self.stop.lock() {
            Ok(mut s) => std::mem::replace(&mut *s, stop),
            // A poisoned lock held only a token: stop nothing rather than
            // the wrong provider.
            Err(_) => CancellationToken::new(),
        };
        let old = self.generation.fetch_add(1, Ordering::SeqCst);
        self.switched.send_replace(old + 1);
        (old, old_stop)
    }

    /// Note a certificate issued under `generation`.
    pub fn record(&self, generation: u64, not_after: i64) {
        let grew = self.issued_until.lock().is_ok_and(|mut m| {
            let e = m.entry(generation).or_insert(i64::MIN);
            let grew = not_after > *e;
            *e = (*e).max(not_after);
            grew
        });
        if grew {
            self.recorded.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Changes whenever a later NotAfter is recorded.
    pub fn recorded(&self) -> watch::Receiver<u64> {
        self.recorded.subscribe()
    }

    /// The latest NotAfter of every generation issued under.
    pub fn issued_until_all(&self) -> BTreeMap<u64, i64> {
        self.issued_until
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// The latest NotAfter issued under `generation`, if any.
    pub fn issued_until(&self, generation: u64) -> Option<i64> {
        self.issued_until.lock().ok()?.get(&generation).copied()
    }
}
