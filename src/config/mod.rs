//! meshca's configuration: one YAML file, parsed into raw serde structs that
//! refuse unknown keys, then validated once into [`Config`].
//!
//! Each area owns its section: the `Raw…` struct as written, its defaults
//! and its validation live next to the component that uses it (`api`,
//! `auth`, `bundle`, `cluster`, `issuer`, `provider`, `rollout`), and each
//! feature reads the sections its definition names (`features::ALL`).
//! This module only assembles them and reports every problem at once. Validation never looks at the environment: whether meshca runs in
//! a pod is decided when the daemon connects. `meshca config check` runs
//! exactly this code.

mod warnings;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshca_provider::{Identity, ServerName, TrustDomain};
use serde::Deserialize;
use thiserror::Error;

use crate::api::{ApiLimits, RawApi};
use crate::auth::{AuthConfig, RawAuth};
use crate::bundle::{BundleConfig, RawBundle};
use crate::cluster::{KubernetesConfig, RawKubernetes};
use crate::custody::{CustodyConfig, RawKeyCustody};
use crate::feature::{Common, Feature, Features, Sections};
use crate::issuer::{Lifetimes, RawLifetimes};
use crate::provider::{ProviderConfig, ProviderContext, RawProvider};
use crate::rollout::{RawRotation, RotationConfig};
use crate::validation::Errors;

/// The configuration used when no file is given: Tresor with a generated
/// ECDSA P-256 root under `./meshca-data`, a file bundle, static tokens.
pub const EMBEDDED_DEFAULT: &str = include_str!("../default-config.yaml");

/// Why a configuration was refused. Every problem found is listed, each
/// prefixed with the path of the offending key.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed, a key is unknown or a value has the wrong type.
    #[error("invalid config: {path}: {message}")]
    Syntax {
        /// Path of the key, e.g. `certificates.max_ttl`.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Values parse but do not make sense together.
    #[error("invalid config:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The mesh's trust domain.
    pub trust_domain: TrustDomain,
    /// Address of the HTTPS signing API.
    pub listen: SocketAddr,
    /// Address of the plain-HTTP health and metrics endpoints.
    pub metrics_listen: SocketAddr,
    /// Where meshca keeps its files (generated root, tokens, bundle).
    pub state_dir: PathBuf,
    /// The daemon's own identity, which its serving certificate carries.
    pub daemon_identity: Identity,
    /// Extra names clients dial the daemon by.
    pub server_names: Vec<ServerName>,
    /// The signing backend.
    pub provider: ProviderConfig,
    /// The custodian of meshca's long-lived keys (`key_custody:`); `None`
    /// for meshca's own files.
    pub key_custody: Option<CustodyConfig>,
    /// Workload certificate lifetimes.
    pub certificates: Lifetimes,
    /// Where the trust bundle is published.
    pub bundle: BundleConfig,
    /// How callers authenticate.
    pub auth: AuthConfig,
    /// Limits of the signing API.
    pub api: ApiLimits,
    /// The cluster meshca may use; `None` when `kubernetes.enabled: false`.
    pub kubernetes: Option<KubernetesConfig>,
    /// Signer changes.
    pub rotation: RotationConfig,
    /// The features in force, each with its settings.
    pub features: Features,
    /// Settings written in the file that will have no effect, for
    /// `meshca config check` to print and `serve` to log.
    pub warnings: Vec<String>,
    /// The file this configuration was read from; the daemon watches it
    /// and applies the settings that can change at run time.
    pub source: Option<PathBuf>,
    /// The text it was read from, so that an edit made between this load
    /// and the start of the watch is seen as one.
    pub source_text: Option<Arc<str>>,
}

/// The core sections of the file as written; the features read theirs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    trust_domain: String,
    listen: SocketAddr,
    metrics_listen: SocketAddr,
    state_dir: PathBuf,
    daemon_identity: RawDaemonIdentity,
    server_names: Vec<String>,
    provider: RawProvider,
    certificates: RawLifetimes,
    bundle: RawBundle,
    auth: RawAuth,
    api: RawApi,
    kubernetes: RawKubernetes,
    rotation: RawRotation,
    key_custody: RawKeyCustody,
}

