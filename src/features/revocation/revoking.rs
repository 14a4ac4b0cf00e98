//! Revoking, the one way `meshca certificate revoke` and the admin API
//! (`POST /v1/revocations`) both do it: a serial into the ledger, or
//! every live certificate of an identity from the certificate index,
//! the identity denied first unless it may get new ones at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use meshca_provider::revocation::Serial;
use meshca_provider::CLOCK_SKEW_ALLOWANCE;
use thiserror::Error;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::index::{self, IndexError, IndexStore, Record};
use super::ledger::{Entry, LedgerError, LedgerStore, Revoking};

/// How long after denying an identity its index is read again: the
/// daemons apply a deny within a second (the file's recheck; a
/// ConfigMap's watch at once), a signature begun before it ends within
/// seconds, and what they issued is indexed within [`index::FLUSH`].
pub const SETTLE: Duration =
    Duration::from_secs(crate::watched::RECHECK_AFTER.as_secs() + 3 + index::FLUSH.as_secs());

/// `namespace/service-account`, checked as Kubernetes names them.
///
/// # Errors
/// What is wrong with `text`.
pub fn parse_identity(text: &str) -> Result<(&str, &str), String> {
    let name = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    text.split_once('/')
        .filter(|(ns, sa)| name(ns) && name(sa))
        .ok_or_else(|| {
            format!("{text:?} is not namespace/service-account (lower-case Kubernetes names)")
        })
}

/// An identity's certificates to revoke, as asked and checked.
#[derive(Clone, Debug)]
pub struct ByIdentity {
    identity: String,
    issued_before: Option<OffsetDateTime>,
    allow_reissue: bool,
}

impl ByIdentity {
    /// `identity` (namespace/service-account); only the certificates
    /// issued before `issued_before` (RFC 3339) when given; without
    /// denying the identity when `allow_reissue`.
    ///
    /// # Errors
    /// What is wrong with them, naming the CLI's flag.
    pub fn of(
        identity: &str,
        issued_before: Option<&str>,
        allow_reissue: bool,
    ) -> Result<Self, String> {
        parse_identity(identity)?;
        let issued_before = issued_before
            .map(|t| {
                OffsetDateTime::parse(t, &Rfc3339)
                    .map_err(|e| format!("issued-before {t:?} is not an RFC 3339 time: {e}"))
            })
            .transpose()?;
        Ok(Self {
            identity: identity.to_owned(),
            issued_before,
            allow_reissue,
        })
    }

    /// The identity, `namespace/service-account`.
    pub fn identity(&self) -> &str {
        &self.identity
    }
}

/// Who revokes and why, for the ledger, the Event and the logs.
#[derive(Clone, Debug)]
pub struct Asked {
    /// Who: the user running the command, or the admin API's caller.
    pub by: String,
    /// Why, as they said.
    pub reason: Option<String>,
}

/// What revoking an identity is doing, as it goes (a command prints it).
#[derive(Debug)]
pub enum Progress<'a> {
    /// The identity is denied, kept there.
    Denied(&'a str),
    /// Waiting this long before reading the index again.
    Settling(Duration),
    /// This certificate is now revoked.
    Revoked(&'a Record),
}

/// An identity revoked.
#[derive(Debug)]
pub struct IdentityRevoked {
    /// Where its deny is kept, unless it may be reissued.
    pub denied: Option<String>,
    /// The certificates revoked now (none revoked before).
    pub revoked: Vec<Record>,
}

/// Why revoking failed.
#[derive(Debug, Error)]
pub enum RevokeError {
    /// The identity could not be denied; nothing was revoked.
    #[error("nothing revoked: denying {identity} failed: {why}")]
    Deny {
        /// The identity.
        identity: String,
        /// Why.
        why: String,
    },
    /// The index could not be read; `revoked` were revoked before.
    #[error("{revoked} certificate(s) revoked, then reading the certificate index failed")]
    Index {
        /// How many were revoked before.
        revoked: usize,
        /// Why.
        #[source]
        source: IndexError,
    },
    /// The ledger could not be written; `revoked` were revoked before.
    #[error("{revoked} certificate(s) revoked, then writing the revocation ledger failed")]
    Ledger {
        /// How many were revoked before.
        revoked: usize,
        /// Why.
        #[source]
        source: LedgerError,
    },
}

impl RevokeError {
    /// Whether asking again may succeed without an operator's fix: the
    /// API server busy or unreachable, another writer first.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Deny { .. } => false,
            Self::Index {
                source: IndexError::Store(e),
                ..
            }
            | Self::Ledger {
                source: LedgerError::Store(e),
                ..
            } => e.is_transient(),
            Self::Ledger {
                source: LedgerError::Busy(_),
                ..
            } => true,
            Self::Index { .. } | Self::Ledger { .. } => false,
        }
    }
}

/// Where revocations, the index and denies are kept.
#[derive(Clone)]
pub struct Revoker {
    ledger: LedgerStore,
    index: IndexStore,
    denied_file: PathBuf,
    cluster: Option<(kube::Client, String)>,
    max_ttl: Duration,
}

