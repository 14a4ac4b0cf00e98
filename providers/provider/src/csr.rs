use std::fmt;

use thiserror::Error;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension, X509Extension};
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ECDSA_WITH_SHA512,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use std::collections::BTreeSet;

use crate::crypto::der_element as element;
use crate::{Identity, LeafProfile, ServerName};

pub(crate) fn ip_from_bytes(b: &[u8]) -> Option<std::net::IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// The public-key types meshca accepts in a CSR (ECDSA P-256/P-384,
/// Ed25519, RSA 2048–4096 bits, ML-DSA-44/65/87).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// ECDSA over NIST P-256.
    EcdsaP256,
    /// ECDSA over NIST P-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA with the given modulus size in bits.
    Rsa {
        /// Modulus length in bits, between 2048 and 4096.
        bits: usize,
    },
    /// ML-DSA-44 (FIPS 204), post-quantum.
    MlDsa44,
    /// ML-DSA-65 (FIPS 204), post-quantum.
    MlDsa65,
    /// ML-DSA-87 (FIPS 204), post-quantum.
    MlDsa87,
}

impl KeyAlgorithm {
    /// RSA keys also get keyEncipherment (see `docs/api.md`, "Identity"); others only
    /// digitalSignature.
    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa { .. })
    }

    /// A post-quantum signature key: signed under a post-quantum chain,
    /// by providers that can.
    pub fn is_post_quantum(self) -> bool {
        matches!(self, Self::MlDsa44 | Self::MlDsa65 | Self::MlDsa87)
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EcdsaP256 => f.write_str("ECDSA P-256"),
            Self::EcdsaP384 => f.write_str("ECDSA P-384"),
            Self::Ed25519 => f.write_str("Ed25519"),
            Self::Rsa { bits } => write!(f, "RSA {bits}"),
            Self::MlDsa44 => f.write_str("ML-DSA-44"),
            Self::MlDsa65 => f.write_str("ML-DSA-65"),
            Self::MlDsa87 => f.write_str("ML-DSA-87"),
        }
    }
}

/// Why a CSR was refused. Nothing a refused CSR asked for is ever used.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CsrError {
    /// Not a DER PKCS#10 request (after PEM decoding).
    #[error("failed to parse the certificate request: {0}")]
    Malformed(String),
    /// The request is not signed by the key it carries: whoever sent it does
    /// not hold that key.
    #[error("the certificate request's signature does not verify with its own public key")]
    BadSignature,
    /// The request is signed with an algorithm meshca does not accept
    /// (SHA-1 or MD5 digests, for instance).
    #[error("the certificate request is signed with {0}; accepted are ECDSA and RSA PKCS#1 v1.5 with SHA-256/384/512, Ed25519 and ML-DSA")]
    WeakSignature(String),
    /// A key type outside the accepted set.
    #[error(
        "unsupported public key: {0}; accepted are ECDSA P-256/P-384, Ed25519, RSA 2048-4096 and ML-DSA-44/65/87"
    )]
    UnsupportedKey(String),
    /// The request asks for a CA certificate.
    #[error("the certificate request asks for a CA certificate (basicConstraints CA:TRUE)")]
    CaRequested,
    /// The request carries an extension meshca does not accept.
    #[error("the certificate request carries an extension meshca does not accept: {0}")]
    UnsupportedExtension(String),
    /// The request names something the authenticated caller is not.
    #[error("the certificate request asks for {requested:?}, which is not the caller's identity {identity}")]
    NameNotAllowed {
        /// The refused name as the request spelled it.
        requested: String,
        /// The identity the caller authenticated as.
        identity: String,
    },
}

impl CsrError {
    /// True when the request is well formed but asks for someone else's
    /// names: a 403 at the API edge rather than a 400.
    pub fn is_identity_mismatch(&self) -> bool {
        matches!(self, Self::NameNotAllowed { .. })
    }
}

/// A CSR whose signature verified, whose key is acceptable and whose every
/// requested name belongs to one authenticated [`Identity`].
///
/// It is the only CSR type a [`Provider`](crate::Provider) sees, so a backend
/// cannot be handed an unchecked request. Of the request, only the public key
/// is ever used: names come from the identity, usages from policy.
#[derive(Clone)]
pub struct ValidatedCsr {
    der: Vec<u8>,
    identity: Identity,
    /// The SANs the request names, as `DNS:…`, `URI:…`, `IP:…`.
    requested: BTreeSet<String>,
    spki_der: Vec<u8>,
    public_key: Vec<u8>,
    key_algorithm: KeyAlgorithm,
}

