//! Keys held in custody: a KMS or an HSM keeps the private key, and signs
//! what meshca hands it. meshca sees only the public key.
//!
//! Certificates are built in two steps, because the certificate builder
//! signs synchronously and a custodian answers over the network: the
//! builder signs with an empty signature, then [`finish_certificate`] has the custodian sign the to-be-signed part and
//! checks the signature under the public key before the certificate is
//! used (HSMs have been seen returning invalid ECDSA signatures).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_lc_rs::signature::{self, UnparsedPublicKey};
use rustls_pki_types::CertificateDer;
use thiserror::Error;

use super::der_element as element;

/// The signature algorithms a custody key may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CustodyAlgorithm {
    /// ECDSA on P-256 with SHA-256 (the default).
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// RSA with a 2048-bit modulus, PKCS#1 v1.5 signatures over SHA-256.
    Rsa2048,
    /// RSA with a 3072-bit modulus, as `Rsa2048`.
    Rsa3072,
    /// RSA with a 4096-bit modulus, as `Rsa2048`.
    Rsa4096,
}

impl CustodyAlgorithm {
    /// Its name in meshca's key algorithm vocabulary.
    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa3072 => "rsa-3072",
            Self::Rsa4096 => "rsa-4096",
        }
    }

    /// The modulus length of an RSA key, in bits; `None` for ECDSA.
    pub fn rsa_bits(self) -> Option<u32> {
        match self {
            Self::EcdsaP256 | Self::EcdsaP384 => None,
            Self::Rsa2048 => Some(2048),
            Self::Rsa3072 => Some(3072),
            Self::Rsa4096 => Some(4096),
        }
    }

    /// The digest of `message` its signatures are made over, for a
    /// custodian that signs digests (PKCS#11's CKM_ECDSA).
    pub fn digest(self, message: &[u8]) -> Vec<u8> {
        let algorithm = match self {
            Self::EcdsaP384 => &aws_lc_rs::digest::SHA384,
            _ => &aws_lc_rs::digest::SHA256,
        };
        aws_lc_rs::digest::digest(algorithm, message)
            .as_ref()
            .to_vec()
    }

    /// The width of one coordinate (and of `r` and `s`), in bytes; `None`
    /// for RSA.
    fn coordinate_len(self) -> Option<usize> {
        match self {
            Self::EcdsaP256 => Some(32),
            Self::EcdsaP384 => Some(48),
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => None,
        }
    }

    fn verification(self) -> &'static dyn signature::VerificationAlgorithm {
        match self {
            Self::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
            Self::EcdsaP384 => &signature::ECDSA_P384_SHA384_ASN1,
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => &signature::RSA_PKCS1_2048_8192_SHA256,
        }
    }
}

/// An RSA public key as a certificate's subjectPublicKey carries it (RFC
/// 8017 `RSAPublicKey`), from its modulus and public exponent as unsigned
/// big-endian integers (PKCS#11's CKA_MODULUS and CKA_PUBLIC_EXPONENT).
pub fn rsa_public_key(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(modulus.len() + exponent.len() + 16);
    for integer in [modulus, exponent] {
        let magnitude = &integer[integer.iter().take_while(|b| **b == 0).count()..];
        // A positive INTEGER whose top bit is set takes a leading zero.
        let mut contents = Vec::with_capacity(magnitude.len() + 1);
        if magnitude.first().is_none_or(|b| b & 0x80 != 0) {
            contents.push(0);
        }
        contents.extend_from_slice(magnitude);
        push_element(&mut body, 0x02, &contents);
    }
    let mut der = Vec::with_capacity(body.len() + 4);
    push_element(&mut der, 0x30, &body);
    der
}

