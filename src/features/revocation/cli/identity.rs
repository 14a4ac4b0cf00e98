//! An identity's certificates, from the certificate index: all revoked at
//! once (and the identity denied, so that it gets no new one), or listed.

use std::process::ExitCode;
use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::entry;
use crate::feature::Common;
use crate::features::revocation::index::{self, IndexStore, Record};
use crate::features::revocation::ledger::LedgerStore;
use crate::report::error_chain;

/// How long after denying an identity its index is read again: the
/// daemons apply a deny within a second (the file's recheck; a
/// ConfigMap's watch at once), a signature begun before it ends within
/// seconds, and what they issued is indexed within [`index::FLUSH`].
const SETTLE: Duration =
    Duration::from_secs(crate::watched::RECHECK_AFTER.as_secs() + 3 + index::FLUSH.as_secs());

/// `namespace/service-account`, checked as Kubernetes names them.
///
/// # Errors
/// What is wrong with `text`.
pub fn parse(text: &str) -> Result<(&str, &str), String> {
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

/// `revoke --identity`, as asked.
pub struct Revoke {
    identity: String,
    issued_before: Option<OffsetDateTime>,
    allow_reissue: bool,
}

impl Revoke {
    /// The command's arguments, checked.
    ///
    /// # Errors
    /// What is wrong with them.
    pub fn of(
        identity: &str,
        issued_before: Option<&str>,
        allow_reissue: bool,
    ) -> Result<Self, String> {
        parse(identity)?;
        let issued_before = issued_before
            .map(|t| {
                OffsetDateTime::parse(t, &Rfc3339)
                    .map_err(|e| format!("--issued-before {t:?} is not an RFC 3339 time: {e}"))
            })
            .transpose()?;
        Ok(Self {
            identity: identity.to_owned(),
            issued_before,
            allow_reissue,
        })
    }

    /// Deny the identity (unless allowed to reissue), revoke its live
    /// certificates, and once the deny is in force, those issued meanwhile.
    pub async fn run(self, common: &Common<'_>, reason: Option<String>) -> ExitCode {
        let cluster = match crate::feature::cluster(common).await {
            Ok(client) => client,
            Err(code) => return code,
        };
        let index = IndexStore::new(common.state_dir, cluster.clone());
        let ledger = LedgerStore::new(common.state_dir, cluster.clone());
        if !self.allow_reissue {
            let (ns, sa) = parse(&self.identity).unwrap_or_default();
            match crate::issuer::deny_configmap::change_where_kept(
                common.denied_file,
                cluster,
                (ns, sa),
                true,
            )
            .await
            {
                Ok((_, place)) => eprintln!(
                    "denied {} in {place}: it gets no new certificate",
                    self.identity
                ),
                Err(e) => {
                    eprintln!(
                        "error: nothing revoked: denying {} failed: {e}",
                        self.identity
                    );
                    return ExitCode::FAILURE;
                }
            }
        }
        // Without a deny, what is issued from now on stays valid.
        let before = self
            .issued_before
            .or(self.allow_reissue.then(OffsetDateTime::now_utc));
        let mut revoked = match self
            .revoke_listed(common, (&index, &ledger), before, &reason)
            .await
        {
            Ok(n) => n,
            Err(code) => return code,
        };
        if !self.allow_reissue && self.issued_before.is_none() {
            eprintln!("waiting {SETTLE:?} for the daemons to apply the deny and index what they issued meanwhile");
            tokio::time::sleep(SETTLE).await;
            revoked += match self
                .revoke_listed(common, (&index, &ledger), None, &reason)
                .await
            {
                Ok(n) => n,
                Err(code) => return code,
            };
        }
        eprintln!(
            "revoked {revoked} certificate(s) of {} in {}; the CRLs list them from their next update (within seconds)",
            self.identity,
            ledger.describe()
        );
        ExitCode::SUCCESS
    }

    /// Revoke the identity's live certificates issued before `before`
    /// (all when `None`); returns how many were not revoked already.
    async fn revoke_listed(
        &self,
        common: &Common<'_>,
        (index, ledger): (&IndexStore, &LedgerStore),
        before: Option<OffsetDateTime>,
        reason: &Option<String>,
    ) -> Result<usize, ExitCode> {
        let now = OffsetDateTime::now_utc();
        let records = index::certificates_of(index, &self.identity, now.unix_timestamp())
            .await
            .map_err(|e| {
                eprintln!("error: nothing more revoked: {}", error_chain(&e));
                ExitCode::FAILURE
            })?;
        let chosen: Vec<&Record> = records
            .iter()
            .filter(|r| before.is_none_or(|t| r.issued_at < t.unix_timestamp()))
            .collect();
        let entries = chosen
            .iter()
            .map(|r| entry(common, &r.serial, now, reason.clone()))
            .collect();
        let revoked = ledger.revoke_all(entries).await.map_err(|e| {
            eprintln!("error: nothing more revoked: {}", error_chain(&e));
            ExitCode::FAILURE
        })?;
        for r in chosen {
            println!("{}", line(r, true));
        }
        Ok(revoked)
    }
}

/// `list --identity`: the identity's live certificates and whether each
/// is revoked, one per line.
pub async fn list(common: &Common<'_>, identity: &str) -> ExitCode {
    let cluster = match crate::feature::cluster(common).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let index = IndexStore::new(common.state_dir, cluster.clone());
    let now = OffsetDateTime::now_utc();
    let (records, ledger) = match tokio::try_join!(
        async {
            index::certificates_of(&index, identity, now.unix_timestamp())
                .await
                .map_err(|e| error_chain(&e))
        },
        async {
            LedgerStore::new(common.state_dir, cluster)
                .load()
                .await
                .map_err(|e| error_chain(&e))
        },
    ) {
        Ok(read) => read,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if records.is_empty() {
        eprintln!("no live certificate of {identity} in {}", index.describe());
    } else {
        println!("SERIAL\tFRONTEND\tISSUED\tNOT_AFTER\tREVOKED");
    }
    for r in &records {
        println!("{}", line(r, ledger.lists(&r.serial.to_string(), now)));
    }
    ExitCode::SUCCESS
}

fn line(r: &Record, revoked: bool) -> String {
    let at = |t: i64| {
        OffsetDateTime::from_unix_timestamp(t)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| t.to_string())
    };
    format!(
        "{}\t{}\t{}\t{}\t{}",
        r.serial,
        r.frontend,
        at(r.issued_at),
        at(r.not_after),
        if revoked { "yes" } else { "no" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_two_kubernetes_names() {
        assert_eq!(parse("shop/web"), Ok(("shop", "web")));
        assert!(parse("shop.a/web-1").is_ok());
        for bad in [
            "shop",
            "/web",
            "shop/",
            "shop/web/x",
            "Shop/web",
            "shop/w b",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn issued_before_is_an_rfc3339_time() {
        assert!(Revoke::of("shop/web", Some("2026-12-06T10:00:00Z"), false).is_ok());
        let e = Revoke::of("shop/web", Some("yesterday"), false)
            .err()
            .expect("refused");
        assert!(e.contains("--issued-before"), "{e}");
    }
}
