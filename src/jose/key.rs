//! The keys JWT-SVIDs are signed with, and their public JWKs.
//!
//! JOSE here is a small module rather than a JOSE crate: meshca needs
//! three algorithms (ES256, ES384, RS256), compact serialisation and RFC
//! 7638 key IDs, and its crypto module (`crate::crypto::signing`) already
//! signs and verifies all three.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

use meshca_provider::crypto::custody::CustodyError;

use crate::crypto::names::KeyAlgorithmName;
use crate::crypto::signing::{self, Algorithm, Curve, KeyPair, PublicKey, SigningError};

/// The kind of key, as `jwt_svids.key_type` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyType {
    /// ECDSA P-256, ES256 (the default).
    #[serde(rename = "ec-p256")]
    EcP256,
    /// ECDSA P-384, ES384.
    #[serde(rename = "ec-p384")]
    EcP384,
    /// RSA 2048, RS256.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
}

impl KeyType {
    /// The key type `value` names (`jwt_svids.key_type`), in meshca's
    /// vocabulary of key algorithms (`ecdsa-p256`; `ec-p256` is still
    /// read).
    ///
    /// # Errors
    /// A name of no key type JWS signs with here.
    pub fn parse(value: &str) -> Result<Self, String> {
        use crate::crypto::names::KeyAlgorithmName::{EcdsaP256, EcdsaP384, Rsa2048};
        match KeyAlgorithmName::one_of(value, &[EcdsaP256, EcdsaP384, Rsa2048])? {
            EcdsaP384 => Ok(Self::EcP384),
            Rsa2048 => Ok(Self::Rsa2048),
            _ => Ok(Self::EcP256),
        }
    }

    /// The JWS `alg`.
    pub fn alg(self) -> &'static str {
        match self {
            Self::EcP256 => "ES256",
            Self::EcP384 => "ES384",
            Self::Rsa2048 => "RS256",
        }
    }

    fn algorithm(self) -> Algorithm {
        match self {
            Self::EcP256 => Algorithm::EcdsaP256Sha256,
            Self::EcP384 => Algorithm::EcdsaP384Sha384,
            Self::Rsa2048 => Algorithm::Rsa2048Sha256,
        }
    }
}

/// Why a key could not be made or read.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The system random source failed.
    #[error("failed to generate a {0:?} key")]
    Generate(KeyType, #[source] SigningError),
    /// Stored key material is not a key of its stated type.
    #[error("the stored {key_type:?} key {kid} is not a usable key")]
    Unusable {
        /// The key's ID.
        kid: String,
        /// Its stated type.
        key_type: KeyType,
        /// Why.
        #[source]
        source: SigningError,
    },
    /// Signing failed.
    #[error("failed to sign with key {kid}")]
    Sign {
        /// The key's ID.
        kid: String,
        /// Why.
        #[source]
        source: SigningError,
    },
    /// The custodian could not make or find the key `name`.
    #[error("failed to make the JWT signing key {name} in key custody")]
    MakeInCustody {
        /// Its name in custody.
        name: String,
        /// Why.
        #[source]
        source: CustodyError,
    },
    /// The custodian holding the key did not sign, or signed what does
    /// not verify.
    #[error("failed to sign with key {kid} in custody")]
    Custody {
        /// The key's ID.
        kid: String,
        /// Why.
        #[source]
        source: CustodyError,
    },
}

impl KeyError {
    /// When the same signature may be made later without anyone acting:
    /// a custodian unavailable, or one whose signature did not verify.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::Custody { source, .. } | Self::MakeInCustody { source, .. } => {
                source.retry_after()
            }
            _ => None,
        }
    }

    /// Whether an operator must act on the custodian (credentials,
    /// policy, a key of another type).
    pub fn is_custody_refusal(&self) -> bool {
        matches!(
            self,
            Self::Custody {
                source: CustodyError::Refused { .. },
                ..
            } | Self::MakeInCustody {
                source: CustodyError::Refused { .. },
                ..
            }
        )
    }
}

