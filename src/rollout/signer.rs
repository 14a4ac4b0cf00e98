//! The provider that signs now, swappable while the daemon runs, with a
//! record of how long certificates from each earlier provider stay valid.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// Signatures in flight, per generation.
    in_flight: Mutex<BTreeMap<u64, usize>>,
    /// Rung whenever a signature ends.
    signed: tokio::sync::Notify,
}

/// One signature in flight: the provider signing it and its generation,
/// counted until dropped, so that a signer retires only once every
/// signature started under it is done.
pub struct Signing {
    /// The provider to sign with.
    pub provider: Arc<Checked>,
    /// Its generation.
    pub generation: u64,
    signer: Arc<Signer>,
}

impl Drop for Signing {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.signer.in_flight.lock() {
            if let Some(n) = counts.get_mut(&self.generation) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(&self.generation);
                }
            }
        }
        self.signer.signed.notify_waiters();
    }
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
            in_flight: Mutex::default(),
            signed: tokio::sync::Notify::new(),
        })
    }

    /// Begin a signature with the provider signing now; it counts as in
    /// flight under its generation until the returned value is dropped.
    pub fn begin(self: &Arc<Self>) -> Signing {
        let mut counts = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Under the count's lock: a switch in between makes the pair err
        // towards the older generation, whose anchors are retained.
        let (provider, generation) = self.current();
        *counts.entry(generation).or_insert(0) += 1;
        Signing {
            provider,
            generation,
            signer: self.clone(),
        }
    }

    /// Wait until no signature of `generation` is in flight, at most
    /// `limit`; whether it came to that.
    pub async fn drained(&self, generation: u64, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let signed = self.signed.notified();
            let busy = self
                .in_flight
                .lock()
                .map_or(true, |c| c.get(&generation).is_some_and(|n| *n > 0));
            if !busy {
                return true;
            }
            if tokio::time::timeout_at(deadline, signed).await.is_err() {
                return false;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    struct Never;

    #[async_trait::async_trait]
    impl meshca_provider::Provider for Never {
        fn kind(&self) -> meshca_provider::ProviderKind {
            meshca_provider::ProviderKind::Tresor
        }
        async fn sign(
            &self,
            _: &meshca_provider::ValidatedCsr,
            _: &meshca_provider::LeafProfile,
        ) -> Result<meshca_provider::SignedChain, meshca_provider::ProviderError> {
            Err(meshca_provider::ProviderError::Internal("never".into()))
        }
        async fn trust_anchors(
            &self,
        ) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, meshca_provider::ProviderError>
        {
            Ok(Vec::new())
        }
        async fn health(&self) -> meshca_provider::Health {
            meshca_provider::Health::Healthy
        }
    }

    fn checked() -> Checked {
        Checked::new(Arc::new(Never))
    }

    #[tokio::test(start_paused = true)]
    async fn a_generation_drains_only_when_every_signature_begun_under_it_is_done() {
        let signer = Signer::new(checked(), CancellationToken::new(), 0);
        let old = signer.begin();
        assert_eq!(old.generation, 0);
        signer.switch(checked(), CancellationToken::new());
        let new = signer.begin();
        assert_eq!(new.generation, 1);
        assert!(
            !signer.drained(0, Duration::from_secs(5)).await,
            "a signature of generation 0 is still in flight"
        );
        let waiting = {
            let signer = signer.clone();
            tokio::spawn(async move { signer.drained(0, Duration::from_secs(60)).await })
        };
        tokio::time::sleep(Duration::from_secs(8)).await;
        drop(old);
        assert!(waiting.await.expect("task"), "drained once it ended");
        assert!(signer.drained(0, Duration::ZERO).await);
        assert!(
            !signer.drained(1, Duration::ZERO).await,
            "generation 1 is busy"
        );
        drop(new);
    }
}
