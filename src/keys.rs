//! Keys and certificate requests made where they are used: by the agent
//! for its workload, and by the daemon for its own serving certificate.
//!
//! The request carries only the public key: the signing side decides every
//! name from the authenticated identity, so asking for none is both enough
//! and impossible to get wrong.

use rcgen::{CertificateParams, CertificateSigningRequest, DistinguishedName, KeyPair};

/// A fresh ECDSA P-256 key (the mesh default).
///
/// # Errors
/// The system random source failed.
pub fn generate() -> Result<KeyPair, rcgen::Error> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
}

/// A CSR for `key` with an empty subject and no extensions.
///
/// # Errors
/// Signing the request failed.
pub fn request_for(key: &KeyPair) -> Result<CertificateSigningRequest, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.serialize_request(key)
}
