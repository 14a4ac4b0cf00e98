//! `key_custody:`: where the keys meshca signs with for a long time are
//! held.

use std::path::PathBuf;
use std::time::Duration;

use meshca_vault::TransitConfig;

use super::pkcs11::{PinSource, Pkcs11Config};
use serde::Deserialize;

use crate::validation::Errors;
use crate::vault_connection::{default_timeout, RawConnection, RawVaultAuth};

/// Which custodian holds the keys, when it is not meshca's own files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Vault's or OpenBao's Transit engine.
    Transit(TransitConfig),
    /// A PKCS#11 token (an HSM).
    Pkcs11(Pkcs11Config),
}

impl Backend {
    /// Its name, as `key_custody.kind` spells it and metrics label it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Transit(_) => "transit",
            Self::Pkcs11(_) => "pkcs11",
        }
    }

    /// Where the keys are, for people.
    pub fn describe(&self) -> String {
        match self {
            Self::Transit(t) => format!("Transit at {} ({})", t.connection.address, t.mount),
            Self::Pkcs11(p) => format!(
                "the PKCS#11 token {:?} of {}",
                p.token_label,
                p.module.display()
            ),
        }
    }
}

/// Keys held by a custodian. Compared by value, inside the provider's
/// settings: changing custody is a staged rollout like any signer change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustodyConfig {
    /// The custodian.
    pub backend: Backend,
    /// Whether the custody key signs every leaf (strict, and as fast as
    /// the custodian) instead of an intermediate kept in memory.
    pub sign_leaves: bool,
    /// What the names of meshca's keys in custody start with.
    pub key_prefix: String,
}

/// `key_custody:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawKeyCustody {
    kind: RawKind,
    sign_leaves: bool,
    transit: Option<RawTransit>,
    pkcs11: Option<RawPkcs11>,
}

impl Default for RawKeyCustody {
    fn default() -> Self {
        Self {
            kind: RawKind::File,
            sign_leaves: false,
            transit: None,
            pkcs11: None,
        }
    }
}

#[derive(Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawKind {
    File,
    Transit,
    Pkcs11,
}

/// `key_custody.transit`: as `provider.vault`, with the Transit mount and
/// the key names' prefix.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransit {
    address: String,
    #[serde(default = "RawTransit::default_mount")]
    mount: String,
    #[serde(default = "RawTransit::default_key_prefix")]
    key_prefix: String,
    ca_file: Option<PathBuf>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
    #[serde(default)]
    allow_http: bool,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    auth: RawVaultAuth,
}

impl RawTransit {
    fn default_mount() -> String {
        "transit".into()
    }
    fn default_key_prefix() -> String {
        "meshca".into()
    }
}

impl RawKeyCustody {
    /// The custodian, `None` for `kind: file` (keys in meshca's files, as
    /// always); `Err` with the problems in `errors`.
    pub fn validate(&self, errors: &mut Errors) -> Result<Option<CustodyConfig>, ()> {
        let before = errors.len();
        let backend = match (self.kind, &self.transit) {
            (RawKind::Pkcs11, _) => self.pkcs11_backend(errors),
            (RawKind::File, _) => {
                if self.sign_leaves {
                    errors.add(
                        "key_custody.sign_leaves",
                        "applies to keys in custody only (kind: transit)",
                    );
                }
                return if errors.len() > before {
                    Err(())
                } else {
                    Ok(None)
                };
            }
            (RawKind::Transit, None) => {
                errors.add(
                    "key_custody.transit",
                    "required when key_custody.kind is transit",
                );
                return Err(());
            }
            (RawKind::Transit, Some(t)) => t.validate(errors).map(Backend::Transit),
        };
        let prefix = match &backend {
            Some(Backend::Transit(_)) => self.transit.as_ref().map(|t| t.key_prefix.clone()),
            Some(Backend::Pkcs11(_)) => self.pkcs11.as_ref().map(|p| p.key_label_prefix.clone()),
            None => None,
        };
        match (backend, prefix) {
            (Some(backend), Some(key_prefix)) if errors.len() == before => {
                Ok(Some(CustodyConfig {
                    backend,
                    sign_leaves: self.sign_leaves,
                    key_prefix,
                }))
            }
            _ => Err(()),
        }
    }
}

/// `key_custody.pkcs11`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPkcs11 {
    module: PathBuf,
    #[serde(default = "RawPkcs11::default_token_label")]
    token_label: String,
    pin_file: Option<PathBuf>,
    pin_env: Option<String>,
    #[serde(default = "RawTransit::default_key_prefix")]
    key_label_prefix: String,
}

impl RawPkcs11 {
    fn default_token_label() -> String {
        "meshca".into()
    }
}

