//! The index of live certificates: serial, identity, frontend, when
//! issued and NotAfter of every certificate meshca issued that is still
//! valid, so that an identity's certificates can be revoked all at once
//! (`meshca certificate revoke --identity`) and listed (`meshca
//! certificate list`).
//!
//! Each start of each replica writes pages of its own (`page`: one per
//! window of NotAfter, no conflicts between writers) to the state
//! directory or, in a cluster, to ConfigMaps every replica and the CLI
//! read (`store`); `recorder` takes note of each certificate as the
//! issuer hands it out and writes within a second. The index is as large
//! as the certificates alive: a page goes once its window has passed.
//! It is trust state: a page that cannot be read stops the start and the
//! commands, never taken as fewer certificates.

mod page;
mod recorder;
mod store;

pub use page::{Page, Record, PREFIX};
pub use recorder::{run as write, Pages, Recorder, FLUSH};
pub use store::{IndexError, IndexStore, DIR};

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::Metrics;

/// The index's metrics.
#[derive(Clone, Debug)]
pub struct IndexMetrics {
    held: Gauge,
    unwritten: Gauge,
    not_indexed: Counter,
}

impl IndexMetrics {
    /// Register them with `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        Self {
            held: metrics.register(
                "certificate_index_records",
                "Live certificates this replica issued and keeps in the certificate index",
                Gauge::default(),
            ),
            unwritten: metrics.register(
                "certificate_index_unwritten_records",
                "Certificates issued and not yet written to the certificate index (the API server or state directory failing)",
                Gauge::default(),
            ),
            not_indexed: metrics.register(
                "certificates_not_indexed",
                "Certificates issued that the index could not take (past its bound): revocable by serial only",
                Counter::default(),
            ),
        }
    }
}

/// The live certificates of `identity` (`namespace/service-account`) at
/// `now` (Unix seconds), in the order they were issued.
///
/// # Errors
/// [`IndexError`]: a page cannot be read.
pub async fn certificates_of(
    store: &IndexStore,
    identity: &str,
    now: i64,
) -> Result<Vec<Record>, IndexError> {
    let mut records: Vec<Record> = store
        .pages()
        .await?
        .into_iter()
        .flat_map(|p| p.records)
        .filter(|r| r.identity == identity && r.not_after > now)
        .collect();
    records.sort_by(|a, b| {
        (a.issued_at, a.serial.as_bytes()).cmp(&(b.issued_at, b.serial.as_bytes()))
    });
    Ok(records)
}

/// The index's writer for this start: named by `writer`, windows sized
/// for certificates living at most `max_ttl`.
pub fn recorder(writer: &str, max_ttl: std::time::Duration, metrics: &Metrics) -> Arc<Recorder> {
    let max_ttl = i64::try_from(max_ttl.as_secs()).unwrap_or(i64::MAX);
    Arc::new(Recorder::new(
        writer.to_owned(),
        page::window(max_ttl),
        IndexMetrics::register(metrics),
    ))
}
