//! One page of the index of live certificates: what one start of one
//! replica issued whose NotAfter falls in one window of time. A page
//! is written by its writer alone (no conflicts between replicas), only
//! while its window is the current one (certificates issued now all end
//! about `max_ttl` from now), and deleted whole once its window has
//! passed: the index stays as large as the certificates alive, and
//! expiry is a delete, never a rewrite.
//!
//! Pure: names, windows, the stored form and its strict reading.

use meshca_provider::revocation::Serial;
use serde::{Deserialize, Serialize};

/// Every page's name starts with this: a ConfigMap's name in a cluster, a
/// file's (with `.json`) in `<state_dir>/certificates/`.
pub const PREFIX: &str = "meshca-certificates-";

/// Records in a page before its writer starts the next part: about
/// 400 KB, well within a ConfigMap's 1 MiB.
pub const PAGE_RECORDS: usize = 4_000;

/// Windows per longest lifetime: how many pages one writer keeps alive.
const WINDOWS_PER_TTL: i64 = 144;
/// The narrowest window, so that short lifetimes do not mean many small
/// pages.
const MIN_WINDOW_SECONDS: i64 = 600;

/// Why the index cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// It was read but is not a page.
    #[error("the certificate index page {place} does not parse; repair or remove it (certificates it lists cannot be revoked by identity until then)")]
    Corrupt {
        /// Where it is.
        place: String,
        /// What is wrong.
        #[source]
        source: serde_json::Error,
    },
    /// A record breaks the page's rules.
    #[error("the certificate index page {place} holds a record that {why}")]
    BadRecord {
        /// Where it is.
        place: String,
        /// Which rule.
        why: String,
    },
}

/// One certificate issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its serial.
    pub serial: Serial,
    /// Whose it is: `namespace/service-account`.
    pub identity: String,
    /// Which way it was asked for (`api`, `istio`, …).
    pub frontend: String,
    /// When it was issued (Unix seconds).
    pub issued_at: i64,
    /// Its NotAfter (Unix seconds).
    pub not_after: i64,
}

/// A record as stored: a row, so that a page spends its bytes on what
/// it records.
#[derive(Serialize, Deserialize)]
struct Row(String, String, String, i64, i64);

/// A page as stored.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    /// The end of its window: no record outlives it.
    until: i64,
    records: Vec<Row>,
}

/// The records of one window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// The end of its window (Unix seconds): every record's NotAfter is
    /// before it, so the page can go once it has passed.
    pub until: i64,
    /// What it records.
    pub records: Vec<Record>,
}

/// The width of a window (seconds) when certificates live at most
/// `max_ttl_seconds`.
pub fn window(max_ttl_seconds: i64) -> i64 {
    (max_ttl_seconds / WINDOWS_PER_TTL).max(MIN_WINDOW_SECONDS)
}

/// The end of the window of `not_after`.
pub fn window_end(not_after: i64, width: i64) -> i64 {
    (not_after.div_euclid(width) + 1) * width
}

/// The name of part `part` of `writer`'s page for the window ending
/// `until`: a ConfigMap name (lower-case, digits and dashes).
pub fn name(until: i64, writer: &str, part: u32) -> String {
    format!("{PREFIX}{until}-{writer}-{part}")
}

/// The end of the window a page's name says, `None` when `name` is not a
/// page's.
pub fn until_of(name: &str) -> Option<i64> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

