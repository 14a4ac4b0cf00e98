//! `meshca certificate revoke --serial S`: list a certificate in every
//! CRL meshca publishes, until it expires. Running daemons read the
//! ledger within seconds.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, FromArgMatches};
use futures_util::future::BoxFuture;
use meshca_provider::revocation::Serial;
use meshca_provider::{ProviderKind, CLOCK_SKEW_ALLOWANCE};
use time::OffsetDateTime;

use super::ledger::{Entry, LedgerStore, Revoking};
use crate::feature::{Command, LoadSettings, Settings, EX_USAGE};

/// `meshca certificate`, with `revoke`.
pub const CERTIFICATE: Command = Command {
    under: None,
    define,
    run,
};

#[derive(Args)]
struct RevokeArgs {
    /// The certificate's serial number in hexadecimal, as `openssl x509
    /// -serial` prints it or the signing API's `serial` field (colons
    /// allowed).
    #[arg(long)]
    serial: String,
    /// Why, for the ledger and the daemon's log.
    #[arg(long)]
    reason: Option<String>,
    /// Config file naming where the ledger is.
    #[arg(short, long)]
    config: Option<PathBuf>,
}

fn define() -> clap::Command {
    clap::Command::new("certificate")
        .about("Certificates meshca issued")
        .subcommand_required(true)
        .subcommand(RevokeArgs::augment_args(clap::Command::new("revoke").about(
            "Revoke a certificate: every CRL meshca publishes lists it from its next update (within seconds) until it expires. Keeps it in the state directory, or the ConfigMap meshca-revocations in a cluster",
        )))
}

fn run(matches: clap::ArgMatches, load: LoadSettings) -> BoxFuture<'static, ExitCode> {
    Box::pin(async move {
        let Some(("revoke", matches)) = matches.subcommand() else {
            eprintln!("error: meshca certificate needs a command: revoke");
            return ExitCode::from(EX_USAGE);
        };
        let args = RevokeArgs::from_arg_matches(matches).unwrap_or_else(|e| e.exit());
        let serial = match Serial::parse(&args.serial) {
            Ok(serial) => serial,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EX_USAGE);
            }
        };
        let path = args.config.clone();
        match tokio::task::spawn_blocking(move || load(path.as_deref())).await {
            Ok(Ok(settings)) => revoke(settings, serial, args.reason).await,
            Ok(Err(code)) => code,
            Err(e) => {
                eprintln!("error: reading the configuration was interrupted: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn revoke(settings: Box<dyn Settings>, serial: Serial, reason: Option<String>) -> ExitCode {
    let common = settings.common();
    match common.provider.map(|p| p.kind()) {
        Some(ProviderKind::Tresor | ProviderKind::Vault) => {}
        Some(other) => {
            eprintln!("error: the {other} provider has no revocation (see docs/revocation.md); deny the identity instead: meshca identity deny NAMESPACE/SERVICE_ACCOUNT");
            return ExitCode::from(EX_USAGE);
        }
        None => {
            eprintln!("error: the config names no valid provider");
            return ExitCode::from(EX_USAGE);
        }
    }
    let client = match crate::feature::cluster(&common).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let store = LedgerStore::new(common.state_dir, client);
    let now = OffsetDateTime::now_utc();
    let entry = Entry {
        serial: serial.to_string(),
        revoked_at: now,
        // No certificate issued before now lives longer than max_ttl
        // (plus its backdating).
        listed_until: now + common.lifetimes.max_ttl + 2 * CLOCK_SKEW_ALLOWANCE,
        by: std::env::var("USER").unwrap_or_else(|_| "an unnamed user".into()),
        reason,
    };
    let until = entry.listed_until;
    match store.revoke(entry).await {
        Ok(Revoking::Revoked) => {
            eprintln!(
                "revoked {serial} in {}; the CRLs list it from their next update (within seconds) until {until}",
                store.describe()
            );
            ExitCode::SUCCESS
        }
        Ok(Revoking::AlreadyRevoked) => {
            eprintln!("{serial} was already revoked ({})", store.describe());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", crate::report::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
