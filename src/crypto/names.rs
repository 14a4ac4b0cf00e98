//! Key algorithms as meshca's config, command line and docs name them:
//! one vocabulary (`ecdsa-p256`, `ecdsa-p384`, `ed25519`, `rsa-2048`,
//! `rsa-3072`, `rsa-4096`, `ml-dsa-44`, `ml-dsa-65`, `ml-dsa-87`), with
//! the earlier spellings `ec-p256` and `ec-p384` still read. Each setting
//! takes the part of it that it can use, and says which.

use std::fmt;
use std::str::FromStr;

/// A key algorithm by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyAlgorithmName {
    /// ECDSA over NIST P-256.
    EcdsaP256,
    /// ECDSA over NIST P-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA, 2048-bit modulus.
    Rsa2048,
    /// RSA, 3072-bit modulus.
    Rsa3072,
    /// RSA, 4096-bit modulus.
    Rsa4096,
    /// ML-DSA-44 (FIPS 204).
    MlDsa44,
    /// ML-DSA-65 (FIPS 204).
    MlDsa65,
    /// ML-DSA-87 (FIPS 204).
    MlDsa87,
}

impl KeyAlgorithmName {
    /// Every algorithm, in the order the docs list them.
    pub const ALL: [Self; 9] = [
        Self::EcdsaP256,
        Self::EcdsaP384,
        Self::Ed25519,
        Self::Rsa2048,
        Self::Rsa3072,
        Self::Rsa4096,
        Self::MlDsa44,
        Self::MlDsa65,
        Self::MlDsa87,
    ];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::Ed25519 => "ed25519",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa3072 => "rsa-3072",
            Self::Rsa4096 => "rsa-4096",
            Self::MlDsa44 => "ml-dsa-44",
            Self::MlDsa65 => "ml-dsa-65",
            Self::MlDsa87 => "ml-dsa-87",
        }
    }

    /// Whether it is post-quantum (ML-DSA).
    pub fn is_post_quantum(self) -> bool {
        matches!(self, Self::MlDsa44 | Self::MlDsa65 | Self::MlDsa87)
    }

    /// The algorithm `value` names, if it is one of `allowed`.
    ///
    /// # Errors
    /// What is wrong, naming the algorithms `allowed` takes.
    pub fn one_of(value: &str, allowed: &[Self]) -> Result<Self, String> {
        let names = || {
            allowed
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match value.parse::<Self>() {
            Ok(named) if allowed.contains(&named) => Ok(named),
            Ok(named) => Err(format!(
                "{named} is not usable here; use one of {}",
                names()
            )),
            Err(_) => Err(format!("{value:?} is not one of {}", names())),
        }
    }
}

impl FromStr for KeyAlgorithmName {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let canonical = match value {
            "ec-p256" => "ecdsa-p256",
            "ec-p384" => "ecdsa-p384",
            other => other,
        };
        Self::ALL
            .into_iter()
            .find(|a| a.name() == canonical)
            .ok_or_else(|| format!("{value:?} is not a key algorithm"))
    }
}

impl fmt::Display for KeyAlgorithmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_the_old_spellings_are_read() {
        for a in KeyAlgorithmName::ALL {
            assert_eq!(a.name().parse::<KeyAlgorithmName>(), Ok(a));
        }
        assert_eq!("ec-p256".parse(), Ok(KeyAlgorithmName::EcdsaP256));
        assert_eq!("ec-p384".parse(), Ok(KeyAlgorithmName::EcdsaP384));
        assert!("ecdsa-p521".parse::<KeyAlgorithmName>().is_err());
    }

    #[test]
    fn a_setting_takes_only_what_it_can_use_and_says_what_that_is() {
        use KeyAlgorithmName::{EcdsaP256, MlDsa65};
        assert_eq!(
            KeyAlgorithmName::one_of("ml-dsa-65", &[MlDsa65]),
            Ok(MlDsa65)
        );
        let e = KeyAlgorithmName::one_of("ecdsa-p256", &[MlDsa65]).expect_err("refused");
        assert!(e.contains("ml-dsa-65"), "{e}");
        let e = KeyAlgorithmName::one_of("dsa", &[EcdsaP256, MlDsa65]).expect_err("refused");
        assert!(
            e.contains("\"dsa\"") && e.contains("ecdsa-p256, ml-dsa-65"),
            "{e}"
        );
    }
}