impl Page {
    /// The page as stored: compact JSON.
    ///
    /// # Errors
    /// The encoder's, which a page of strings and integers never meets.
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&Stored {
            until: self.until,
            records: self
                .records
                .iter()
                .map(|r| {
                    Row(
                        r.serial.to_string(),
                        r.identity.clone(),
                        r.frontend.clone(),
                        r.issued_at,
                        r.not_after,
                    )
                })
                .collect(),
        })
    }

    /// The page in `bytes`, read from `place`: every record checked, so
    /// that a damaged page is an error, never certificates forgotten.
    ///
    /// # Errors
    /// [`PageError`].
    pub fn parse(bytes: &[u8], place: &str) -> Result<Self, PageError> {
        let stored: Stored =
            serde_json::from_slice(bytes).map_err(|source| PageError::Corrupt {
                place: place.to_owned(),
                source,
            })?;
        let bad = |why: String| PageError::BadRecord {
            place: place.to_owned(),
            why,
        };
        let records = stored
            .records
            .into_iter()
            .map(|Row(serial, identity, frontend, issued_at, not_after)| {
                let parsed = Serial::parse(&serial)
                    .ok()
                    .filter(|s| s.to_string() == serial)
                    .ok_or_else(|| bad(format!("has the serial {serial:?}, not lower-case hexadecimal without leading zeros")))?;
                if !is_identity(&identity) {
                    return Err(bad(format!("names {identity:?}, not namespace/service-account")));
                }
                if frontend.is_empty() || not_after <= issued_at || not_after > stored.until {
                    return Err(bad(format!("for {serial} has no frontend, ends before it was issued or after the page's window ({issued_at}..{not_after}, window until {})", stored.until)));
                }
                Ok(Record {
                    serial: parsed,
                    identity,
                    frontend,
                    issued_at,
                    not_after,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            until: stored.until,
            records,
        })
    }
}

fn is_identity(text: &str) -> bool {
    text.split_once('/')
        .is_some_and(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(serial: &str, not_after: i64) -> Record {
        Record {
            serial: Serial::parse(serial).expect("a serial"),
            identity: "shop/web".into(),
            frontend: "api".into(),
            issued_at: not_after - 100,
            not_after,
        }
    }

    #[test]
    fn windows_follow_the_longest_lifetime_with_a_floor() {
        assert_eq!(window(86_400), 600, "24 h: 10 minutes");
        assert_eq!(window(3_600), 600, "never narrower than 10 minutes");
        assert_eq!(window(30 * 86_400), 18_000, "30 days: 144 windows of 5 h");
        assert_eq!(window_end(1_200, 600), 1_800, "the end is after the start");
        assert_eq!(window_end(1_799, 600), 1_800);
        assert_eq!(
            window_end(1_800, 600),
            2_400,
            "a NotAfter on an edge belongs to the next"
        );
    }

    #[test]
    fn a_name_says_its_window_and_nothing_else_is_a_page() {
        let n = name(1_800_000_600, "0a1b2c3d", 2);
        assert_eq!(n, "meshca-certificates-1800000600-0a1b2c3d-2");
        assert_eq!(until_of(&n), Some(1_800_000_600));
        assert_eq!(until_of("meshca-crl"), None);
        assert_eq!(until_of("meshca-certificates-x-1-0"), None);
    }

    #[test]
    fn a_page_reads_back_what_was_written() {
        let page = Page {
            until: 2_000,
            records: vec![record("0a", 1_900), record("7f3c", 1_950)],
        };
        let bytes = page.encode().expect("encodes");
        assert_eq!(Page::parse(&bytes, "here").expect("parses"), page);
    }

    #[test]
    fn a_damaged_page_is_an_error_naming_it() {
        let corrupt =
            Page::parse(b"{\"until\":1,\"records\":[", "/state/p.json").expect_err("refused");
        assert!(matches!(corrupt, PageError::Corrupt { .. }), "{corrupt:?}");
        assert!(corrupt.to_string().contains("/state/p.json"));
        let row = |serial: &str, identity: &str, frontend: &str, at: i64, until: i64| {
            format!(
                r#"{{"until":2000,"records":[["{serial}","{identity}","{frontend}",{at},{until}]]}}"#
            )
        };
        assert!(Page::parse(row("0a", "shop/web", "api", 1, 1_999).as_bytes(), "p").is_ok());
        for (bad, what) in [
            (row("0A", "shop/web", "api", 1, 1_999), "upper-case serial"),
            (row("000a", "shop/web", "api", 1, 1_999), "leading zeros"),
            (row("zz", "shop/web", "api", 1, 1_999), "not hexadecimal"),
            (row("0a", "web", "api", 1, 1_999), "no namespace"),
            (row("0a", "shop/web/x", "api", 1, 1_999), "two slashes"),
            (row("0a", "shop/web", "", 1, 1_999), "no frontend"),
            (
                row("0a", "shop/web", "api", 1_999, 1_000),
                "ends before issued",
            ),
            (
                row("0a", "shop/web", "api", 1, 2_001),
                "outlives its window",
            ),
        ] {
            let e = Page::parse(bad.as_bytes(), "p").expect_err(what);
            assert!(matches!(e, PageError::BadRecord { .. }), "{what}: {e:?}");
        }
    }
}
