use pkcs8::der::asn1::ObjectIdentifier;
use pkcs8::der::{Decode, Encode};
use rcgen::KeyPair;
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
}

impl RootKeyAlgorithm {
    pub(crate) fn generate(self) -> Result<KeyPair, TresorError> {
        let alg = match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Self::Ed25519 => &rcgen::PKCS_ED25519,
        };
        Ok(KeyPair::generate_for(alg)?)
    }

    /// The same family as an existing key, for intermediates of a loaded
    /// root. RSA roots get P-256 intermediates: ring cannot generate RSA.
    pub(crate) fn like(key: &KeyPair) -> Self {
        let alg = key.algorithm();
        if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
            Self::EcdsaP384
        } else if alg == &rcgen::PKCS_ED25519 {
            Self::Ed25519
        } else {
            Self::EcdsaP256
        }
    }
}

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");

/// Load a PEM private key in any of the encodings operators bring:
/// PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) or SEC1
/// (`EC PRIVATE KEY`).
///
/// ring only reads PKCS#8, so the other two are re-wrapped as PKCS#8 first;
/// the intermediate buffers are zeroized.
///
/// # Errors
/// [`TresorError::Key`] for anything that is not one of those or that ring
/// refuses.
pub fn load_private_key_pem(pem: &[u8]) -> Result<KeyPair, TresorError> {
    let key = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| TresorError::Key(format!("no usable PEM private key found: {e}")))?;
    let pkcs8: Zeroizing<Vec<u8>> = match &key {
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
            // ring wants the curve only in the PKCS#8 algorithm identifier.
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
        .map_err(|e| TresorError::Key(format!("unsupported key type: {e}")))
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
