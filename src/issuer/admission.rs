//! Admission to signing, shared by every way a request arrives (the HTTPS
//! API, pod certificates): a cap on signing requests in flight and a rate
//! per identity.
//!
//! All pods of a Deployment share one identity, so the rate is generous by
//! default; it exists so that one runaway sidecar (a renewal loop, a crash
//! loop) or one namespace flooding PodCertificateRequests cannot monopolise
//! the CA for everyone else.

use std::num::NonZeroU32;
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

/// A token bucket per identity.
#[derive(Debug)]
struct IdentityLimiter {
    limiter: DefaultKeyedRateLimiter<Identity>,
    clock: DefaultClock,
}

impl IdentityLimiter {
    /// Allow `per_second` sustained and `burst` at once, per identity.
    fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            limiter: governor::RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            clock: DefaultClock::default(),
        }
    }

    fn check(&self, identity: &Identity) -> Result<(), Duration> {
        let result = self
            .limiter
            .check_key(identity)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()));
        // Forget identities whose buckets are full again, so the map stays
        // as small as the set of recently active identities.
        if self.limiter.len() > 10_000 {
            self.limiter.retain_recent();
        }
        result
    }
}
