//! The `meshca` command: the daemon, the workload agent and admin tools.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use meshca::{AgentConfig, Config, Identity, TokenStore};
use tokio_util::sync::CancellationToken;

/// Exit status for a configuration or usage problem (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "meshca",
    version,
    about = "Certificate authority for service meshes"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Async worker threads (default: one per CPU core).
    #[arg(long, global = true, env = "MESHCA_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Log filter (tracing-subscriber syntax); RUST_LOG also works.
    #[arg(long, global = true, default_value = "info", env = "MESHCA_LOG")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the CA daemon.
    Serve {
        /// Config file; the embedded default (Tresor, file bundle) when absent.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Obtain and renew a workload certificate.
    Agent {
        /// Signing API base URL.
        #[arg(long, default_value = "https://127.0.0.1:9443")]
        server: String,
        /// CA bundle to verify the server with.
        #[arg(long)]
        ca_file: PathBuf,
        /// File holding the bearer token (re-read on every request).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Directory for cert.pem, key.pem and ca.pem.
        #[arg(long)]
        out_dir: PathBuf,
        /// Requested certificate lifetime, e.g. 1h (the server clamps it).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// How often to re-fetch the trust bundle between renewals.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
        bundle_refresh: Duration,
        /// Exit after the first certificate is written.
        #[arg(long)]
        once: bool,
    },
    /// Manage static bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Print the trust bundle (PEM).
    Bundle {
        /// Config file whose bundle file to read.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Signer changes (rollouts).
    Rotate {
        #[command(subcommand)]
        command: RotateCommand,
    },
    /// Ingress-controller configuration for mesh backends.
    Ingress {
        #[command(subcommand)]
        command: IngressCommand,
    },
    /// Validate configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token for a ServiceAccount identity and print it (only its
    /// hash is stored).
    Create {
        /// Config file naming the token store.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Namespace of the identity.
        #[arg(long)]
        namespace: String,
        /// ServiceAccount of the identity.
        #[arg(long)]
        service_account: String,
    },
}

#[derive(Subcommand)]
enum RotateCommand {
    /// Print the rollout state: stage, generation, retained anchors and the
    /// stages so far (from the state directory; the daemon serves the same
    /// at GET /v1/rotation).
    Status {
        /// Config file naming the state directory.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum IngressCommand {
    /// Print the Ingress(es) of a manifest annotated for a controller, plus
    /// any extra objects and instructions. Works offline on v1 and v1beta1.
    Render {
        /// nginx, agic or gloo.
        #[arg(long)]
        controller: meshca::Controller,
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
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load and validate a config file, listing every problem with its key.
    Check {
        /// The file to check.
        #[arg(short, long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log_level);
    // ring is the one crypto provider; make it the process default so no
    // other can be picked up implicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli.command))
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_config(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EX_USAGE)
    })
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve { config } => {
            let config = match load_config(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let daemon = match meshca::start(config).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "failed to start");
                    return ExitCode::FAILURE;
                }
            };
            let token = daemon.shutdown_token();
            tokio::spawn(cancel_on_signal(token));
            daemon.wait().await;
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Command::Agent {
            server,
            ca_file,
            token_file,
            out_dir,
            ttl,
            bundle_refresh,
            once,
        } => {
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            let config = AgentConfig {
                server,
                ca_file,
                token_file,
                out_dir,
                ttl,
                once,
                bundle_refresh,
            };
            match meshca::run_agent(config, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "agent failed");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    config,
                    namespace,
                    service_account,
                },
        } => {
            let config = match load_config(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let identity =
                match Identity::new(config.trust_domain.clone(), &namespace, &service_account) {
                    Ok(i) => i,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(EX_USAGE);
                    }
                };
            match TokenStore::new(config.auth.tokens_file.clone()).create(&identity) {
                Ok(token) => {
                    eprintln!(
                        "created a token for {identity} in {}",
                        config.auth.tokens_file.display()
                    );
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Bundle { config } => {
            let config = match load_config(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match std::fs::read_to_string(&config.bundle.file) {
                Ok(pem) => {
                    print!("{pem}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!(
                        "error: failed to read the trust bundle {}: {e} (has `meshca serve` run with this config?)",
                        config.bundle.file.display()
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Command::Rotate {
            command: RotateCommand::Status { config },
        } => {
            let config = match load_config(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let path = config.state_dir.join("rollout.json");
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    println!("{{\"stage\": \"steady\", \"generation\": 0}}");
                    eprintln!(
                        "no signer change recorded in {}",
                        config.state_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", path.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Ingress {
            command:
                IngressCommand::Render {
                    controller,
                    file,
                    config,
                    trust_domain,
                    bundle,
                    bundle_secret,
                    client_secret,
                },
        } => render_ingress(
            controller,
            &file,
            config.as_deref(),
            trust_domain,
            bundle,
            &bundle_secret,
            client_secret.as_deref(),
        ),
        Command::Config {
            command: ConfigCommand::Check { config },
        } => match Config::load(Some(&config)) {
            Ok(c) => {
                println!(
                    "{}: valid (provider {}, trust domain {}, API {})",
                    config.display(),
                    c.provider.kind(),
                    c.trust_domain,
                    c.listen
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", config.display());
                ExitCode::from(EX_USAGE)
            }
        },
    }
}

fn split_ref(s: &str) -> Result<(String, String), String> {
    s.split_once('/')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .ok_or_else(|| format!("{s:?} must be namespace/name"))
}

fn render_ingress(
    controller: meshca::Controller,
    file: &std::path::Path,
    config: Option<&std::path::Path>,
    trust_domain: Option<String>,
    bundle: Option<PathBuf>,
    bundle_secret: &str,
    client_secret: Option<&str>,
) -> ExitCode {
    let fail = |m: String| {
        eprintln!("error: {m}");
        ExitCode::from(EX_USAGE)
    };
    let td = match (trust_domain, config) {
        (Some(td), _) => match meshca::TrustDomain::new(&td) {
            Ok(t) => t,
            Err(e) => return fail(e.to_string()),
        },
        (None, Some(path)) => match Config::load(Some(path)) {
            Ok(c) => c.trust_domain,
            Err(e) => return fail(e.to_string()),
        },
        (None, None) => match meshca::TrustDomain::new("cluster.local") {
            Ok(t) => t,
            Err(e) => return fail(e.to_string()),
        },
    };
    let mut options = meshca::RenderOptions::new(td);
    match split_ref(bundle_secret) {
        Ok(r) => options.bundle_secret = r,
        Err(e) => return fail(e),
    }
    if let Some(c) = client_secret {
        match split_ref(c) {
            Ok(r) => options.client_secret = Some(r),
            Err(e) => return fail(e),
        }
    }
    if let Some(path) = bundle {
        match std::fs::read_to_string(&path) {
            Ok(pem) => options.bundle_pem = Some(pem),
            Err(e) => return fail(format!("{}: {e}", path.display())),
        }
    }
    let manifest = if file.as_os_str() == "-" {
        let mut s = String::new();
        if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
            return fail(format!("standard input: {e}"));
        }
        s
    } else {
        match std::fs::read_to_string(file) {
            Ok(s) => s,
            Err(e) => return fail(format!("{}: {e}", file.display())),
        }
    };
    match meshca::render_manifest(controller, &manifest, &options) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    token.cancel();
}
