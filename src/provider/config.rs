//! `provider:`: which backend signs, with its settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use meshca_cert_manager::{CaSource, CertManagerConfig};
use meshca_provider::ProviderKind;
use meshca_tresor::{RootKeyAlgorithm, RootSource, TresorConfig};
use meshca_vault::VaultConfig;
use serde::Deserialize;

use crate::crypto::names::KeyAlgorithmName;
use crate::crypto::MlDsaLevel;
use crate::custody::CustodyConfig;
use crate::validation::Errors;
use crate::vault_connection::{RawConnection, RawVaultAuth};
use meshca_provider::crypto::custody::CustodyAlgorithm;

/// Which backend signs, with its settings. Compared by value: a rollout
/// starts when the configuration in force differs from the one applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderConfig {
    /// meshca's own root, and the custodian of its key when it is not
    /// kept in meshca's files.
    Tresor(TresorConfig, Option<CustodyConfig>),
    /// A Vault / OpenBao PKI engine.
    Vault(VaultConfig),
    /// cert-manager, through CertificateRequests (needs a cluster).
    CertManager(CertManagerConfig),
}

impl ProviderConfig {
    /// This provider with Tresor's root at generation `n` (`meshca rotate
    /// root`): a root meshca makes (in files or in custody) is the `n`th
    /// made in turn, kept beside the earlier ones under names of its own
    /// ([`super::root_generation::named`]), so that moving to it is a
    /// rollout like any signer change. A root brought as files and the
    /// other providers are as they are.
    pub fn at_root_generation(&self, n: u32) -> Self {
        let mut out = self.clone();
        if let Self::Tresor(t, _) = &mut out {
            match &mut t.root {
                RootSource::Generated {
                    dir, generation, ..
                } => {
                    let name = dir.file_name().map(|f| f.to_string_lossy().into_owned());
                    let name =
                        super::root_generation::named(name.as_deref().unwrap_or("tresor"), n);
                    *dir = dir.with_file_name(name);
                    *generation = n;
                }
                RootSource::InCustody { dir, key_name, .. } => {
                    *key_name = super::root_generation::named(key_name, n);
                    *dir = dir.with_file_name(key_name.as_str());
                }
                RootSource::Files { .. } => {}
            }
        }
        out
    }

    /// Whether `meshca rotate root` applies: Tresor with a root meshca
    /// makes.
    pub fn rotates_root(&self) -> bool {
        matches!(self, Self::Tresor(t, _) if !matches!(t.root, RootSource::Files { .. }))
    }

    /// The configured kind (`provider.kind`, as `ProviderKind::as_str`
    /// spells it).
    pub fn kind(&self) -> ProviderKind {
        match self {
            Self::Tresor(..) => ProviderKind::Tresor,
            Self::Vault(_) => ProviderKind::Vault,
            Self::CertManager(_) => ProviderKind::CertManager,
        }
    }

    /// Whether the provider names leaves from the profile whatever the CSR
    /// names (see `Capabilities`), as far as the configuration tells:
    /// `None` for Vault, whose role decides.
    pub fn names_from_profile(&self) -> Option<bool> {
        match self {
            Self::Tresor(..) => Some(true),
            Self::Vault(_) => None,
            Self::CertManager(_) => Some(meshca_cert_manager::CAPABILITIES.names_from_profile),
        }
    }
}

/// The config section of `kind`'s settings.
pub fn section(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Vault => "provider.vault",
        ProviderKind::CertManager => "provider.cert_manager",
        _ => "provider.tresor",
    }
}

/// `provider:` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawProvider {
    kind: RawProviderKind,
    tresor: RawTresor,
    vault: Option<RawVault>,
    cert_manager: Option<RawCertManager>,
}

#[derive(Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum RawProviderKind {
    #[default]
    Tresor,
    Vault,
    CertManager,
}

/// What the provider settings are checked against.
pub struct ProviderContext<'a> {
    /// Where a generated Tresor root is kept (`<state_dir>/tresor`).
    pub state_dir: &'a Path,
    /// `certificates.max_ttl`: a CA must outlive every leaf.
    pub max_ttl: Duration,
    /// Whether a cluster may be used at all.
    pub cluster: bool,
    /// The custodian of Tresor's root key (`key_custody`), when not
    /// meshca's files.
    pub custody: Option<&'a CustodyConfig>,
}

