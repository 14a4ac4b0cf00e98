//! Admission to signing, the same for every way a request arrives: a cap on
//! signing requests in flight, a smaller one per namespace, and a rate per
//! identity.
//!
//! All pods of a Deployment share one identity, so the rate is generous by
//! default; it exists so that one runaway sidecar (a renewal loop, a crash
//! loop) cannot monopolise the CA for everyone else. The per-namespace cap
//! (a quarter of the total) does the same for a namespace flooding
//! requests (PodCertificateRequests for a scaled-up Deployment): it waits
//! behind itself, not in front of the others.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use meshca_provider::Identity;
use tokio::sync::{Semaphore, SemaphorePermit};

/// The limits signing requests pass before reaching the provider.
#[derive(Debug)]
pub struct Admission {
    in_flight: Semaphore,
    per_namespace: NamespaceSlots,
    per_identity: IdentityLimiter,
}

/// The slots a signing request holds while it signs.
#[derive(Debug)]
pub struct Permits<'a> {
    _overall: SemaphorePermit<'a>,
    _namespace: NamespacePermit,
}

impl Admission {
    /// At most `max_in_flight` requests signing at once; once half of
    /// them are taken, no namespace gets more than a quarter; `per_second`
    /// sustained and `burst` at once per identity.
    pub fn new(max_in_flight: usize, per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            in_flight: Semaphore::new(max_in_flight),
            per_namespace: NamespaceSlots::new(max_in_flight),
            per_identity: IdentityLimiter::new(per_second, burst),
        }
    }

    /// `Ok` if `identity` may make a request now; otherwise how long until
    /// it may.
    pub fn check_identity(&self, identity: &Identity) -> Result<(), Duration> {
        self.per_identity.check(identity)
    }

    /// A slot among the requests in flight, held while signing; `None`
    /// when all are taken, or when the CA is busy and `namespace` already
    /// holds its share.
    pub fn enter(&self, namespace: &str) -> Option<Permits<'_>> {
        let overall = self.in_flight.try_acquire().ok()?;
        let busy = self.in_flight.available_permits() < self.per_namespace.capacity / 2;
        let namespace = self.per_namespace.try_enter(namespace, busy)?;
        Some(Permits {
            _overall: overall,
            _namespace: namespace,
        })
    }
}

/// Signing requests in flight per namespace: a namespace may borrow the
/// whole pool while the CA is quiet, but once it is busy (half the slots
/// taken) no namespace holds more than a quarter, so a namespace flooding
/// requests waits behind itself, not in front of the others.
#[derive(Debug)]
struct NamespaceSlots {
    capacity: usize,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

/// One namespace's slot; given back when dropped.
#[derive(Debug)]
pub struct NamespacePermit {
    namespace: String,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for NamespacePermit {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(n) = counts.get_mut(&self.namespace) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.namespace);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl NamespaceSlots {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            counts: Arc::default(),
        }
    }

    fn share(&self) -> usize {
        (self.capacity / 4).max(1)
    }

    fn try_enter(&self, namespace: &str, busy: bool) -> Option<NamespacePermit> {
        let mut counts = lock(&self.counts);
        let held = counts.entry(namespace.to_owned()).or_insert(0);
        if busy && *held >= self.share() {
            return None;
        }
        *held += 1;
        Some(NamespacePermit {
            namespace: namespace.to_owned(),
            counts: self.counts.clone(),
        })
    }
}

/// How many identities the limiter holds before it first forgets those
/// whose buckets are full again.
const SWEEP_FLOOR: usize = 10_000;

/// A token bucket per identity.
#[derive(Debug)]
struct IdentityLimiter {
    limiter: DefaultKeyedRateLimiter<Identity>,
    clock: DefaultClock,
    /// The map size at which the next sweep runs.
    sweep_at: AtomicUsize,
}

/// The size at which to sweep again after a sweep left `remaining`
/// identities: twice as many, so that when most identities are active a
/// sweep (which visits them all) runs once per doubling, not per request.
fn next_sweep(remaining: usize) -> usize {
    remaining.saturating_mul(2).max(SWEEP_FLOOR)
}

impl IdentityLimiter {
    /// Allow `per_second` sustained and `burst` at once, per identity.
    fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            limiter: governor::RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            clock: DefaultClock::default(),
            sweep_at: AtomicUsize::new(SWEEP_FLOOR),
        }
    }

    fn check(&self, identity: &Identity) -> Result<(), Duration> {
        let result = self
            .limiter
            .check_key(identity)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()));
        // Forget identities whose buckets are full again, so the map stays
        // as small as the set of recently active identities.
        if self.limiter.len() > self.sweep_at.load(Ordering::Relaxed) {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
            self.sweep_at
                .store(next_sweep(self.limiter.len()), Ordering::Relaxed);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_run_once_per_doubling_of_active_identities() {
        assert_eq!(next_sweep(0), SWEEP_FLOOR);
        assert_eq!(next_sweep(3_000), SWEEP_FLOOR);
        assert_eq!(next_sweep(10_001), 20_002);
        assert_eq!(next_sweep(usize::MAX), usize::MAX);
    }

    #[test]
    fn a_namespace_borrows_the_pool_while_quiet_and_keeps_to_its_share_when_busy() {
        let one = NonZeroU32::new(1).expect("1");
        let admission = Admission::new(8, one, one);
        let held: Vec<_> = (0..4)
            .map(|_| admission.enter("flood").expect("a slot"))
            .collect();
        // Half the slots taken: the CA is busy, and "flood" holds twice its
        // share of 2.
        assert!(admission.enter("flood").is_none(), "waits behind itself");
        let other = admission
            .enter("quiet")
            .expect("another namespace still signs");
        drop(other);
        drop(held);
        let alone: Vec<_> = (0..4)
            .map(|_| admission.enter("flood").expect("quiet again"))
            .collect();
        assert_eq!(alone.len(), 4);
        drop(alone);
        assert!(
            lock(&admission.per_namespace.counts).is_empty(),
            "slots come back"
        );
    }

    #[test]
    fn each_identity_has_its_own_bucket() {
        let limiter = IdentityLimiter::new(
            NonZeroU32::new(1).expect("1"),
            NonZeroU32::new(2).expect("2"),
        );
        let td = meshca_provider::TrustDomain::new("cluster.local").expect("td");
        let a = Identity::new(td.clone(), "ns", "a").expect("a");
        let b = Identity::new(td, "ns", "b").expect("b");
        assert!(limiter.check(&a).is_ok());
        assert!(limiter.check(&a).is_ok());
        let wait = limiter.check(&a).expect_err("a's burst is spent");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limiter.check(&b).is_ok(), "b is not held back by a");
    }
}
