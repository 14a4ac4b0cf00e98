//! ML-DSA (FIPS 204) signing keys, for CAs that sign post-quantum chains:
//! made, read from and written to PKCS#8, and used to sign. The crypto
//! library can make such keys for a certificate builder but not read
//! them back, so CAs hold them through this type.

use std::fmt;

use aws_lc_rs::signature::{
    KeyPair as _, PqdsaKeyPair, PqdsaSigningAlgorithm, ML_DSA_44_SIGNING, ML_DSA_65_SIGNING,
    ML_DSA_87_SIGNING,
};
use thiserror::Error;
use zeroize::Zeroizing;

/// An ML-DSA parameter set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    /// ML-DSA-44 (NIST category 2).
    MlDsa44,
    /// ML-DSA-65 (NIST category 3).
    MlDsa65,
    /// ML-DSA-87 (NIST category 5).
    MlDsa87,
}

impl Level {
    /// Every parameter set, smallest first.
    pub const ALL: [Self; 3] = [Self::MlDsa44, Self::MlDsa65, Self::MlDsa87];

    fn signing(self) -> &'static PqdsaSigningAlgorithm {
        match self {
            Self::MlDsa44 => &ML_DSA_44_SIGNING,
            Self::MlDsa65 => &ML_DSA_65_SIGNING,
            Self::MlDsa87 => &ML_DSA_87_SIGNING,
        }
    }

    /// The name in meshca's vocabulary (`ml-dsa-65`).
    pub fn name(self) -> &'static str {
        match self {
            Self::MlDsa44 => "ml-dsa-44",
            Self::MlDsa65 => "ml-dsa-65",
            Self::MlDsa87 => "ml-dsa-87",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an ML-DSA key could not be made, read or used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MlDsaError {
    /// The key could not be generated.
    #[error("failed to generate an {0} key")]
    Generate(Level),
    /// The bytes are not a PKCS#8 ML-DSA key of any parameter set.
    #[error("not a PKCS#8 ML-DSA key")]
    NotMlDsa,
    /// The key could not be encoded.
    #[error("failed to encode the {0} key as PKCS#8")]
    Encode(Level),
    /// Signing failed.
    #[error("failed to sign with the {0} key")]
    Sign(Level),
}

/// An ML-DSA private key in memory.
pub struct MlDsaKey {
    level: Level,
    pair: PqdsaKeyPair,
}

impl fmt::Debug for MlDsaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MlDsaKey")
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

impl MlDsaKey {
    /// A fresh key of `level`.
    ///
    /// # Errors
    /// [`MlDsaError::Generate`].
    pub fn generate(level: Level) -> Result<Self, MlDsaError> {
        let pair =
            PqdsaKeyPair::generate(level.signing()).map_err(|_| MlDsaError::Generate(level))?;
        Ok(Self { level, pair })
    }

    /// The key in `pkcs8`, whichever parameter set it is of.
    ///
    /// # Errors
    /// [`MlDsaError::NotMlDsa`].
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, MlDsaError> {
        Level::ALL
            .into_iter()
            .find_map(|level| {
                let pair = PqdsaKeyPair::from_pkcs8(level.signing(), pkcs8).ok()?;
                Some(Self { level, pair })
            })
            .ok_or(MlDsaError::NotMlDsa)
    }

    /// Its parameter set.
    pub fn level(&self) -> Level {
        self.level
    }

    /// The public key, as a certificate's SubjectPublicKeyInfo carries it.
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The key as PKCS#8 (zeroized on drop).
    ///
    /// # Errors
    /// [`MlDsaError::Encode`].
    pub fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, MlDsaError> {
        let document = self
            .pair
            .to_pkcs8v1()
            .map_err(|_| MlDsaError::Encode(self.level))?;
        Ok(Zeroizing::new(document.as_ref().to_vec()))
    }

    /// A signature over `message` (pure ML-DSA, empty context, as X.509
    /// uses it).
    ///
    /// # Errors
    /// [`MlDsaError::Sign`].
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, MlDsaError> {
        let mut signature = vec![0; self.level.signing().signature_len()];
        let len = self
            .pair
            .sign(message, &mut signature)
            .map_err(|_| MlDsaError::Sign(self.level))?;
        signature.truncate(len);
        Ok(signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::alg_id;

    #[test]
    fn a_key_survives_pkcs8_and_its_signatures_verify() {
        for level in Level::ALL {
            let key = MlDsaKey::generate(level).expect("generated");
            let again = MlDsaKey::from_pkcs8(&key.to_pkcs8().expect("encoded")).expect("read");
            assert_eq!(again.level(), level);
            assert_eq!(again.public_key(), key.public_key());
            let signature = again.sign(b"to be signed").expect("signed");
            let id = match level {
                Level::MlDsa44 => alg_id::ML_DSA_44,
                Level::MlDsa65 => alg_id::ML_DSA_65,
                Level::MlDsa87 => alg_id::ML_DSA_87,
            };
            let verifier = super::super::webpki_algorithms()
                .iter()
                .find(|a| a.public_key_alg_id() == id)
                .expect("a verifier");
            assert!(verifier
                .verify_signature(key.public_key(), b"to be signed", &signature)
                .is_ok());
            assert!(verifier
                .verify_signature(key.public_key(), b"something else", &signature)
                .is_err());
        }
    }

    #[test]
    fn what_is_not_an_ml_dsa_key_is_refused() {
        assert_eq!(
            MlDsaKey::from_pkcs8(b"not a key").expect_err("refused"),
            MlDsaError::NotMlDsa
        );
    }
}
