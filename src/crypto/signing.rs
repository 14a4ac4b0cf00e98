//! Signing keys meshca holds itself (JWT-SVIDs'), with the algorithms JOSE
//! names: ECDSA P-256 and P-384 with SHA-256/384 (signatures in the fixed
//! `r ‖ s` form), RSA PKCS#1 v1.5 with SHA-256. Keys are kept as PKCS#8.

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use thiserror::Error;
use zeroize::Zeroizing;

/// A signature algorithm of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256 (JWS `ES256`).
    EcdsaP256Sha256,
    /// ECDSA P-384 with SHA-384 (JWS `ES384`).
    EcdsaP384Sha384,
    /// RSA 2048 PKCS#1 v1.5 with SHA-256 (JWS `RS256`).
    Rsa2048Sha256,
}

impl Algorithm {
    fn ecdsa(self) -> Option<&'static signature::EcdsaSigningAlgorithm> {
        match self {
            Self::EcdsaP256Sha256 => Some(&signature::ECDSA_P256_SHA256_FIXED_SIGNING),
            Self::EcdsaP384Sha384 => Some(&signature::ECDSA_P384_SHA384_FIXED_SIGNING),
            Self::Rsa2048Sha256 => None,
        }
    }
}

/// Why a key could not be made, read or used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SigningError {
    /// The random source, or the key generation, failed.
    #[error("failed to generate a {0:?} key")]
    Generate(Algorithm),
    /// The bytes are not a PKCS#8 key of the algorithm.
    #[error("not a usable {algorithm:?} key: {why}")]
    Unusable {
        /// The algorithm it was read as.
        algorithm: Algorithm,
        /// What the library said.
        why: String,
    },
    /// Signing failed.
    #[error("failed to sign")]
    Sign,
}

/// A public key, as its algorithm needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// An uncompressed point, `0x04 ‖ X ‖ Y`.
    Ec(Vec<u8>),
    /// An RSA modulus and exponent, big-endian without leading zeros.
    Rsa {
        /// The modulus.
        n: Vec<u8>,
        /// The public exponent.
        e: Vec<u8>,
    },
}

enum Pair {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A private key in memory, with its algorithm.
pub struct KeyPair {
    algorithm: Algorithm,
    pair: Pair,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh key, as PKCS#8 (zeroized on drop), to store and read back
    /// with [`KeyPair::from_pkcs8`].
    ///
    /// # Errors
    /// [`SigningError::Generate`].
    pub fn generate_pkcs8(algorithm: Algorithm) -> Result<Zeroizing<Vec<u8>>, SigningError> {
        let pkcs8 = match algorithm.ecdsa() {
            Some(alg) => EcdsaKeyPair::generate_pkcs8(alg, &SystemRandom::new())
                .map_err(|_| SigningError::Generate(algorithm))?
                .as_ref()
                .to_vec(),
            None => rsa_2048_pkcs8()?,
        };
        Ok(Zeroizing::new(pkcs8))
    }

    /// The key in `pkcs8`.
    ///
    /// # Errors
    /// [`SigningError::Unusable`]: not a key of `algorithm`.
    pub fn from_pkcs8(algorithm: Algorithm, pkcs8: &[u8]) -> Result<Self, SigningError> {
        let unusable = |why: String| SigningError::Unusable { algorithm, why };
        let pair = match algorithm.ecdsa() {
            Some(alg) => {
                Pair::Ec(EcdsaKeyPair::from_pkcs8(alg, pkcs8).map_err(|e| unusable(e.to_string()))?)
            }
            None => Pair::Rsa(RsaKeyPair::from_pkcs8(pkcs8).map_err(|e| unusable(e.to_string()))?),
        };
        Ok(Self { algorithm, pair })
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        match &self.pair {
            Pair::Ec(pair) => PublicKey::Ec(pair.public_key().as_ref().to_vec()),
            Pair::Rsa(pair) => {
                let components =
                    signature::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                PublicKey::Rsa {
                    n: strip_zeros(&components.n).to_vec(),
                    e: strip_zeros(&components.e).to_vec(),
                }
            }
        }
    }

    /// A signature over `message`: `r ‖ s` for ECDSA, PKCS#1 v1.5 for RSA.
    ///
    /// # Errors
    /// [`SigningError::Sign`].
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SigningError> {
        let rng = SystemRandom::new();
        match &self.pair {
            Pair::Ec(pair) => Ok(pair
                .sign(&rng, message)
                .map_err(|_| SigningError::Sign)?
                .as_ref()
                .to_vec()),
            Pair::Rsa(pair) => {
                let mut out = vec![0; pair.public_modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut out)
                    .map_err(|_| SigningError::Sign)?;
                Ok(out)
            }
        }
    }
}

/// Whether `signature` over `message` is valid for `public` under
/// `algorithm`; a key of another kind than the algorithm's never is.
pub fn verify(algorithm: Algorithm, public: &PublicKey, message: &[u8], sig: &[u8]) -> bool {
    match (algorithm, public) {
        (Algorithm::EcdsaP256Sha256 | Algorithm::EcdsaP384Sha384, PublicKey::Ec(point)) => {
            let alg: &dyn signature::VerificationAlgorithm = match algorithm {
                Algorithm::EcdsaP256Sha256 => &signature::ECDSA_P256_SHA256_FIXED,
                _ => &signature::ECDSA_P384_SHA384_FIXED,
            };
            signature::UnparsedPublicKey::new(alg, point)
                .verify(message, sig)
                .is_ok()
        }
        (Algorithm::Rsa2048Sha256, PublicKey::Rsa { n, e }) => {
            signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok()
        }
        _ => false,
    }
}

/// The curves of [`is_point_on_curve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256.
    P256,
    /// NIST P-384.
    P384,
}

impl Curve {
    /// The length of one coordinate, in bytes.
    pub fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }
}

/// Whether the uncompressed `point` (`0x04 ‖ X ‖ Y`) lies on `curve`: the
/// library checks a peer's public key before an ECDH agreement, so one
/// against a key of our own is that check.
///
/// # Errors
/// The random source failed.
pub fn is_point_on_curve(curve: Curve, point: &[u8]) -> Result<bool, crate::crypto::RandomError> {
    use aws_lc_rs::agreement;
    let alg = match curve {
        Curve::P256 => &agreement::ECDH_P256,
        Curve::P384 => &agreement::ECDH_P384,
    };
    let mine = agreement::EphemeralPrivateKey::generate(alg, &SystemRandom::new())
        .map_err(|_| crate::crypto::RandomError)?;
    let peer = agreement::UnparsedPublicKey::new(alg, point);
    Ok(agreement::agree_ephemeral(mine, peer, (), |_| Ok(())).is_ok())
}

/// A 2048-bit RSA key as PKCS#8.
fn rsa_2048_pkcs8() -> Result<Vec<u8>, SigningError> {
    let failed = |_| SigningError::Generate(Algorithm::Rsa2048Sha256);
    let key = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(failed)?;
    let der = key.as_der().map_err(failed)?;
    Ok(der.as_ref().to_vec())
}

/// A big-endian integer without the leading zero bytes DER adds.
pub fn strip_zeros(mut bytes: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = bytes {
        bytes = rest;
    }
    bytes
}
