//! The daemon's side of the index: the issuer tells the [`Recorder`] of
//! every certificate it hands out ([`RecordIssued`], on the request's
//! path: it only takes note), and its task writes what changed every
//! second, removes its pages once their window has passed, and (on the
//! leader, or the only daemon of a state directory) every writer's.
//!
//! A certificate is in the index within a second of being issued; the
//! pages not yet written are written once more when the daemon stops. A
//! process killed outright loses at most its last second, which an
//! identity's revocation covers by reading the index again after its
//! deny has taken effect (see `cli`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use meshca_provider::revocation::Serial;
use meshca_provider::{Issued, CLOCK_SKEW_ALLOWANCE};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::page::{self, Page, Record, PAGE_RECORDS};
use super::store::IndexStore;
use crate::cluster::FINAL_RETRY;
use crate::issuer::{Frontend, RecordIssued};
use crate::report::error_chain;
use crate::store::StoreError;

/// How often what changed is written.
pub const FLUSH: Duration = Duration::from_secs(1);
/// How often every writer's passed pages are looked for.
const SWEEP: Duration = Duration::from_secs(300);
/// Records held in memory at most (this replica's live certificates):
/// past it, new certificates are counted as not indexed.
const HELD_MAX: usize = 500_000;
/// The longest the last write may take when the daemon stops.
const LAST_WRITE: Duration = Duration::from_secs(5);

/// This replica's pages, held until their window passes: pure.
#[derive(Debug)]
pub struct Pages {
    writer: String,
    width: i64,
    pages: BTreeMap<(i64, u32), Held>,
    held: usize,
}

#[derive(Debug)]
struct Held {
    page: Page,
    /// Records of `page` known written.
    written: usize,
}

/// A page to write: its name, contents, and what to tell [`Pages`] when
/// it is written.
pub struct ToWrite {
    /// Its name.
    pub name: String,
    /// Its contents now.
    pub page: Page,
    key: (i64, u32),
}

impl Pages {
    /// No pages yet, for `writer` (this start of this replica) with
    /// windows `width` seconds wide.
    pub fn new(writer: String, width: i64) -> Self {
        Self {
            writer,
            width,
            pages: BTreeMap::new(),
            held: 0,
        }
    }

    /// Take note of `record`; `false` when [`HELD_MAX`] records are held
    /// already.
    pub fn add(&mut self, record: Record) -> bool {
        if self.held >= HELD_MAX {
            return false;
        }
        let until = page::window_end(record.not_after, self.width);
        let last = self
            .pages
            .range((until, 0)..=(until, u32::MAX))
            .next_back()
            .map(|(k, held)| (k.1, held.page.records.len()));
        let part = match last {
            Some((part, len)) if len >= PAGE_RECORDS => part + 1,
            Some((part, _)) => part,
            None => 0,
        };
        let held = self.pages.entry((until, part)).or_insert_with(|| Held {
            page: Page {
                until,
                records: Vec::new(),
            },
            written: 0,
        });
        held.page.records.push(record);
        self.held += 1;
        true
    }

    /// The pages with records not yet written.
    pub fn to_write(&self) -> Vec<ToWrite> {
        self.pages
            .iter()
            .filter(|(_, h)| h.page.records.len() > h.written)
            .map(|(&key, h)| ToWrite {
                name: page::name(key.0, &self.writer, key.1),
                page: h.page.clone(),
                key,
            })
            .collect()
    }

    /// `written` is stored.
    pub fn written(&mut self, written: &ToWrite) {
        if let Some(h) = self.pages.get_mut(&written.key) {
            h.written = h.written.max(written.page.records.len());
        }
    }

    /// Records taken note of and not yet written.
    pub fn unwritten(&self) -> usize {
        self.pages
            .values()
            .map(|h| h.page.records.len() - h.written)
            .sum()
    }

    /// Records held.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Forget the pages whose window passed before `now` (with the clock
    /// skew allowed), and return their names to remove.
    pub fn expire(&mut self, now: i64) -> Vec<String> {
        let passed: Vec<_> = self
            .pages
            .keys()
            .filter(|(until, _)| passed(*until, now))
            .copied()
            .collect();
        passed
            .into_iter()
            .filter_map(|key| {
                let held = self.pages.remove(&key)?;
                self.held -= held.page.records.len();
                Some(page::name(key.0, &self.writer, key.1))
            })
            .collect()
    }
}

/// Whether a page whose window ends `until` can go at `now`: no
/// certificate it lists is valid any more, even to a clock behind.
pub fn passed(until: i64, now: i64) -> bool {
    until + 2 * i64::try_from(CLOCK_SKEW_ALLOWANCE.as_secs()).unwrap_or(i64::MAX / 4) < now
}

