//! A JWT-SVID as minted for a caller, and the bounds of what may be asked:
//! the audience and the lifetime.

use std::time::Duration;

use thiserror::Error;
use time::OffsetDateTime;

/// The shortest lifetime a token is given: the clocks of relying parties
/// drift by seconds. A shorter `ttl_seconds` is raised to it.
pub const MIN_TTL: Duration = Duration::from_secs(10);
/// The most audiences a token carries.
pub const MAX_AUDIENCES: usize = 16;
/// The longest audience, in bytes: a URL or a name.
pub const MAX_AUDIENCE_BYTES: usize = 256;

/// A token minted for a caller.
#[derive(Clone)]
pub struct JwtSvid {
    /// The compact JWS.
    pub token: String,
    /// Its subject.
    pub spiffe_id: String,
    /// Its `exp`.
    pub expires_at: OffsetDateTime,
}

/// Never prints the token: it is a bearer credential.
impl std::fmt::Debug for JwtSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Why no token was minted.
#[derive(Debug, Error)]
pub enum MintError {
    /// No audience, an empty one, too many, too long, or with characters
    /// other than printable ASCII: a token for anyone, or one that carries
    /// what a relying party might log or display as something else, is
    /// refused. The message never repeats the audience.
    #[error("{0}")]
    Audience(AudienceError),
    /// No key signs now (the keeper could not store a new one).
    #[error("no JWT signing key is in force (see the log of the jwt-keys task)")]
    NoKey,
    /// The key failed to sign.
    #[error(transparent)]
    Sign(#[from] super::key::KeyError),
}

impl MintError {
    /// When the same token may be minted later without anyone acting: the
    /// custodian of the signing key was unavailable.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::Sign(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// What is wrong with the audience a token was asked for.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AudienceError {
    /// None given.
    #[error("audience must name at least one relying party")]
    None,
    /// More than [`MAX_AUDIENCES`].
    #[error("audience names {0} relying parties; at most {MAX_AUDIENCES} are allowed")]
    TooMany(usize),
    /// Empty, over [`MAX_AUDIENCE_BYTES`], or not printable ASCII.
    #[error("audience[{index}] {why}")]
    Entry {
        /// Its position.
        index: usize,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// An audience a token may carry: one to [`MAX_AUDIENCES`] entries, each
/// one to [`MAX_AUDIENCE_BYTES`] printable ASCII characters without
/// spaces (what a URL or a name needs; no control character, no bidi
/// override a log or a console would render as something else).
///
/// # Errors
/// The first problem found.
pub fn check_audience(audience: &[String]) -> Result<(), AudienceError> {
    if audience.is_empty() {
        return Err(AudienceError::None);
    }
    if audience.len() > MAX_AUDIENCES {
        return Err(AudienceError::TooMany(audience.len()));
    }
    for (index, entry) in audience.iter().enumerate() {
        let why = if entry.is_empty() {
            "is empty"
        } else if entry.len() > MAX_AUDIENCE_BYTES {
            "is longer than 256 bytes"
        } else if !entry.bytes().all(|b| b.is_ascii_graphic()) {
            "holds a character other than printable ASCII (no spaces)"
        } else {
            continue;
        };
        return Err(AudienceError::Entry { index, why });
    }
    Ok(())
}
