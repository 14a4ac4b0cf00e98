//! meshca's configuration: one YAML file, parsed into raw serde structs that
//! refuse unknown keys, then validated once into [`Config`].
//!
//! Every later component receives already-valid values; nothing re-checks a
//! setting at use. `meshca config check` runs exactly this code.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshca_cert_manager::{CaSource, CertManagerConfig};
use meshca_provider::{Identity, ServerName, TrustDomain};
use meshca_tresor::{RootKeyAlgorithm, RootSource, TresorConfig};
use meshca_vault::{VaultAuth, VaultConfig};

pub use crate::kube::{KubernetesConfig, SecretRef};
use serde::Deserialize;
use thiserror::Error;

/// The configuration used when no file is given: Tresor with a generated
/// ECDSA P-256 root under `./meshca-data`, a file bundle, static tokens.
pub const EMBEDDED_DEFAULT: &str = include_str!("default-config.yaml");

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
    /// The cluster, when meshca runs with one.
    pub kubernetes: Option<KubernetesConfig>,
    /// Ingress policy.
    pub ingress: IngressConfig,
    /// Signer changes.
    pub rotation: RotationConfig,
    /// The file this configuration was read from; the daemon watches it
    /// and applies the settings that can change at run time.
    pub source: Option<PathBuf>,
}

/// How a change of signer is rolled out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationConfig {
    /// How long the bundle with old and new anchors must have been
    /// published before the new signer signs: long enough for every agent
    /// to fetch it (twice the agents' bundle refresh by default).
    pub propagation_delay: Duration,
}

/// How ingress controllers reach mesh backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressConfig {
    /// Whether meshca acts on Ingress objects (needs a cluster).
    pub enabled: bool,
    /// HTTP (default) or HTTPS from the controller to backends; HTTPS
    /// turns HTTP off for ingress backends. Changes apply without restart.
    pub backend_protocol: BackendProtocol,
    /// Namespaces whose Ingresses meshca handles, besides those labelled
    /// `openservicemesh.io/monitored-by`.
    pub monitored_namespaces: Vec<String>,
    /// The controller's own certificate (mTLS to backends), if any.
    pub client_certificate: Option<IngressClientCertificate>,
    /// Annotate Ingresses for [`IngressConfig::controller`] instead of
    /// leaving it to `meshca ingress render`.
    pub manage_annotations: bool,
    /// The controller whose annotations are managed (nginx or AGIC).
    pub controller: crate::ingress::Controller,
    /// `namespace/name` of the bundle Secret controllers read.
    pub bundle_secret: (String, String),
}

/// HTTP or HTTPS to ingress backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendProtocol {
    /// Plain HTTP (the default, as OSM's).
    Http,
    /// HTTPS, verified against the mesh CA.
    Https,
}

/// The ingress controller's client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressClientCertificate {
    /// The identity in it (e.g. `ingress-nginx.ingress-nginx.cluster.local`).
    pub identity: Identity,
    /// Its lifetime.
    pub validity: Duration,
    /// `namespace/name` of the Secret it is kept in.
    pub secret: (String, String),
}

/// Which backend signs, with its settings.
#[derive(Clone, Debug)]
pub enum ProviderConfig {
    /// meshca's own root.
    Tresor(TresorConfig),
    /// A Vault / OpenBao PKI engine.
    Vault(VaultConfig),
    /// cert-manager, through CertificateRequests (needs a cluster).
    CertManager(CertManagerConfig),
}

impl ProviderConfig {
    /// The configured kind, as written in `provider.kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Tresor(_) => "tresor",
            Self::Vault(_) => "vault",
            Self::CertManager(_) => "cert-manager",
        }
    }
}

/// Bounds on certificate lifetimes; a requested TTL is clamped into them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    /// Used when a request names none.
    pub default_ttl: Duration,
    /// The shortest lifetime handed out.
    pub min_ttl: Duration,
    /// The longest lifetime handed out.
    pub max_ttl: Duration,
}

