//! meshca's configuration: one YAML file, parsed into raw serde structs that
//! refuse unknown keys, then validated once into [`Config`].
//!
//! Each area owns its section: the `Raw…` struct as written, its defaults
//! and its validation live next to the component that uses it (`api`,
//! `auth`, `bundle`, `cluster`, `ingress`, `issuer`, `provider`,
//! `rollout`). This module only assembles them and reports every problem at
//! once. Validation never looks at the environment: whether meshca runs in
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
use crate::federation::{FederationConfig, FederationContext, RawFederation};
use crate::ingress::{IngressConfig, IngressContext, RawIngress};
use crate::issuer::{Lifetimes, RawLifetimes};
use crate::istio_ca::{IstioCaConfig, RawIstioCa};
use crate::jwt::{JwtConfig, RawJwtSvids, RawOidc};
use crate::pod_certificates::{PodCertificatesConfig, RawPodCertificates};
use crate::provider::{ProviderConfig, ProviderContext, RawProvider};
use crate::rollout::{RawRotation, RotationConfig};
use crate::validation::{is_dns_name, Errors};

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
    /// Ingress policy.
    pub ingress: IngressConfig,
    /// Signer changes.
    pub rotation: RotationConfig,
    /// Kubernetes pod certificates.
    pub pod_certificates: PodCertificatesConfig,
    /// JWT-SVIDs; `None` when `jwt_svids.enabled: false`.
    pub jwt_svids: Option<JwtConfig>,
    /// The public listener of OIDC discovery and the JWKS, if any.
    pub oidc_listen: Option<SocketAddr>,
    /// SPIFFE federation: the bundle endpoint and the peers.
    pub federation: FederationConfig,
    /// Istio's certificate service; `None` when `istio_ca.enabled: false`.
    pub istio_ca: Option<IstioCaConfig>,
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