/// The sections [`RawConfig`] reads.
const CORE_SECTIONS: [&str; 14] = [
    "trust_domain",
    "listen",
    "metrics_listen",
    "state_dir",
    "daemon_identity",
    "server_names",
    "provider",
    "certificates",
    "bundle",
    "auth",
    "api",
    "kubernetes",
    "rotation",
    "key_custody",
];

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 9443)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            state_dir: PathBuf::from("./meshca-data"),
            daemon_identity: RawDaemonIdentity::default(),
            server_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            provider: RawProvider::default(),
            certificates: RawLifetimes::default(),
            bundle: RawBundle::default(),
            auth: RawAuth::default(),
            api: RawApi::default(),
            kubernetes: RawKubernetes::default(),
            rotation: RawRotation::default(),
            key_custody: RawKeyCustody::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemonIdentity {
    namespace: String,
    service_account: String,
}

impl Default for RawDaemonIdentity {
    fn default() -> Self {
        Self {
            namespace: "osm-system".into(),
            service_account: "meshca".into(),
        }
    }
}

impl Config {
    /// Load `path`, or the embedded default when `None`.
    ///
    /// # Errors
    /// [`ConfigError`] listing every problem, each with its key's path.
    ///
    /// Blocking: the daemon reads it on the blocking pool (`serve`,
    /// `reload`); one-shot commands block while nothing else runs.
    #[allow(clippy::disallowed_methods)]
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            None => Self::from_yaml(EMBEDDED_DEFAULT),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let mut config = Self::from_yaml(&text)?;
                config.source = Some(path.to_owned());
                config.source_text = Some(text.into());
                Ok(config)
            }
        }
    }

    /// Parse and validate YAML text.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let root = top_level(text)?;
        let core = root
            .iter()
            .filter(|(k, _)| k.as_str().is_some_and(|k| CORE_SECTIONS.contains(&k)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<serde_yaml_ng::Mapping>();
        let raw: RawConfig = serde_path_to_error::deserialize(serde_yaml_ng::Value::Mapping(core))
            .map_err(|e| syntax(e.path().to_string(), e.into_inner().to_string()))?;
        let written = warnings::written_keys(text);
        let mut config = Self::build(raw, &Sections::new(&root, &written))?;
        let mut all = warnings::warnings(&config, &written);
        all.append(&mut config.warnings);
        config.warnings = all;
        Ok(config)
    }

    /// The feature of type `T`, when in force.
    pub fn feature<T: Feature>(&self) -> Option<&T> {
        self.features.find::<T>()
    }

    /// What features read besides their own sections, from this config.
    pub(crate) fn common(&self) -> Common<'_> {
        let secret = self.bundle.secret.as_ref();
        Common {
            trust_domain: Some(&self.trust_domain),
            trust_domain_text: self.trust_domain.as_str(),
            daemon_identity: Some(&self.daemon_identity),
            state_dir: &self.state_dir,
            lifetimes: &self.certificates,
            kubernetes: self.kubernetes.as_ref(),
            bundle_secret: secret.map_or(crate::bundle::DEFAULT_SECRET, |s| {
                (s.namespace.as_str(), s.name.as_str())
            }),
            provider: Some(&self.provider),
            key_custody: self.key_custody.as_ref(),
            propagation_delay: self.rotation.propagation_delay,
            denied_file: &self.auth.denied_file,
        }
    }

    /// Validate the core sections, then every feature's against them.
    fn build(raw: RawConfig, sections: &Sections<'_>) -> Result<Self, ConfigError> {
        let mut errors = Errors::default();
        let core = Core::validate(&raw, &mut errors);
        let mut warnings = Vec::new();
        let denied_file = raw
            .auth
            .validate(&raw.state_dir, core.kubernetes.is_some())
            .denied_file;
        let common = Common {
            trust_domain: core.trust_domain.as_ref(),
            trust_domain_text: &raw.trust_domain,
            daemon_identity: core.daemon_identity.as_ref(),
            state_dir: &raw.state_dir,
            lifetimes: &core.certificates,
            kubernetes: core.kubernetes.as_ref(),
            bundle_secret: raw.bundle.secret(),
            provider: core.provider.as_ref(),
            key_custody: core.key_custody.as_ref(),
            propagation_delay: core.rotation.propagation_delay,
            denied_file: &denied_file,
        };
        let mut features = Vec::new();
        for definition in crate::features::ALL {
            let configured = (definition.configure)(sections, &common, &mut errors, &mut warnings)
                .map_err(|e| syntax(e.path, e.message))?;
            features.extend(configured);
        }
        check_listeners(&raw, &features, &mut errors);
        core.into_config(raw, Features::new(features), warnings, errors)
    }
}