impl RawProvider {
    /// The provider settings, or `None` with the problems in `errors`.
    /// Sections of providers other than `kind` are checked too, so a
    /// prepared swap is valid before it is made.
    pub fn validate(
        &self,
        cx: &ProviderContext<'_>,
        errors: &mut Errors,
    ) -> Option<ProviderConfig> {
        let vault = match &self.vault {
            Some(v) => v.validate(errors),
            None if self.kind == RawProviderKind::Vault => {
                errors.add("provider.vault", "required when provider.kind is vault");
                None
            }
            None => None,
        };
        let cert_manager = match &self.cert_manager {
            Some(c) => c.validate(errors),
            None if self.kind == RawProviderKind::CertManager => {
                RawCertManager::default().validate(errors)
            }
            None => None,
        };
        match self.kind {
            RawProviderKind::Tresor => self
                .tresor
                .validate(cx, errors)
                .map(|t| ProviderConfig::Tresor(t, cx.custody.cloned())),
            RawProviderKind::Vault => vault.map(ProviderConfig::Vault),
            RawProviderKind::CertManager => {
                if !cx.cluster {
                    errors.add(
                        "provider.kind",
                        "cert-manager needs a cluster, which kubernetes.enabled: false turns off",
                    );
                }
                cert_manager.map(ProviderConfig::CertManager)
            }
        }
    }
}

// === tresor ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTresor {
    key_algorithm: String,
    #[serde(with = "humantime_serde")]
    root_validity: Duration,
    common_name: String,
    root_cert_file: Option<PathBuf>,
    root_key_file: Option<PathBuf>,
    intermediate: Option<RawIntermediate>,
    post_quantum: Option<RawPostQuantum>,
}

impl Default for RawTresor {
    fn default() -> Self {
        Self {
            key_algorithm: "ecdsa-p256".into(),
            root_validity: Duration::from_secs(87_600 * 3600),
            common_name: "meshca root CA".into(),
            root_cert_file: None,
            root_key_file: None,
            intermediate: None,
            post_quantum: None,
        }
    }
}

/// `provider.tresor.post_quantum`: a second, ML-DSA root.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPostQuantum {
    key_algorithm: String,
    root_cert_file: Option<PathBuf>,
    root_key_file: Option<PathBuf>,
}