/// Takes note of every certificate issued, for its task to write.
#[derive(Debug)]
pub struct Recorder {
    pages: Mutex<Pages>,
    metrics: super::IndexMetrics,
}

impl Recorder {
    /// Pages named for `writer`, windows `width` seconds wide.
    pub fn new(writer: String, width: i64, metrics: super::IndexMetrics) -> Self {
        Self {
            pages: Mutex::new(Pages::new(writer, width)),
            metrics,
        }
    }

    fn pages(&self) -> std::sync::MutexGuard<'_, Pages> {
        self.pages.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RecordIssued for Recorder {
    fn issued(&self, frontend: Frontend, issued: &Issued) {
        let identity = issued.identity();
        let record = Serial::parse(issued.serial()).map(|serial| Record {
            serial,
            identity: format!("{}/{}", identity.namespace(), identity.service_account()),
            frontend: frontend.as_str().to_owned(),
            issued_at: OffsetDateTime::now_utc().unix_timestamp(),
            not_after: issued.not_after().unix_timestamp(),
        });
        let kept = match record {
            Ok(record) => self.pages().add(record),
            Err(_) => false,
        };
        if !kept {
            self.metrics.not_indexed.inc();
            tracing::error!(serial = issued.serial(), identity = %identity, held = HELD_MAX, "a certificate was issued but not indexed: it can be revoked by its serial only");
        }
    }
}

/// What the task does between ticks.
struct Writing {
    recorder: Arc<Recorder>,
    store: IndexStore,
    /// Whether this replica sweeps every writer's passed pages: the
    /// leader in a cluster, always without one.
    sweeper: Option<watch::Receiver<bool>>,
    /// Writes wait until then after a failure.
    not_before: Option<tokio::time::Instant>,
    /// Failures in a row.
    failures: u32,
}

/// Write the index every [`FLUSH`] until `token` is cancelled, then once
/// more.
pub async fn run(
    recorder: Arc<Recorder>,
    store: IndexStore,
    leader: Option<watch::Receiver<bool>>,
    token: CancellationToken,
) {
    let mut writing = Writing {
        recorder,
        store,
        sweeper: leader,
        not_before: None,
        failures: 0,
    };
    let mut flush = tokio::time::interval(FLUSH);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(SWEEP);
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            _ = flush.tick() => writing.flush().await,
            _ = sweep.tick() => writing.sweep().await,
            () = became_leader(&mut writing.sweeper) => writing.sweep().await,
        }
    }
    writing.not_before = None;
    if tokio::time::timeout(LAST_WRITE, writing.flush())
        .await
        .is_err()
    {
        tracing::error!(unwritten = writing.recorder.pages().unwritten(), "stopped before the certificate index was written: the certificates issued last can be revoked by serial only");
    }
}

impl Writing {
    async fn flush(&mut self) {
        if self
            .not_before
            .is_some_and(|t| tokio::time::Instant::now() < t)
        {
            return;
        }
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let gone = self.recorder.pages().expire(now);
        for name in gone {
            if let Err(e) = self.store.remove(&name).await {
                tracing::warn!(error = %error_chain(&e), page = name, "failed to remove a passed page of the certificate index; the sweep will");
            }
        }
        let to_write = self.recorder.pages().to_write();
        for page in to_write {
            match self.store.write(&page.name, &page.page).await {
                Ok(()) => {
                    self.recorder.pages().written(&page);
                    if std::mem::take(&mut self.failures) > 0 {
                        tracing::info!(place = %self.store.describe(), "the certificate index is written again");
                    }
                }
                Err(e) => {
                    self.failed(&e);
                    break;
                }
            }
        }
        let pages = self.recorder.pages();
        let metrics = &self.recorder.metrics;
        metrics.unwritten.set(to_gauge(pages.unwritten()));
        metrics.held.set(to_gauge(pages.held()));
    }

    /// Wait as the failure says before writing again: the API server's
    /// Retry-After or a backoff, [`FINAL_RETRY`] for what an operator
    /// must fix.
    fn failed(&mut self, e: &super::IndexError) {
        self.failures = self.failures.saturating_add(1);
        let delay = match e {
            super::IndexError::Store(StoreError::Kubernetes(k)) => {
                k.refusal().retry_delay(self.failures)
            }
            super::IndexError::Store(StoreError::Conflict(_)) => FLUSH,
            _ => FINAL_RETRY,
        };
        self.not_before = Some(tokio::time::Instant::now() + delay);
        if delay >= FINAL_RETRY {
            tracing::error!(error = %error_chain(e), place = %self.store.describe(), retry_in = ?delay, "the certificate index cannot be written; fix meshca's RBAC or the state directory (certificates issued meanwhile are held and written then)");
        } else if self.failures == 1 {
            tracing::warn!(error = %error_chain(e), place = %self.store.describe(), retry_in = ?delay, "failed to write the certificate index; trying again (certificates issued meanwhile are held)");
        }
    }

