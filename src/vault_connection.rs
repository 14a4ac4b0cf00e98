//! How meshca reaches Vault (or OpenBao) and logs in, as written in the
//! config: the same fields for `provider.vault` and for
//! `key_custody.transit`, checked the same way.

use std::path::PathBuf;
use std::time::Duration;

use meshca_vault::{Connection, VaultAuth};
use serde::Deserialize;

use crate::validation::Errors;

/// The connection fields of a section, borrowed from it: serde cannot
/// flatten them into a section that refuses unknown fields.
pub struct RawConnection<'a> {
    /// `address`.
    pub address: &'a str,
    /// `ca_file`.
    pub ca_file: Option<&'a PathBuf>,
    /// `client_cert_file` and `client_key_file`.
    pub client_cert: (Option<&'a PathBuf>, Option<&'a PathBuf>),
    /// `allow_http`.
    pub allow_http: bool,
    /// `timeout`.
    pub timeout: Duration,
    /// `auth`.
    pub auth: &'a RawVaultAuth,
}

impl RawConnection<'_> {
    /// The connection, or `None` with the problems under `path` in
    /// `errors`.
    pub fn validate(&self, path: &str, errors: &mut Errors) -> Option<Connection> {
        let before = errors.len();
        if self.address.starts_with("http://") {
            if !self.allow_http {
                errors.add(
                    &format!("{path}.address"),
                    format!("plain http:// needs {path}.allow_http: true"),
                );
            }
        } else if !self.address.starts_with("https://") {
            errors.add(
                &format!("{path}.address"),
                format!("{:?} must be an https:// URL", self.address),
            );
        }
        let client_cert = match self.client_cert {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => {
                errors.add(
                    &format!("{path}.client_cert_file"),
                    "client_cert_file and client_key_file go together",
                );
                None
            }
        };
        let mut methods = self.auth.methods();
        if methods.len() != 1 {
            errors.add(
                &format!("{path}.auth"),
                format!(
                    "set exactly one of token_file, token_env, kubernetes, approle (found {})",
                    methods.len()
                ),
            );
        }
        if self.timeout.is_zero() {
            errors.add(&format!("{path}.timeout"), "must be greater than zero");
        }
        if errors.len() > before {
            return None;
        }
        Some(Connection {
            address: self.address.to_owned(),
            ca_file: self.ca_file.cloned(),
            client_cert,
            allow_http: self.allow_http,
            timeout: self.timeout,
            auth: methods.remove(0),
        })
    }
}

/// The default time limit of one request to Vault.
pub fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Exactly one of the fields must be set.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVaultAuth {
    token_file: Option<PathBuf>,
    token_env: Option<String>,
    kubernetes: Option<RawVaultKubernetes>,
    approle: Option<RawVaultAppRole>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVaultKubernetes {
    #[serde(default = "RawVaultKubernetes::default_mount")]
    mount: String,
    role: String,
    #[serde(default = "RawVaultKubernetes::default_jwt_file")]
    jwt_file: PathBuf,
}

impl RawVaultKubernetes {
    fn default_mount() -> String {
        "kubernetes".into()
    }
    fn default_jwt_file() -> PathBuf {
        PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVaultAppRole {
    #[serde(default = "RawVaultAppRole::default_mount")]
    mount: String,
    role_id: String,
    secret_id_file: PathBuf,
}

impl RawVaultAppRole {
    fn default_mount() -> String {
        "approle".into()
    }
}

impl RawVaultAuth {
    fn methods(&self) -> Vec<VaultAuth> {
        let mut methods = Vec::new();
        if let Some(f) = &self.token_file {
            methods.push(VaultAuth::TokenFile(f.clone()));
        }
        if let Some(e) = &self.token_env {
            methods.push(VaultAuth::TokenEnv(e.clone()));
        }
        if let Some(k) = &self.kubernetes {
            methods.push(VaultAuth::Kubernetes {
                mount: k.mount.clone(),
                role: k.role.clone(),
                jwt_file: k.jwt_file.clone(),
            });
        }
        if let Some(r) = &self.approle {
            methods.push(VaultAuth::AppRole {
                mount: r.mount.clone(),
                role_id: r.role_id.clone(),
                secret_id_file: r.secret_id_file.clone(),
            });
        }
        methods
    }
}
