//! Keys and certificate requests made where they are used: by the agent
//! for its workload, and by the daemon for its own serving certificate.
//!
//! A request names exactly the identity it is for (CN and DNS SAN
//! `SA.NS.TD`, URI SAN `spiffe://…`) plus, for the daemon only, the names
//! it is dialled by. The signing side checks these against the
//! authenticated identity; backends such as cert-manager sign only what the
//! request names, so naming it fully works with every provider.

use meshca_provider::{Identity, ServerName};

use crate::crypto::names::KeyAlgorithmName;
use rcgen::{
    CertificateParams, CertificateSigningRequest, DistinguishedName, DnType, KeyPair, SanType,
};

/// A fresh ECDSA P-256 key (the mesh default).
///
/// # Errors
/// The system random source failed.
pub fn generate() -> Result<KeyPair, rcgen::Error> {
    generate_as(KeyAlgorithmName::EcdsaP256)
}

/// A fresh key of `algorithm`: classical, or ML-DSA for a post-quantum
/// identity.
///
/// # Errors
/// The system random source failed.
pub fn generate_as(algorithm: KeyAlgorithmName) -> Result<KeyPair, rcgen::Error> {
    let rsa = |size| KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size);
    match algorithm {
        KeyAlgorithmName::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyAlgorithmName::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyAlgorithmName::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        KeyAlgorithmName::Rsa2048 => rsa(rcgen::RsaKeySize::_2048),
        KeyAlgorithmName::Rsa3072 => rsa(rcgen::RsaKeySize::_3072),
        KeyAlgorithmName::Rsa4096 => rsa(rcgen::RsaKeySize::_4096),
        KeyAlgorithmName::MlDsa44 => KeyPair::generate_for(&rcgen::PKCS_ML_DSA_44),
        KeyAlgorithmName::MlDsa65 => KeyPair::generate_for(&rcgen::PKCS_ML_DSA_65),
        KeyAlgorithmName::MlDsa87 => KeyPair::generate_for(&rcgen::PKCS_ML_DSA_87),
    }
}

/// A CSR for `key` naming `identity` and `extra` server names.
///
/// # Errors
/// A name rcgen cannot encode, or signing failed.
pub fn request_for(
    key: &KeyPair,
    identity: &Identity,
    extra: &[ServerName],
) -> Result<CertificateSigningRequest, rcgen::Error> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity.dns_name());
    params.distinguished_name = dn;
    let mut sans = vec![
        SanType::DnsName(identity.dns_name().try_into()?),
        SanType::URI(identity.spiffe_id().try_into()?),
    ];
    for name in extra {
        sans.push(match name {
            ServerName::Dns(d) => SanType::DnsName(d.clone().try_into()?),
            ServerName::Ip(ip) => SanType::IpAddress(*ip),
        });
    }
    params.subject_alt_names = sans;
    params.serialize_request(key)
}