/// A private signing key (PKCS#8, zeroized on drop) with its public JWK.
pub struct PrivateKey {
    key_type: KeyType,
    pkcs8: Zeroizing<Vec<u8>>,
    pair: KeyPair,
    public: Jwk,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKey")
            .field("kid", &self.public.kid)
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// A fresh key of `key_type`.
    ///
    /// # Errors
    /// The random source failed.
    pub fn generate(key_type: KeyType) -> Result<Self, KeyError> {
        let pkcs8 = KeyPair::generate_pkcs8(key_type.algorithm())
            .map_err(|e| KeyError::Generate(key_type, e))?;
        Self::from_pkcs8(key_type, pkcs8, "(new)")
    }

    /// A stored key; `kid` names it in errors only (the ID is recomputed
    /// from the public key).
    ///
    /// # Errors
    /// The bytes are not a key of `key_type`.
    pub fn from_pkcs8(
        key_type: KeyType,
        pkcs8: Zeroizing<Vec<u8>>,
        kid: &str,
    ) -> Result<Self, KeyError> {
        let pair = KeyPair::from_pkcs8(key_type.algorithm(), &pkcs8).map_err(|source| {
            KeyError::Unusable {
                kid: kid.to_owned(),
                key_type,
                source,
            }
        })?;
        let public = match pair.public() {
            PublicKey::Ec(point) => Jwk::ec(key_type, &point),
            PublicKey::Rsa { n, e } => Jwk::rsa(&n, &e),
        };
        Ok(Self {
            key_type,
            pkcs8,
            pair,
            public,
        })
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The PKCS#8 document, for storage.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public JWK.
    pub fn public(&self) -> &Jwk {
        &self.public
    }

    /// A JWS signature over `message`, in JOSE form (r‖s for ECDSA).
    ///
    /// # Errors
    /// The key failed to sign.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.pair.sign(message).map_err(|source| KeyError::Sign {
            kid: self.public.kid.clone(),
            source,
        })
    }
}

/// A public key as a JWK (RFC 7517), with the members a JWKS and a SPIFFE
/// bundle need.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `EC` or `RSA`.
    pub kty: String,
    /// Curve (EC).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub crv: Option<String>,
    /// X coordinate (EC).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub x: Option<String>,
    /// Y coordinate (EC).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub y: Option<String>,
    /// Modulus (RSA).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub n: Option<String>,
    /// Exponent (RSA).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub e: Option<String>,
    /// Key ID.
    #[serde(default)]
    pub kid: String,
}

impl Jwk {
    pub(super) fn ec(key_type: KeyType, point: &[u8]) -> Self {
        // An uncompressed point: 0x04 ‖ X ‖ Y.
        let coordinates = &point[1..];
        let (x, y) = coordinates.split_at(coordinates.len() / 2);
        let crv = if key_type == KeyType::EcP256 {
            "P-256"
        } else {
            "P-384"
        };
        let (x, y) = (B64.encode(x), B64.encode(y));
        let kid = thumbprint(&format!(
            r#"{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#
        ));
        Self {
            kty: "EC".into(),
            crv: Some(crv.into()),
            x: Some(x),
            y: Some(y),
            n: None,
            e: None,
            kid,
        }
    }

