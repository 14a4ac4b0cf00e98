//! When to renew a certificate: pure functions of its validity, shared by
//! the signing API (`renew_after`), the agent and the daemon's own serving
//! certificate, and unit-tested here.

use std::time::Duration;

use time::OffsetDateTime;

/// The fraction of a certificate's lifetime after which it is renewed.
pub const RENEW_FRACTION: f64 = 2.0 / 3.0;

/// The instant `fraction` of the way from `not_before` to `not_after`.
pub fn point_in_lifetime(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    fraction: f64,
) -> OffsetDateTime {
    let lifetime = (not_after - not_before).max(time::Duration::ZERO);
    not_before + lifetime * fraction.clamp(0.0, 1.0)
}

/// When a holder should renew: two thirds into the lifetime that remains
/// from `now` (issuance, or receipt).
///
/// Counting from `now` rather than NotBefore matters for short lifetimes:
/// NotBefore is backdated for clock skew, and two thirds of a lifetime
/// that includes the backdate can already lie in the past.
pub fn renew_after(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> OffsetDateTime {
    point_in_lifetime(not_before.max(now), not_after, RENEW_FRACTION)
}

/// How long to wait from `now` before renewing, spread by `jitter` (a
/// number in `[-1, 1]`, usually random) over ±10 % of the remaining
/// lifetime so that many workloads issued together do not renew together.
/// Never less than zero, never past 90 % of the remaining lifetime. As in
/// [`renew_after`], the lifetime counts from `now` at the latest.
pub fn renewal_delay(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
    jitter: f64,
) -> Duration {
    let fraction = (RENEW_FRACTION + 0.1 * jitter.clamp(-1.0, 1.0)).min(0.9);
    let at = point_in_lifetime(not_before.max(now), not_after, fraction);
    (at - now).try_into().unwrap_or(Duration::ZERO)
}

/// A jitter in `[-1, 1)` from the system's random source.
pub fn random_jitter() -> f64 {
    crate::crypto::jitter_fraction() * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn renewal_is_two_thirds_into_the_lifetime() {
        let nb = datetime!(2026-01-01 00:00 UTC);
        let na = datetime!(2026-01-01 03:00 UTC);
        assert_eq!(renew_after(nb, na, nb), datetime!(2026-01-01 02:00 UTC));
    }

    #[test]
    fn a_backdated_not_before_does_not_make_a_short_certificate_due_at_once() {
        // Issued at 00:01 for 3 s, NotBefore backdated one minute.
        let issued = datetime!(2026-01-01 00:01 UTC);
        let nb = datetime!(2026-01-01 00:00 UTC);
        let na = issued + time::Duration::seconds(3);
        assert_eq!(
            renew_after(nb, na, issued),
            issued + time::Duration::seconds(2)
        );
        assert_eq!(renewal_delay(nb, na, issued, 0.0), Duration::from_secs(2));
    }

    #[test]
    fn jitter_spreads_renewal_by_a_tenth_of_the_lifetime() {
        let nb = datetime!(2026-01-01 00:00 UTC);
        let na = datetime!(2026-01-01 10:00 UTC);
        assert_eq!(renewal_delay(nb, na, nb, 0.0).as_secs(), 24_000);
        assert_eq!(renewal_delay(nb, na, nb, 1.0).as_secs(), 27_600);
        assert_eq!(renewal_delay(nb, na, nb, -1.0).as_secs(), 20_400);
        assert_eq!(renewal_delay(nb, na, nb, 7.0).as_secs(), 27_600);
    }

    #[test]
    fn an_overdue_certificate_renews_at_once() {
        let nb = datetime!(2026-01-01 00:00 UTC);
        let na = datetime!(2026-01-01 01:00 UTC);
        assert_eq!(renewal_delay(nb, na, na, 0.0), Duration::ZERO);
    }

    #[test]
    fn random_jitter_stays_in_range() {
        for _ in 0..100 {
            let j = random_jitter();
            assert!((-1.0..=1.0).contains(&j));
        }
    }
}
