//! A feature's commands on `meshca`'s command line, so that the command
//! line, too, names no feature: `meshca ingress render` and
//! `meshca rotate jwt-key` are defined, parsed and run in their features'
//! folders.

use std::path::Path;
use std::process::ExitCode;

use futures_util::future::BoxFuture;

use super::{Common, Features};

/// Exit status for a configuration or usage problem (sysexits
/// `EX_USAGE`).
pub const EX_USAGE: u8 = 64;

/// A command a feature adds.
pub struct Command {
    /// The command it is a subcommand of (`rotate`), or `None` for a
    /// command of its own.
    pub under: Option<&'static str>,
    /// Its name, arguments and help.
    pub define: fn() -> clap::Command,
    /// Run it: its matches, and how to read a config file.
    pub run: fn(clap::ArgMatches, LoadSettings) -> BoxFuture<'static, ExitCode>,
}

/// Read the config file at a path (the embedded default for `None`); on a
/// problem, says why on standard error and gives the exit code.
pub type LoadSettings = fn(Option<&Path>) -> Result<Box<dyn Settings>, ExitCode>;

/// A config file as a feature's command reads it.
pub trait Settings: Send {
    /// What every feature reads besides its own sections.
    fn common(&self) -> Common<'_>;
    /// The features in force.
    fn features(&self) -> &Features;
}

/// The cluster a command's config reaches, with meshca's namespace;
/// `None` without one. A failure to connect is said on standard error and
/// is the command's exit status.
///
/// # Errors
/// [`ExitCode::FAILURE`] when the cluster cannot be reached.
pub async fn cluster<'a>(common: &Common<'a>) -> Result<Option<(kube::Client, &'a str)>, ExitCode> {
    let Some(k) = common.kubernetes else {
        return Ok(None);
    };
    match crate::cluster::connect(k).await {
        Ok(client) => Ok(client.map(|c| (c, k.namespace.as_str()))),
        Err(e) => {
            eprintln!("error: {}", crate::report::error_chain(&e));
            Err(ExitCode::FAILURE)
        }
    }
}

/// Who runs a command that changes shared state, for its record: in a
/// cluster, the user the API server authenticates the kubeconfig as
/// (`SelfSubjectReview`); otherwise, or when it cannot say (with a
/// warning), `$USER`, marked as the operating system's.
pub async fn author(cluster: Option<&kube::Client>) -> String {
    if let Some(client) = cluster {
        match crate::cluster::user_of(client).await {
            Ok(user) => return user,
            Err(e) => eprintln!(
                "warning: recording $USER as the author: {}",
                crate::report::error_chain(&e)
            ),
        }
    }
    match std::env::var("USER") {
        Ok(user) if !user.is_empty() => format!("{user} (local user)"),
        _ => "an unnamed local user".into(),
    }
}
