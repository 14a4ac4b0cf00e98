//! The task that makes the CRLs: it reads the ledger every few seconds,
//! asks the provider signing now for its lists over the serials listed,
//! and publishes them when they change.
//!
//! Lists are made again when the serials listed change, at half of
//! `crl_next_update` (so a verifier fetching on any schedule within that
//! half never holds an expired list), and whenever the provider has a CA
//! the last lists did not cover (a renewed intermediate): asking with an
//! unchanged request costs a provider that keeps its last lists nothing.

use std::sync::Arc;
use std::time::Duration;

use meshca_provider::revocation::{CrlRequest, Revocation, Revoked, SignedCrl};
use meshca_provider::CLOCK_SKEW_ALLOWANCE;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::events::Announcer;
use super::ledger::{Ledger, LedgerStore};
use super::metrics::RevocationMetrics;
use crate::report::error_chain;
use crate::rollout::Signer;
use crate::store::{Over, Store};

/// How often the ledger is read and the provider asked.
const TICK: Duration = Duration::from_secs(2);

/// The CRLs published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// Every list, the classical chain's CA signing leaves first.
    pub lists: Vec<SignedCrl>,
    /// What they list, and when they were made.
    pub request: CrlRequest,
}

impl Published {
    /// The list leaves are checked against now: the classical CA signing
    /// leaves (`GET /v1/crl` in DER).
    pub fn leaf_list(&self) -> Option<&SignedCrl> {
        self.lists.iter().find(|l| l.signs_leaves)
    }

    /// The entity tag of these lists, for conditional requests: a digest
    /// of every list, so that it changes exactly when one does.
    pub fn etag(&self) -> String {
        let mut all = Vec::new();
        for list in &self.lists {
            all.extend_from_slice(&list.der);
        }
        let digest = meshca_provider::crypto::sha256(&all);
        base16ct::lower::encode_string(&digest[..12])
    }

    /// Every list, in PEM (`X509 CRL` blocks).
    pub fn pem(&self) -> String {
        let mut out = String::new();
        for list in &self.lists {
            meshca_provider::pem::encode_block("X509 CRL", &list.der, &mut out);
        }
        out
    }
}

/// What there is to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Crls {
    /// Nothing yet: the first lists are being made.
    NotYet,
    /// The provider signing now cannot revoke: why.
    Cannot(&'static str),
    /// The lists.
    Lists(Arc<Published>),
}

/// The request for lists at `now`: `None` when those of `last` still
/// serve (same serials, less than half of their time gone).
pub fn next_request(
    last: Option<&CrlRequest>,
    listed: Vec<Revoked>,
    now: OffsetDateTime,
    next_update: Duration,
) -> Option<CrlRequest> {
    if let Some(last) = last {
        let half = (last.next_update - last.this_update) / 2;
        if last.revoked == listed && now < last.this_update + half {
            return None;
        }
    }
    // Backdated like certificates, so that a verifier whose clock is a
    // little behind does not find the list "not yet valid".
    let this_update = now - CLOCK_SKEW_ALLOWANCE;
    Some(CrlRequest {
        revoked: listed,
        this_update,
        next_update: now + next_update,
    })
}

/// The task's state.
pub struct Publisher {
    /// Where the ledger is.
    pub ledger: LedgerStore,
    /// The provider signing now.
    pub signer: Arc<Signer>,
    /// `revocation.crl_next_update`.
    pub next_update: Duration,
    /// Its metrics.
    pub metrics: RevocationMetrics,
    /// Where the lists go.
    pub crls: watch::Sender<Crls>,
    /// In a cluster, the ConfigMap `meshca-crl` (key `ca.crl`, every list
    /// in PEM) the leader keeps, and whether this replica leads.
    pub configmap: Option<(Store, watch::Receiver<bool>)>,
    /// In a cluster, the Event of each revocation.
    pub events: Option<Announcer>,
}

/// The ConfigMap in-cluster consumers read the lists from.
pub const CONFIGMAP: &str = "meshca-crl";
/// Its key.
pub const CONFIGMAP_KEY: &str = "ca.crl";