impl Default for RawPostQuantum {
    fn default() -> Self {
        Self {
            key_algorithm: "ml-dsa-65".into(),
            root_cert_file: None,
            root_key_file: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntermediate {
    #[serde(with = "humantime_serde")]
    validity: Duration,
}

/// What a root is, as written under `path` (`provider.tresor` or
/// `provider.tresor.post_quantum`).
struct RawRoot<'a> {
    path: &'static str,
    key_algorithm: &'a str,
    allowed: &'static [KeyAlgorithmName],
    files: (Option<&'a PathBuf>, Option<&'a PathBuf>),
    /// Where a generated root is kept.
    dir: PathBuf,
}

impl RawTresor {
    fn validate(&self, cx: &ProviderContext<'_>, errors: &mut Errors) -> Option<TresorConfig> {
        let max_ttl = cx.max_ttl;
        if let Some(i) = &self.intermediate {
            if i.validity <= max_ttl {
                errors.add(
                    "provider.tresor.intermediate.validity",
                    "must be longer than certificates.max_ttl",
                );
            }
        }
        let generated = self.root_cert_file.is_none()
            || self
                .post_quantum
                .as_ref()
                .is_some_and(|pq| pq.root_cert_file.is_none());
        if generated && self.root_validity <= max_ttl {
            errors.add(
                "provider.tresor.root_validity",
                "must be longer than certificates.max_ttl",
            );
        }
        use KeyAlgorithmName::{EcdsaP256, EcdsaP384, Ed25519, MlDsa44, MlDsa65, MlDsa87};
        // A root in custody has its own rules (RSA too, no files).
        let root = match cx.custody {
            Some(custody) => self.root_in_custody(cx, custody, errors),
            None => self.root(
                &RawRoot {
                    path: "provider.tresor",
                    key_algorithm: &self.key_algorithm,
                    allowed: &[EcdsaP256, EcdsaP384, Ed25519],
                    files: (self.root_cert_file.as_ref(), self.root_key_file.as_ref()),
                    dir: cx.state_dir.join("tresor"),
                },
                errors,
            ),
        };
        let post_quantum = self.post_quantum.as_ref().map(|pq| {
            self.root(
                &RawRoot {
                    path: "provider.tresor.post_quantum",
                    key_algorithm: &pq.key_algorithm,
                    allowed: &[MlDsa44, MlDsa65, MlDsa87],
                    files: (pq.root_cert_file.as_ref(), pq.root_key_file.as_ref()),
                    dir: cx.state_dir.join("tresor-post-quantum"),
                },
                errors,
            )
        });
        Some(TresorConfig {
            root: root?,
            post_quantum: post_quantum.map(|r| r.ok_or(())).transpose().ok()?,
            intermediate_validity: self.intermediate.as_ref().map(|i| i.validity),
        })
    }

    /// The root whose key `custody` makes and keeps: generated on first
    /// start, its certificate kept in `<state_dir>/tresor-<backend>/<key>`
    /// (or the cluster), so moving into custody, or to another key, is a
    /// new root, rolled out.
    fn root_in_custody(
        &self,
        cx: &ProviderContext<'_>,
        custody: &CustodyConfig,
        errors: &mut Errors,
    ) -> Option<RootSource> {
        let backend = custody.backend.name();
        let before = errors.len();
        if self.root_cert_file.is_some() || self.root_key_file.is_some() {
            errors.add(
                "provider.tresor.root_cert_file",
                format!("a root brought as files keeps its key in a file; with key_custody.kind {backend} meshca makes the root's key in custody: remove root_cert_file and root_key_file, or set key_custody.kind: file"),
            );
        }
        if self.post_quantum.is_some() {
            errors.add(
                "provider.tresor.post_quantum",
                format!("key_custody.kind {backend} holds no ML-DSA keys: remove post_quantum, or set key_custody.kind: file"),
            );
        }
        match (custody.sign_leaves, &self.intermediate) {
            (false, None) => errors.add(
                "provider.tresor.intermediate",
                format!("required with key_custody.kind {backend}: the custody key signs an intermediate kept in memory, which signs leaves (or set key_custody.sign_leaves: true to have it sign every leaf)"),
            ),
            (true, Some(_)) => errors.add(
                "provider.tresor.intermediate",
                "key_custody.sign_leaves: true has the custody key sign every leaf: remove provider.tresor.intermediate",
            ),
            _ => {}
        }
        let algorithm = match KeyAlgorithmName::one_of(
            &self.key_algorithm,
            &[
                KeyAlgorithmName::EcdsaP256,
                KeyAlgorithmName::EcdsaP384,
                KeyAlgorithmName::Rsa2048,
                KeyAlgorithmName::Rsa3072,
                KeyAlgorithmName::Rsa4096,
            ],
        ) {
            Ok(KeyAlgorithmName::EcdsaP384) => CustodyAlgorithm::EcdsaP384,
            Ok(KeyAlgorithmName::Rsa2048) => CustodyAlgorithm::Rsa2048,
            Ok(KeyAlgorithmName::Rsa3072) => CustodyAlgorithm::Rsa3072,
            Ok(KeyAlgorithmName::Rsa4096) => CustodyAlgorithm::Rsa4096,
            Ok(_) => CustodyAlgorithm::EcdsaP256,
            Err(e) => {
                errors.add(
                    "provider.tresor.key_algorithm",
                    format!("{e} (in key custody)"),
                );
                return None;
            }
        };
        let key_name = format!("{}-root", custody.key_prefix);
        (errors.len() == before).then(|| RootSource::InCustody {
            dir: cx
                .state_dir
                .join(format!("tresor-{backend}"))
                .join(&key_name),
            key_name,
            algorithm,
            validity: self.root_validity,
            common_name: self.common_name.clone(),
        })
    }

    /// One root's source: its files, checked now, or generated with its
    /// algorithm.
    fn root(&self, raw: &RawRoot<'_>, errors: &mut Errors) -> Option<RootSource> {
        let path = raw.path;
        let algorithm = KeyAlgorithmName::one_of(raw.key_algorithm, raw.allowed)
            .map_err(|e| errors.add(&format!("{path}.key_algorithm"), e))
            .ok()
            .and_then(root_algorithm);
        let root = match raw.files {
            (Some(cert), Some(key)) => RootSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            (None, None) => RootSource::Generated {
                dir: raw.dir.clone(),
                algorithm: algorithm?,
                validity: self.root_validity,
                common_name: match algorithm?.is_post_quantum() {
                    true => format!("{} (post-quantum)", self.common_name),
                    false => self.common_name.clone(),
                },
                generation: 0,
            },
            (Some(_), None) => {
                errors.add(
                    &format!("{path}.root_key_file"),
                    format!("required when {path}.root_cert_file is set"),
                );
                return None;
            }
            (None, Some(_)) => {
                errors.add(
                    &format!("{path}.root_cert_file"),
                    format!("required when {path}.root_key_file is set"),
                );
                return None;
            }
        };
        if let Err(e) = root.check() {
            errors.add(&format!("{path}.root_cert_file"), e);
            return None;
        }
        Some(root)
    }
}

/// The root algorithm a name means.
fn root_algorithm(name: KeyAlgorithmName) -> Option<RootKeyAlgorithm> {
    Some(match name {
        KeyAlgorithmName::EcdsaP256 => RootKeyAlgorithm::EcdsaP256,
        KeyAlgorithmName::EcdsaP384 => RootKeyAlgorithm::EcdsaP384,
        KeyAlgorithmName::Ed25519 => RootKeyAlgorithm::Ed25519,
        KeyAlgorithmName::MlDsa44 => RootKeyAlgorithm::MlDsa(MlDsaLevel::MlDsa44),
        KeyAlgorithmName::MlDsa65 => RootKeyAlgorithm::MlDsa(MlDsaLevel::MlDsa65),
        KeyAlgorithmName::MlDsa87 => RootKeyAlgorithm::MlDsa(MlDsaLevel::MlDsa87),
        _ => return None,
    })
}

// === cert-manager ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCertManager {
    issuer_name: String,
    issuer_kind: String,
    issuer_group: String,
    namespace: String,
    #[serde(with = "humantime_serde")]
    timeout: Duration,
    ca_from: Option<RawCaFrom>,
}

impl Default for RawCertManager {
    fn default() -> Self {
        Self {
            issuer_name: "osm-ca".into(),
            issuer_kind: "Issuer".into(),
            issuer_group: "cert-manager.io".into(),
            namespace: "osm-system".into(),
            timeout: Duration::from_secs(30),
            ca_from: None,
        }
    }
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
    #[serde(default = "RawKeyRef::default_key")]
    key: String,
}

impl RawKeyRef {
    fn default_key() -> String {
        "ca.crt".into()
    }
}

impl RawCertManager {
    fn validate(&self, errors: &mut Errors) -> Option<CertManagerConfig> {
        let mut ok = true;
        if self.issuer_kind != "Issuer" && self.issuer_kind != "ClusterIssuer" {
            errors.add(
                "provider.cert_manager.issuer_kind",
                format!("{:?} must be Issuer or ClusterIssuer", self.issuer_kind),
            );
            ok = false;
        }
        if self.timeout < Duration::from_secs(1) {
            errors.add("provider.cert_manager.timeout", "must be at least 1s");
            ok = false;
        }
        let ca_from = match &self.ca_from {
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
                errors.add(
                    "provider.cert_manager.ca_from",
                    "set exactly one of secret, config_map",
                );
                return None;
            }
        };
        ok.then(|| CertManagerConfig {
            issuer_name: self.issuer_name.clone(),
            issuer_kind: self.issuer_kind.clone(),
            issuer_group: self.issuer_group.clone(),
            namespace: self.namespace.clone(),
            timeout: self.timeout,
            ca_from,
        })
    }
}

