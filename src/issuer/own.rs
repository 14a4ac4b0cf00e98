//! Certificates meshca makes for itself: the daemon's serving certificate
//! and the Secrets it keeps (ingress backends and client). The key is made
//! here, where it is used, and goes through the same [`Issuer::issue`] as
//! every workload's request.

use meshca_provider::{Identity, ServerName};
use rcgen::KeyPair;
use zeroize::Zeroizing;

use super::{Frontend, IssuedCertificate, Issuer, LifetimeBounds, Refusal, Request};
use crate::crypto::names::KeyAlgorithmName;

/// A key made here and the certificate issued for it.
pub struct OwnCertificate {
    key: KeyPair,
    /// The certificate, with the bundle and renewal time.
    pub issued: IssuedCertificate,
}

impl std::fmt::Debug for OwnCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnCertificate")
            .field("issued", &self.issued)
            .finish_non_exhaustive()
    }
}

impl OwnCertificate {
    /// The chain, leaf first, PEM.
    pub fn chain_pem(&self) -> String {
        meshca_provider::pem::encode_certificates(self.issued.issued.chain())
    }

    /// The private key, PKCS#8 PEM, wiped from memory when dropped.
    pub fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.key.serialize_pem())
    }

    /// The private key, PKCS#8 DER, wiped from memory when dropped.
    pub fn key_der(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.key.serialize_der())
    }
}

impl Issuer {
    /// Make a key and a request naming `identity` (and, for a serving
    /// certificate, `server_names`), then issue it through
    /// `frontend` like any workload's request.
    ///
    /// # Errors
    /// The [`Refusal`].
    pub async fn issue_own(
        &self,
        frontend: Frontend,
        (identity, key_algorithm): (&Identity, KeyAlgorithmName),
        server_names: &[ServerName],
        lifetime: LifetimeBounds,
    ) -> Result<OwnCertificate, Refusal> {
        let made = crate::keys::generate_as(key_algorithm).and_then(|key| {
            crate::keys::request_for(&key, identity, server_names).map(|csr| (key, csr))
        });
        let (key, csr) = made.map_err(Refusal::OwnKey)?;
        let request = Request::server(frontend, identity, csr.der(), lifetime, server_names);
        let issued = self.issue(request).await?;
        Ok(OwnCertificate {
            key,
            issued: *issued,
        })
    }
}
