//! Admission to signing, shared by every way a request arrives (the HTTPS
//! API, pod certificates): a cap on signing requests in flight and a rate
//! per identity.
//!
//! All pods of a Deployment share one identity, so the rate is generous by
//! default; it exists so that one runaway sidecar (a renewal loop, a crash
//! loop) or one namespace flooding PodCertificateRequests cannot monopolise
//! the CA for everyone else.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use meshca_provider::Identity;
use tokio::sync::{Semaphore, SemaphorePermit};

/// The limits signing requests pass before reaching the provider.
#[derive(Debug)]
pub struct Admission {
    in_flight: Semaphore,
    per_identity: IdentityLimiter,
}

impl Admission {
    /// At most `max_in_flight` requests signing at once; `per_second`
    /// sustained and `burst` at once per identity.
    pub fn new(max_in_flight: usize, per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            in_flight: Semaphore::new(max_in_flight),
            per_identity: IdentityLimiter::new(per_second, burst),
        }
    }

    /// `Ok` if `identity` may make a request now; otherwise how long until
    /// it may.
    pub fn check_identity(&self, identity: &Identity) -> Result<(), Duration> {
        self.per_identity.check(identity)
    }

    /// A slot among the requests in flight, held while signing; `None`
    /// when all are taken.
    pub fn enter(&self) -> Option<SemaphorePermit<'_>> {
        self.in_flight.try_acquire().ok()
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