// === vault ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVault {
    address: String,
    #[serde(default = "RawVault::default_mount")]
    mount: String,
    #[serde(default = "RawVault::default_role")]
    role: String,
    ca_file: Option<PathBuf>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
    #[serde(default)]
    allow_http: bool,
    #[serde(default = "RawVault::default_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(
        default = "RawVault::default_anchors_refresh",
        with = "humantime_serde"
    )]
    anchors_refresh: Duration,
    auth: RawVaultAuth,
    post_quantum: Option<RawVaultPostQuantum>,
}

/// `provider.vault.post_quantum`: the role whose issuer signs CSRs of
/// ML-DSA keys (an ML-DSA issuer of the same mount).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVaultPostQuantum {
    role: String,
}

impl RawVault {
    fn default_mount() -> String {
        "pki".into()
    }
    fn default_role() -> String {
        "openservicemesh".into()
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }
    fn default_anchors_refresh() -> Duration {
        Duration::from_secs(60)
    }
}

impl RawVault {
    fn validate(&self, errors: &mut Errors) -> Option<VaultConfig> {
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
        .validate("provider.vault", errors)?;
        Some(VaultConfig {
            connection,
            mount: self.mount.clone(),
            role: self.role.clone(),
            anchors_refresh: self.anchors_refresh,
            post_quantum_role: self.post_quantum.as_ref().map(|p| p.role.clone()),
        })
    }
}