/// Why a custodian did not sign, or could not give a key.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CustodyError {
    /// The custodian cannot be reached or is not ready (sealed, token
    /// removed, timed out): trying later may succeed.
    #[error("{backend} key custody is unavailable: {message}")]
    Unavailable {
        /// `transit` or `pkcs11`.
        backend: &'static str,
        /// What failed.
        message: String,
        /// When to try again.
        retry_after: Duration,
        /// The failure underneath.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The custodian refused (credentials, policy, a key that may be
    /// exported, a key of another type): someone has to act.
    #[error("{backend} key custody refused: {message}")]
    Refused {
        /// `transit` or `pkcs11`.
        backend: &'static str,
        /// What was refused, and what to change.
        message: String,
    },
    /// The custodian's signature does not verify under the key's public
    /// key; nothing signed with it is used.
    #[error("{backend} key custody returned a signature that does not verify under key {key}")]
    BadSignature {
        /// `transit` or `pkcs11`.
        backend: &'static str,
        /// The key's name in custody.
        key: String,
    },
    /// What was to be signed is not a certificate built for custody.
    #[error("not a certificate to finish: {0}")]
    Malformed(&'static str),
}

impl CustodyError {
    /// When the same request may succeed later without anyone acting:
    /// an unavailable custodian, or a signature that did not verify (the
    /// next one may).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => Some(*retry_after),
            Self::BadSignature { .. } => Some(Duration::from_secs(1)),
            Self::Refused { .. } | Self::Malformed(_) => None,
        }
    }
}

/// A key the custodian holds. Cheap to clone behind an `Arc`.
#[async_trait]
pub trait CustodyKey: Send + Sync + std::fmt::Debug {
    /// The backend's name, for metrics and messages: `transit`, `pkcs11`.
    fn backend(&self) -> &'static str;

    /// The key's name in custody (a Transit key, a PKCS#11 label).
    fn name(&self) -> &str;

    /// Its algorithm.
    fn algorithm(&self) -> CustodyAlgorithm;

    /// The public key as a certificate's subjectPublicKey carries it (the
    /// uncompressed EC point).
    fn public_key(&self) -> &[u8];

    /// The custodian's signature over `message`, DER-encoded as X.509
    /// carries it. Not yet checked: [`finish_certificate`] checks it.
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CustodyError>;
}

/// A custodian: finds or makes keys by name.
#[async_trait]
pub trait Custody: Send + Sync + std::fmt::Debug {
    /// The backend's name: `transit`, `pkcs11`.
    fn backend(&self) -> &'static str;

    /// The key called `name`, made non-exportable with `algorithm` when
    /// it does not exist; refused when it exists with another algorithm
    /// or can be exported.
    async fn key(
        &self,
        name: &str,
        algorithm: CustodyAlgorithm,
    ) -> Result<Arc<dyn CustodyKey>, CustodyError>;

    /// Whether the custodian can sign now; why not otherwise.
    async fn health(&self) -> Result<(), CustodyError>;

    /// Destroy the key called `name`: one meshca made and uses no more (a
    /// JWT signing key whose last token has expired), so that custodians
    /// do not fill with dead keys. A key gone already is not an error.
    async fn destroy(&self, name: &str) -> Result<(), CustodyError>;
}

/// Whether `signature` over `message` verifies under `key`'s public key.
pub fn verifies(key: &dyn CustodyKey, message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(key.algorithm().verification(), key.public_key())
        .verify(message, signature)
        .is_ok()
}

/// `certificate` (built with an empty signature) signed by `key`: the
/// custodian signs its to-be-signed part, the signature is checked under
/// the public key, and the certificate is assembled again.
///
/// # Errors
/// The custodian's [`CustodyError`]; [`CustodyError::BadSignature`] when
/// the signature does not verify; [`CustodyError::Malformed`] when
/// `certificate` is not DER of the expected shape.
pub async fn finish_certificate(
    certificate: &[u8],
    key: &dyn CustodyKey,
) -> Result<CertificateDer<'static>, CustodyError> {
    let (tbs, algorithm) = unsigned_parts(certificate)?;
    let signature = key.sign(tbs).await?;
    if !verifies(key, tbs, &signature) {
        return Err(CustodyError::BadSignature {
            backend: key.backend(),
            key: key.name().to_owned(),
        });
    }
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(&signature);
    let mut body = Vec::with_capacity(tbs.len() + algorithm.len() + bits.len() + 8);
    body.extend_from_slice(tbs);
    body.extend_from_slice(algorithm);
    push_element(&mut body, 0x03, &bits);
    let mut der = Vec::with_capacity(body.len() + 6);
    push_element(&mut der, 0x30, &body);
    Ok(CertificateDer::from(der))
}

