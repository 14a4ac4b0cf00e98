//! One root and what signs leaves under it: the root itself, or an
//! intermediate kept in memory that the root signed.
//!
//! The intermediate is renewed in place at two thirds of its life, by the
//! request that finds it due: the root does not change, so neither does
//! the bundle, and workloads are handed the new intermediate with their
//! next leaf. Leaves never outlive the intermediate that signed them
//! (`leaf::sign` cuts them to its end), so a daemon that runs longer than
//! `intermediate.validity` keeps issuing valid chains. A renewal that
//! fails (the root's custodian unavailable) is tried again
//! [`RETRY_EVERY`] later while the current intermediate signs on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use meshca_provider::revocation::{CrlRequest, SignedCrl};

use crate::ca::CaCertificate;
use crate::error::TresorError;

/// How long after a failed renewal the next is tried.
const RETRY_EVERY: Duration = Duration::from_secs(30);

/// What signs leaves now, and the certificates between it and the root.
pub(crate) struct Signing {
    pub(crate) signer: CaCertificate,
    pub(crate) tail: Vec<CertificateDer<'static>>,
}

/// The root, kept to renew the intermediate.
struct Renewal {
    root: CaCertificate,
    validity: Duration,
    /// No renewal before this (after a failed one, or one the root's end
    /// cut short).
    not_until: Mutex<Option<OffsetDateTime>>,
    /// Set by the one request renewing.
    renewing: AtomicBool,
}

pub(crate) struct Chain {
    current: RwLock<Arc<Signing>>,
    /// Intermediates renewed away whose leaves may still be valid: they
    /// still sign their CRLs until they expire.
    replaced: Mutex<Vec<Arc<Signing>>>,
    renewal: Option<Renewal>,
    pub(crate) anchor: CertificateDer<'static>,
}

impl Chain {
    /// Sign with `root`, through a new intermediate when
    /// `intermediate_validity` is set.
    pub(crate) async fn new(
        root: CaCertificate,
        intermediate_validity: Option<Duration>,
    ) -> Result<Self, TresorError> {
        let anchor = root.der().clone();
        let Some(validity) = intermediate_validity else {
            let signing = Signing {
                signer: root,
                tail: Vec::new(),
            };
            return Ok(Self {
                current: RwLock::new(Arc::new(signing)),
                replaced: Mutex::default(),
                renewal: None,
                anchor,
            });
        };
        let intermediate = root.issue_intermediate(validity).await?;
        tracing::info!(subject = %intermediate.subject(), not_after = %intermediate.not_after(), in_custody = root.in_custody(), "signing leaves with a new intermediate");
        Ok(Self {
            current: RwLock::new(Arc::new(Signing {
                tail: vec![intermediate.der().clone()],
                signer: intermediate,
            })),
            replaced: Mutex::default(),
            renewal: Some(Renewal {
                root,
                validity,
                not_until: Mutex::new(None),
                renewing: AtomicBool::new(false),
            }),
            anchor,
        })
    }

    /// Whether leaves go through an intermediate.
    pub(crate) fn has_intermediate(&self) -> bool {
        self.renewal.is_some()
    }

    /// Whether the key signing leaves is the root's, held in custody.
    pub(crate) fn signs_in_custody(&self) -> bool {
        self.renewal.is_none() && self.current().signer.in_custody()
    }

    fn current(&self) -> Arc<Signing> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// What signs leaves now, the intermediate renewed first when due.
    pub(crate) async fn signing(&self) -> Arc<Signing> {
        let current = self.current();
        let Some(renewal) = &self.renewal else {
            return current;
        };
        let now = OffsetDateTime::now_utc();
        let not_until = *renewal
            .not_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let signer = &current.signer;
        if !renewal_due(signer.not_before(), signer.not_after(), not_until, now) {
            return current;
        }
        // One renewal at a time; the others sign with the current one.
        let Some(_renewing) = Renewing::start(&renewal.renewing) else {
            return current;
        };
        let latest = self.current();
        if !Arc::ptr_eq(&latest, &current) {
            return latest;
        }
        self.renew(renewal, &current, now).await
    }

