//! Per-identity rate limiting of the signing API.
//!
//! All pods of a Deployment share one identity, so the limit is generous by
//! default; it exists so that one runaway sidecar (a renewal loop, a crash
//! loop) cannot monopolise the CA for everyone else.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use meshca_provider::Identity;

/// A token bucket per identity.
#[derive(Debug)]
pub struct IdentityLimiter {
    limiter: DefaultKeyedRateLimiter<Identity>,
    clock: DefaultClock,
}

impl IdentityLimiter {
    /// Allow `per_second` sustained and `burst` at once, per identity.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            limiter: governor::RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            clock: DefaultClock::default(),
        }
    }

    /// `Ok` if `identity` may make a request now; otherwise how long until
    /// it may.
    pub fn check(&self, identity: &Identity) -> Result<(), Duration> {
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