impl std::fmt::Debug for Revoker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revoker")
            .field("ledger", &self.ledger)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Revoker {
    /// The ledger and index in `state_dir`, denies in `denied_file`, or
    /// all three in `cluster` (a client and meshca's namespace); a serial
    /// stays listed as long as a certificate living `max_ttl` could.
    pub fn new(
        state_dir: &Path,
        denied_file: &Path,
        cluster: Option<(kube::Client, &str)>,
        max_ttl: Duration,
    ) -> Self {
        Self {
            ledger: LedgerStore::new(state_dir, cluster.clone()),
            index: IndexStore::new(state_dir, cluster.clone()),
            denied_file: denied_file.to_owned(),
            cluster: cluster.map(|(c, ns)| (c, ns.to_owned())),
            max_ttl,
        }
    }

    /// Where the ledger is, for messages.
    pub fn ledger(&self) -> &LedgerStore {
        &self.ledger
    }

    /// The ledger's entry revoking `serial` at `now`.
    fn entry(&self, serial: &Serial, now: OffsetDateTime, asked: &Asked) -> Entry {
        Entry {
            serial: serial.to_string(),
            revoked_at: now,
            // No certificate issued before now lives longer than max_ttl
            // (plus its backdating).
            listed_until: now + self.max_ttl + 2 * CLOCK_SKEW_ALLOWANCE,
            by: asked.by.clone(),
            reason: asked.reason.clone(),
        }
    }

    /// Revoke one serial, whether or not the index knows it (a
    /// certificate issued before the index, or by another meshca).
    ///
    /// # Errors
    /// [`RevokeError::Ledger`].
    pub async fn serial(&self, serial: &Serial, asked: &Asked) -> Result<Revoking, RevokeError> {
        let entry = self.entry(serial, OffsetDateTime::now_utc(), asked);
        tracing::info!(serial = %serial, by = asked.by, reason = asked.reason, "revoking a certificate");
        self.ledger
            .revoke(entry)
            .await
            .map_err(|source| RevokeError::Ledger { revoked: 0, source })
    }

    /// Deny the identity (unless it may be reissued), revoke its live
    /// certificates, and once the deny is in force, those issued
    /// meanwhile.
    ///
    /// # Errors
    /// [`RevokeError`]; what was revoked before it stays revoked.
    pub async fn identity(
        &self,
        what: &ByIdentity,
        asked: &Asked,
        progress: &(dyn Fn(Progress<'_>) + Send + Sync),
    ) -> Result<IdentityRevoked, RevokeError> {
        tracing::info!(
            identity = what.identity,
            by = asked.by,
            reason = asked.reason,
            allow_reissue = what.allow_reissue,
            "revoking an identity's certificates"
        );
        let denied = match what.allow_reissue {
            true => None,
            false => Some(self.deny(&what.identity).await?),
        };
        if let Some(place) = &denied {
            progress(Progress::Denied(place));
        }
        // Without a deny, what is issued from now on stays valid.
        let before = what
            .issued_before
            .or(what.allow_reissue.then(OffsetDateTime::now_utc));
        let mut revoked = Vec::new();
        self.revoke_listed(what, before, asked, &mut revoked, progress)
            .await?;
        if denied.is_some() && what.issued_before.is_none() {
            progress(Progress::Settling(SETTLE));
            tokio::time::sleep(SETTLE).await;
            self.revoke_listed(what, None, asked, &mut revoked, progress)
                .await?;
        }
        Ok(IdentityRevoked { denied, revoked })
    }

    async fn deny(&self, identity: &str) -> Result<String, RevokeError> {
        let (ns, sa) = parse_identity(identity).map_err(|why| RevokeError::Deny {
            identity: identity.to_owned(),
            why,
        })?;
        let cluster = self
            .cluster
            .as_ref()
            .map(|(c, ns)| (c.clone(), ns.as_str()));
        crate::issuer::deny_configmap::change_where_kept(&self.denied_file, cluster, (ns, sa), true)
            .await
            .map(|(_, place)| place)
            .map_err(|why| RevokeError::Deny {
                identity: identity.to_owned(),
                why,
            })
    }

    /// Revoke the identity's live certificates issued before `before`
    /// (all when `None`), adding those not revoked already to `revoked`.
    async fn revoke_listed(
        &self,
        what: &ByIdentity,
        before: Option<OffsetDateTime>,
        asked: &Asked,
        revoked: &mut Vec<Record>,
        progress: &(dyn Fn(Progress<'_>) + Send + Sync),
    ) -> Result<(), RevokeError> {
        let now = OffsetDateTime::now_utc();
        let records = index::certificates_of(&self.index, &what.identity, now.unix_timestamp())
            .await
            .map_err(|source| RevokeError::Index {
                revoked: revoked.len(),
                source,
            })?;
        let chosen: Vec<Record> = records
            .into_iter()
            .filter(|r| before.is_none_or(|t| r.issued_at < t.unix_timestamp()))
            .collect();
        let entries = chosen
            .iter()
            .map(|r| self.entry(&r.serial, now, asked))
            .collect();
        let newly =
            self.ledger
                .revoke_all(entries)
                .await
                .map_err(|source| RevokeError::Ledger {
                    revoked: revoked.len(),
                    source,
                })?;
        for record in chosen {
            if newly.contains(&record.serial.to_string()) {
                progress(Progress::Revoked(&record));
                revoked.push(record);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_two_kubernetes_names() {
        assert_eq!(parse_identity("shop/web"), Ok(("shop", "web")));
        assert!(parse_identity("shop.a/web-1").is_ok());
        for bad in [
            "shop",
            "/web",
            "shop/",
            "shop/web/x",
            "Shop/web",
            "shop/w b",
        ] {
            assert!(parse_identity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn issued_before_is_an_rfc3339_time() {
        assert!(ByIdentity::of("shop/web", Some("2026-12-06T10:00:00Z"), false).is_ok());
        let e = ByIdentity::of("shop/web", Some("yesterday"), false).expect_err("refused");
        assert!(e.contains("issued-before"), "{e}");
    }
}