impl fmt::Debug for ValidatedCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidatedCsr")
            .field("identity", &self.identity)
            .field("key_algorithm", &self.key_algorithm)
            .finish_non_exhaustive()
    }
}

impl ValidatedCsr {
    /// Check a DER PKCS#10 request on behalf of `identity`.
    ///
    /// # Errors
    /// Every way a request can be unacceptable is a [`CsrError`]; the checks
    /// run cheapest first, and the signature before anything that depends on
    /// who made the request.
    pub fn new(der: &[u8], identity: &Identity) -> Result<Self, CsrError> {
        Self::with_server_names(der, identity, &[])
    }

    /// As [`ValidatedCsr::new`], also allowing `extra` names: only for the
    /// daemon's own serving certificate, never for a caller's CSR.
    ///
    /// # Errors
    /// As [`ValidatedCsr::new`].
    pub fn with_server_names(
        der: &[u8],
        identity: &Identity,
        extra: &[ServerName],
    ) -> Result<Self, CsrError> {
        let (rest, csr) = X509CertificationRequest::from_der(der)
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed(
                "trailing data after the request".into(),
            ));
        }
        let info = &csr.certification_request_info;
        let spki = &info.subject_pki;
        let key_algorithm = key_algorithm(spki)?;
        let signature = &csr.signature_algorithm.algorithm;
        if !ACCEPTED_SIGNATURES.contains(signature) {
            return Err(CsrError::WeakSignature(signature_name(signature)));
        }
        verify_signature(&csr, der)?;

        let allowed = Allowed::new(identity, extra);
        for cn in info.subject.iter_common_name() {
            let cn = cn
                .as_str()
                .map_err(|_| CsrError::Malformed("subject CN is not a string".into()))?;
            if cn != allowed.dns {
                return Err(allowed.refuse(cn));
            }
        }
        let mut requested = BTreeSet::new();
        for attr in info.iter_attributes() {
            match &attr.parsed_attribute() {
                ParsedCriAttribute::ExtensionRequest(req) => {
                    if !holds_one_value(attr.value) {
                        return Err(CsrError::Malformed(
                            "the extensionRequest attribute holds more than one value".into(),
                        ));
                    }
                    for ext in &req.extensions {
                        allowed.check_extension(ext, &mut requested)?;
                    }
                }
                ParsedCriAttribute::ChallengePassword(_) => {}
                ParsedCriAttribute::UnsupportedAttribute => {
                    return Err(CsrError::UnsupportedExtension(format!(
                        "attribute {}",
                        attr.oid.to_id_string()
                    )))
                }
            }
        }

        Ok(Self {
            der: der.to_vec(),
            identity: identity.clone(),
            requested,
            spki_der: spki.raw.to_vec(),
            public_key: spki.subject_public_key.data.to_vec(),
            key_algorithm,
        })
    }

    /// Whether the request itself names exactly the leaf's SANs, as
    /// backends that take names only from the CSR (cert-manager) need.
    pub fn names_exactly(&self, leaf: &LeafProfile) -> bool {
        self.requested == leaf.san_set()
    }

    /// The identity this request was authorised for.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The request as received (DER), for backends that sign CSRs themselves
    /// (Vault, cert-manager). They are told the names separately.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The DER SubjectPublicKeyInfo, compared byte for byte with what a
    /// backend returns.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The raw subject public key (the BIT STRING contents of the SPKI).
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// The key's algorithm.
    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.key_algorithm
    }
}

/// ML-DSA-44, -65 and -87 (FIPS 204; RFC 9881): the key's algorithm
/// and the signature's alike.
const OID_ML_DSA_44: Oid<'static> = x509_parser::der_parser::oid!(2.16.840 .1 .101 .3 .4 .3 .17);
const OID_ML_DSA_65: Oid<'static> = x509_parser::der_parser::oid!(2.16.840 .1 .101 .3 .4 .3 .18);
const OID_ML_DSA_87: Oid<'static> = x509_parser::der_parser::oid!(2.16.840 .1 .101 .3 .4 .3 .19);

