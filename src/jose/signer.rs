//! The key a JWT-SVID is signed with: meshca's own (PKCS#8 in its store),
//! or one a custodian holds (`key_custody:`), which meshca sees only as a
//! public key and a name.
//!
//! A custodian signs as X.509 carries it (a DER `ECDSA-Sig-Value`); JWS
//! wants the fixed-width `r ‖ s` (`custody::jws_signature`). The signature is
//! checked under the key's public key before the token is handed out,
//! since HSMs have been seen returning signatures that do not verify.

use std::sync::Arc;

use meshca_provider::crypto::custody::{self, CustodyAlgorithm, CustodyError, CustodyKey};

use super::key::{Jwk, KeyError, KeyType, PrivateKey};

/// A JWT signing key, wherever its private half lives.
#[derive(Debug)]
pub enum SigningKey {
    /// meshca's own key, stored as PKCS#8.
    Own(PrivateKey),
    /// A key a custodian holds.
    InCustody(InCustody),
}

/// A JWT signing key a custodian holds.
#[derive(Debug)]
pub struct InCustody {
    key: Arc<dyn CustodyKey>,
    key_type: KeyType,
    public: Jwk,
}

impl SigningKey {
    /// The key `key` in custody, with its JWK: an EC key of `key_type`
    /// (custodians hold JWT keys of the types [`Self::custody_algorithm`]
    /// names).
    pub fn in_custody(key: Arc<dyn CustodyKey>, key_type: KeyType) -> Self {
        let public = Jwk::ec(key_type, key.public_key());
        Self::InCustody(InCustody {
            key,
            key_type,
            public,
        })
    }

    /// The algorithm a custodian makes a key of `key_type` with; `None`
    /// for a type custodians here do not hold (RSA).
    pub fn custody_algorithm(key_type: KeyType) -> Option<CustodyAlgorithm> {
        match key_type {
            KeyType::EcP256 => Some(CustodyAlgorithm::EcdsaP256),
            KeyType::EcP384 => Some(CustodyAlgorithm::EcdsaP384),
            KeyType::Rsa2048 => None,
        }
    }

    /// The RFC 7638 thumbprint of the public key: the `kid`.
    pub fn kid(&self) -> &str {
        &self.public().kid
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        match self {
            Self::Own(k) => k.key_type(),
            Self::InCustody(k) => k.key_type,
        }
    }

    /// The public JWK.
    pub fn public(&self) -> &Jwk {
        match self {
            Self::Own(k) => k.public(),
            Self::InCustody(k) => &k.public,
        }
    }

    /// The PKCS#8 document of meshca's own key, for storage; `None` for a
    /// key in custody.
    pub fn pkcs8(&self) -> Option<&[u8]> {
        match self {
            Self::Own(k) => Some(k.pkcs8()),
            Self::InCustody(_) => None,
        }
    }

    /// Where a key in custody is: its custodian (`transit`, `pkcs11`) and
    /// its name there; `None` for meshca's own key.
    pub fn custody(&self) -> Option<(&'static str, &str)> {
        match self {
            Self::Own(_) => None,
            Self::InCustody(k) => Some((k.key.backend(), k.key.name())),
        }
    }

    /// A JWS signature over `message` (`r ‖ s` for ECDSA), checked under
    /// the public key when a custodian made it.
    ///
    /// # Errors
    /// The key failed to sign; for a key in custody, [`KeyError::Custody`]
    /// (retryable when the custodian is unavailable or its signature did
    /// not verify).
    pub async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let k = match self {
            Self::Own(k) => return k.sign(message),
            Self::InCustody(k) => k,
        };
        let failed = |source| KeyError::Custody {
            kid: k.public.kid.clone(),
            source,
        };
        let der = k.key.sign(message).await.map_err(failed)?;
        let bad = || {
            failed(CustodyError::BadSignature {
                backend: k.key.backend(),
                key: k.key.name().to_owned(),
            })
        };
        if !custody::verifies(k.key.as_ref(), message, &der) {
            return Err(bad());
        }
        custody::jws_signature(k.key.algorithm(), &der).ok_or_else(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};

    /// A custodian in memory, whose signatures can be spoiled.
    #[derive(Debug)]
    struct Local {
        pair: EcdsaKeyPair,
        spoil: bool,
    }

    #[async_trait]
    impl CustodyKey for Local {
        fn backend(&self) -> &'static str {
            "local"
        }
        fn name(&self) -> &str {
            "meshca-jwt-1"
        }
        fn algorithm(&self) -> CustodyAlgorithm {
            CustodyAlgorithm::EcdsaP256
        }
        fn public_key(&self) -> &[u8] {
            self.pair.public_key().as_ref()
        }
        async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CustodyError> {
            let signed = self
                .pair
                .sign(&SystemRandom::new(), message)
                .expect("as the test set it up");
            let mut der = signed.as_ref().to_vec();
            if self.spoil {
                let last = der.len() - 1;
                der[last] ^= 1;
            }
            Ok(der)
        }
    }

    fn local(spoil: bool) -> SigningKey {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
                .expect("as the test set it up");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
            .expect("as the test set it up");
        SigningKey::in_custody(Arc::new(Local { pair, spoil }), KeyType::EcP256)
    }

    #[tokio::test]
    async fn a_custodians_signature_is_a_jws_signature_its_jwk_verifies() {
        let key = local(false);
        assert_eq!(key.custody(), Some(("local", "meshca-jwt-1")));
        assert!(key.pkcs8().is_none(), "no key material to store");
        for _ in 0..32 {
            let signature = key.sign(b"header.claims").await.expect("signed");
            assert_eq!(signature.len(), 64, "r ‖ s, 32 bytes each");
            assert!(key.public().verifies("ES256", b"header.claims", &signature));
        }
    }

    #[tokio::test]
    async fn a_signature_that_does_not_verify_is_never_used() {
        let err = local(true)
            .sign(b"header.claims")
            .await
            .expect_err("a spoiled signature");
        assert!(
            matches!(
                &err,
                KeyError::Custody {
                    source: CustodyError::BadSignature { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.retry_after().is_some(), "the next one may verify");
    }
}
