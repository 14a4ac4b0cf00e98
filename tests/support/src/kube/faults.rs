//! Faults as a busy cluster gives them, seeded and reproducible: API
//! Priority and Fairness' 429 with Retry-After, 500 and 503, answers slower
//! than a client waits, watch streams cut, 410 Gone on resume, and writes
//! that succeeded whose answer was lost. Only meshca's requests (its
//! User-Agent) meet them, so a test's own reads stay exact.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often each fault strikes, per request, while the plan is on.
#[derive(Clone, Debug)]
pub struct FaultPlan {
    /// Seeds the sequence of decisions: the same seed, the same faults
    /// for the same sequence of requests.
    pub seed: u64,
    /// 429 TooManyRequests with `Retry-After: retry_after_seconds`.
    pub too_many_requests: f64,
    /// What a 429 asks the client to wait.
    pub retry_after_seconds: u32,
    /// 500 InternalError.
    pub internal_error: f64,
    /// 503 ServiceUnavailable.
    pub unavailable: f64,
    /// An answer held back for `slow_for` first.
    pub slow: f64,
    /// How long a slow answer takes.
    pub slow_for: Duration,
    /// A write that is stored, then its connection dropped before the
    /// answer.
    pub lost_answer: f64,
    /// A watch that resumes from a resourceVersion gets 410 Gone.
    pub gone_on_resume: f64,
    /// Every watch stream is cut after at most this long.
    pub cut_watches_within: Option<Duration>,
}

impl FaultPlan {
    /// A cluster under load: a fault in about one request in four.
    pub fn busy(seed: u64) -> Self {
        Self {
            seed,
            too_many_requests: 0.10,
            retry_after_seconds: 2,
            internal_error: 0.04,
            unavailable: 0.04,
            slow: 0.02,
            slow_for: Duration::from_secs(4),
            lost_answer: 0.04,
            gone_on_resume: 0.5,
            cut_watches_within: Some(Duration::from_secs(3)),
        }
    }
}

impl FaultPlan {
    /// The API server down: every request of meshca's answered 503.
    pub fn outage(seed: u64) -> Self {
        Self {
            seed,
            too_many_requests: 0.0,
            retry_after_seconds: 1,
            internal_error: 0.0,
            unavailable: 1.0,
            slow: 0.0,
            slow_for: Duration::ZERO,
            lost_answer: 0.0,
            gone_on_resume: 0.0,
            cut_watches_within: Some(Duration::from_millis(500)),
        }
    }
}

/// What happens to one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Fault {
    /// Answer with this status (code, reason, Retry-After seconds).
    Refuse(u16, &'static str, Option<u32>),
    /// Answer after a delay.
    Slow(Duration),
    /// Store a write, then drop the answer.
    LoseAnswer,
}

/// The plan in force and its random sequence.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    plan: std::sync::Mutex<Option<FaultPlan>>,
    state: AtomicU64,
}

impl Faults {
    pub(crate) fn set(&self, plan: Option<FaultPlan>) {
        if let Some(p) = &plan {
            self.state.store(p.seed, Ordering::SeqCst);
        }
        *self.plan.lock().expect("lock") = plan;
    }

    fn plan(&self) -> Option<FaultPlan> {
        self.plan.lock().expect("lock").clone()
    }

    /// The next number in [0, 1) of the seeded sequence (splitmix64).
    fn next(&self) -> f64 {
        let mut z = self
            .state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::SeqCst)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The fault for one request, if any; `write` for POST, PUT, PATCH.
    pub(crate) fn decide(&self, write: bool) -> Option<Fault> {
        let plan = self.plan()?;
        let mut roll = self.next();
        let mut take = |p: f64| {
            let hit = roll < p;
            roll -= p;
            hit
        };
        if take(plan.too_many_requests) {
            return Some(Fault::Refuse(
                429,
                "TooManyRequests",
                Some(plan.retry_after_seconds),
            ));
        }
        if take(plan.internal_error) {
            return Some(Fault::Refuse(500, "InternalError", None));
        }
        if take(plan.unavailable) {
            return Some(Fault::Refuse(503, "ServiceUnavailable", None));
        }
        if take(plan.slow) {
            return Some(Fault::Slow(plan.slow_for));
        }
        if write && take(plan.lost_answer) {
            return Some(Fault::LoseAnswer);
        }
        None
    }

    /// Whether a watch resuming from a resourceVersion gets 410 Gone.
    pub(crate) fn gone_on_resume(&self) -> bool {
        self.plan().is_some_and(|p| self.next() < p.gone_on_resume)
    }

    /// When to cut a watch stream that opens now, if at all.
    pub(crate) fn cut_after(&self) -> Option<Duration> {
        let within = self.plan()?.cut_watches_within?;
        Some(within.mul_f64(self.next().max(0.05)))
    }
}