/// The file's top-level mapping (empty for an empty file); its keys must
/// be core sections or a feature's.
fn top_level(text: &str) -> Result<serde_yaml_ng::Mapping, ConfigError> {
    let value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| syntax(".".into(), e.to_string()))?;
    let root = match value {
        serde_yaml_ng::Value::Null => serde_yaml_ng::Mapping::new(),
        serde_yaml_ng::Value::Mapping(m) => m,
        _ => return Err(syntax(".".into(), "expected a mapping of sections".into())),
    };
    let known: Vec<&str> = CORE_SECTIONS
        .iter()
        .copied()
        .chain(
            crate::features::ALL
                .iter()
                .flat_map(|f| f.sections.iter().copied()),
        )
        .collect();
    for key in root.keys() {
        let name = key.as_str().unwrap_or_default();
        if !known.contains(&name) {
            return Err(syntax(
                ".".into(),
                format!(
                    "unknown field `{name}`, expected one of `{}`",
                    known.join("`, `")
                ),
            ));
        }
    }
    Ok(root)
}

/// A syntax error at `path` (`.` is the top level).
fn syntax(path: String, message: String) -> ConfigError {
    ConfigError::Syntax {
        path: if path == "." {
            "(top level)".into()
        } else {
            path
        },
        message,
    }
}

/// The core sections, validated: each `None` when invalid (the problem is
/// in the errors).
struct Core {
    trust_domain: Option<TrustDomain>,
    daemon_identity: Option<Identity>,
    server_names: Vec<ServerName>,
    certificates: Lifetimes,
    kubernetes: Option<KubernetesConfig>,
    provider: Option<ProviderConfig>,
    key_custody: Option<CustodyConfig>,
    bundle: BundleConfig,
    api: Option<ApiLimits>,
    rotation: RotationConfig,
}

impl Core {
    fn validate(raw: &RawConfig, errors: &mut Errors) -> Self {
        let trust_domain = TrustDomain::new(&raw.trust_domain)
            .map_err(|e| errors.add("trust_domain", e))
            .ok();
        let daemon_identity = trust_domain.clone().and_then(|td| {
            let d = &raw.daemon_identity;
            Identity::new(td, &d.namespace, &d.service_account)
                .map_err(|e| errors.add("daemon_identity", e))
                .ok()
        });
        let certificates = raw.certificates.validate(errors);
        let kubernetes = raw.kubernetes.validate(errors);
        let cluster = kubernetes.is_some();
        let custody = raw.key_custody.validate(errors);
        let key_custody = custody.clone().ok().flatten();
        let provider = custody.as_ref().ok().and_then(|custody| {
            raw.provider.validate(
                &ProviderContext {
                    state_dir: &raw.state_dir,
                    max_ttl: certificates.max_ttl,
                    cluster,
                    custody: custody.as_ref(),
                },
                errors,
            )
        });
        let bundle = raw.bundle.validate(&raw.state_dir, cluster, errors);
        if let (Some(k), Some(secret)) = (&kubernetes, &bundle.secret) {
            if secret.namespace == k.namespace && secret.name == k.root_secret {
                errors.add(
                    "kubernetes.root_secret",
                    "must differ from bundle.kubernetes_secret: the root key never goes into the bundle Secret",
                );
            }
        }
        Self {
            server_names: crate::validation::server_names(
                "server_names",
                &raw.server_names,
                errors,
            ),
            api: raw.api.validate(errors),
            rotation: raw.rotation.validate(),
            trust_domain,
            daemon_identity,
            certificates,
            kubernetes,
            provider,
            key_custody,
            bundle,
        }
    }

