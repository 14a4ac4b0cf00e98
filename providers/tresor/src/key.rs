use std::sync::Arc;

use meshca_provider::crypto::custody::{CustodyAlgorithm, CustodyKey};
use meshca_provider::crypto::{MlDsaKey, MlDsaLevel};
use pkcs8::der::asn1::ObjectIdentifier;
use pkcs8::der::{Decode, Encode};
use rcgen::{KeyPair, PublicKeyData, SignatureAlgorithm, SigningKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use crate::TresorError;

/// The key algorithms Tresor generates CA keys with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RootKeyAlgorithm {
    /// ECDSA P-256 (the default: fast, and accepted everywhere).
    #[default]
    EcdsaP256,
    /// ECDSA P-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// ML-DSA (FIPS 204), for a post-quantum root.
    MlDsa(MlDsaLevel),
}

impl RootKeyAlgorithm {
    /// Whether it is a post-quantum algorithm.
    pub fn is_post_quantum(self) -> bool {
        matches!(self, Self::MlDsa(_))
    }

    pub(crate) fn generate(self) -> Result<CaKey, TresorError> {
        let alg = match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Self::Ed25519 => &rcgen::PKCS_ED25519,
            Self::MlDsa(level) => {
                let key = MlDsaKey::generate(level).map_err(|e| TresorError::Key(e.to_string()))?;
                return Ok(CaKey::MlDsa(key));
            }
        };
        Ok(CaKey::Classical(KeyPair::generate_for(alg)?))
    }

    /// The same family as an existing key, for intermediates of a loaded
    /// root. RSA roots get P-256 intermediates: smaller and faster, and as
    /// widely verified.
    pub(crate) fn like(key: &CaKey) -> Self {
        let alg = key.algorithm();
        match key {
            CaKey::MlDsa(key) => Self::MlDsa(key.level()),
            CaKey::Custody(_) if alg == &rcgen::PKCS_ECDSA_P384_SHA384 => Self::EcdsaP384,
            CaKey::Custody(_) => Self::EcdsaP256,
            CaKey::Classical(_) if alg == &rcgen::PKCS_ECDSA_P384_SHA384 => Self::EcdsaP384,
            CaKey::Classical(_) if alg == &rcgen::PKCS_ED25519 => Self::Ed25519,
            CaKey::Classical(_) => Self::EcdsaP256,
        }
    }
}

/// A CA's signing key: a classical one, ML-DSA (which the certificate
/// builder can make but not read back, so meshca's crypto module holds
/// it), or one held in custody (an HSM, a KMS), which only its custodian
/// can use.
pub enum CaKey {
    /// ECDSA, Ed25519 or RSA.
    Classical(KeyPair),
    /// ML-DSA.
    MlDsa(MlDsaKey),
    /// Held in custody. The certificate builder signs with an empty
    /// signature; [`crate::CaCertificate`] has the custodian sign
    /// afterwards, and checks what it returns.
    Custody(Arc<dyn CustodyKey>),
}

impl std::fmt::Debug for CaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Self::Classical(_) => "classical",
            Self::MlDsa(key) => key.level().name(),
            Self::Custody(key) => key.backend(),
        };
        f.debug_struct("CaKey")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl CaKey {
    /// The raw public key, as a certificate's SPKI carries it.
    pub(crate) fn public_key_raw(&self) -> &[u8] {
        match self {
            Self::Classical(key) => key.public_key_raw(),
            Self::MlDsa(key) => key.public_key(),
            Self::Custody(key) => key.public_key(),
        }
    }

    /// The key held in custody, if it is.
    pub(crate) fn custody(&self) -> Option<&dyn CustodyKey> {
        match self {
            Self::Custody(key) => Some(key.as_ref()),
            _ => None,
        }
    }

    /// The key as PKCS#8 PEM, zeroized when dropped.
    ///
    /// # Errors
    /// [`TresorError::InCustody`] for a key held in custody: it never
    /// leaves its custodian.
    pub(crate) fn serialize_pem(&self) -> Result<Zeroizing<String>, TresorError> {
        match self {
            Self::Custody(key) => Err(TresorError::InCustody(key.name().to_owned())),
            Self::Classical(key) => Ok(Zeroizing::new(key.serialize_pem())),
            Self::MlDsa(key) => {
                let der = key
                    .to_pkcs8()
                    .map_err(|e| TresorError::Key(e.to_string()))?;
                let mut pem = Zeroizing::new(String::new());
                meshca_provider::pem::encode_block("PRIVATE KEY", &der, &mut pem);
                Ok(pem)
            }
        }
    }
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            Self::Classical(key) => key.der_bytes(),
            Self::MlDsa(key) => key.public_key(),
            Self::Custody(key) => key.public_key(),
        }
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self {
            Self::Classical(key) => key.algorithm(),
            Self::MlDsa(key) => match key.level() {
                MlDsaLevel::MlDsa44 => &rcgen::PKCS_ML_DSA_44,
                MlDsaLevel::MlDsa65 => &rcgen::PKCS_ML_DSA_65,
                MlDsaLevel::MlDsa87 => &rcgen::PKCS_ML_DSA_87,
            },
            Self::Custody(key) => match key.algorithm() {
                CustodyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
                CustodyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
                CustodyAlgorithm::Rsa2048
                | CustodyAlgorithm::Rsa3072
                | CustodyAlgorithm::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
            },
        }
    }
}