/// Signature algorithms a CSR may be signed with.
const ACCEPTED_SIGNATURES: [Oid<'static>; 10] = [
    OID_SIG_ECDSA_WITH_SHA256,
    OID_SIG_ECDSA_WITH_SHA384,
    OID_SIG_ECDSA_WITH_SHA512,
    OID_PKCS1_SHA256WITHRSA,
    OID_PKCS1_SHA384WITHRSA,
    OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ED25519,
    OID_ML_DSA_44,
    OID_ML_DSA_65,
    OID_ML_DSA_87,
];

/// The request's signature, by its own key, with the algorithm the
/// request names: verified with the same algorithms (rustls-webpki's on
/// meshca's crypto provider) that verify certificate chains, ML-DSA
/// included.
fn verify_signature(csr: &X509CertificationRequest<'_>, der: &[u8]) -> Result<(), CsrError> {
    let malformed = || CsrError::Malformed("the request's DER is not a PKCS#10 request".into());
    let info = &csr.certification_request_info;
    // The AlgorithmIdentifiers as their DER contents, as webpki names
    // its algorithms: the key's inside the SPKI, the signature's after the
    // request info.
    let key_alg = element(info.subject_pki.raw)
        .and_then(|(_, spki, _)| element(spki))
        .map(|(_, alg, _)| alg)
        .ok_or_else(malformed)?;
    let signature_alg = element(der)
        .and_then(|(_, request, _)| element(request))
        .and_then(|(_, _, after_info)| element(after_info))
        .map(|(_, alg, _)| alg)
        .ok_or_else(malformed)?;
    let key = &info.subject_pki.subject_public_key.data;
    let signature = &csr.signature_value.data;
    let verified = crate::crypto::webpki_algorithms().iter().any(|alg| {
        alg.public_key_alg_id().as_ref() == key_alg
            && alg.signature_alg_id().as_ref() == signature_alg
            && alg.verify_signature(key, info.raw, signature).is_ok()
    });
    if verified {
        Ok(())
    } else {
        Err(CsrError::BadSignature)
    }
}

fn signature_name(oid: &Oid<'_>) -> String {
    x509_parser::oid_registry::OidRegistry::default()
        .with_all_crypto()
        .get(oid)
        .map_or_else(|| oid.to_id_string(), |e| e.sn().to_owned())
}

/// Whether a DER attribute value (`SET OF`, header included) holds exactly
/// one element: a second one would be silently ignored by the parser.
fn holds_one_value(set: &[u8]) -> bool {
    element(set)
        .and_then(|(_, values, _)| element(values))
        .is_some_and(|(_, _, after_first)| after_first.is_empty())
}

fn key_algorithm(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<KeyAlgorithm, CsrError> {
    let alg = &spki.algorithm.algorithm;
    // One encoding per key type (RFC 3279, RFC 8410): an RSA key carries
    // NULL parameters, an Ed25519 key none. Another encoding would be
    // re-encoded by the signer and then no longer match the request.
    let parameters = spki.algorithm.parameters.as_ref();
    if *alg == OID_PKCS1_RSAENCRYPTION
        && !parameters.is_some_and(|p| p.tag() == x509_parser::der_parser::asn1_rs::Tag::Null)
    {
        return Err(CsrError::Malformed(
            "an RSA public key must carry NULL algorithm parameters (RFC 3279)".into(),
        ));
    }
    if *alg == OID_SIG_ED25519 && parameters.is_some() {
        return Err(CsrError::Malformed(
            "an Ed25519 public key must carry no algorithm parameters (RFC 8410)".into(),
        ));
    }
    if let Some(ml_dsa) = ml_dsa(alg) {
        if parameters.is_some() {
            return Err(CsrError::Malformed(
                "an ML-DSA public key must carry no algorithm parameters (RFC 9881)".into(),
            ));
        }
        return Ok(ml_dsa);
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CsrError::UnsupportedKey("EC key without a named curve".into()))?;
        if curve == OID_EC_P256 {
            Ok(KeyAlgorithm::EcdsaP256)
        } else if curve == OID_NIST_EC_P384 {
            Ok(KeyAlgorithm::EcdsaP384)
        } else {
            Err(CsrError::UnsupportedKey(format!(
                "EC curve {}",
                curve.to_id_string()
            )))
        }
    } else if *alg == OID_SIG_ED25519 {
        Ok(KeyAlgorithm::Ed25519)
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(CsrError::Malformed("invalid RSA public key".into()));
        };
        let bits = rsa_bits(rsa.modulus);
        if (2048..=4096).contains(&bits) {
            Ok(KeyAlgorithm::Rsa { bits })
        } else {
            Err(CsrError::UnsupportedKey(format!("RSA {bits}")))
        }
    } else {
        Err(CsrError::UnsupportedKey(format!(
            "algorithm {}",
            alg.to_id_string()
        )))
    }
}