impl Lifetimes {
    /// The lifetime to request for a caller who asked for `requested`.
    pub fn clamp(&self, requested: Option<Duration>) -> Duration {
        requested
            .unwrap_or(self.default_ttl)
            .clamp(self.min_ttl, self.max_ttl)
    }
}

/// Where the trust bundle goes.
#[derive(Clone, Debug)]
pub struct BundleConfig {
    /// The bundle file, written atomically.
    pub file: PathBuf,
    /// The bundle Secret (`ca.crt`), with a cluster.
    pub secret: Option<SecretRef>,
    /// How often the provider's anchors are re-read.
    pub refresh_interval: Duration,
}

/// Caller authentication.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// The static token store (hashes only).
    pub tokens_file: PathBuf,
    /// ServiceAccount tokens checked with TokenReview, with a cluster.
    pub kubernetes: Option<TokenReviewConfig>,
}

/// How ServiceAccount tokens are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenReviewConfig {
    /// The audience the projected tokens are issued for.
    pub audience: String,
    /// How long an accepted token is remembered.
    pub cache_ttl: Duration,
}

/// Limits that protect the signing API.
#[derive(Clone, Copy, Debug)]
pub struct ApiLimits {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Signing requests processed at once; more get 429.
    pub max_in_flight: usize,
    /// Sustained signing requests per second allowed to one identity.
    pub per_identity_per_second: NonZeroU32,
    /// Requests one identity may make at once before the sustained rate
    /// applies.
    pub per_identity_burst: NonZeroU32,
}

// === raw (as written) ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_trust_domain")]
    trust_domain: String,
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    #[serde(default = "default_metrics_listen")]
    metrics_listen: SocketAddr,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default)]
    daemon_identity: RawDaemonIdentity,
    #[serde(default = "default_server_names")]
    server_names: Vec<String>,
    #[serde(default)]
    provider: RawProvider,
    #[serde(default)]
    certificates: RawLifetimes,
    #[serde(default)]
    bundle: RawBundle,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    kubernetes: RawKubernetes,
    #[serde(default)]
    ingress: RawIngress,
    #[serde(default)]
    rotation: RawRotation,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRotation {
    #[serde(default = "default_propagation_delay", with = "humantime_serde")]
    propagation_delay: Duration,
}

impl Default for RawRotation {
    fn default() -> Self {
        Self {
            propagation_delay: default_propagation_delay(),
        }
    }
}

