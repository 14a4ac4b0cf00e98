//! `meshca ingress render`: ingress-controller configuration for mesh
//! backends, offline.

use std::path::PathBuf;
use std::process::ExitCode;

use super::EX_USAGE;
use crate::config::Config;
use crate::ingress::{render_manifest, Controller, RenderOptions};
use meshca_provider::TrustDomain;

/// The arguments of `meshca ingress render`.
#[derive(clap::Args)]
pub struct RenderArgs {
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

fn split_ref(s: &str) -> Result<(String, String), String> {
    s.split_once('/')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .ok_or_else(|| format!("{s:?} must be namespace/name"))
}

/// Run `meshca ingress render`.
pub fn render(args: RenderArgs) -> ExitCode {
    match rendered(args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(m) => {
            eprintln!("error: {m}");
            ExitCode::from(EX_USAGE)
        }
    }
}

/// Blocking: a one-shot command, nothing else runs while it blocks.
#[allow(clippy::disallowed_methods)]
fn rendered(args: RenderArgs) -> Result<String, String> {
    let td = match (&args.trust_domain, &args.config) {
        (Some(td), _) => TrustDomain::new(td).map_err(|e| e.to_string())?,
        (None, Some(path)) => {
            Config::load(Some(path))
                .map_err(|e| e.to_string())?
                .trust_domain
        }
        (None, None) => TrustDomain::new("cluster.local").map_err(|e| e.to_string())?,
    };
    let mut options = RenderOptions::new(td);
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
    render_manifest(args.controller, &manifest, &options)
}