    async fn renew(
        &self,
        renewal: &Renewal,
        current: &Arc<Signing>,
        now: OffsetDateTime,
    ) -> Arc<Signing> {
        let retry_at = Some(now + RETRY_EVERY);
        let issued = renewal.root.issue_intermediate(renewal.validity).await;
        let later = |until: Option<OffsetDateTime>| {
            *renewal
                .not_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = until;
        };
        match issued {
            Ok(new) if new.not_after() > current.signer.not_after() => {
                tracing::info!(subject = %new.subject(), not_after = %new.not_after(), "renewed the intermediate in place");
                let signing = Arc::new(Signing {
                    tail: vec![new.der().clone()],
                    signer: new,
                });
                let old = std::mem::replace(
                    &mut *self.current.write().unwrap_or_else(PoisonError::into_inner),
                    signing.clone(),
                );
                let mut replaced = self.replaced.lock().unwrap_or_else(PoisonError::into_inner);
                replaced.retain(|r| r.signer.not_after() > now);
                replaced.push(old);
                drop(replaced);
                later(None);
                signing
            }
            Ok(_) => {
                // The root's end caps it: renewing again cannot help.
                tracing::warn!(root_not_after = %renewal.root.not_after(), "the intermediate cannot outlive the root; rotate the root (meshca rotate root)");
                later(Some(renewal.root.not_after()));
                current.clone()
            }
            Err(e) => {
                tracing::warn!(error = %meshca_provider::error_chain(&e), retry_in = ?RETRY_EVERY, "failed to renew the intermediate; the current one signs on");
                later(retry_at);
                current.clone()
            }
        }
    }
}

impl Chain {
    /// The CRLs of this chain over `request`: the CA signing leaves now,
    /// the intermediates it replaced until they expire, and the root
    /// above them.
    pub(crate) async fn revocation_lists(
        &self,
        request: &CrlRequest,
    ) -> Result<Vec<SignedCrl>, TresorError> {
        let current = self.current();
        let replaced: Vec<Arc<Signing>> = {
            let replaced = self.replaced.lock().unwrap_or_else(PoisonError::into_inner);
            replaced
                .iter()
                .filter(|r| r.signer.not_after() > request.this_update)
                .cloned()
                .collect()
        };
        let mut lists = vec![current.signer.crl(request, true).await?];
        for old in replaced {
            lists.push(old.signer.crl(request, false).await?);
        }
        if let Some(renewal) = &self.renewal {
            lists.push(renewal.root.crl(request, false).await?);
        }
        Ok(lists)
    }
}

/// The flag of a renewal in progress, cleared when the renewal ends
/// (however it ends, a cancelled request included).
struct Renewing<'a>(&'a AtomicBool);

impl<'a> Renewing<'a> {
    /// The flag set by this caller; `None` when another holds it.
    fn start(flag: &'a AtomicBool) -> Option<Self> {
        flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Self(flag))
    }
}

impl Drop for Renewing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Whether an intermediate valid from `not_before` to `not_after` is to be
/// renewed at `now`: two thirds of its life are over, and no renewal is
/// held back until later (`not_until`).
fn renewal_due(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    not_until: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> bool {
    let due = not_before + (not_after - not_before) * 2 / 3;
    now >= due && not_until.is_none_or(|t| now >= t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intermediate_is_renewed_from_two_thirds_of_its_life_unless_held_back() {
        let start = OffsetDateTime::UNIX_EPOCH;
        let end = start + Duration::from_secs(300);
        let at = |s: u64| start + Duration::from_secs(s);
        assert!(!renewal_due(start, end, None, at(199)));
        assert!(renewal_due(start, end, None, at(200)));
        assert!(renewal_due(start, end, None, at(400)), "even past its end");
        assert!(!renewal_due(start, end, Some(at(230)), at(220)));
        assert!(renewal_due(start, end, Some(at(230)), at(230)));
    }
}
