//! CRLs signed by Tresor's CAs: one per CA, over every serial meshca
//! revoked.
//!
//! A CRL lists the certificates its issuer revoked (RFC 5280 §5). meshca
//! does not keep which of its CAs issued a revoked serial, so each CA's
//! list carries every revoked serial: verifiers match an entry on the
//! issuer and the serial together, and serials are 128 random bits, so
//! an entry for another CA's certificate revokes nothing of this one's.
//!
//! Each CA keeps the last list it signed and signs again only when asked
//! for another, so that asking often (to cover a CA that has just begun
//! to sign) costs a root in custody no call to its custodian.

use std::sync::{Mutex, PoisonError};

use meshca_provider::revocation::{CrlRequest, SignedCrl};
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};

use crate::ca::CaCertificate;
use crate::TresorError;

/// The last list a CA signed, and what it was asked for.
#[derive(Default)]
pub(crate) struct LastCrl(Mutex<Option<(CrlRequest, CertificateRevocationListDer<'static>)>>);

impl LastCrl {
    fn get(&self, request: &CrlRequest) -> Option<CertificateRevocationListDer<'static>> {
        let last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        last.as_ref()
            .filter(|(asked, _)| asked == request)
            .map(|(_, der)| der.clone())
    }

    fn keep(&self, request: &CrlRequest, der: &CertificateRevocationListDer<'static>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((request.clone(), der.clone()));
    }
}

impl CaCertificate {
    /// This CA's CRL over `request`; `signs_leaves` says whether leaves
    /// are checked against it. A CA in custody has its custodian sign it,
    /// checked.
    ///
    /// # Errors
    /// [`TresorError::Sign`] (rcgen refused the list) or
    /// [`TresorError::Custody`].
    pub async fn crl(
        &self,
        request: &CrlRequest,
        signs_leaves: bool,
    ) -> Result<SignedCrl, TresorError> {
        let signed = |der| SignedCrl {
            issuer: self.subject().to_owned(),
            signs_leaves,
            der,
        };
        if let Some(der) = self.last_crl().get(request) {
            return Ok(signed(der));
        }
        let params = CertificateRevocationListParams {
            this_update: request.this_update,
            next_update: request.next_update,
            crl_number: SerialNumber::from(request.number()),
            issuing_distribution_point: None,
            revoked_certs: request
                .revoked
                .iter()
                .map(|r| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(r.serial.as_bytes()),
                    revocation_time: r.revoked_at,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: key_identifier(self.der()),
        };
        let unsigned = params.signed_by(self.issuer())?;
        // The same outer shape as a certificate's: to-be-signed part,
        // algorithm, signature.
        let der = self
            .finish(&CertificateDer::from(unsigned.der().as_ref()))
            .await?;
        let der = CertificateRevocationListDer::from(der.as_ref().to_vec());
        self.last_crl().keep(request, &der);
        Ok(signed(der))
    }
}

/// The CRL's authority key identifier: the CA certificate's own subject
/// key identifier, which verifiers (OpenSSL) match it against, whatever
/// method made it; a digest of the key when the certificate has none.
fn key_identifier(ca: &CertificateDer<'_>) -> KeyIdMethod {
    let ski = X509Certificate::from_der(ca).ok().and_then(|(_, cert)| {
        cert.extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
    });
    ski.map_or(KeyIdMethod::Sha256, KeyIdMethod::PreSpecified)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use meshca_provider::revocation::{Revoked, Serial};
    use meshca_provider::Provider;
    use time::OffsetDateTime;
    use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};

    use super::*;
    use crate::{RootKeyAlgorithm, Tresor};

    fn request(serials: &[&str], at: OffsetDateTime) -> CrlRequest {
        CrlRequest {
            revoked: serials
                .iter()
                .map(|s| Revoked {
                    serial: Serial::parse(s).expect("serial"),
                    revoked_at: at,
                })
                .collect(),
            this_update: at,
            next_update: at + Duration::from_secs(600),
        }
    }

    fn ski(der: &[u8]) -> Vec<u8> {
        let (_, cert) = X509Certificate::from_der(der).expect("certificate");
        cert.extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
            .expect("a subject key identifier")
    }

    #[tokio::test]
    async fn each_ca_signs_a_list_its_verifiers_match_to_it_and_signs_again_only_when_asked_anew() {
        let root = CaCertificate::generate_root(
            RootKeyAlgorithm::EcdsaP256,
            Duration::from_secs(3600),
            "test root",
        )
        .expect("root");
        let root_der = root.der().clone();
        let tresor = Tresor::from_roots(root, None, Some(Duration::from_secs(600)))
            .await
            .expect("tresor");
        let now = OffsetDateTime::now_utc();
        let asked = request(&["0a1b", "ff"], now);
        let lists = tresor.revocation_lists(&asked).await.expect("lists");
        assert_eq!(lists.len(), 2, "the intermediate's, then the root's");
        assert!(lists[0].signs_leaves && !lists[1].signs_leaves);
        assert_eq!(lists[1].issuer, "CN=test root");
        let (_, root_list) = x509_parser::parse_x509_crl(&lists[1].der).expect("a CRL");
        let aki = root_list
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            })
            .expect("an authority key identifier");
        assert_eq!(
            aki,
            ski(&root_der),
            "matched to the root by its key identifier"
        );
        let serials: Vec<String> = root_list
            .iter_revoked_certificates()
            .map(|r| r.raw_serial().iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        assert_eq!(serials, ["0a1b", "00ff"], "DER keeps the sign byte");
        assert_eq!(
            root_list.crl_number().map(ToString::to_string),
            Some(asked.number().to_string())
        );

        let again = tresor.revocation_lists(&asked).await.expect("lists");
        assert_eq!(
            again, lists,
            "the same request is answered with the same lists"
        );
        let later = request(&["0a1b", "ff"], now + Duration::from_secs(1));
        let renewed = tresor.revocation_lists(&later).await.expect("lists");
        assert_ne!(renewed[0].der, lists[0].der, "a new request is signed anew");
    }
}