    fn rsa(modulus: &[u8], exponent: &[u8]) -> Self {
        let (n, e) = (B64.encode(modulus), B64.encode(exponent));
        let kid = thumbprint(&format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#));
        Self {
            kty: "RSA".into(),
            crv: None,
            x: None,
            y: None,
            n: Some(n),
            e: Some(e),
            kid,
        }
    }

    /// The public key of a certificate (a trust anchor in a SPIFFE
    /// bundle, whose `x5c` must match it); `None` for a key type JOSE
    /// here does not describe (neither P-256, P-384 nor RSA).
    pub fn of_certificate(der: &[u8]) -> Option<Self> {
        use x509_parser::prelude::{FromDer as _, X509Certificate};
        use x509_parser::public_key::PublicKey;
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let spki = cert.public_key();
        match spki.parsed().ok()? {
            PublicKey::EC(point) => {
                let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
                let key_type = match curve.to_id_string().as_str() {
                    "1.2.840.10045.3.1.7" => KeyType::EcP256,
                    "1.3.132.0.34" => KeyType::EcP384,
                    _ => return None,
                };
                Some(Self::ec(key_type, point.data()))
            }
            PublicKey::RSA(rsa) => Some(Self::rsa(
                signing::strip_zeros(rsa.modulus),
                signing::strip_zeros(rsa.exponent),
            )),
            _ => None,
        }
    }

    /// Whether this key can verify anything at all: an EC point on its
    /// curve, an RSA modulus of 2048 to 8192 bits with an odd public
    /// exponent. A key from outside (a federated bundle) is checked so
    /// before it is trusted, rather than failing every verification later.
    ///
    /// # Errors
    /// What makes it unusable.
    pub fn check_usable(&self) -> Result<(), String> {
        let decode = |name: &str, v: &Option<String>| {
            v.as_deref()
                .and_then(|v| B64.decode(v).ok())
                .ok_or_else(|| format!("{name} is missing or not base64url"))
        };
        match (self.kty.as_str(), self.crv.as_deref()) {
            ("EC", Some(crv @ ("P-256" | "P-384"))) => {
                let (x, y) = (decode("x", &self.x)?, decode("y", &self.y)?);
                on_curve(crv, &x, &y)
            }
            ("RSA", None) => {
                let (n, e) = (decode("n", &self.n)?, decode("e", &self.e)?);
                rsa_usable(signing::strip_zeros(&n), signing::strip_zeros(&e))
            }
            (kty, crv) => Err(format!(
                "key type {kty} {crv:?} is not EC P-256/P-384 or RSA"
            )),
        }
    }

    /// The public key, for an algorithm that matches its type.
    fn key_for(&self, alg: &str) -> Option<(Algorithm, PublicKey)> {
        let decode = |v: &Option<String>| v.as_deref().and_then(|v| B64.decode(v).ok());
        let algorithm = match (alg, self.kty.as_str(), self.crv.as_deref()) {
            ("ES256", "EC", Some("P-256")) => Algorithm::EcdsaP256Sha256,
            ("ES384", "EC", Some("P-384")) => Algorithm::EcdsaP384Sha384,
            ("RS256", "RSA", None) => Algorithm::Rsa2048Sha256,
            _ => return None,
        };
        let public = match algorithm {
            Algorithm::Rsa2048Sha256 => PublicKey::Rsa {
                n: decode(&self.n)?,
                e: decode(&self.e)?,
            },
            _ => PublicKey::Ec([&[4u8][..], &decode(&self.x)?, &decode(&self.y)?].concat()),
        };
        Some((algorithm, public))
    }

    /// Whether `signature` by this key over `message` is valid for `alg`.
    /// An algorithm that does not match the key's type is never valid.
    pub fn verifies(&self, alg: &str, message: &[u8], signature: &[u8]) -> bool {
        self.key_for(alg).is_some_and(|(algorithm, public)| {
            signing::verify(algorithm, &public, message, signature)
        })
    }
}

/// Whether `(x, y)` is a point of `crv` (`P-256` or `P-384`).
fn on_curve(crv: &str, x: &[u8], y: &[u8]) -> Result<(), String> {
    let curve = if crv == "P-256" {
        Curve::P256
    } else {
        Curve::P384
    };
    let len = curve.coordinate_len();
    if x.len() != len || y.len() != len {
        return Err(format!("x and y must be {len} bytes each on {crv}"));
    }
    let point = [&[4u8][..], x, y].concat();
    match signing::is_point_on_curve(curve, &point) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("(x, y) is not a point on {crv}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether an RSA public key is one meshca verifies with: a modulus of
/// 2048 to 8192 bits, an odd exponent from 3 to 2^33 - 1.
fn rsa_usable(n: &[u8], e: &[u8]) -> Result<(), String> {
    let bits = n.first().map_or(0, |top| {
        (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize)
    });
    if !(2048..=8192).contains(&bits) {
        return Err(format!("the RSA modulus has {bits} bits, not 2048 to 8192"));
    }
    let exponent = e.iter().try_fold(0u64, |acc, b| {
        acc.checked_mul(256).map(|a| a + u64::from(*b))
    });
    match exponent {
        Some(e) if e % 2 == 1 && (3..(1 << 33)).contains(&e) => Ok(()),
        _ => Err("the RSA public exponent is not an odd number from 3 to 2^33 - 1".into()),
    }
}

/// RFC 7638: base64url(SHA-256(the required members, sorted, no spaces)).
fn thumbprint(canonical: &str) -> String {
    B64.encode(crate::crypto::sha256(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(key_type: KeyType) {
        let key = PrivateKey::generate(key_type).expect("generate");
        let signature = key.sign(b"header.claims").expect("sign");
        let public = key.public();
        assert!(public.verifies(key_type.alg(), b"header.claims", &signature));
        assert!(!public.verifies(key_type.alg(), b"header.claimz", &signature));
        assert!(!public.verifies("HS256", b"header.claims", &signature));
        let again = PrivateKey::from_pkcs8(key_type, Zeroizing::new(key.pkcs8().to_vec()), "k")
            .expect("reload");
        assert_eq!(
            again.public().kid,
            key.public().kid,
            "the kid is the key's, not random"
        );
    }

    #[test]
    fn every_key_type_signs_what_its_jwk_verifies() {
        round_trip(KeyType::EcP256);
        round_trip(KeyType::EcP384);
    }

    #[test]
    fn rsa_keys_sign_rs256() {
        round_trip(KeyType::Rsa2048);
    }

    #[test]
    fn a_key_of_another_type_is_refused_with_its_kid() {
        let key = PrivateKey::generate(KeyType::EcP256).expect("generate");
        let err =
            PrivateKey::from_pkcs8(KeyType::EcP384, Zeroizing::new(key.pkcs8().to_vec()), "abc")
                .expect_err("a P-256 key read as P-384");
        assert!(err.to_string().contains("abc"), "{err}");
    }

    #[test]
    fn a_key_is_usable_only_when_its_numbers_make_a_key() {
        for key_type in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            let key = PrivateKey::generate(key_type).expect("generate");
            assert_eq!(key.public().check_usable(), Ok(()), "{key_type:?}");
        }
        let good = PrivateKey::generate(KeyType::EcP256).expect("generate");
        let with = |edit: &dyn Fn(&mut Jwk)| {
            let mut jwk = good.public().clone();
            edit(&mut jwk);
            jwk.check_usable()
        };
        let off_curve = with(&|j| j.y = Some(B64.encode([1u8; 32])));
        assert_eq!(off_curve, Err("(x, y) is not a point on P-256".into()));
        let short = with(&|j| {
            j.x = Some("AAAA".into());
            j.y = Some("AAAA".into());
        });
        assert!(short.expect_err("refused").contains("32 bytes"));
        let p384 = with(&|j| j.crv = Some("P-384".into()));
        assert!(p384.expect_err("refused").contains("48 bytes"));
        let p521 = with(&|j| j.crv = Some("P-521".into()));
        assert!(p521.expect_err("refused").contains("not EC"));
        let rsa = PrivateKey::generate(KeyType::Rsa2048).expect("generate");
        let small = Jwk::rsa(&[0xc5; 128], b"\x01\x00\x01");
        assert!(small
            .check_usable()
            .expect_err("1024 bits")
            .contains("1024 bits"));
        let mut even = rsa.public().clone();
        even.e = Some(B64.encode([2u8]));
        assert!(even.check_usable().expect_err("even").contains("exponent"));
    }

    #[test]
    fn the_kid_is_the_rfc_7638_thumbprint() {
        // RFC 7638 §3.1's example key and thumbprint.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let jwk = Jwk::rsa(
            &B64.decode(n).expect("as the test set it up"),
            &B64.decode("AQAB").expect("as the test set it up"),
        );
        assert_eq!(jwk.kid, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }
}
