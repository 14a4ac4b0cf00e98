//! The held certificate in the shape the SPIFFE X509-SVID specification
//! requires, checked before any SPIFFE client sees it.
//!
//! SPIFFE libraries refuse an SVID that breaks the specification (a leaf
//! without basicConstraints, say) with an error that says little about the
//! cause. Checking here lets the agent name the setting to fix instead.

use meshca_provider::Identity;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;
use thiserror::Error;
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

/// An X509-SVID with its key and bundle, DER-encoded as the Workload API
/// carries them.
#[derive(PartialEq, Eq)]
pub(crate) struct Svid {
    /// `spiffe://TD/ns/NS/sa/SA`.
    pub spiffe_id: String,
    /// `spiffe://TD`, the key of the bundle maps.
    pub trust_domain_id: String,
    /// The chain, leaf first, as concatenated DER.
    pub chain: Vec<u8>,
    /// Unencrypted PKCS#8.
    pub key: Zeroizing<Vec<u8>>,
    /// The trust domain's CA certificates, concatenated DER.
    pub bundle: Vec<u8>,
    /// The federated trust domains' X.509 authorities, concatenated DER,
    /// by `spiffe://<trust domain>`.
    pub federated: std::collections::BTreeMap<String, Vec<u8>>,
    /// The CRLs, each DER, as the Workload API's `crl` fields carry them.
    pub crl: Vec<Vec<u8>>,
}

/// Why a held certificate cannot be served as an X509-SVID.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum SvidError {
    /// The PEM does not decode.
    #[error("{0}")]
    Encoding(String),
    /// The leaf breaks a rule of the X509-SVID specification.
    #[error("the leaf is not a valid X509-SVID: {0}")]
    Shape(String),
}

