//! `meshca rotate jwt-key`: a new JWT signing key where the daemon keeps
//! them; a running daemon reads it within 30 s.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, FromArgMatches};
use futures_util::future::BoxFuture;

use tokio_util::sync::CancellationToken;

use super::{rotate_now, JwtSvidsFeature, KeyCustody, KeyStore};
use crate::custody::CustodyMetrics;
use crate::feature::{Command, LoadSettings, Settings, EX_USAGE};
use crate::metrics::Metrics;

/// `meshca rotate jwt-key`.
pub const ROTATE_KEY: Command = Command {
    under: Some("rotate"),
    define,
    run,
};

#[derive(Args)]
struct RotateArgs {
    /// Config file naming where the keys are.
    #[arg(short, long)]
    config: Option<PathBuf>,
}

fn define() -> clap::Command {
    RotateArgs::augment_args(clap::Command::new("jwt-key").about(
        "Publish a new JWT-SVID signing key now (in the state directory, or the Secret meshca-jwt-keys in a cluster). It signs once rotation.propagation_delay has passed (plus 30 s for daemons to read it); the key it replaces stays published until its last token expires",
    ))
}

fn run(matches: clap::ArgMatches, load: LoadSettings) -> BoxFuture<'static, ExitCode> {
    Box::pin(async move {
        let args = RotateArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let path = args.config.clone();
        match tokio::task::spawn_blocking(move || load(path.as_deref())).await {
            Ok(Ok(settings)) => rotate(settings).await,
            Ok(Err(code)) => code,
            Err(e) => {
                eprintln!("error: reading the configuration was interrupted: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn rotate(settings: Box<dyn Settings>) -> ExitCode {
    let common = settings.common();
    let jwt = settings.features().find::<JwtSvidsFeature>();
    let Some(jwt) = jwt.and_then(|f| f.config.as_ref()) else {
        eprintln!("error: JWT-SVIDs are not enabled in this config (jwt_svids.enabled)");
        return ExitCode::from(EX_USAGE);
    };
    let client = match crate::feature::cluster(&common).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let store = KeyStore::new(client, common.state_dir);
    let place = store.describe();
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let custody = match common.key_custody {
        Some(c) => {
            let metrics = CustodyMetrics::register(&Metrics::new());
            match KeyCustody::connect(c, &metrics, stop).await {
                Ok((custody, _)) => Some(custody),
                Err(e) => {
                    eprintln!("error: {}", crate::report::error_chain(&e));
                    return ExitCode::FAILURE;
                }
            }
        }
        None => None,
    };
    match rotate_now(jwt, common.propagation_delay, store, custody).await {
        Ok(keyring) => {
            let Some(new) = keyring.keys().last() else {
                eprintln!("error: no key was made");
                return ExitCode::FAILURE;
            };
            eprintln!(
                "published JWT signing key {} in {place}; it signs from {} (the key before it stops signing then)",
                new.key.kid(),
                new.times.signs_from
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", crate::report::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
