//! Admin subcommands that work on a config's files: tokens, the bundle,
//! the rollout state and the config check.

use std::path::Path;
use std::process::ExitCode;

use meshca_provider::Identity;

use super::{load_config, EX_USAGE};
use crate::auth::{Revoke, TokenStore};
use crate::config::Config;
use crate::issuer::DenyList;

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
    let cluster = match &config.kubernetes {
        Some(k) => match crate::cluster::connect(k).await {
            Ok(client) => client.map(|c| (c, k.namespace.clone())),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let (changed, place) = match cluster {
        Some((client, ns)) => (
            crate::issuer::deny_configmap::change(client, &ns, (namespace, service_account), deny)
                .await,
            format!("ConfigMap {ns}/{}", crate::issuer::deny_configmap::NAME),
        ),
        None => {
            let list = DenyList::new(config.auth.denied_file.clone());
            (
                list.change(namespace, service_account, deny),
                list.path().display().to_string(),
            )
        }
    };
    let verb = if deny { "denied" } else { "allowed" };
    match changed {
        Ok(changed) => {
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

/// `meshca bundle`: print the bundle file the config names.
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

/// `meshca rotate status`: the persisted rollout state.
pub fn rotation_status(config: Option<&Path>) -> ExitCode {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let path = crate::rollout::RolloutStatus::path(&config.state_dir);
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