impl Svid {
    /// Convert and check the held PEM; `identity` is the one the server
    /// said the credential stands for.
    pub(crate) fn from_pem(
        identity: &Identity,
        chain_pem: &str,
        key_pem: &str,
        bundle_pem: &str,
        federated: &super::Federated,
        crl_pem: Option<&str>,
    ) -> Result<Self, SvidError> {
        let encoding = |what: &str, e: String| SvidError::Encoding(format!("{what}: {e}"));
        let chain = meshca_provider::pem::decode_certificates(chain_pem.as_bytes())
            .map_err(|e| encoding("certificate chain", e))?;
        let bundle = meshca_provider::pem::decode_certificates(bundle_pem.as_bytes())
            .map_err(|e| encoding("trust bundle", e))?;
        let key = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| encoding("private key (PKCS#8)", e.to_string()))?;
        let crl = crl_pem
            .map(|pem| {
                rustls_pki_types::CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
                    .map(|c| c.map(|c| c.as_ref().to_vec()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(|e| encoding("CRLs", e.to_string()))?
            .unwrap_or_default();
        let spiffe_id = identity.spiffe_id();
        check_leaf(&chain[0], &spiffe_id)?;
        Ok(Self {
            spiffe_id,
            trust_domain_id: format!("spiffe://{}", identity.trust_domain()),
            chain: chain.iter().flat_map(|c| c.iter().copied()).collect(),
            key: Zeroizing::new(key.secret_pkcs8_der().to_vec()),
            bundle: bundle.iter().flat_map(|c| c.iter().copied()).collect(),
            federated: federated
                .iter()
                .filter(|(_, b)| !b.x509_authorities.is_empty())
                .map(|(id, b)| {
                    (
                        id.clone(),
                        b.x509_authorities
                            .iter()
                            .flat_map(|c| c.iter().copied())
                            .collect(),
                    )
                })
                .collect(),
            crl,
        })
    }
}

/// The leaf rules of the X509-SVID specification (section 4 and 5).
fn check_leaf(der: &[u8], spiffe_id: &str) -> Result<(), SvidError> {
    let shape = |m: &str| SvidError::Shape(m.to_owned());
    let (_, leaf) = X509Certificate::from_der(der)
        .map_err(|e| SvidError::Encoding(format!("leaf certificate: {e}")))?;
    let uris = meshca_provider::uri_names(&leaf);
    if uris != [spiffe_id] {
        return Err(SvidError::Shape(format!(
            "it must carry exactly one URI SAN, {spiffe_id}; it carries {uris:?}"
        )));
    }
    match leaf.basic_constraints() {
        Ok(Some(bc)) if !bc.value.ca => {}
        Ok(Some(_)) => return Err(shape("it is a CA certificate")),
        _ => {
            return Err(shape(
                "it has no basicConstraints extension, which SPIFFE clients require \
                 (for Vault, set basic_constraints_valid_for_non_ca=true on the PKI role)",
            ))
        }
    }
    match leaf.key_usage() {
        Ok(Some(ku)) if ku.value.digital_signature() => {
            if ku.value.key_cert_sign() || ku.value.crl_sign() {
                return Err(shape("its keyUsage allows keyCertSign or cRLSign"));
            }
        }
        _ => return Err(shape("its keyUsage must include digitalSignature")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};

    const ID: &str = "spiffe://cluster.local/ns/shop/sa/web";

    fn identity() -> Identity {
        Identity::from_spiffe_id(ID).expect("identity")
    }

    fn issue(edit: impl FnOnce(&mut CertificateParams)) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(ID.try_into().expect("uri"))];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        edit(&mut params);
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn convert(edit: impl FnOnce(&mut CertificateParams)) -> Result<Svid, SvidError> {
        let (cert, key) = issue(edit);
        Svid::from_pem(&identity(), &cert, &key, &cert, &Default::default(), None)
    }

    #[test]
    fn a_conforming_leaf_converts_to_der() {
        let svid = convert(|_| {}).expect("valid");
        assert_eq!(svid.trust_domain_id, "spiffe://cluster.local");
        assert!(X509Certificate::from_der(&svid.chain).is_ok());
        assert!(!svid.key.is_empty());
    }

    #[test]
    fn every_rule_of_the_specification_is_enforced() {
        let missing_bc = convert(|p| p.is_ca = IsCa::NoCa).err();
        assert!(
            matches!(&missing_bc, Some(SvidError::Shape(m)) if m.contains("basic_constraints_valid_for_non_ca")),
            "{missing_bc:?}"
        );
        let ca = convert(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)).err();
        assert!(
            matches!(&ca, Some(SvidError::Shape(m)) if m.contains("CA")),
            "{ca:?}"
        );
        let two_uris = convert(|p| {
            p.subject_alt_names.push(SanType::URI(
                "spiffe://cluster.local/other".try_into().expect("uri"),
            ));
        })
        .err();
        assert!(
            matches!(&two_uris, Some(SvidError::Shape(m)) if m.contains("exactly one URI SAN")),
            "{two_uris:?}"
        );
        let signing = convert(|p| p.key_usages.push(KeyUsagePurpose::KeyCertSign)).err();
        assert!(
            matches!(&signing, Some(SvidError::Shape(m)) if m.contains("keyCertSign")),
            "{signing:?}"
        );
        let no_ds = convert(|p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]).err();
        assert!(
            matches!(&no_ds, Some(SvidError::Shape(m)) if m.contains("digitalSignature")),
            "{no_ds:?}"
        );
    }

    #[test]
    fn a_key_that_is_not_pkcs8_is_refused() {
        let (cert, _) = issue(|_| {});
        let err = Svid::from_pem(
            &identity(),
            &cert,
            "-----BEGIN EC PRIVATE KEY-----\n-----END EC PRIVATE KEY-----\n",
            &cert,
            &Default::default(),
            None,
        )
        .err();
        assert!(matches!(err, Some(SvidError::Encoding(m)) if m.contains("PKCS#8")));
    }
}
