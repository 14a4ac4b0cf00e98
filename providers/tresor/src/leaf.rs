use meshca_provider::{backdate_for, KeyAlgorithm, LeafProfile, ValidatedCsr};
use rcgen::{
    CertificateParams, CrlDistributionPoint, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::{CaCertificate, TresorError};

/// The CSR's public key, presented to rcgen: the only part of a request
/// that ends up in a leaf.
struct CsrKey<'a>(&'a ValidatedCsr);

impl PublicKeyData for CsrKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        // rcgen writes the SPKI algorithm identifier from this; the issued
        // key is compared byte for byte with the CSR's afterwards.
        match self.0.key_algorithm() {
            KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
            KeyAlgorithm::Rsa { .. } => &rcgen::PKCS_RSA_SHA256,
            KeyAlgorithm::MlDsa44 => &rcgen::PKCS_ML_DSA_44,
            KeyAlgorithm::MlDsa65 => &rcgen::PKCS_ML_DSA_65,
            KeyAlgorithm::MlDsa87 => &rcgen::PKCS_ML_DSA_87,
            _ => &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }
}

/// A random, positive 128-bit serial number (CA/B Forum asks for at least
/// 64 bits of entropy).
pub(crate) fn random_serial() -> SerialNumber {
    // The random source only fails if the OS has no entropy source, in
    // which case nothing in the process can be trusted to continue.
    #[allow(clippy::expect_used)]
    let bytes = meshca_provider::crypto::random::<16>()
        .expect("the operating system's random source failed");
    SerialNumber::from_slice(&bytes)
}

/// Build the workload leaf (`docs/api.md`, "Identity") for `profile` and sign it with `ca`.
pub(crate) fn sign(
    ca: &CaCertificate,
    csr: &ValidatedCsr,
    profile: &LeafProfile,
) -> Result<CertificateDer<'static>, TresorError> {
    let identity = profile.identity();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity.dns_name());
    params.distinguished_name = dn;

    let mut sans = Vec::with_capacity(2 + profile.extra_names().len());
    for dns in profile.dns_names() {
        sans.push(SanType::DnsName(dns.try_into()?));
    }
    sans.push(SanType::URI(identity.spiffe_id().try_into()?));
    sans.extend(profile.ip_addresses().into_iter().map(SanType::IpAddress));
    params.subject_alt_names = sans;

    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = if csr.key_algorithm().is_rsa() {
        vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ]
    } else {
        vec![KeyUsagePurpose::DigitalSignature]
    };
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    // The backdate counts inside the lifetime (`LeafProfile::lifetime`).
    params.not_before = OffsetDateTime::now_utc() - backdate_for(profile.lifetime());
    params.not_after = (params.not_before + profile.lifetime()).min(ca.not_after());
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    params.crl_distribution_points = profile
        .crl_url()
        .map(|url| CrlDistributionPoint {
            uris: vec![url.to_owned()],
        })
        .into_iter()
        .collect();

    let cert = params.signed_by(&CsrKey(csr), ca.issuer())?;
    Ok(cert.der().clone())
}