    /// Remove every writer's pages whose window has passed: the earlier
    /// starts' and other replicas', which no one else would.
    async fn sweep(&mut self) {
        if self
            .sweeper
            .as_ref()
            .is_some_and(|leader| !*leader.borrow())
        {
            return;
        }
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let names = match self.store.names().await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "failed to list the certificate index to remove its passed pages");
                return;
            }
        };
        for name in names {
            if page::until_of(&name).is_some_and(|until| passed(until, now)) {
                match self.store.remove(&name).await {
                    Ok(()) => tracing::debug!(
                        page = name,
                        "removed a passed page of the certificate index"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %error_chain(&e), page = name, "failed to remove a passed page of the certificate index")
                    }
                }
            }
        }
    }
}

/// Returns when this replica becomes the leader; never without a
/// cluster.
async fn became_leader(leader: &mut Option<watch::Receiver<bool>>) {
    match leader {
        Some(rx) => {
            while rx.changed().await.is_ok() {
                if *rx.borrow_and_update() {
                    return;
                }
            }
            std::future::pending().await
        }
        None => std::future::pending().await,
    }
}

fn to_gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(serial: u32, not_after: i64) -> Record {
        Record {
            serial: Serial::parse(&format!("{serial:x}0")).expect("a serial"),
            identity: "shop/web".into(),
            frontend: "api".into(),
            issued_at: not_after - 100,
            not_after,
        }
    }

    #[test]
    fn records_go_to_their_window_and_a_full_page_starts_the_next_part() {
        let mut pages = Pages::new("w".into(), 600);
        assert!(pages.add(record(1, 1_000)));
        assert!(pages.add(record(2, 1_300)));
        let names: Vec<_> = pages.to_write().into_iter().map(|w| w.name).collect();
        assert_eq!(
            names,
            [
                "meshca-certificates-1200-w-0",
                "meshca-certificates-1800-w-0"
            ]
        );
        for n in 0..PAGE_RECORDS {
            pages.add(record(10 + u32::try_from(n).expect("small"), 1_500));
        }
        let parts: Vec<_> = pages
            .to_write()
            .into_iter()
            .map(|w| (w.name, w.page.records.len()))
            .collect();
        assert_eq!(
            parts,
            [
                ("meshca-certificates-1200-w-0".into(), 1),
                ("meshca-certificates-1800-w-0".into(), PAGE_RECORDS),
                ("meshca-certificates-1800-w-1".into(), 1),
            ]
        );
    }

    #[test]
    fn only_what_changed_since_a_write_is_written_again() {
        let mut pages = Pages::new("w".into(), 600);
        pages.add(record(1, 1_000));
        let first = pages.to_write();
        pages.add(record(2, 1_100));
        // The write of the first snapshot lands after the second record
        // came: the page is still due.
        pages.written(&first[0]);
        assert_eq!(pages.unwritten(), 1);
        let second = pages.to_write();
        assert_eq!(second[0].page.records.len(), 2);
        pages.written(&second[0]);
        assert!(pages.to_write().is_empty());
        assert_eq!(pages.unwritten(), 0);
    }

    #[test]
    fn pages_leave_once_their_window_has_passed_for_every_clock() {
        let mut pages = Pages::new("w".into(), 600);
        pages.add(record(1, 1_000));
        pages.add(record(2, 2_000));
        let skew = 2 * i64::try_from(CLOCK_SKEW_ALLOWANCE.as_secs()).expect("small");
        assert!(
            pages.expire(1_200 + skew).is_empty(),
            "not yet past the skew"
        );
        assert_eq!(pages.expire(1_201 + skew), ["meshca-certificates-1200-w-0"]);
        assert_eq!(pages.held(), 1);
        assert_eq!(pages.to_write().len(), 1, "the other is still due");
    }

    #[test]
    fn past_the_bound_a_record_is_refused_not_held() {
        let mut pages = Pages::new("w".into(), 600);
        pages.held = HELD_MAX;
        assert!(!pages.add(record(1, 1_000)));
        assert!(pages.to_write().is_empty());
    }
}
