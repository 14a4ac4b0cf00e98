//! `meshca ingress render`: ingress-controller configuration for mesh
//! backends, offline.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, FromArgMatches};
use futures_util::future::BoxFuture;
use meshca_provider::TrustDomain;

use super::{render_manifest, Controller, RenderOptions};
use crate::feature::{Command, LoadSettings, EX_USAGE};

/// `meshca ingress render`.
pub const RENDER: Command = Command {
    under: None,
    define,
    run,
};

/// Print the Ingress(es) of a manifest annotated for a controller, plus
/// any extra objects and instructions. Works offline on v1 and v1beta1.
#[derive(Args)]
struct RenderArgs {
    /// nginx, agic or gloo.
    #[arg(long)]
    controller: Controller,
    /// The manifest (`-` for standard input).
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// Config file for the trust domain and bundle Secret.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Trust domain (overrides the config's).
    #[arg(long)]
    trust_domain: Option<String>,
    /// Trust bundle PEM (AGIC uploads it, Gloo copies it).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// `namespace/name` of the Secret with ca.crt.
    #[arg(long, default_value = "osm-system/osm-ca-bundle")]
    bundle_secret: String,
    /// `namespace/name` of the ingress client certificate Secret, for
    /// mTLS to backends.
    #[arg(long)]
    client_secret: Option<String>,
}

fn define() -> clap::Command {
    let render = clap::Command::new("render");
    clap::Command::new("ingress")
        .about("Ingress-controller configuration for mesh backends")
        .subcommand_required(true)
        .subcommand(RenderArgs::augment_args(render))
}

fn run(matches: clap::ArgMatches, load: LoadSettings) -> BoxFuture<'static, ExitCode> {
    Box::pin(async move {
        let args = match matches
            .subcommand_matches("render")
            .map(RenderArgs::from_arg_matches)
        {
            Some(Ok(args)) => args,
            Some(Err(e)) => e.exit(),
            None => return ExitCode::from(EX_USAGE),
        };
        let rendered = tokio::task::spawn_blocking(move || rendered(&args, load)).await;
        match rendered {
            Ok(Ok(out)) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Ok(Err(Failed::Said(code))) => code,
            Ok(Err(Failed::Usage(m))) => {
                eprintln!("error: {m}");
                ExitCode::from(EX_USAGE)
            }
            Err(e) => {
                eprintln!("error: rendering was interrupted: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Why nothing was rendered.
enum Failed {
    /// Already said on standard error.
    Said(ExitCode),
    /// To say.
    Usage(String),
}

impl From<String> for Failed {
    fn from(message: String) -> Self {
        Self::Usage(message)
    }
}

fn split_ref(s: &str) -> Result<(String, String), String> {
    s.split_once('/')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .ok_or_else(|| format!("{s:?} must be namespace/name"))
}

/// The trust domain: as given, else the config's, else `cluster.local`.
fn trust_domain(args: &RenderArgs, load: LoadSettings) -> Result<TrustDomain, Failed> {
    let named = match (&args.trust_domain, &args.config) {
        (Some(td), _) => td.clone(),
        (None, Some(path)) => {
            let settings = load(Some(path)).map_err(Failed::Said)?;
            let common = settings.common();
            common.trust_domain_text.to_owned()
        }
        (None, None) => "cluster.local".to_owned(),
    };
    TrustDomain::new(&named).map_err(|e| Failed::Usage(e.to_string()))
}

/// Blocking: runs on the blocking pool.
#[allow(clippy::disallowed_methods)]
fn rendered(args: &RenderArgs, load: LoadSettings) -> Result<String, Failed> {
    let mut options = RenderOptions::new(trust_domain(args, load)?);
    options.bundle_secret = split_ref(&args.bundle_secret)?;
    options.client_secret = args.client_secret.as_deref().map(split_ref).transpose()?;
    if let Some(path) = &args.bundle {
        options.bundle_pem =
            Some(std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    let manifest = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| format!("standard input: {e}"))?;
        s
    } else {
        std::fs::read_to_string(&args.file).map_err(|e| format!("{}: {e}", args.file.display()))?
    };
    Ok(render_manifest(args.controller, &manifest, &options)?)
}