/// A custodian's signature as JWS writes it (RFC 7518 §3.3, §3.4): an RSA
/// signature as it is; a DER `ECDSA-Sig-Value` (`SEQUENCE { r INTEGER, s
/// INTEGER }`) as `r ‖ s`, each left-padded to `algorithm`'s coordinate
/// width. `None` when it is not such a value for that width.
pub fn jws_signature(algorithm: CustodyAlgorithm, der: &[u8]) -> Option<Vec<u8>> {
    let Some(width) = algorithm.coordinate_len() else {
        return Some(der.to_vec());
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
        let magnitude = &integer[integer.iter().take_while(|b| **b == 0).count()..];
        if magnitude.is_empty() || magnitude.len() > width {
            return None;
        }
        out.extend(std::iter::repeat_n(0, width - magnitude.len()));
        out.extend_from_slice(magnitude);
    }
    Some(out)
}

/// The to-be-signed part and the signature algorithm (each a whole DER
/// element) of a certificate whose signature is empty.
fn unsigned_parts(certificate: &[u8]) -> Result<(&[u8], &[u8]), CustodyError> {
    let malformed = CustodyError::Malformed;
    let (tag, body, rest) = element(certificate).ok_or(malformed("not DER"))?;
    if tag != 0x30 || !rest.is_empty() {
        return Err(malformed("not one SEQUENCE"));
    }
    let (_, _, after_tbs) = element(body).ok_or(malformed("no tbsCertificate"))?;
    let tbs = &body[..body.len() - after_tbs.len()];
    let (_, _, after_alg) = element(after_tbs).ok_or(malformed("no signatureAlgorithm"))?;
    let algorithm = &after_tbs[..after_tbs.len() - after_alg.len()];
    match element(after_alg) {
        Some((0x03, [0], [])) => Ok((tbs, algorithm)),
        _ => Err(malformed("the signature is not the empty placeholder")),
    }
}

