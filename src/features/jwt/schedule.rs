//! When a JWT signing key is published, signs, stops signing and leaves
//! the JWKS: pure functions of the keys' times and the clock.
//!
//! A new key is published `propagation_delay` before it signs, so every
//! relying party that refreshes its JWKS in that time knows it before it
//! meets a token it signed; the key it replaces stops signing at that very
//! moment and stays published until the last token it signed has expired
//! (`max_ttl` later). The first key, with nothing before it to replace,
//! signs at once.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A key's times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyTimes {
    /// First in the JWKS.
    #[serde(with = "time::serde::rfc3339")]
    pub published_at: OffsetDateTime,
    /// Signs from.
    #[serde(with = "time::serde::rfc3339")]
    pub signs_from: OffsetDateTime,
    /// Signs until (exclusive); cut short when a successor takes over.
    #[serde(with = "time::serde::rfc3339")]
    pub signs_until: OffsetDateTime,
}

/// The settings the schedule follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// How long a key is published before it signs.
    pub propagation_delay: Duration,
    /// How long a key signs.
    pub key_lifetime: Duration,
    /// The longest token lifetime: how long a key stays published after
    /// it stops signing.
    pub max_ttl: Duration,
}

impl Schedule {
    /// Whether `times` signs at `now`.
    pub fn signs(times: &KeyTimes, now: OffsetDateTime) -> bool {
        times.signs_from <= now && now < times.signs_until
    }

    /// When a key leaves the JWKS: once every token it signed has expired.
    pub fn retires_at(&self, times: &KeyTimes) -> OffsetDateTime {
        times.signs_until + self.max_ttl
    }

    /// Which of `keys` signs at `now`: the latest to start among those
    /// that sign.
    pub fn signer(keys: &[KeyTimes], now: OffsetDateTime) -> Option<usize> {
        keys.iter()
            .enumerate()
            .filter(|(_, t)| Self::signs(t, now))
            .max_by_key(|(_, t)| t.signs_from)
            .map(|(i, _)| i)
    }

    /// Whether a key must be made at `now`: none is waiting to sign, and
    /// none signs or the one that signs stops within `propagation_delay`.
    pub fn needs_key(&self, keys: &[KeyTimes], now: OffsetDateTime) -> bool {
        if keys.iter().any(|t| t.signs_from > now) {
            return false;
        }
        match Self::signer(keys, now) {
            None => true,
            Some(i) => keys[i].signs_until - now <= self.propagation_delay,
        }
    }

    /// The times of a key made at `now`; when another key signs, it
    /// hands over at the new key's first signature (`keys` is updated),
    /// `propagation_delay` plus `lead` from now (`lead`: how long those
    /// who serve the JWKS may take to see the new key).
    pub fn add_key(&self, keys: &mut [KeyTimes], now: OffsetDateTime, lead: Duration) -> KeyTimes {
        let current = Self::signer(keys, now);
        let signs_from = if current.is_some() {
            now + self.propagation_delay + lead
        } else {
            now
        };
        // The current signer signs until its successor does: cut short by
        // a key made by hand, or stretched when this runs late (a keeper
        // woken after its time), never leaving a moment without a signer.
        if let Some(i) = current {
            keys[i].signs_until = signs_from;
        }
        KeyTimes {
            published_at: now,
            signs_from,
            signs_until: signs_from + self.key_lifetime,
        }
    }

    /// Whether a key is still published at `now`.
    pub fn published(&self, times: &KeyTimes, now: OffsetDateTime) -> bool {
        now < self.retires_at(times)
    }

