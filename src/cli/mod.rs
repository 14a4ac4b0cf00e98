//! The `meshca` command line: the daemon, the workload agent and admin
//! tools. `src/main.rs` only calls [`main`]; each subcommand's handler
//! lives in this module's files.

mod admin;
mod plan;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::agent::{AgentConfig, WorkloadApiConfig};
use crate::config::Config;
pub(crate) use crate::feature::EX_USAGE;
use crate::feature::{Common, Features, Settings};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "meshca",
    version,
    about = "Certificate authority for service meshes"
)]
struct Cli {
    #[command(flatten)]
    globals: Globals,
    #[command(subcommand)]
    command: Command,
}

/// The options of every command.
#[derive(Args)]
struct Globals {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Async worker threads (default: one per CPU core).
    #[arg(long, global = true, env = "MESHCA_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Log filter (tracing-subscriber syntax); RUST_LOG also works.
    #[arg(long, global = true, default_value = "info", env = "MESHCA_LOG")]
    log_level: String,
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
    Agent(AgentArgs),
    /// Manage static bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Deny an identity every certificate, or allow it again.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
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
    /// Validate configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

/// The arguments of `meshca agent`.
#[derive(Args)]
struct AgentArgs {
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
    #[arg(long, required_unless_present = "workload_api_socket")]
    out_dir: Option<PathBuf>,
    /// Also write the SPIFFE file layout into --out-dir
    /// (credential-bundle.pem, <trust-domain>.trust-bundle.pem).
    #[arg(long, requires = "out_dir")]
    spiffe_files: bool,
    /// Serve the SPIFFE Workload API on this Unix socket.
    #[arg(long, conflicts_with = "once")]
    workload_api_socket: Option<PathBuf>,
    /// Mode of the Workload API socket: 600 (this user) or 660 (and
    /// its group).
    #[arg(long, default_value = "600", value_parser = parse_socket_mode)]
    workload_api_socket_mode: u32,
    /// Requested certificate lifetime, e.g. 1h (the server clamps it).
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// How often to re-fetch the trust bundle between renewals.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    bundle_refresh: Duration,
    /// How often to re-fetch the CRLs (crl.pem, the Workload API's crl
    /// fields): a revocation reaches this workload within it.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15s")]
    crl_refresh: Duration,
    /// Exit after the first certificate is written.
    #[arg(long)]
    once: bool,
    /// The workload's key algorithm: ecdsa-p256, ecdsa-p384, ed25519,
    /// rsa-2048, rsa-3072, rsa-4096, or ml-dsa-44, ml-dsa-65, ml-dsa-87 for
    /// a post-quantum identity (signed under a post-quantum root).
    #[arg(long, default_value = "ecdsa-p256")]
    key_algorithm: crate::crypto::names::KeyAlgorithmName,
}

impl AgentArgs {
    /// The agent's settings.
    fn into_config(self) -> AgentConfig {
        AgentConfig {
            server: self.server,
            ca_file: self.ca_file,
            token_file: self.token_file,
            out_dir: self.out_dir,
            spiffe_files: self.spiffe_files,
            workload_api: self.workload_api_socket.map(|socket| WorkloadApiConfig {
                socket,
                mode: self.workload_api_socket_mode,
            }),
            ttl: self.ttl,
            once: self.once,
            bundle_refresh: self.bundle_refresh,
            crl_refresh: self.crl_refresh,
            key_algorithm: self.key_algorithm,
        }
    }
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
    /// List the stored tokens: id, identity, creation time (never a token).
    List {
        /// Config file naming the token store.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Revoke one token by id, or every token of an identity; a running
    /// daemon refuses them within seconds.
    Revoke {
        /// Config file naming the token store.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// The token's id, as `meshca token list` shows it.
        #[arg(long, conflicts_with_all = ["namespace", "service_account"], required_unless_present = "namespace")]
        id: Option<String>,
        /// Namespace of the identity whose tokens to revoke.
        #[arg(long, requires = "service_account")]
        namespace: Option<String>,
        /// ServiceAccount of the identity whose tokens to revoke.
        #[arg(long, requires = "namespace")]
        service_account: Option<String>,
    },
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// Refuse every certificate to NAMESPACE/SERVICE_ACCOUNT, by every path
    /// (tokens, renewal with a client certificate, ingress Secrets); a
    /// running daemon applies it within seconds.
    Deny {
        /// `namespace/service-account`.
        identity: String,
        /// Config file naming the deny-list.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Lift a deny.
    Allow {
        /// `namespace/service-account`.
        identity: String,
        /// Config file naming the deny-list.
        #[arg(short, long)]
        config: Option<PathBuf>,
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
    /// Make a new Tresor root (a new key, in the same custody when the
    /// root's key is held in one) and roll it out: published beside the
    /// current root, signing after rotation.propagation_delay, the old
    /// root retired once its last certificate has expired. Recorded in the
    /// state directory, or the ConfigMap meshca-root-generation in a
    /// cluster, which every daemon follows within seconds
    Root {
        /// Config file naming the provider and the state directory.
        #[arg(short, long)]
        config: Option<PathBuf>,
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

/// What the command line asks for: a command of meshca's, or one a
/// feature adds.
enum Job {
    Builtin(Command),
    Feature(&'static crate::feature::Command, clap::ArgMatches),
}

/// meshca's commands and the features'.
fn command_line() -> clap::Command {
    let mut command = Cli::command();
    for added in crate::features::ALL.iter().flat_map(|f| f.commands) {
        command = match added.under {
            None => command.subcommand((added.define)()),
            Some(parent) => command.mut_subcommand(parent, |p| p.subcommand((added.define)())),
        };
    }
    command
}

/// Parse the command line; exits with clap's message on a usage error.
fn parse() -> (Globals, Job) {
    let matches = command_line().get_matches();
    let globals = Globals::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(job) = feature_job(&matches) {
        return (globals, job);
    }
    let command = Command::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    (globals, Job::Builtin(command))
}

/// The feature's command the matches name, if they name one.
fn feature_job(matches: &clap::ArgMatches) -> Option<Job> {
    let (name, sub) = matches.subcommand()?;
    crate::features::ALL
        .iter()
        .flat_map(|f| f.commands)
        .find_map(|added| {
            let own = (added.define)().get_name().to_owned();
            let found = match added.under {
                None => (name == own).then_some(sub),
                Some(parent) => (name == parent)
                    .then(|| sub.subcommand_matches(&own))
                    .flatten(),
            };
            found.map(|m| Job::Feature(added, m.clone()))
        })
}

/// A config file, as a feature's command reads it.
impl Settings for Config {
    fn common(&self) -> Common<'_> {
        Config::common(self)
    }

    fn features(&self) -> &Features {
        &self.features
    }
}

/// [`load_config`], for a feature's command.
fn load_settings(path: Option<&std::path::Path>) -> Result<Box<dyn Settings>, ExitCode> {
    load_config(path).map(|c| Box::new(c) as Box<dyn Settings>)
}

/// Parse the command line, set up logging and the runtime, and run the
/// command.
pub fn main() -> ExitCode {
    let (globals, job) = parse();
    init_logging(globals.log_format, &globals.log_level);
    // One crypto provider; make it the process default so no other can be
    // picked up implicitly.
    crate::crypto::install_default();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = globals.worker_threads {
        runtime.worker_threads(n);
    }
    match runtime.enable_all().build() {
        Ok(runtime) => {
            tracing::debug!(
                workers = runtime.metrics().num_workers(),
                "async runtime ready"
            );
            runtime.block_on(async move {
                match job {
                    Job::Builtin(command) => run(command).await,
                    Job::Feature(added, matches) => (added.run)(matches, load_settings).await,
                }
            })
        }
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colour only for a person at a terminal: escape codes in a log
    // collector's lines are noise, and cost a little on every line.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Load `path` (or the embedded default), or say why not and give the
/// usage exit code.
fn load_config(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EX_USAGE)
    })
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve { config } => serve(config.as_deref()).await,
        Command::Agent(args) => agent(args.into_config()).await,
        Command::Token { command } => token(command),
        Command::Identity {
            command: IdentityCommand::Deny { identity, config },
        } => admin::deny_identity(config.as_deref(), &identity, true).await,
        Command::Identity {
            command: IdentityCommand::Allow { identity, config },
        } => admin::deny_identity(config.as_deref(), &identity, false).await,
        Command::Bundle { config } => admin::print_bundle(config.as_deref()),
        Command::Rotate {
            command: RotateCommand::Status { config },
        } => admin::rotation_status(config.as_deref()).await,
        Command::Rotate {
            command: RotateCommand::Root { config },
        } => admin::rotate_root(config.as_deref()).await,
        Command::Config {
            command: ConfigCommand::Check { config },
        } => admin::check_config(&config),
    }
}

/// `meshca token`.
fn token(command: TokenCommand) -> ExitCode {
    match command {
        TokenCommand::Create {
            config,
            namespace,
            service_account,
        } => admin::create_token(config.as_deref(), &namespace, &service_account),
        TokenCommand::List { config } => admin::list_tokens(config.as_deref()),
        TokenCommand::Revoke {
            config,
            id,
            namespace,
            service_account,
        } => {
            let which = match (id, namespace, service_account) {
                (Some(id), _, _) => crate::auth::Revoke::Id(id),
                (None, Some(namespace), Some(service_account)) => crate::auth::Revoke::Identity {
                    namespace,
                    service_account,
                },
                _ => {
                    eprintln!("error: name a token with --id, or an identity with --namespace and --service-account");
                    return ExitCode::from(EX_USAGE);
                }
            };
            admin::revoke_tokens(config.as_deref(), &which)
        }
    }
}

async fn serve(config: Option<&std::path::Path>) -> ExitCode {
    let path = config.map(std::path::Path::to_path_buf);
    let loaded = tokio::task::spawn_blocking(move || load_config(path.as_deref())).await;
    let config = match loaded {
        Ok(Ok(c)) => c,
        Ok(Err(code)) => return code,
        Err(e) => {
            eprintln!("error: reading the configuration was interrupted: {e}");
            return ExitCode::FAILURE;
        }
    };
    let daemon = match crate::daemon::start(config).await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %crate::report::error_chain(&e), "failed to start");
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(cancel_on_signal(daemon.shutdown_token()));
    daemon.wait().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// An octal socket mode the agent accepts.
fn parse_socket_mode(text: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .map_err(|e| format!("{text:?} is not an octal mode: {e}"))?;
    if crate::agent::SOCKET_MODES.contains(&mode) {
        Ok(mode)
    } else {
        Err(format!(
            "{text} would let others reach the workload's key; use 600 or 660"
        ))
    }
}

async fn agent(config: AgentConfig) -> ExitCode {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match crate::agent::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "agent failed");
            ExitCode::FAILURE
        }
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