    fn into_config(
        self,
        raw: RawConfig,
        features: Features,
        warnings: Vec<String>,
        errors: Errors,
    ) -> Result<Config, ConfigError> {
        let cluster = self.kubernetes.is_some();
        match (
            self.trust_domain,
            self.daemon_identity,
            self.provider,
            self.api,
        ) {
            (Some(trust_domain), Some(daemon_identity), Some(provider), Some(api))
                if errors.is_empty() =>
            {
                Ok(Config {
                    trust_domain,
                    listen: raw.listen,
                    metrics_listen: raw.metrics_listen,
                    daemon_identity,
                    server_names: self.server_names,
                    provider,
                    key_custody: self.key_custody,
                    certificates: self.certificates,
                    bundle: self.bundle,
                    auth: raw.auth.validate(&raw.state_dir, cluster),
                    api,
                    kubernetes: self.kubernetes,
                    rotation: self.rotation,
                    features,
                    warnings,
                    state_dir: raw.state_dir,
                    source: None,
                    source_text: None,
                })
            }
            _ => Err(ConfigError::Invalid(errors.into_vec())),
        }
    }
}

/// No two listeners may bind one port: the core's two, then each
/// feature's, checked against every one before it.
fn check_listeners(raw: &RawConfig, features: &[std::sync::Arc<dyn Feature>], errors: &mut Errors) {
    let listeners: Vec<(&str, SocketAddr)> = [
        ("listen", raw.listen),
        ("metrics_listen", raw.metrics_listen),
    ]
    .into_iter()
    .chain(features.iter().flat_map(|f| f.listeners()))
    .collect();
    for (i, (key, addr)) in listeners.iter().enumerate().skip(1) {
        for (other_key, other) in &listeners[..i] {
            if listeners_clash(*addr, *other) {
                errors.add(
                    key,
                    format!("{addr} would take the port of {other_key} {other}"),
                );
            }
        }
    }
}