/// Append a DER element of `tag` holding `contents`.
fn push_element(out: &mut Vec<u8>, tag: u8, contents: &[u8]) {
    out.push(tag);
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(contents);
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A custodian in memory; `corrupt` makes it return bad signatures.
    #[derive(Debug)]
    struct Local {
        key: EcdsaKeyPair,
        corrupt: AtomicBool,
    }

    #[async_trait]
    impl CustodyKey for Local {
        fn backend(&self) -> &'static str {
            "local"
        }
        fn name(&self) -> &str {
            "test"
        }
        fn algorithm(&self) -> CustodyAlgorithm {
            CustodyAlgorithm::EcdsaP256
        }
        fn public_key(&self) -> &[u8] {
            self.key.public_key().as_ref()
        }
        async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CustodyError> {
            let mut sig = self
                .key
                .sign(&SystemRandom::new(), message)
                .expect("sign")
                .as_ref()
                .to_vec();
            if self.corrupt.load(Ordering::Relaxed) {
                let last = sig.len() - 1;
                sig[last] ^= 1;
            }
            Ok(sig)
        }
    }

    fn local() -> Local {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
                .expect("generate");
        Local {
            key: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
                .expect("key"),
            corrupt: AtomicBool::new(false),
        }
    }

    /// An unsigned certificate as the builder leaves it.
    fn unsigned(key: &Local) -> Vec<u8> {
        struct Placeholder<'a>(&'a Local);
        impl rcgen::PublicKeyData for Placeholder<'_> {
            fn der_bytes(&self) -> &[u8] {
                self.0.public_key()
            }
            fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
                &rcgen::PKCS_ECDSA_P256_SHA256
            }
        }
        impl rcgen::SigningKey for Placeholder<'_> {
            fn sign(&self, _: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
                Ok(Vec::new())
            }
        }
        let mut params = rcgen::CertificateParams::new(vec!["a.example".into()]).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .self_signed(&Placeholder(key))
            .expect("build")
            .der()
            .to_vec()
    }

    #[tokio::test]
    async fn a_finished_certificate_verifies_under_its_key() {
        let key = local();
        let cert = finish_certificate(&unsigned(&key), &key)
            .await
            .expect("finished");
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert).expect("x509");
        assert_eq!(
            parsed.public_key().subject_public_key.data,
            key.public_key()
        );
        assert!(verifies(
            &key,
            parsed.tbs_certificate.as_ref(),
            &parsed.signature_value.data
        ));
    }

    #[tokio::test]
    async fn a_signature_that_does_not_verify_is_refused() {
        let key = local();
        key.corrupt.store(true, Ordering::Relaxed);
        let err = finish_certificate(&unsigned(&key), &key)
            .await
            .expect_err("refused");
        assert!(matches!(err, CustodyError::BadSignature { .. }), "{err}");
        assert!(err.retry_after().is_some());
    }

    #[tokio::test]
    async fn only_a_certificate_with_the_placeholder_is_finished() {
        let key = local();
        let done = finish_certificate(&unsigned(&key), &key)
            .await
            .expect("finished");
        let again = finish_certificate(&done, &key).await.expect_err("signed");
        assert!(matches!(again, CustodyError::Malformed(_)), "{again}");
        assert!(finish_certificate(b"\x30\x03abc", &key).await.is_err());
    }

    #[test]
    fn jws_signatures_are_padded_and_what_is_not_a_signature_is_refused() {
        // r = 1, s = 0x80 (a leading zero keeps it positive).
        let der = [0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x80];
        let fixed = jws_signature(CustodyAlgorithm::EcdsaP256, &der).expect("a signature");
        assert_eq!(fixed.len(), 64);
        assert_eq!((fixed[31], fixed[63]), (1, 0x80));
        assert!(fixed[..31].iter().chain(&fixed[32..63]).all(|b| *b == 0));
        assert_eq!(
            jws_signature(CustodyAlgorithm::EcdsaP384, &der).map(|f| f.len()),
            Some(96)
        );
        for bad in [
            &[0x30, 0x03, 0x02, 0x01, 0x01][..],               // s missing
            &[0x31, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01], // a SET
            &[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00], // trailing
            &[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x05, 0x01], // short
        ] {
            assert_eq!(
                jws_signature(CustodyAlgorithm::EcdsaP256, bad),
                None,
                "{bad:02x?}"
            );
        }
        let mut long = vec![0x30, 0x26, 0x02, 0x21];
        long.extend([0x7f; 33]);
        long.extend([0x02, 0x01, 0x01]);
        assert_eq!(
            jws_signature(CustodyAlgorithm::EcdsaP256, &long),
            None,
            "r wider than P-256"
        );
    }

    #[test]
    fn long_elements_get_long_lengths() {
        for len in [0usize, 127, 128, 255, 256, 70_000] {
            let mut out = Vec::new();
            push_element(&mut out, 0x04, &vec![7; len]);
            let (tag, contents, rest) = element(&out).expect("reads back");
            assert_eq!((tag, contents.len(), rest.len()), (0x04, len, 0));
        }
    }

    #[test]
    fn an_rsa_public_key_is_written_as_x509_carries_it() {
        use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
        let key = RsaKeyPair::generate(KeySize::Rsa2048).expect("key");
        let public = key.public_key();
        let (n, e) = (public.modulus(), public.exponent());
        assert_eq!(
            rsa_public_key(
                n.big_endian_without_leading_zero(),
                e.big_endian_without_leading_zero()
            ),
            public.as_ref()
        );
        // PKCS#11 may hand the modulus with a leading zero byte.
        let mut padded = vec![0];
        padded.extend_from_slice(n.big_endian_without_leading_zero());
        assert_eq!(
            rsa_public_key(&padded, &[1, 0, 1]),
            public.as_ref(),
            "65537, as CKA_PUBLIC_EXPONENT holds it"
        );
        let sig = jws_signature(CustodyAlgorithm::Rsa2048, &[1, 2, 3]);
        assert_eq!(
            sig.as_deref(),
            Some(&[1u8, 2, 3][..]),
            "RS256 is the raw signature"
        );
    }
}
