//! An identity's certificates, from the certificate index: all revoked at
//! once (and the identity denied, so that it gets no new one), or listed.

use std::process::ExitCode;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::feature::Common;
use crate::features::revocation::index::{self, IndexStore, Record};
use crate::features::revocation::ledger::LedgerStore;
use crate::features::revocation::revoking::{Asked, ByIdentity, Progress, Revoker};
use crate::report::error_chain;

/// `revoke --identity`: deny, revoke, wait, revoke what came meanwhile,
/// printing each certificate revoked.
pub async fn revoke(revoker: &Revoker, what: &ByIdentity, asked: &Asked) -> ExitCode {
    let progress = |step: Progress<'_>| {
        match step {
        Progress::Denied(place) => eprintln!(
            "denied {} in {place}: it gets no new certificate",
            what.identity()
        ),
        Progress::Settling(wait) => eprintln!(
            "waiting {wait:?} for the daemons to apply the deny and index what they issued meanwhile"
        ),
        Progress::Revoked(record) => println!("{}", line(record, true)),
    }
    };
    match revoker.identity(what, asked, &progress).await {
        Ok(done) => {
            eprintln!(
                "revoked {} certificate(s) of {} in {}; the CRLs list them from their next update (within seconds)",
                done.revoked.len(),
                what.identity(),
                revoker.ledger().describe()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
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