/// The file as written.
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
    ingress: RawIngress,
    rotation: RawRotation,
    pod_certificates: RawPodCertificates,
    jwt_svids: RawJwtSvids,
    oidc: RawOidc,
    federation: RawFederation,
    istio_ca: RawIstioCa,
}

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
            ingress: RawIngress::default(),
            rotation: RawRotation::default(),
            pod_certificates: RawPodCertificates::default(),
            jwt_svids: RawJwtSvids::default(),
            oidc: RawOidc::default(),
            federation: RawFederation::default(),
            istio_ca: RawIstioCa::default(),
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
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::Syntax {
                path: if path == "." {
                    "(top level)".into()
                } else {
                    path
                },
                message: e.into_inner().to_string(),
            }
        })?;
        let mut config = Self::try_from(raw)?;
        config.warnings = warnings::warnings(&config, &warnings::written_keys(text));
        Ok(config)
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let mut errors = Errors::default();
        let trust_domain = TrustDomain::new(&raw.trust_domain)
            .map_err(|e| errors.add("trust_domain", e))
            .ok();
        let daemon_identity = trust_domain.clone().and_then(|td| {
            let d = &raw.daemon_identity;
            Identity::new(td, &d.namespace, &d.service_account)
                .map_err(|e| errors.add("daemon_identity", e))
                .ok()
        });
        let server_names = server_names("server_names", &raw.server_names, &mut errors);
        if listeners_clash(raw.listen, raw.metrics_listen) {
            errors.add(
                "metrics_listen",
                format!(
                    "{} would take the port of listen {}",
                    raw.metrics_listen, raw.listen
                ),
            );
        }
        let certificates = raw.certificates.validate(&mut errors);
        let kubernetes = raw.kubernetes.validate(&mut errors);
        let cluster = kubernetes.is_some();
        let provider = raw.provider.validate(
            &ProviderContext {
                state_dir: &raw.state_dir,
                max_ttl: certificates.max_ttl,
                cluster,
            },
            &mut errors,
        );
        let bundle = raw.bundle.validate(&raw.state_dir, cluster, &mut errors);
        if let (Some(k), Some(secret)) = (&kubernetes, &bundle.secret) {
            if secret.namespace == k.namespace && secret.name == k.root_secret {
                errors.add(
                    "kubernetes.root_secret",
                    "must differ from bundle.kubernetes_secret: the root key never goes into the bundle Secret",
                );
            }
        }
        let ingress = raw.ingress.validate(
            &IngressContext {
                trust_domain: &raw.trust_domain,
                lifetimes: &certificates,
                cluster,
                bundle_secret: raw.bundle.secret(),
            },
            &mut errors,
        );
        let api = raw.api.validate(&mut errors);
        let pod_certificates =
            raw.pod_certificates
                .validate(certificates.max_ttl, cluster, &mut errors);
        let jwt_svids = raw.jwt_svids.validate(&mut errors);
        if let Some(oidc) = raw.oidc.listen {
            if !raw.jwt_svids.enabled() {
                errors.add(
                    "oidc.listen",
                    "serves JWT-SVID discovery: needs jwt_svids.enabled: true",
                );
            }
            for (key, other) in [
                ("listen", raw.listen),
                ("metrics_listen", raw.metrics_listen),
            ] {
                if listeners_clash(oidc, other) {
                    errors.add(
                        "oidc.listen",
                        format!("{oidc} would take the port of {key} {other}"),
                    );
                }
            }
        }
        let federation = raw.federation.validate(
            &FederationContext {
                trust_domain: trust_domain.as_ref(),
                daemon_identity: daemon_identity.as_ref(),
            },
            &mut errors,
        );
        let istio_ca = raw.istio_ca.validate(&mut errors);
        // The first three are checked against each other above; each later
        // listener must not take the port of any before it.
        let listeners = [
            ("listen", Some(raw.listen)),
            ("metrics_listen", Some(raw.metrics_listen)),
            ("oidc.listen", raw.oidc.listen),
            ("federation.bundle_endpoint.listen", raw.federation.listen()),
            ("istio_ca.listen", raw.istio_ca.listen()),
        ];
        for (i, (key, addr)) in listeners.iter().enumerate().skip(3) {
            let Some(addr) = *addr else { continue };
            for (other_key, other) in &listeners[..i] {
                if other.is_some_and(|other| listeners_clash(addr, other)) {
                    errors.add(key, format!("{addr} would take the port of {other_key}"));
                }
            }
        }
        match (trust_domain, daemon_identity, provider, api) {
            (Some(trust_domain), Some(daemon_identity), Some(provider), Some(api))
                if errors.is_empty() =>
            {
                Ok(Config {
                    trust_domain,
                    listen: raw.listen,
                    metrics_listen: raw.metrics_listen,
                    daemon_identity,
                    server_names,
                    provider,
                    certificates,
                    bundle,
                    auth: raw.auth.validate(&raw.state_dir, cluster),
                    api,
                    kubernetes,
                    ingress,
                    rotation: raw.rotation.validate(),
                    pod_certificates,
                    jwt_svids,
                    oidc_listen: raw.oidc.listen,
                    federation,
                    istio_ca,
                    warnings: Vec::new(),
                    state_dir: raw.state_dir,
                    source: None,
                    source_text: None,
                })
            }
            _ => Err(ConfigError::Invalid(errors.into_vec())),
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

/// The names the serving certificate carries besides the daemon identity.
/// Names a certificate of meshca's is dialled by, as written under `key`.
pub(crate) fn server_names(key: &str, names: &[String], errors: &mut Errors) -> Vec<ServerName> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let parsed = ServerName::parse(name);
            if let ServerName::Dns(d) = &parsed {
                if !is_dns_name(d) && !d.starts_with("*.") {
                    errors.add(
                        &format!("{key}[{i}]"),
                        format!("{name:?} is neither an IP address nor a lower-case DNS name"),
                    );
                }
            }
            parsed
        })
        .collect()
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
        let ProviderConfig::Tresor(t) = &c.provider else {
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
        assert!(matches!(v.auth, VaultAuth::AppRole { ref mount, .. } if mount == "approle"));
    }
}