impl Publisher {
    /// Run until `shutdown`, from `ledger` as read at start.
    pub async fn run(self, mut ledger: Ledger, shutdown: CancellationToken) {
        let mut request: Option<CrlRequest> = None;
        let mut failing = false;
        let mut mirror = Mirror::default();
        let mut refused: Option<Refused> = None;
        loop {
            let now = OffsetDateTime::now_utc();
            if let Some(next) =
                next_request(request.as_ref(), ledger.listed(now), now, self.next_update)
            {
                request = Some(next);
            }
            if let Some(asked) = &request {
                self.publish(asked, &mut refused).await;
            }
            self.mirror(&mut mirror).await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(TICK) => {}
            }
            match self.ledger.load().await {
                Ok(read) => {
                    self.announce(&ledger, &read).await;
                    ledger = read;
                    failing = false;
                }
                // The lists already made still list what they did; a
                // ledger that cannot be read is never taken as empty.
                Err(e) if !failing => {
                    failing = true;
                    tracing::error!(error = %error_chain(&e), "cannot read the revocation ledger; the CRLs keep listing what they listed");
                }
                Err(_) => {}
            }
        }
    }

    /// Ask the provider signing now for its lists over `request`, and
    /// publish them if they changed. A refusal that asking again cannot
    /// change (`refused`) is not asked again until the request or the
    /// signer changes; an outage is asked again at the next tick.
    async fn publish(&self, request: &CrlRequest, refused: &mut Option<Refused>) {
        let (provider, generation) = self.signer.current();
        if refused
            .as_ref()
            .is_some_and(|r| r.request == *request && r.generation == generation)
        {
            return;
        }
        let lists = match provider.revocation() {
            Revocation::Cannot(why) => {
                self.crls
                    .send_if_modified(|c| replace(c, Crls::Cannot(why)));
                return;
            }
            Revocation::SignsCrls => provider.revocation_lists(request).await,
        };
        let lists = match lists {
            Ok(lists) => lists,
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %error_chain(&e), retry_in = ?TICK, "the provider could not sign the CRLs now; those published stay");
                return;
            }
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "the provider refused to sign the CRLs; those published stay until the ledger or the signer changes");
                *refused = Some(Refused {
                    request: request.clone(),
                    generation,
                });
                return;
            }
        };
        *refused = None;
        let published = Published {
            lists,
            request: request.clone(),
        };
        let changed = self.crls.send_if_modified(|c| match c {
            Crls::Lists(held) if **held == published => false,
            _ => {
                *c = Crls::Lists(Arc::new(published.clone()));
                true
            }
        });
        if changed {
            self.metrics.record(provider.kind(), &published);
            tracing::info!(
                lists = published.lists.len(),
                revoked = request.revoked.len(),
                next_update = %request.next_update,
                "published the CRLs"
            );
        }
    }

    /// Log each revocation that `after` holds and `before` did not, and
    /// record it as an Event in a cluster.
    async fn announce(&self, before: &Ledger, after: &Ledger) {
        for entry in after.entries() {
            if before.entries().iter().any(|e| e.serial == entry.serial) {
                continue;
            }
            tracing::warn!(serial = %entry.serial, by = %entry.by, reason = entry.reason.as_deref().unwrap_or(""), "certificate revoked; the next CRLs list it");
            if let Some(events) = &self.events {
                events.revoked(entry).await;
            }
        }
    }

    /// On the leader, write the lists published to the ConfigMap when they
    /// are not the ones last written there. A refusal repeating cannot
    /// fix (RBAC, the 1 MiB limit) waits [`HOLD_OFF`], as every other
    /// write meshca makes; an outage is tried again at the next tick.
    async fn mirror(&self, mirror: &mut Mirror) {
        let Some((store, leader)) = &self.configmap else {
            return;
        };
        let published = match &*self.crls.borrow() {
            Crls::Lists(published) => published.clone(),
            _ => return,
        };
        if !*leader.borrow() {
            // Another replica writes; write again on becoming the leader.
            mirror.written = None;
            return;
        }
        let now = tokio::time::Instant::now();
        if mirror.written.as_ref().is_some_and(|m| **m == *published)
            || mirror.not_before.is_some_and(|t| now < t)
        {
            return;
        }
        match store.save(published.pem().as_bytes(), Over::Anything).await {
            Ok(()) => {
                *mirror = Mirror {
                    written: Some(published),
                    not_before: None,
                }
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %error_chain(&e), place = %store.describe(), retry_in = ?TICK, "failed to write the CRLs to the ConfigMap");
            }
            Err(e) => {
                tracing::error!(error = %error_chain(&e), place = %store.describe(), retry_in = ?HOLD_OFF, "the API server refused the CRLs' ConfigMap; trying again later, fix meshca's RBAC or the ConfigMap meanwhile");
                mirror.not_before = Some(now + HOLD_OFF);
            }
        }
    }
}

/// What the leader last wrote to the ConfigMap, and when it may write
/// after a refusal.
#[derive(Default)]
struct Mirror {
    written: Option<Arc<Published>>,
    not_before: Option<tokio::time::Instant>,
}

/// How long a write the API server refused for good waits.
const HOLD_OFF: Duration = Duration::from_secs(300);

/// A request the provider refused for good, under the signer generation
/// that refused it.
struct Refused {
    request: CrlRequest,
    generation: u64,
}

fn replace(current: &mut Crls, new: Crls) -> bool {
    if *current == new {
        return false;
    }
    *current = new;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshca_provider::revocation::Serial;

    fn at(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + s).expect("as written")
    }

    fn revoked(serial: &str) -> Revoked {
        Revoked {
            serial: Serial::parse(serial).expect("as written"),
            revoked_at: at(0),
        }
    }

    #[test]
    fn lists_are_made_again_when_what_they_list_changes_or_at_half_their_time() {
        let period = Duration::from_secs(600);
        let first = next_request(None, vec![], at(0), period).expect("the first lists");
        assert_eq!(first.next_update, at(600));
        assert!(first.this_update < at(0), "backdated for clock skew");
        assert_eq!(next_request(Some(&first), vec![], at(200), period), None);
        let revoking = next_request(Some(&first), vec![revoked("0a")], at(200), period)
            .expect("a new serial makes new lists");
        assert_eq!(revoking.revoked, [revoked("0a")]);
        assert_eq!(revoking.next_update, at(800));
        let half = first.this_update + (first.next_update - first.this_update) / 2;
        assert!(next_request(Some(&first), vec![], half, period).is_some());
        assert!(revoking.number() > first.number());
    }
}
