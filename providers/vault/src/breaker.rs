//! Fail fast while Vault is down, and come back by itself.
//!
//! After a failure that says Vault is unreachable or sealed, requests are
//! refused locally for a backoff that doubles up to a cap, with jitter so
//! that replicas do not probe in step. The first request after the backoff
//! (or a successful health probe) is let through; success closes the
//! breaker.

use std::sync::Mutex;
use std::time::{Duration, Instant};

const BASE: Duration = Duration::from_millis(500);
const CAP: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub(crate) struct Breaker {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
}

/// A factor in [0.5, 1.5).
fn jitter() -> f64 {
    0.5 + meshca_provider::crypto::jitter_fraction()
}

/// The pure backoff schedule: `BASE * 2^(failures-1)`, capped, times
/// `jitter`.
pub(crate) fn backoff(failures: u32, jitter: f64) -> Duration {
    let exp = BASE.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    exp.min(CAP).mul_f64(jitter)
}

impl Breaker {
    /// `Err(wait)` while open.
    pub(crate) fn check(&self) -> Result<(), Duration> {
        let state = self.state.lock().map_err(|_| BASE)?;
        match state.open_until {
            Some(until) if until > Instant::now() => Err(until - Instant::now()),
            _ => Ok(()),
        }
    }

    /// Record an outage; returns how long requests will now be refused.
    pub(crate) fn failure(&self) -> Duration {
        let Ok(mut state) = self.state.lock() else {
            return BASE;
        };
        state.failures = state.failures.saturating_add(1);
        let wait = backoff(state.failures, jitter());
        state.open_until = Some(Instant::now() + wait);
        wait
    }

    /// Record that Vault answered.
    pub(crate) fn success(&self) {
        if let Ok(mut state) = self.state.lock() {
            if state.failures > 0 {
                tracing::info!("Vault is reachable again");
            }
            *state = State::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_is_spread_by_jitter() {
        assert_eq!(backoff(1, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(2, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(4, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(40, 1.0), CAP);
        assert_eq!(backoff(2, 0.5), Duration::from_millis(500));
    }

    #[test]
    fn an_open_breaker_refuses_until_a_success() {
        let b = Breaker::default();
        assert!(b.check().is_ok());
        let wait = b.failure();
        assert!(wait >= Duration::from_millis(250));
        assert!(b.check().is_err());
        b.success();
        assert!(b.check().is_ok());
    }
}