    /// The next moment any of this changes: a key starts signing, must be
    /// succeeded, or retires. `None` with no keys.
    pub fn next_change(&self, keys: &[KeyTimes], now: OffsetDateTime) -> Option<OffsetDateTime> {
        keys.iter()
            .flat_map(|t| {
                [
                    t.signs_from,
                    t.signs_until - self.propagation_delay,
                    self.retires_at(t),
                ]
            })
            .filter(|&at| at > now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minutes: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::minutes(minutes)
    }

    fn schedule() -> Schedule {
        Schedule {
            propagation_delay: Duration::from_secs(2 * 60),
            key_lifetime: Duration::from_secs(60 * 60),
            max_ttl: Duration::from_secs(10 * 60),
        }
    }

    #[test]
    fn the_first_key_signs_at_once() {
        let s = schedule();
        let mut keys = vec![];
        assert!(s.needs_key(&keys, at(0)));
        let first = s.add_key(&mut keys, at(0), Duration::ZERO);
        assert_eq!((first.signs_from, first.signs_until), (at(0), at(60)));
        keys.push(first);
        assert_eq!(Schedule::signer(&keys, at(0)), Some(0));
        assert!(!s.needs_key(&keys, at(57)));
    }

    #[test]
    fn a_successor_is_published_a_propagation_delay_before_it_signs() {
        let s = schedule();
        let mut keys = vec![];
        let first = s.add_key(&mut keys, at(0), Duration::ZERO);
        keys.push(first);
        assert!(
            s.needs_key(&keys, at(58)),
            "due propagation_delay before the end"
        );
        let next = s.add_key(&mut keys, at(58), Duration::ZERO);
        keys.push(next);
        assert_eq!(next.signs_from, at(60));
        assert_eq!(keys[0].signs_until, at(60), "hands over exactly then");
        assert!(!s.needs_key(&keys, at(59)), "one successor at a time");
        assert_eq!(Schedule::signer(&keys, at(59)), Some(0));
        assert_eq!(Schedule::signer(&keys, at(60)), Some(1));
        assert!(
            s.published(&keys[0], at(69)),
            "until its last token expires"
        );
        assert!(!s.published(&keys[0], at(70)));
    }

    #[test]
    fn a_key_made_by_hand_cuts_the_current_one_short() {
        let s = schedule();
        let mut keys = vec![];
        let first = s.add_key(&mut keys, at(0), Duration::ZERO);
        keys.push(first);
        let early = s.add_key(&mut keys, at(10), Duration::from_secs(60));
        keys.push(early);
        assert_eq!(keys[0].signs_until, at(13), "the delay and the lead");
        assert_eq!(s.retires_at(&keys[0]), at(23));
        assert_eq!(Schedule::signer(&keys, at(12)), Some(0));
        assert_eq!(Schedule::signer(&keys, at(13)), Some(1));
    }

    #[test]
    fn a_successor_made_late_leaves_no_moment_without_a_signer() {
        let s = schedule();
        let mut keys = vec![];
        let first = s.add_key(&mut keys, at(0), Duration::ZERO);
        keys.push(first);
        // Due at 58; made at 59, it signs from 61, after the first's 60.
        let next = s.add_key(&mut keys, at(59), Duration::ZERO);
        keys.push(next);
        assert_eq!(next.signs_from, at(61));
        assert_eq!(keys[0].signs_until, at(61), "the first signs until then");
        assert_eq!(Schedule::signer(&keys, at(60)), Some(0));
        assert_eq!(s.retires_at(&keys[0]), at(71), "and its tokens live on");
    }

    #[test]
    fn after_an_outage_longer_than_a_key_a_new_key_signs_at_once() {
        let s = schedule();
        let mut keys = vec![];
        let first = s.add_key(&mut keys, at(0), Duration::ZERO);
        keys.push(first);
        assert!(s.needs_key(&keys, at(300)));
        let next = s.add_key(&mut keys, at(300), Duration::ZERO);
        assert_eq!(next.signs_from, at(300));
    }

    #[test]
    fn the_next_change_is_the_nearest_of_every_keys_moments() {
        let s = schedule();
        let mut keys = vec![];
        let first = s.add_key(&mut keys, at(0), Duration::ZERO);
        keys.push(first);
        assert_eq!(s.next_change(&keys, at(1)), Some(at(58)));
        let next = s.add_key(&mut keys, at(58), Duration::ZERO);
        keys.push(next);
        assert_eq!(s.next_change(&keys, at(58)), Some(at(60)));
        assert_eq!(
            s.next_change(&keys, at(60)),
            Some(at(70)),
            "the first retires"
        );
    }
}
