//! `certificates:`: the lifetimes of workload certificates.

use std::time::Duration;

use serde::Deserialize;

use crate::validation::Errors;

/// Bounds on certificate lifetimes; a requested TTL is clamped into them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    /// Used when a request names none.
    pub default_ttl: Duration,
    /// The shortest lifetime handed out.
    pub min_ttl: Duration,
    /// The longest lifetime handed out.
    pub max_ttl: Duration,
}

impl Lifetimes {
    /// The lifetime to request for a caller who asked for `requested`.
    pub fn clamp(&self, requested: Option<Duration>) -> Duration {
        requested
            .unwrap_or(self.default_ttl)
            .clamp(self.min_ttl, self.max_ttl)
    }

    /// The bounds of a signing API request for `requested`: the clamped
    /// lifetime, anything shorter a backend caps it to, anything longer it
    /// rounds up to within `max_ttl`.
    pub fn for_request(&self, requested: Option<Duration>) -> LifetimeBounds {
        LifetimeBounds {
            lifetime: self.clamp(requested),
            floor: Duration::ZERO,
            ceiling: self.max_ttl,
        }
    }

    /// The bounds of a request whose caller refuses anything longer than
    /// `most` or shorter than `least` (a PodCertificateRequest: its
    /// `maxExpirationSeconds`, and an hour), within `max_ttl`.
    pub fn between(&self, least: Duration, most: Duration) -> LifetimeBounds {
        let lifetime = most.min(self.max_ttl);
        LifetimeBounds {
            lifetime,
            floor: least.min(lifetime),
            ceiling: lifetime,
        }
    }
}

/// How long a certificate is asked to last, as a validity window (NotAfter
/// − NotBefore), and the shortest and longest windows accepted back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LifetimeBounds {
    /// Requested.
    pub lifetime: Duration,
    /// Shortest accepted.
    pub floor: Duration,
    /// Longest accepted.
    pub ceiling: Duration,
}

/// `certificates:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLifetimes {
    #[serde(with = "humantime_serde")]
    default_ttl: Duration,
    #[serde(with = "humantime_serde")]
    min_ttl: Duration,
    #[serde(with = "humantime_serde")]
    max_ttl: Duration,
}

impl Default for RawLifetimes {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(24 * 3600),
            min_ttl: Duration::from_secs(600),
            max_ttl: Duration::from_secs(72 * 3600),
        }
    }
}

impl RawLifetimes {
    /// The lifetimes, also when invalid (later checks compare against
    /// them); the problems go to `errors`.
    pub fn validate(&self, errors: &mut Errors) -> Lifetimes {
        if self.min_ttl.is_zero() {
            errors.add("certificates.min_ttl", "must be greater than zero");
        }
        if self.min_ttl > self.max_ttl {
            errors.add(
                "certificates.min_ttl",
                format!(
                    "{} is longer than certificates.max_ttl {}",
                    humantime::format_duration(self.min_ttl),
                    humantime::format_duration(self.max_ttl)
                ),
            );
        }
        if self.default_ttl < self.min_ttl || self.default_ttl > self.max_ttl {
            errors.add(
                "certificates.default_ttl",
                "must lie between certificates.min_ttl and certificates.max_ttl",
            );
        }
        Lifetimes {
            default_ttl: self.default_ttl,
            min_ttl: self.min_ttl,
            max_ttl: self.max_ttl,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_lifetimes_are_clamped() {
        let l = Lifetimes {
            default_ttl: Duration::from_secs(100),
            min_ttl: Duration::from_secs(10),
            max_ttl: Duration::from_secs(1000),
        };
        assert_eq!(l.clamp(None), Duration::from_secs(100));
        assert_eq!(
            l.clamp(Some(Duration::from_secs(1))),
            Duration::from_secs(10)
        );
        assert_eq!(
            l.clamp(Some(Duration::from_secs(5000))),
            Duration::from_secs(1000)
        );
    }
}