impl SigningKey for CaKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            Self::Classical(key) => key.sign(message),
            Self::MlDsa(key) => key.sign(message).map_err(|_| rcgen::Error::RingUnspecified),
            // The placeholder `CaCertificate::finish` replaces.
            Self::Custody(_) => Ok(Vec::new()),
        }
    }
}

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");

/// Load a PEM private key in any of the encodings operators bring:
/// PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) or SEC1
/// (`EC PRIVATE KEY`).
///
/// The key is read as PKCS#8, so the other two are re-wrapped as PKCS#8
/// first; the intermediate buffers are zeroized.
///
/// # Errors
/// [`TresorError::Key`] for anything that is not one of those or that the
/// crypto library refuses.
pub fn load_private_key_pem(pem: &[u8]) -> Result<CaKey, TresorError> {
    let key = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| TresorError::Key(format!("no usable PEM private key found: {e}")))?;
    let pkcs8: Zeroizing<Vec<u8>> = match &key {
        PrivateKeyDer::Pkcs8(k) if is_ml_dsa(k.secret_pkcs8_der()) => {
            return MlDsaKey::from_pkcs8(k.secret_pkcs8_der())
                .map(CaKey::MlDsa)
                .map_err(|e| TresorError::Key(e.to_string()));
        }
        PrivateKeyDer::Pkcs8(k) => Zeroizing::new(k.secret_pkcs8_der().to_vec()),
        PrivateKeyDer::Pkcs1(k) => wrap_pkcs8(
            RSA_ENCRYPTION,
            Some(pkcs8::der::Any::from(pkcs8::der::asn1::Null)),
            k.secret_pkcs1_der(),
        )?,
        PrivateKeyDer::Sec1(k) => {
            let ec = sec1::EcPrivateKey::from_der(k.secret_sec1_der())
                .map_err(|e| TresorError::Key(format!("invalid SEC1 EC key: {e}")))?;
            let curve = ec
                .parameters
                .and_then(|p| p.named_curve())
                .ok_or_else(|| TresorError::Key("SEC1 EC key names no curve".into()))?;
            if ec.public_key.is_none() {
                return Err(TresorError::Key(
                    "SEC1 EC key lacks its public key; export it with OpenSSL defaults".into(),
                ));
            }
            // The curve goes in the PKCS#8 algorithm identifier only.
            let inner = sec1::EcPrivateKey {
                private_key: ec.private_key,
                parameters: None,
                public_key: ec.public_key,
            };
            let inner = Zeroizing::new(
                inner
                    .to_der()
                    .map_err(|e| TresorError::Key(format!("failed to re-encode SEC1 key: {e}")))?,
            );
            wrap_pkcs8(EC_PUBLIC_KEY, Some(pkcs8::der::Any::from(curve)), &inner)?
        }
        _ => return Err(TresorError::Key("unsupported private key encoding".into())),
    };
    KeyPair::try_from(&PrivatePkcs8KeyDer::from(pkcs8.as_slice()))
        .map(CaKey::Classical)
        .map_err(|e| TresorError::Key(format!("unsupported key type: {e}")))
}

/// The ML-DSA algorithms' arc (2.16.840.1.101.3.4.3.17 to .19).
const ML_DSA: [ObjectIdentifier; 3] = [
    ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.17"),
    ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.18"),
    ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.19"),
];

/// Whether the PKCS#8 key `der` is an ML-DSA key.
fn is_ml_dsa(der: &[u8]) -> bool {
    pkcs8::PrivateKeyInfo::from_der(der).is_ok_and(|info| ML_DSA.contains(&info.algorithm.oid))
}

fn wrap_pkcs8(
    oid: ObjectIdentifier,
    parameters: Option<pkcs8::der::Any>,
    private_key: &[u8],
) -> Result<Zeroizing<Vec<u8>>, TresorError> {
    let info = pkcs8::PrivateKeyInfo {
        algorithm: pkcs8::AlgorithmIdentifierRef {
            oid,
            parameters: parameters.as_ref().map(Into::into),
        },
        private_key,
        public_key: None,
    };
    info.to_der()
        .map(Zeroizing::new)
        .map_err(|e| TresorError::Key(format!("failed to wrap the key as PKCS#8: {e}")))
}
