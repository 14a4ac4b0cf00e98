//! Admin subcommands that work on a config's files: tokens, the bundle,
//! the rollout state and the config check.

use std::path::Path;
use std::process::ExitCode;

use meshca_provider::Identity;

use super::{load_config, EX_USAGE};
use crate::auth::{Revoke, TokenStore};
use crate::config::Config;

/// `meshca token create`: print a new token; only its hash is stored.
pub fn create_token(config: Option<&Path>, namespace: &str, service_account: &str) -> ExitCode {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let identity = match Identity::new(config.trust_domain.clone(), namespace, service_account) {
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

/// `meshca token list`.
pub fn list_tokens(config: Option<&Path>) -> ExitCode {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match TokenStore::new(config.auth.tokens_file.clone()).list() {
        Ok(tokens) => {
            println!("{:<12}  {:<40}  CREATED", "ID", "IDENTITY");
            for t in tokens {
                println!(
                    "{:<12}  {:<40}  {}",
                    t.id(),
                    format!("{}/{}", t.namespace, t.service_account),
                    t.created_at
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `meshca token revoke`: 1 when nothing matched, so scripts notice.
pub fn revoke_tokens(config: Option<&Path>, which: &Revoke) -> ExitCode {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match TokenStore::new(config.auth.tokens_file.clone()).revoke(which) {
        Ok(0) => {
            eprintln!("no token matched; nothing revoked");
            ExitCode::FAILURE
        }
        Ok(n) => {
            eprintln!(
                "revoked {n} token(s) in {}; a running daemon refuses them within seconds",
                config.auth.tokens_file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `meshca identity deny|allow NS/SA`: in the cluster's ConfigMap when
/// the config reaches a cluster, else in the file.
pub async fn deny_identity(config: Option<&Path>, identity: &str, deny: bool) -> ExitCode {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some((namespace, service_account)) = identity
        .split_once('/')
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty())
    else {
        eprintln!("error: {identity:?} must be namespace/service-account");
        return ExitCode::from(EX_USAGE);
    };
    if let Err(e) = Identity::new(config.trust_domain.clone(), namespace, service_account) {
        eprintln!("error: {e}");
        return ExitCode::from(EX_USAGE);
    }
    let common = config.common();
    let cluster = match crate::feature::cluster(&common).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let changed = crate::issuer::deny_configmap::change_where_kept(
        common.denied_file,
        cluster,
        (namespace, service_account),
        deny,
    )
    .await;
    let verb = if deny { "denied" } else { "allowed" };
    match changed {
        Ok((changed, place)) => {
            let note = if changed { "" } else { " (already so)" };
            eprintln!(
                "{namespace}/{service_account} {verb}{note} in {place}; a running daemon applies it within seconds"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `meshca bundle`: print the bundle file the config names (a one-shot
/// command: nothing else runs while it blocks).
#[allow(clippy::disallowed_methods)]
pub fn print_bundle(config: Option<&Path>) -> ExitCode {
    let config = match load_config(config) {
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

/// `meshca rotate status`: what the daemon knows of the signer rollout.
/// It asks the daemon (`GET /v1/rotation`, verified with the bundle file);
/// when the daemon does not answer, it reads the ledger the daemon reads
/// (the ConfigMap in a cluster, else the state directory's file) and says
/// so. Nothing is made up: no answer and no ledger is an error.
pub async fn rotation_status(config: Option<&Path>) -> ExitCode {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let asked = ask_daemon(&config).await;
    let report = match &asked {
        Ok(json) => {
            println!("{json}");
            return ExitCode::SUCCESS;
        }
        Err(why) => {
            eprintln!("the daemon did not answer ({why}); reading its ledger instead");
            read_ledger(&config).await
        }
    };
    match report {
        Ok((Some(status), place)) => {
            let report = crate::rollout::RotationReport::from(&status);
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            eprintln!("from {place}; the daemon may have moved on since");
            ExitCode::SUCCESS
        }
        Ok((None, place)) => {
            eprintln!("error: no rollout ledger in {place}, and the daemon did not answer");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {}", crate::report::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `meshca rotate root`: the next root generation, where the daemons
/// read it. Only a root meshca makes can be rotated so.
pub async fn rotate_root(config: Option<&Path>) -> ExitCode {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if !config.provider.rotates_root() {
        eprintln!("error: meshca rotate root makes a new Tresor root, and the {} provider{} has none to make: change the provider's settings instead (a new root_cert_file/root_key_file, a Vault mount's issuer), which rolls out the same way", config.provider.kind(), match config.provider.kind() { meshca_provider::ProviderKind::Tresor => " with a root brought as files", _ => "" });
        return ExitCode::from(EX_USAGE);
    }
    let mut cluster = None;
    if let Some(k) = &config.kubernetes {
        match crate::cluster::connect(k).await {
            Ok(client) => cluster = client.map(|c| (c, k.namespace.as_str())),
            Err(e) => {
                eprintln!("error: {}", crate::report::error_chain(&e));
                return ExitCode::FAILURE;
            }
        }
    }
    let by = crate::feature::author(cluster.as_ref().map(|(c, _)| c)).await;
    let store = crate::provider::root_generation::GenerationStore::new(&config.state_dir, cluster);
    match store.advance(&by).await {
        Ok(n) => {
            eprintln!("root generation {n} in {}: the daemons make the new root within seconds and roll it out (follow with meshca rotate status)", store.describe());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: nothing rotated: {}", crate::report::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `GET /v1/rotation` from the configured listener, trusting the bundle
/// file.
async fn ask_daemon(config: &Config) -> Result<String, String> {
    let place = config.bundle.file.display();
    let pem = tokio::fs::read(&config.bundle.file)
        .await
        .map_err(|e| format!("{place}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{place}: {e}"))?;
        roots.add(cert).map_err(|e| format!("{place}: {e}"))?;
    }
    let tls = crate::crypto::client_config_trusting(roots)
        .map_err(|e| e.to_string())?
        .with_no_client_auth();
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    // The serving certificate names `server_names`; reach the listener
    // under the first DNS one, or by address when there is none.
    let host = config.server_names.iter().find_map(|n| match n {
        meshca_provider::ServerName::Dns(d) => Some(d.to_string()),
        meshca_provider::ServerName::Ip(_) => None,
    });
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(std::time::Duration::from_secs(5));
    let url = match &host {
        Some(h) => {
            builder = builder.resolve(h, addr);
            format!("https://{h}:{}/v1/rotation", addr.port())
        }
        None => format!("https://{addr}/v1/rotation"),
    };
    let client = builder.build().map_err(|e| e.to_string())?;
    let response = client.get(&url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("{url}: {}", response.status()));
    }
    response.text().await.map_err(|e| e.to_string())
}

/// The ledger as the daemon would read it, and where from.
async fn read_ledger(
    config: &Config,
) -> Result<(Option<crate::rollout::RolloutStatus>, String), crate::rollout::ledger::LedgerError> {
    let mut cluster = None;
    if let Some(k) = &config.kubernetes {
        if let Ok(Some(client)) = crate::cluster::connect(k).await {
            cluster = Some((client, k.namespace.as_str()));
        }
    }
    crate::rollout::ledger::Places::new(&config.state_dir, cluster)
        .load()
        .await
}

/// `meshca config check`: validate as `serve` does; 64 when invalid.
pub fn check_config(path: &Path) -> ExitCode {
    match Config::load(Some(path)) {
        Ok(c) => {
            println!(
                "{}: valid (provider {}, trust domain {}, API {})",
                path.display(),
                c.provider.kind(),
                c.trust_domain,
                c.listen
            );
            for line in super::plan::plan(&c) {
                println!("  {line}");
            }
            for warning in &c.warnings {
                println!("warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::from(EX_USAGE)
        }
    }
}