impl RawKeyCustody {
    fn pkcs11_backend(&self, errors: &mut Errors) -> Option<Backend> {
        let Some(p) = &self.pkcs11 else {
            errors.add(
                "key_custody.pkcs11",
                "required when key_custody.kind is pkcs11",
            );
            return None;
        };
        if !p.module.is_absolute() {
            errors.add(
                "key_custody.pkcs11.module",
                format!("{} must be an absolute path", p.module.display()),
            );
        }
        if p.token_label.is_empty() || p.token_label.len() > 32 {
            errors.add(
                "key_custody.pkcs11.token_label",
                "must be 1 to 32 characters (a PKCS#11 token label)",
            );
        }
        if !valid_name(&p.key_label_prefix) {
            errors.add(
                "key_custody.pkcs11.key_label_prefix",
                format!(
                    "{:?} must be lowercase letters, digits and -, at most 40",
                    p.key_label_prefix
                ),
            );
        }
        let pin = match (&p.pin_file, &p.pin_env) {
            (Some(f), None) => Some(PinSource::File(f.clone())),
            (None, Some(e)) => Some(PinSource::Env(e.clone())),
            _ => {
                errors.add(
                    "key_custody.pkcs11",
                    "set exactly one of pin_file and pin_env",
                );
                None
            }
        };
        Some(Backend::Pkcs11(Pkcs11Config {
            module: p.module.clone(),
            token_label: p.token_label.clone(),
            pin: pin?,
        }))
    }
}

/// A key name prefix every custodian takes as it is, and that can name a
/// Kubernetes Secret: lowercase letters, digits and `-`, at most 40.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl RawTransit {
    fn validate(&self, errors: &mut Errors) -> Option<TransitConfig> {
        if !valid_name(&self.key_prefix) {
            errors.add(
                "key_custody.transit.key_prefix",
                format!(
                    "{:?} must be lowercase letters, digits and -, at most 40",
                    self.key_prefix
                ),
            );
        }
        if self.mount.trim_matches('/').is_empty() {
            errors.add("key_custody.transit.mount", "must not be empty");
        }
        let connection = RawConnection {
            address: &self.address,
            ca_file: self.ca_file.as_ref(),
            client_cert: (
                self.client_cert_file.as_ref(),
                self.client_key_file.as_ref(),
            ),
            allow_http: self.allow_http,
            timeout: self.timeout,
            auth: &self.auth,
        }
        .validate("key_custody.transit", errors)?;
        Some(TransitConfig {
            connection,
            mount: self.mount.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(yaml: &str) -> (Result<Option<CustodyConfig>, ()>, Vec<String>) {
        let raw: RawKeyCustody = serde_yaml_ng::from_str(yaml).expect("yaml");
        let mut errors = Errors::default();
        let out = raw.validate(&mut errors);
        (out, errors.into_vec())
    }

    #[test]
    fn file_is_the_default_and_holds_nothing_in_custody() {
        assert_eq!(validate("{}"), (Ok(None), vec![]));
    }

    #[test]
    fn transit_reads_as_the_vault_provider_does() {
        let (out, errors) = validate(
            "kind: transit\nsign_leaves: true\ntransit: { address: https://bao:8200, auth: { token_env: BAO_TOKEN } }",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let c = out.expect("valid").expect("custody");
        assert!(c.sign_leaves);
        assert_eq!(c.key_prefix, "meshca");
        let Backend::Transit(t) = c.backend else {
            panic!("transit");
        };
        assert_eq!(
            (t.mount.as_str(), t.connection.address.as_str()),
            ("transit", "https://bao:8200")
        );
    }

    #[test]
    fn pkcs11_names_its_module_token_and_pin() {
        let (out, errors) = validate(
            "kind: pkcs11\npkcs11: { module: /usr/lib/softhsm/libsofthsm2.so, pin_file: /etc/meshca/pin }",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let c = out.expect("valid").expect("custody");
        assert_eq!(c.key_prefix, "meshca");
        let Backend::Pkcs11(p) = c.backend else {
            panic!("pkcs11");
        };
        assert_eq!(p.token_label, "meshca");
        assert_eq!(p.pin, PinSource::File("/etc/meshca/pin".into()));
        let (out, errors) = validate(
            "kind: pkcs11\npkcs11: { module: softhsm.so, token_label: '', pin_file: /p, pin_env: PIN, key_label_prefix: 'a b' }",
        );
        assert!(out.is_err());
        let text = errors.join("\n");
        for path in [
            "key_custody.pkcs11.module: softhsm.so must be an absolute path",
            "key_custody.pkcs11.token_label",
            "key_custody.pkcs11.key_label_prefix",
            "key_custody.pkcs11: set exactly one of pin_file and pin_env",
        ] {
            assert!(text.contains(path), "{path} in {text}");
        }
        let (_, errors) = validate("kind: pkcs11");
        assert_eq!(
            errors,
            vec!["key_custody.pkcs11: required when key_custody.kind is pkcs11"]
        );
    }

    #[test]
    fn bad_transit_settings_are_named() {
        let (out, errors) = validate(
            "kind: transit\ntransit: { address: http://bao:8200, key_prefix: 'a/b', auth: {} }",
        );
        assert!(out.is_err());
        let text = errors.join("\n");
        for path in [
            "key_custody.transit.key_prefix",
            "key_custody.transit.address: plain http:// needs key_custody.transit.allow_http",
            "key_custody.transit.auth: set exactly one",
        ] {
            assert!(text.contains(path), "{path} in {text}");
        }
        let (_, errors) = validate("kind: transit");
        assert_eq!(
            errors,
            vec!["key_custody.transit: required when key_custody.kind is transit"]
        );
        let (_, errors) = validate("sign_leaves: true");
        assert!(
            errors[0].starts_with("key_custody.sign_leaves"),
            "{errors:?}"
        );
        assert!(serde_yaml_ng::from_str::<RawKeyCustody>("kind: hsm").is_err());
    }
}