/// Whether two listeners would bind the same port: the same port (not 0)
/// on the same address, or on any address when one is unspecified.
fn listeners_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshca_tresor::{RootKeyAlgorithm, RootSource};
    use meshca_vault::VaultAuth;

    #[test]
    fn a_later_listener_may_not_take_an_earlier_ones_port() {
        let e = Config::from_yaml(
            "listen: 127.0.0.1:9443\nfederation: { bundle_endpoint: { listen: '0.0.0.0:9443' } }\nistio_ca: { enabled: true, listen: '0.0.0.0:9443' }\n",
        )
        .expect_err("must fail")
        .to_string();
        for clash in [
            "federation.bundle_endpoint.listen: 0.0.0.0:9443 would take the port of listen",
            "istio_ca.listen: 0.0.0.0:9443 would take the port of listen",
            "istio_ca.listen: 0.0.0.0:9443 would take the port of federation.bundle_endpoint.listen",
        ] {
            assert!(e.contains(clash), "{clash:?} not in {e}");
        }
        let apart = "federation: { bundle_endpoint: { listen: '0.0.0.0:8443' } }\nistio_ca: { enabled: true, listen: '0.0.0.0:15012' }\n";
        assert!(Config::from_yaml(apart).is_ok());
    }

    #[test]
    fn the_embedded_default_is_valid_and_uses_tresor_with_a_file_bundle() {
        let c = Config::load(None).expect("embedded default loads");
        assert_eq!(c.listen, "127.0.0.1:9443".parse().expect("addr"));
        assert_eq!(c.metrics_listen, "127.0.0.1:9090".parse().expect("addr"));
        assert_eq!(c.bundle.file, Path::new("./meshca-data/bundle/ca.crt"));
        assert_eq!(c.trust_domain.as_str(), "cluster.local");
        let ProviderConfig::Tresor(t, None) = &c.provider else {
            panic!("the default provider is Tresor");
        };
        assert!(matches!(
            &t.root,
            RootSource::Generated { algorithm: RootKeyAlgorithm::EcdsaP256, dir, .. }
                if dir == Path::new("./meshca-data/tresor")
        ));
    }

    #[test]
    fn an_unknown_key_is_reported_with_its_path() {
        let e =
            Config::from_yaml("provider:\n  kind: tresor\n  tresor:\n    key_algoritm: ed25519\n")
                .expect_err("must fail");
        let msg = e.to_string();
        assert!(msg.contains("provider.tresor"), "{msg}");
        assert!(msg.contains("key_algoritm"), "{msg}");
    }

    #[test]
    fn a_bad_value_is_reported_with_its_path() {
        let e = Config::from_yaml("certificates:\n  max_ttl: forever\n").expect_err("must fail");
        assert!(e.to_string().contains("certificates.max_ttl"), "{e}");
        let e = Config::from_yaml("provider:\n  kind: nope\n").expect_err("must fail");
        assert!(e.to_string().contains("provider.kind"), "{e}");
    }

    #[test]
    fn every_semantic_problem_is_listed_at_once() {
        let e = Config::from_yaml(
            "trust_domain: Not_A_Domain\ncertificates:\n  min_ttl: 2h\n  max_ttl: 1h\n  default_ttl: 3h\nprovider:\n  kind: tresor\n  tresor:\n    root_cert_file: /x\n",
        )
        .expect_err("must fail");
        let msg = e.to_string();
        for needle in [
            "trust_domain:",
            "certificates.min_ttl:",
            "certificates.default_ttl:",
            "provider.tresor.root_key_file:",
        ] {
            assert!(msg.contains(needle), "missing {needle} in {msg}");
        }
    }

    const CUSTODY: &str = "key_custody: { kind: transit, transit: { address: https://bao:8200, auth: { token_env: T } } }\n";

    #[test]
    fn a_root_in_custody_is_made_there_and_kept_apart_from_a_file_root() {
        let c = Config::from_yaml(&format!(
            "{CUSTODY}provider: {{ tresor: {{ key_algorithm: ecdsa-p384, intermediate: {{ validity: 200h }} }} }}\n"
        ))
        .expect("valid");
        let ProviderConfig::Tresor(t, Some(custody)) = &c.provider else {
            panic!("Tresor in custody: {:?}", c.provider);
        };
        assert!(!custody.sign_leaves);
        assert!(matches!(
            &t.root,
            RootSource::InCustody { key_name, dir, algorithm: meshca_provider::crypto::custody::CustodyAlgorithm::EcdsaP384, .. }
                if key_name == "meshca-root" && dir == Path::new("./meshca-data/tresor-transit/meshca-root")
        ));
    }

    #[test]
    fn a_rotated_root_is_kept_beside_the_earlier_ones() {
        let c = Config::from_yaml("{}").expect("valid");
        let ProviderConfig::Tresor(t, None) = &c.provider.at_root_generation(2) else {
            panic!("Tresor: {:?}", c.provider);
        };
        assert!(matches!(
            &t.root,
            RootSource::Generated { dir, generation: 2, .. } if dir == Path::new("./meshca-data/tresor-g2")
        ));
        assert_eq!(c.provider.at_root_generation(0), c.provider);
        let c = Config::from_yaml(&format!(
            "{CUSTODY}provider: {{ tresor: {{ intermediate: {{ validity: 200h }} }} }}\n"
        ))
        .expect("valid");
        let ProviderConfig::Tresor(t, Some(_)) = &c.provider.at_root_generation(1) else {
            panic!("Tresor in custody: {:?}", c.provider);
        };
        assert!(matches!(
            &t.root,
            RootSource::InCustody { key_name, dir, .. }
                if key_name == "meshca-root-g1" && dir == Path::new("./meshca-data/tresor-transit/meshca-root-g1")
        ));
    }

    #[test]
    fn an_rsa_root_may_be_made_in_custody() {
        let c = Config::from_yaml(&format!(
            "{CUSTODY}provider: {{ tresor: {{ key_algorithm: rsa-3072, intermediate: {{ validity: 200h }} }} }}\n"
        ))
        .expect("valid");
        let ProviderConfig::Tresor(t, Some(_)) = &c.provider else {
            panic!("Tresor in custody: {:?}", c.provider);
        };
        assert!(matches!(
            &t.root,
            RootSource::InCustody {
                algorithm: meshca_provider::crypto::custody::CustodyAlgorithm::Rsa3072,
                ..
            }
        ));
    }

    #[test]
    fn what_a_root_in_custody_cannot_have_is_named() {
        let e = Config::from_yaml(&format!(
            "{CUSTODY}provider: {{ tresor: {{ key_algorithm: ed25519, root_cert_file: /x, root_key_file: /y, post_quantum: {{}} }} }}\n"
        ))
        .expect_err("refused");
        let msg = e.to_string();
        for needle in [
            "provider.tresor.root_cert_file: a root brought as files keeps its key in a file",
            "provider.tresor.post_quantum: key_custody.kind transit holds no ML-DSA keys",
            "provider.tresor.intermediate: required with key_custody.kind transit",
            "provider.tresor.key_algorithm: ed25519 is not usable here",
        ] {
            assert!(msg.contains(needle), "missing {needle} in {msg}");
        }
        let e = Config::from_yaml(
            "key_custody: { kind: transit, sign_leaves: true, transit: { address: https://bao:8200, auth: { token_env: T } } }\nprovider: { tresor: { intermediate: { validity: 200h } } }\n",
        )
        .expect_err("refused");
        assert!(
            e.to_string()
                .contains("remove provider.tresor.intermediate"),
            "{e}"
        );
    }

    #[test]
    fn jwt_keys_in_custody_are_ecdsa_keys() {
        let tresor = "provider: { tresor: { intermediate: { validity: 200h } } }\n";
        let e = Config::from_yaml(&format!(
            "{CUSTODY}{tresor}jwt_svids: {{ enabled: true, key_type: rsa-2048 }}\n"
        ))
        .expect_err("refused");
        assert!(
            e.to_string().contains(
                "jwt_svids.key_type: RS256: key_custody.kind transit holds ECDSA keys only"
            ),
            "{e}"
        );
        let c = Config::from_yaml(&format!(
            "{CUSTODY}{tresor}jwt_svids: {{ enabled: true, key_type: ecdsa-p384 }}\n"
        ))
        .expect("P-384 keys are held in custody");
        assert_eq!(c.key_custody.map(|k| k.key_prefix), Some("meshca".into()));
    }

    #[test]
    fn vault_needs_exactly_one_auth_method_and_explicit_http() {
        let e = Config::from_yaml(
            "provider:\n  kind: vault\n  vault:\n    address: http://v:8200\n    auth: { token_file: /t, token_env: T }\n",
        )
        .expect_err("must fail");
        let msg = e.to_string();
        assert!(msg.contains("provider.vault.auth:"), "{msg}");
        assert!(msg.contains("provider.vault.address:"), "{msg}");

        let e = Config::from_yaml("provider:\n  kind: vault\n").expect_err("must fail");
        assert!(e.to_string().contains("provider.vault:"), "{e}");

        let e = Config::from_yaml(
            "provider:\n  kind: vault\n  vault:\n    address: https://v:8200\n    auth: { token: s.secret }\n",
        )
        .expect_err("a token in the config file itself is refused");
        assert!(e.to_string().contains("provider.vault.auth"), "{e}");

        let c = Config::from_yaml(
            "provider:\n  kind: vault\n  vault:\n    address: https://v:8200\n    auth: { approle: { role_id: r, secret_id_file: /s } }\n",
        )
        .expect("valid");
        let ProviderConfig::Vault(v) = c.provider else {
            panic!("vault");
        };
        assert_eq!(
            (v.mount.as_str(), v.role.as_str()),
            ("pki", "openservicemesh")
        );
        assert!(
            matches!(v.connection.auth, VaultAuth::AppRole { ref mount, .. } if mount == "approle")
        );
    }
}