/// The ML-DSA parameter set `alg` names, if it names one.
fn ml_dsa(alg: &Oid<'_>) -> Option<KeyAlgorithm> {
    [
        (OID_ML_DSA_44, KeyAlgorithm::MlDsa44),
        (OID_ML_DSA_65, KeyAlgorithm::MlDsa65),
        (OID_ML_DSA_87, KeyAlgorithm::MlDsa87),
    ]
    .into_iter()
    .find_map(|(oid, key)| (oid == *alg).then_some(key))
}

/// Modulus length in bits, ignoring DER's leading zero bytes.
fn rsa_bits(modulus: &[u8]) -> usize {
    let trimmed = match modulus.iter().position(|b| *b != 0) {
        Some(i) => &modulus[i..],
        None => return 0,
    };
    trimmed.len() * 8 - trimmed[0].leading_zeros() as usize
}

/// The names a CSR may request: the identity's two, plus the daemon's own
/// server names for its serving certificate.
struct Allowed<'a> {
    dns: String,
    uri: String,
    extra_dns: Vec<&'a str>,
    extra_ips: Vec<std::net::IpAddr>,
}

impl<'a> Allowed<'a> {
    fn new(identity: &Identity, extra: &'a [ServerName]) -> Self {
        Self {
            dns: identity.dns_name(),
            uri: identity.spiffe_id(),
            extra_dns: extra
                .iter()
                .filter_map(|n| match n {
                    ServerName::Dns(d) => Some(d.as_str()),
                    ServerName::Ip(_) => None,
                })
                .collect(),
            extra_ips: extra
                .iter()
                .filter_map(|n| match n {
                    ServerName::Ip(ip) => Some(*ip),
                    ServerName::Dns(_) => None,
                })
                .collect(),
        }
    }

    fn refuse(&self, requested: &str) -> CsrError {
        CsrError::NameNotAllowed {
            requested: requested.to_owned(),
            identity: self.dns.clone(),
        }
    }

    /// Accept one requested extension, adding its names to `requested`,
    /// or say why the CSR is refused.
    fn check_extension(
        &self,
        ext: &X509Extension<'_>,
        requested: &mut BTreeSet<String>,
    ) -> Result<(), CsrError> {
        match &ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    requested.insert(self.check_name(name)?);
                }
                Ok(())
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => Err(CsrError::CaRequested),
            // Usages are decided by policy, not copied; a request may state
            // them, as Go and OpenSSL do.
            ParsedExtension::BasicConstraints(_)
            | ParsedExtension::KeyUsage(_)
            | ParsedExtension::ExtendedKeyUsage(_) => Ok(()),
            _ => Err(CsrError::UnsupportedExtension(ext.oid.to_id_string())),
        }
    }

    /// The requested SAN in the form the leaf's set uses, if allowed.
    fn check_name(&self, name: &GeneralName<'_>) -> Result<String, CsrError> {
        match name {
            GeneralName::DNSName(n) if *n == self.dns || self.extra_dns.contains(n) => {
                Ok(format!("DNS:{n}"))
            }
            GeneralName::URI(u) if *u == self.uri => Ok(format!("URI:{u}")),
            GeneralName::IPAddress(b) => match ip_from_bytes(b) {
                Some(ip) if self.extra_ips.contains(&ip) => Ok(format!("IP:{ip}")),
                _ => Err(self.refuse(&name.to_string())),
            },
            other => Err(self.refuse(&other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rsa_bits;

    #[test]
    fn rsa_size_ignores_sign_padding() {
        let mut m = vec![0u8];
        m.extend([0xC0; 256]);
        assert_eq!(rsa_bits(&m), 2048);
        assert_eq!(rsa_bits(&[0x01, 0x00]), 9);
        assert_eq!(rsa_bits(&[0, 0]), 0);
    }
}
