//! `revocation:`: how often the CRLs are made again.

use std::time::Duration;

use serde::Deserialize;

use crate::validation::Errors;

/// The shortest `crl_next_update`: data planes fetch the lists about as
/// often as that, and each list is made again at half of it.
const MIN_NEXT_UPDATE: Duration = Duration::from_secs(60);
/// The longest: a verifier keeps a list until its `nextUpdate`, so a
/// revocation missed by one fetch must not wait longer than this.
const MAX_NEXT_UPDATE: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// `revocation:` as validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationConfig {
    /// How long after `thisUpdate` a list's `nextUpdate` is.
    pub crl_next_update: Duration,
}

/// `revocation:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRevocation {
    #[serde(with = "humantime_serde")]
    crl_next_update: Duration,
}

impl Default for RawRevocation {
    fn default() -> Self {
        Self {
            crl_next_update: Duration::from_secs(10 * 60),
        }
    }
}

impl RawRevocation {
    /// The section, or its problems in `errors`.
    pub fn validate(&self, errors: &mut Errors) -> Option<RevocationConfig> {
        let next = self.crl_next_update;
        if !(MIN_NEXT_UPDATE..=MAX_NEXT_UPDATE).contains(&next) {
            errors.add(
                "revocation.crl_next_update",
                format!(
                    "{} is outside 1m..7d: verifiers keep a list until its nextUpdate",
                    humantime::format_duration(next)
                ),
            );
            return None;
        }
        Some(RevocationConfig {
            crl_next_update: next,
        })
    }
}
