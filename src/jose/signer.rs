//! The key a JWT-SVID is signed with: meshca's own (PKCS#8 in its store),
//! or one a custodian holds (`key_custody:`), which meshca sees only as a
//! public key and a name.
//!
//! A custodian signs as X.509 carries it (a DER `ECDSA-Sig-Value`); JWS
//! wants the fixed-width `r ‖ s` (RFC 7518 §3.4). The signature is
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
    /// The key `key` in custody, with its JWK.
    pub fn in_custody(key: Arc<dyn CustodyKey>) -> Self {
        let key_type = match key.algorithm() {
            CustodyAlgorithm::EcdsaP256 => KeyType::EcP256,
            CustodyAlgorithm::EcdsaP384 => KeyType::EcP384,
        };
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

    /// The key's name in custody; `None` for meshca's own key.
    pub fn custody_name(&self) -> Option<&str> {
        match self {
            Self::Own(_) => None,
            Self::InCustody(k) => Some(k.key.name()),
        }
    }

    /// The custodian holding the key (`transit`, `pkcs11`); `None` for
    /// meshca's own key.
    pub fn custody_backend(&self) -> Option<&'static str> {
        match self {
            Self::Own(_) => None,
            Self::InCustody(k) => Some(k.key.backend()),
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
        fixed_width(&der, k.key_type).ok_or_else(bad)
    }
}

/// An `ECDSA-Sig-Value` (DER `SEQUENCE { r INTEGER, s INTEGER }`) as JWS
/// writes it: `r ‖ s`, each left-padded to the curve's coordinate width.
/// `None` when it is not such a value for that width.
fn fixed_width(der: &[u8], key_type: KeyType) -> Option<Vec<u8>> {
    let width = match key_type {
        KeyType::EcP256 => 32,
        KeyType::EcP384 => 48,
        KeyType::Rsa2048 => return None,
    };
    let (tag, body, rest) = element(der)?;
    if tag != 0x30 || !rest.is_empty() {
        return None;
    }
    let (r_tag, r, rest) = element(body)?;
    let (s_tag, s, rest) = element(rest)?;
    if r_tag != 0x02 || s_tag != 0x02 || !rest.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(2 * width);
    for integer in [r, s] {
        let magnitude = crate::crypto::signing::strip_zeros(integer);
        if magnitude.is_empty() || magnitude.len() > width {
            return None;
        }
        out.extend(std::iter::repeat_n(0, width - magnitude.len()));
        out.extend_from_slice(magnitude);
    }
    Some(out)
}

/// One DER element of `input`: its tag, contents and what follows. Only
/// the lengths an ECDSA signature of P-256 or P-384 has (short form, or
/// one length byte).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => {
            let (&len, rest) = rest.split_first()?;
            (usize::from(len), rest)
        }
        _ => return None,
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
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
        SigningKey::in_custody(Arc::new(Local { pair, spoil }))
    }

    #[tokio::test]
    async fn a_custodians_signature_is_a_jws_signature_its_jwk_verifies() {
        let key = local(false);
        assert_eq!(key.custody_name(), Some("meshca-jwt-1"));
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

    #[test]
    fn short_integers_are_padded_and_what_is_not_a_signature_is_refused() {
        // r = 1, s = 0x80 (a leading zero keeps it positive).
        let der = [0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x80];
        let fixed = fixed_width(&der, KeyType::EcP256).expect("a signature");
        assert_eq!(fixed.len(), 64);
        assert_eq!((fixed[31], fixed[63]), (1, 0x80));
        assert!(fixed[..31].iter().chain(&fixed[32..63]).all(|b| *b == 0));
        for bad in [
            &[0x30, 0x03, 0x02, 0x01, 0x01][..],               // s missing
            &[0x31, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01], // a SET
            &[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00], // trailing
            &[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x05, 0x01], // short
        ] {
            assert_eq!(fixed_width(bad, KeyType::EcP256), None, "{bad:02x?}");
        }
        let mut long = vec![0x30, 0x26, 0x02, 0x21];
        long.extend([0x7f; 33]);
        long.extend([0x02, 0x01, 0x01]);
        assert_eq!(
            fixed_width(&long, KeyType::EcP256),
            None,
            "r wider than P-256"
        );
    }
}
