//! `meshca certificate revoke --serial S | --identity NS/SA` and `meshca
//! certificate list --identity NS/SA`: list certificates in every CRL
//! meshca publishes until they expire, one by its serial or every live
//! one of an identity (from the certificate index). Running daemons read
//! the ledger within seconds.

mod identity;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, FromArgMatches};
use futures_util::future::BoxFuture;
use meshca_provider::revocation::Serial;
use meshca_provider::ProviderKind;

use super::ledger::Revoking;
use super::revoking::{parse_identity, Asked, ByIdentity, Revoker};
use crate::feature::{Command, LoadSettings, Settings, EX_USAGE};

/// `meshca certificate`, with `revoke` and `list`.
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
    #[arg(
        long,
        required_unless_present = "identity",
        conflicts_with = "identity"
    )]
    serial: Option<String>,
    /// Every live certificate of this identity (namespace/service-account),
    /// from the certificate index; the identity is denied too, unless
    /// --allow-reissue.
    #[arg(long, value_name = "NS/SA")]
    identity: Option<String>,
    /// Only the identity's certificates issued before this time (RFC 3339).
    #[arg(long, requires = "identity", value_name = "RFC3339")]
    issued_before: Option<String>,
    /// Do not deny the identity: it may get new certificates at once.
    #[arg(long, requires = "identity")]
    allow_reissue: bool,
    /// Why, for the ledger and the daemon's log.
    #[arg(long)]
    reason: Option<String>,
    /// Config file naming where the ledger is.
    #[arg(short, long)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct ListArgs {
    /// The identity (namespace/service-account).
    #[arg(long, value_name = "NS/SA")]
    identity: String,
    /// Config file naming where the index is.
    #[arg(short, long)]
    config: Option<PathBuf>,
}

fn define() -> clap::Command {
    clap::Command::new("certificate")
        .about("Certificates meshca issued")
        .subcommand_required(true)
        .subcommand(RevokeArgs::augment_args(clap::Command::new("revoke").about(
            "Revoke a certificate, or every live certificate of an identity: every CRL meshca publishes lists them from its next update (within seconds) until they expire. Keeps them in the state directory, or the ConfigMap meshca-revocations in a cluster",
        )))
        .subcommand(ListArgs::augment_args(clap::Command::new("list").about(
            "The live certificates meshca issued to an identity, from the certificate index, and whether each is revoked",
        )))
}

fn run(matches: clap::ArgMatches, load: LoadSettings) -> BoxFuture<'static, ExitCode> {
    Box::pin(async move {
        match matches.subcommand() {
            Some(("revoke", matches)) => {
                let args = RevokeArgs::from_arg_matches(matches).unwrap_or_else(|e| e.exit());
                let what = match What::of(&args) {
                    Ok(what) => what,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(EX_USAGE);
                    }
                };
                match settings(load, args.config.clone()).await {
                    Ok(settings) => revoke(settings, what, args.reason).await,
                    Err(code) => code,
                }
            }
            Some(("list", matches)) => {
                let args = ListArgs::from_arg_matches(matches).unwrap_or_else(|e| e.exit());
                if let Err(e) = parse_identity(&args.identity) {
                    eprintln!("error: {e}");
                    return ExitCode::from(EX_USAGE);
                }
                match settings(load, args.config.clone()).await {
                    Ok(settings) => identity::list(&settings.common(), &args.identity).await,
                    Err(code) => code,
                }
            }
            _ => {
                eprintln!("error: meshca certificate needs a command: revoke or list");
                ExitCode::from(EX_USAGE)
            }
        }
    })
}

/// What `revoke` was asked to revoke.
enum What {
    Serial(Serial),
    Identity(ByIdentity),
}

impl What {
    fn of(args: &RevokeArgs) -> Result<Self, String> {
        match (&args.serial, &args.identity) {
            (Some(serial), _) => Ok(Self::Serial(
                Serial::parse(serial).map_err(|e| e.to_string())?,
            )),
            (None, Some(identity)) => Ok(Self::Identity(
                ByIdentity::of(identity, args.issued_before.as_deref(), args.allow_reissue)
                    .map_err(|e| e.replace("issued-before", "--issued-before"))?,
            )),
            (None, None) => Err("name a --serial or an --identity".into()),
        }
    }
}

async fn settings(
    load: LoadSettings,
    path: Option<PathBuf>,
) -> Result<Box<dyn Settings>, ExitCode> {
    match tokio::task::spawn_blocking(move || load(path.as_deref())).await {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: reading the configuration was interrupted: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

async fn revoke(settings: Box<dyn Settings>, what: What, reason: Option<String>) -> ExitCode {
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
    let cluster = match crate::feature::cluster(&common).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let cluster_client = cluster.as_ref().map(|(c, _)| c.clone());
    let revoker = Revoker::new(
        common.state_dir,
        common.denied_file,
        cluster,
        common.lifetimes.max_ttl,
    );
    let asked = Asked {
        by: crate::feature::author(cluster_client.as_ref()).await,
        reason,
    };
    match what {
        What::Serial(serial) => revoke_serial(&revoker, serial, &asked).await,
        What::Identity(what) => identity::revoke(&revoker, &what, &asked).await,
    }
}

async fn revoke_serial(revoker: &Revoker, serial: Serial, asked: &Asked) -> ExitCode {
    let ledger = revoker.ledger().describe();
    match revoker.serial(&serial, asked).await {
        Ok(Revoking::Revoked) => {
            eprintln!(
                "revoked {serial} in {ledger}; the CRLs list it from their next update (within seconds) until no certificate with it can be valid"
            );
            ExitCode::SUCCESS
        }
        Ok(Revoking::AlreadyRevoked) => {
            eprintln!("{serial} was already revoked ({ledger})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", crate::report::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