fn default_propagation_delay() -> Duration {
    Duration::from_secs(120)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIngress {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    backend_protocol: RawBackendProtocol,
    #[serde(default)]
    monitored_namespaces: Vec<String>,
    client_certificate: Option<RawIngressClient>,
    #[serde(default)]
    manage_annotations: bool,
    #[serde(default = "default_ingress_controller")]
    controller: String,
}

fn default_ingress_controller() -> String {
    "nginx".into()
}

impl Default for RawIngress {
    fn default() -> Self {
        Self {
            enabled: false,
            backend_protocol: RawBackendProtocol::default(),
            monitored_namespaces: Vec::new(),
            client_certificate: None,
            manage_annotations: false,
            controller: default_ingress_controller(),
        }
    }
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawBackendProtocol {
    #[default]
    Http,
    Https,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIngressClient {
    /// `SA.NS.TD` form, e.g. ingress-nginx.ingress-nginx.cluster.local.
    san: String,
    #[serde(default = "default_ingress_client_validity", with = "humantime_serde")]
    validity: Duration,
    secret: RawSecretRef,
}

fn default_ingress_client_validity() -> Duration {
    Duration::from_secs(24 * 3600)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    /// Absent: on when a kubeconfig is given or meshca runs in a pod.
    enabled: Option<bool>,
    kubeconfig: Option<PathBuf>,
    #[serde(default = "default_meshca_namespace")]
    namespace: String,
    #[serde(default = "default_root_secret")]
    root_secret: String,
    #[serde(default = "default_lease_name")]
    lease_name: String,
    #[serde(default = "default_lease_duration", with = "humantime_serde")]
    lease_duration: Duration,
}

impl Default for RawKubernetes {
    fn default() -> Self {
        Self {
            enabled: None,
            kubeconfig: None,
            namespace: default_meshca_namespace(),
            root_secret: default_root_secret(),
            lease_name: default_lease_name(),
            lease_duration: default_lease_duration(),
        }
    }
}

fn default_meshca_namespace() -> String {
    "osm-system".into()
}
fn default_root_secret() -> String {
    "meshca-tresor-root".into()
}
fn default_lease_name() -> String {
    "meshca-leader".into()
}
fn default_lease_duration() -> Duration {
    Duration::from_secs(15)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecretRef {
    #[serde(default = "default_meshca_namespace")]
    namespace: String,
    #[serde(default = "default_bundle_secret")]
    name: String,
}

impl Default for RawSecretRef {
    fn default() -> Self {
        Self {
            namespace: default_meshca_namespace(),
            name: default_bundle_secret(),
        }
    }
}

fn default_bundle_secret() -> String {
    "osm-ca-bundle".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenReview {
    #[serde(default = "default_audience")]
    audience: String,
    #[serde(default = "default_review_cache", with = "humantime_serde")]
    cache_ttl: Duration,
}

impl Default for RawTokenReview {
    fn default() -> Self {
        Self {
            audience: default_audience(),
            cache_ttl: default_review_cache(),
        }
    }
}

fn default_audience() -> String {
    "meshca".into()
}
fn default_review_cache() -> Duration {
    Duration::from_secs(30)
}

fn default_trust_domain() -> String {
    "cluster.local".into()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9443))
}
fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("./meshca-data")
}
fn default_server_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    kind: RawProviderKind,
    #[serde(default)]
    tresor: RawTresor,
    vault: Option<RawVault>,
    cert_manager: Option<RawCertManager>,
}

impl Default for RawProvider {
    fn default() -> Self {
        Self {
            kind: RawProviderKind::Tresor,
            tresor: RawTresor::default(),
            vault: None,
            cert_manager: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawProviderKind {
    Tresor,
    Vault,
    CertManager,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertManager {
    #[serde(default = "default_issuer_name")]
    issuer_name: String,
    #[serde(default = "default_issuer_kind")]
    issuer_kind: String,
    #[serde(default = "default_issuer_group")]
    issuer_group: String,
    #[serde(default = "default_meshca_namespace")]
    namespace: String,
    #[serde(default = "default_cert_manager_timeout", with = "humantime_serde")]
    timeout: Duration,
    ca_from: Option<RawCaFrom>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaFrom {
    secret: Option<RawKeyRef>,
    config_map: Option<RawKeyRef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyRef {
    name: String,
    #[serde(default = "default_ca_key")]
    key: String,
}

fn default_issuer_name() -> String {
    "osm-ca".into()
}
fn default_issuer_kind() -> String {
    "Issuer".into()
}
fn default_issuer_group() -> String {
    "cert-manager.io".into()
}
fn default_cert_manager_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_ca_key() -> String {
    "ca.crt".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVault {
    address: String,
    #[serde(default = "default_vault_mount")]
    mount: String,
    #[serde(default = "default_vault_role")]
    role: String,
    ca_file: Option<PathBuf>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
    #[serde(default)]
    allow_http: bool,
    #[serde(default = "default_vault_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default = "default_vault_anchors_refresh", with = "humantime_serde")]
    anchors_refresh: Duration,
    auth: RawVaultAuth,
}

fn default_vault_mount() -> String {
    "pki".into()
}
fn default_vault_role() -> String {
    "openservicemesh".into()
}
fn default_vault_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_vault_anchors_refresh() -> Duration {
    Duration::from_secs(60)
}

/// Exactly one of the fields must be set.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVaultAuth {
    token_file: Option<PathBuf>,
    token_env: Option<String>,
    kubernetes: Option<RawVaultKubernetes>,
    approle: Option<RawVaultAppRole>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVaultKubernetes {
    #[serde(default = "default_kubernetes_mount")]
    mount: String,
    role: String,
    #[serde(default = "default_jwt_file")]
    jwt_file: PathBuf,
}

fn default_kubernetes_mount() -> String {
    "kubernetes".into()
}
fn default_jwt_file() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVaultAppRole {
    #[serde(default = "default_approle_mount")]
    mount: String,
    role_id: String,
    secret_id_file: PathBuf,
}

fn default_approle_mount() -> String {
    "approle".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
enum RawKeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTresor {
    #[serde(default = "default_key_algorithm")]
    key_algorithm: RawKeyAlgorithm,
    #[serde(default = "default_root_validity", with = "humantime_serde")]
    root_validity: Duration,
    #[serde(default = "default_common_name")]
    common_name: String,
    root_cert_file: Option<PathBuf>,
    root_key_file: Option<PathBuf>,
    intermediate: Option<RawIntermediate>,
}

fn default_key_algorithm() -> RawKeyAlgorithm {
    RawKeyAlgorithm::EcdsaP256
}
fn default_root_validity() -> Duration {
    Duration::from_secs(87_600 * 3600)
}
fn default_common_name() -> String {
    "meshca root CA".into()
}

impl Default for RawTresor {
    fn default() -> Self {
        Self {
            key_algorithm: default_key_algorithm(),
            root_validity: default_root_validity(),
            common_name: default_common_name(),
            root_cert_file: None,
            root_key_file: None,
            intermediate: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntermediate {
    #[serde(with = "humantime_serde")]
    validity: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLifetimes {
    #[serde(default = "default_ttl", with = "humantime_serde")]
    default_ttl: Duration,
    #[serde(default = "default_min_ttl", with = "humantime_serde")]
    min_ttl: Duration,
    #[serde(default = "default_max_ttl", with = "humantime_serde")]
    max_ttl: Duration,
}

fn default_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_min_ttl() -> Duration {
    Duration::from_secs(600)
}
fn default_max_ttl() -> Duration {
    Duration::from_secs(72 * 3600)
}

impl Default for RawLifetimes {
    fn default() -> Self {
        Self {
            default_ttl: default_ttl(),
            min_ttl: default_min_ttl(),
            max_ttl: default_max_ttl(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBundle {
    file: Option<PathBuf>,
    #[serde(default)]
    kubernetes_secret: RawSecretRef,
    #[serde(default, with = "humantime_serde")]
    refresh_interval: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    tokens_file: Option<PathBuf>,
    #[serde(default)]
    kubernetes: RawTokenReview,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    #[serde(default = "default_max_body")]
    max_body_bytes: usize,
    #[serde(default = "default_max_in_flight")]
    max_in_flight: usize,
    #[serde(default = "default_per_identity_per_second")]
    per_identity_per_second: u32,
    #[serde(default = "default_per_identity_burst")]
    per_identity_burst: u32,
}

fn default_per_identity_per_second() -> u32 {
    50
}
fn default_per_identity_burst() -> u32 {
    200
}

fn default_max_body() -> usize {
    64 * 1024
}
fn default_max_in_flight() -> usize {
    1024
}

impl Default for RawApi {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body(),
            max_in_flight: default_max_in_flight(),
            per_identity_per_second: default_per_identity_per_second(),
            per_identity_burst: default_per_identity_burst(),
        }
    }
}

// === loading ===

impl Config {
    /// Load `path`, or the embedded default when `None`.
    ///
    /// # Errors
    /// [`ConfigError`] listing every problem, each with its key's path.
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
        Self::try_from(raw)
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let mut errors = Vec::new();
        let mut err = |path: &str, msg: String| errors.push(format!("{path}: {msg}"));

        let trust_domain = TrustDomain::new(&raw.trust_domain)
            .map_err(|e| err("trust_domain", e.to_string()))
            .ok();
        let daemon_identity = trust_domain.clone().and_then(|td| {
            Identity::new(
                td,
                &raw.daemon_identity.namespace,
                &raw.daemon_identity.service_account,
            )
            .map_err(|e| err("daemon_identity", e.to_string()))
            .ok()
        });

        let mut server_names = Vec::new();
        for (i, name) in raw.server_names.iter().enumerate() {
            let parsed = ServerName::parse(name);
            if let ServerName::Dns(d) = &parsed {
                if TrustDomain::new(d).is_err() && !d.starts_with("*.") {
                    err(
                        &format!("server_names[{i}]"),
                        format!("{name:?} is neither an IP address nor a lower-case DNS name"),
                    );
                }
            }
            server_names.push(parsed);
        }

        let lt = &raw.certificates;
        if lt.min_ttl.is_zero() {
            err("certificates.min_ttl", "must be greater than zero".into());
        }
        if lt.min_ttl > lt.max_ttl {
            err(
                "certificates.min_ttl",
                format!(
                    "{} is longer than certificates.max_ttl {}",
                    humantime::format_duration(lt.min_ttl),
                    humantime::format_duration(lt.max_ttl)
                ),
            );
        }
        if lt.default_ttl < lt.min_ttl || lt.default_ttl > lt.max_ttl {
            err(
                "certificates.default_ttl",
                "must lie between certificates.min_ttl and certificates.max_ttl".into(),
            );
        }

        let vault = match (&raw.provider.kind, &raw.provider.vault) {
            (RawProviderKind::Vault, None) => {
                err(
                    "provider.vault",
                    "required when provider.kind is vault".into(),
                );
                None
            }
            (_, Some(v)) => vault_config(v, &mut err),
            (RawProviderKind::Tresor | RawProviderKind::CertManager, None) => None,
        };
        let t = &raw.provider.tresor;
        let root = match (&t.root_cert_file, &t.root_key_file) {
            (Some(cert), Some(key)) => Some(RootSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => {
                if t.root_validity <= lt.max_ttl {
                    err(
                        "provider.tresor.root_validity",
                        "must be longer than certificates.max_ttl".into(),
                    );
                }
                Some(RootSource::Generated {
                    dir: raw.state_dir.join("tresor"),
                    algorithm: match t.key_algorithm {
                        RawKeyAlgorithm::EcdsaP256 => RootKeyAlgorithm::EcdsaP256,
                        RawKeyAlgorithm::EcdsaP384 => RootKeyAlgorithm::EcdsaP384,
                        RawKeyAlgorithm::Ed25519 => RootKeyAlgorithm::Ed25519,
                    },
                    validity: t.root_validity,
                    common_name: t.common_name.clone(),
                })
            }
            (Some(_), None) => {
                err(
                    "provider.tresor.root_key_file",
                    "required when provider.tresor.root_cert_file is set".into(),
                );
                None
            }
            (None, Some(_)) => {
                err(
                    "provider.tresor.root_cert_file",
                    "required when provider.tresor.root_key_file is set".into(),
                );
                None
            }
        };
        if let Some(i) = &t.intermediate {
            if i.validity <= lt.max_ttl {
                err(
                    "provider.tresor.intermediate.validity",
                    "must be longer than certificates.max_ttl".into(),
                );
            }
        }

        if raw.api.max_body_bytes < 1024 {
            err("api.max_body_bytes", "must be at least 1024".into());
        }
        if raw.api.max_in_flight == 0 {
            err("api.max_in_flight", "must be at least 1".into());
        }
        let per_identity_per_second = NonZeroU32::new(raw.api.per_identity_per_second);
        if per_identity_per_second.is_none() {
            err("api.per_identity_per_second", "must be at least 1".into());
        }
        let per_identity_burst = NonZeroU32::new(raw.api.per_identity_burst);
        if per_identity_burst.is_none() {
            err("api.per_identity_burst", "must be at least 1".into());
        }
        let refresh_interval = raw
            .bundle
            .refresh_interval
            .unwrap_or(Duration::from_secs(60));
        if refresh_interval < Duration::from_secs(1) {
            err("bundle.refresh_interval", "must be at least 1s".into());
        }

        let k = &raw.kubernetes;
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        let kubernetes = k
            .enabled
            .unwrap_or(k.kubeconfig.is_some() || in_cluster)
            .then(|| KubernetesConfig {
                kubeconfig: k.kubeconfig.clone(),
                namespace: k.namespace.clone(),
                root_secret: k.root_secret.clone(),
                lease_name: k.lease_name.clone(),
                lease_duration: k.lease_duration,
            });
        if kubernetes.is_some() {
            for (path, value) in [
                ("kubernetes.namespace", &k.namespace),
                ("kubernetes.root_secret", &k.root_secret),
                ("kubernetes.lease_name", &k.lease_name),
                (
                    "bundle.kubernetes_secret.namespace",
                    &raw.bundle.kubernetes_secret.namespace,
                ),
                (
                    "bundle.kubernetes_secret.name",
                    &raw.bundle.kubernetes_secret.name,
                ),
            ] {
                if TrustDomain::new(value).is_err() {
                    err(path, format!("{value:?} is not a valid Kubernetes name"));
                }
            }
            if k.lease_duration < Duration::from_secs(3) {
                err("kubernetes.lease_duration", "must be at least 3s".into());
            }
            if raw.bundle.kubernetes_secret.namespace == k.namespace
                && raw.bundle.kubernetes_secret.name == k.root_secret
            {
                err(
                    "kubernetes.root_secret",
                    "must differ from bundle.kubernetes_secret: the root key never goes into the bundle Secret".into(),
                );
            }
        }

        let cert_manager = match (&raw.provider.kind, &raw.provider.cert_manager) {
            (RawProviderKind::CertManager, None) => Some(cert_manager_config(
                &RawCertManager {
                    issuer_name: default_issuer_name(),
                    issuer_kind: default_issuer_kind(),
                    issuer_group: default_issuer_group(),
                    namespace: default_meshca_namespace(),
                    timeout: default_cert_manager_timeout(),
                    ca_from: None,
                },
                &mut err,
            )),
            (_, Some(c)) => Some(cert_manager_config(c, &mut err)),
            _ => None,
        }
        .flatten();
        if matches!(raw.provider.kind, RawProviderKind::CertManager) && kubernetes.is_none() {
            err(
                "provider.kind",
                "cert-manager needs a cluster: set kubernetes.kubeconfig, or run in a pod".into(),
            );
        }

        let ingress_client = match &raw.ingress.client_certificate {
            None => None,
            Some(c) => {
                let td = raw.trust_domain.as_str();
                let parsed = c
                    .san
                    .strip_suffix(&format!(".{td}"))
                    .and_then(|rest| rest.split_once('.'))
                    .and_then(|(sa, ns)| {
                        TrustDomain::new(td)
                            .ok()
                            .and_then(|t| Identity::new(t, ns, sa).ok())
                    });
                if parsed.is_none() {
                    err(
                        "ingress.client_certificate.san",
                        format!("{:?} must be SA.NS.{td}", c.san),
                    );
                }
                if c.validity > lt.max_ttl || c.validity < lt.min_ttl {
                    err(
                        "ingress.client_certificate.validity",
                        "must lie between certificates.min_ttl and certificates.max_ttl".into(),
                    );
                }
                parsed.map(|identity| IngressClientCertificate {
                    identity,
                    validity: c.validity,
                    secret: (c.secret.namespace.clone(), c.secret.name.clone()),
                })
            }
        };
        if raw.ingress.enabled && kubernetes.is_none() {
            err(
                "ingress.enabled",
                "needs a cluster: set kubernetes.kubeconfig, or run in a pod".into(),
            );
        }
        let controller = match raw.ingress.controller.parse::<crate::ingress::Controller>() {
            Ok(crate::ingress::Controller::Gloo) => {
                err(
                    "ingress.controller",
                    "gloo needs Upstream objects, not annotations: use `meshca ingress render --controller gloo`".into(),
                );
                crate::ingress::Controller::Nginx
            }
            Ok(c) => c,
            Err(e) => {
                err("ingress.controller", e);
                crate::ingress::Controller::Nginx
            }
        };
        let ingress = IngressConfig {
            controller,
            enabled: raw.ingress.enabled,
            backend_protocol: match raw.ingress.backend_protocol {
                RawBackendProtocol::Http => BackendProtocol::Http,
                RawBackendProtocol::Https => BackendProtocol::Https,
            },
            monitored_namespaces: raw.ingress.monitored_namespaces.clone(),
            client_certificate: ingress_client,
            manage_annotations: raw.ingress.manage_annotations,
            bundle_secret: (
                raw.bundle.kubernetes_secret.namespace.clone(),
                raw.bundle.kubernetes_secret.name.clone(),
            ),
        };

        let provider = match (&raw.provider.kind, root, vault) {
            (RawProviderKind::Tresor, Some(root), _) => {
                Some(ProviderConfig::Tresor(TresorConfig {
                    root,
                    intermediate_validity: t.intermediate.as_ref().map(|i| i.validity),
                }))
            }
            (RawProviderKind::Vault, _, Some(v)) => Some(ProviderConfig::Vault(v)),
            (RawProviderKind::CertManager, _, _) => cert_manager.map(ProviderConfig::CertManager),
            _ => None,
        };

        match (
            trust_domain,
            daemon_identity,
            provider,
            per_identity_per_second,
            per_identity_burst,
        ) {
            (
                Some(trust_domain),
                Some(daemon_identity),
                Some(provider),
                Some(per_identity_per_second),
                Some(per_identity_burst),
            ) if errors.is_empty() => Ok(Config {
                trust_domain,
                listen: raw.listen,
                metrics_listen: raw.metrics_listen,
                daemon_identity,
                server_names,
                provider,
                certificates: Lifetimes {
                    default_ttl: lt.default_ttl,
                    min_ttl: lt.min_ttl,
                    max_ttl: lt.max_ttl,
                },
                bundle: BundleConfig {
                    secret: kubernetes.as_ref().map(|_| SecretRef {
                        namespace: raw.bundle.kubernetes_secret.namespace.clone(),
                        name: raw.bundle.kubernetes_secret.name.clone(),
                    }),
                    file: raw
                        .bundle
                        .file
                        .unwrap_or_else(|| raw.state_dir.join("bundle").join("ca.crt")),
                    refresh_interval,
                },
                auth: AuthConfig {
                    tokens_file: raw
                        .auth
                        .tokens_file
                        .unwrap_or_else(|| raw.state_dir.join("tokens.yaml")),
                    kubernetes: kubernetes.as_ref().map(|_| TokenReviewConfig {
                        audience: raw.auth.kubernetes.audience.clone(),
                        cache_ttl: raw.auth.kubernetes.cache_ttl,
                    }),
                },
                api: ApiLimits {
                    max_body_bytes: raw.api.max_body_bytes,
                    max_in_flight: raw.api.max_in_flight,
                    per_identity_per_second,
                    per_identity_burst,
                },
                state_dir: raw.state_dir,
                kubernetes,
                ingress,
                rotation: RotationConfig {
                    propagation_delay: raw.rotation.propagation_delay,
                },
                source: None,
            }),
            _ => Err(ConfigError::Invalid(errors)),
        }
    }
}

/// Validate the cert-manager section, reporting problems through `err`.
fn cert_manager_config(
    c: &RawCertManager,
    err: &mut impl FnMut(&str, String),
) -> Option<CertManagerConfig> {
    let mut ok = true;
    if c.issuer_kind != "Issuer" && c.issuer_kind != "ClusterIssuer" {
        err(
            "provider.cert_manager.issuer_kind",
            format!("{:?} must be Issuer or ClusterIssuer", c.issuer_kind),
        );
        ok = false;
    }
    if c.timeout < Duration::from_secs(1) {
        err(
            "provider.cert_manager.timeout",
            "must be at least 1s".into(),
        );
        ok = false;
    }
    let ca_from = match &c.ca_from {
        None => None,
        Some(RawCaFrom {
            secret: Some(r),
            config_map: None,
        }) => Some(CaSource::Secret {
            name: r.name.clone(),
            key: r.key.clone(),
        }),
        Some(RawCaFrom {
            secret: None,
            config_map: Some(r),
        }) => Some(CaSource::ConfigMap {
            name: r.name.clone(),
            key: r.key.clone(),
        }),
        Some(_) => {
            err(
                "provider.cert_manager.ca_from",
                "set exactly one of secret, config_map".into(),
            );
            ok = false;
            None
        }
    };
    ok.then(|| CertManagerConfig {
        issuer_name: c.issuer_name.clone(),
        issuer_kind: c.issuer_kind.clone(),
        issuer_group: c.issuer_group.clone(),
        namespace: c.namespace.clone(),
        timeout: c.timeout,
        ca_from,
    })
}

/// Validate the Vault section, reporting problems through `err`.
fn vault_config(v: &RawVault, err: &mut impl FnMut(&str, String)) -> Option<VaultConfig> {
    let mut ok = true;
    if v.address.starts_with("http://") {
        if !v.allow_http {
            err(
                "provider.vault.address",
                "plain http:// needs provider.vault.allow_http: true".into(),
            );
            ok = false;
        }
    } else if !v.address.starts_with("https://") {
        err(
            "provider.vault.address",
            format!("{:?} must be an https:// URL", v.address),
        );
        ok = false;
    }
    let client_cert = match (&v.client_cert_file, &v.client_key_file) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => {
            err(
                "provider.vault.client_cert_file",
                "client_cert_file and client_key_file go together".into(),
            );
            ok = false;
            None
        }
    };
    let a = &v.auth;
    let mut methods = Vec::new();
    if let Some(f) = &a.token_file {
        methods.push(VaultAuth::TokenFile(f.clone()));
    }
    if let Some(e) = &a.token_env {
        methods.push(VaultAuth::TokenEnv(e.clone()));
    }
    if let Some(k) = &a.kubernetes {
        methods.push(VaultAuth::Kubernetes {
            mount: k.mount.clone(),
            role: k.role.clone(),
            jwt_file: k.jwt_file.clone(),
        });
    }
    if let Some(r) = &a.approle {
        methods.push(VaultAuth::AppRole {
            mount: r.mount.clone(),
            role_id: r.role_id.clone(),
            secret_id_file: r.secret_id_file.clone(),
        });
    }
    if methods.len() != 1 {
        err(
            "provider.vault.auth",
            format!(
                "set exactly one of token_file, token_env, kubernetes, approle (found {})",
                methods.len()
            ),
        );
        ok = false;
    }
    if v.timeout.is_zero() {
        err("provider.vault.timeout", "must be greater than zero".into());
        ok = false;
    }
    if !ok {
        return None;
    }
    Some(VaultConfig {
        address: v.address.clone(),
        mount: v.mount.clone(),
        role: v.role.clone(),
        ca_file: v.ca_file.clone(),
        client_cert,
        allow_http: v.allow_http,
        timeout: v.timeout,
        anchors_refresh: v.anchors_refresh,
        auth: methods.remove(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn requested_lifetimes_are_clamped() {
        let l = Lifetimes {
            default_ttl: Duration::from_secs(100),
            min_ttl: Duration::from_secs(10),
            max_ttl: Duration::from_secs(1000),
        };
        assert_eq!(l.clamp(None), Duration::from_secs(100));
        assert_eq!(
            l.clamp(Some(Duration::from_secs(1))),
            Duration::from_secs(10)
        );
        assert_eq!(
            l.clamp(Some(Duration::from_secs(5000))),
            Duration::from_secs(1000)
        );
    }
}
