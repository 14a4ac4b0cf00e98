use std::time::Duration;

use meshca_provider::{Identity, TrustDomain};
use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{anchor_from_trusted_cert, EndEntityCert, KeyUsage};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::AuthError;
use crate::listener::PeerCertificates;

/// Validate the client chain against the current anchors, for clientAuth,
/// now; then read the identity from its SPIFFE URI SAN.
pub(super) fn authenticate(
    peer: &PeerCertificates,
    anchors: &[CertificateDer<'static>],
    trust_domain: &TrustDomain,
) -> Result<Identity, AuthError> {
    let bad = |m: String| AuthError::ClientCertificate(m);
    let (leaf, intermediates) = peer
        .0
        .split_first()
        .ok_or_else(|| bad("no certificate presented".into()))?;
    let anchors = anchors
        .iter()
        .filter_map(|a| anchor_from_trusted_cert(a).ok())
        .collect::<Vec<_>>();
    let ee = EndEntityCert::try_from(leaf).map_err(|e| bad(e.to_string()))?;
    let now = UnixTime::since_unix_epoch(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO),
    );
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        now,
        KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| match e {
        webpki::Error::CertExpired { .. } => bad("the certificate has expired".into()),
        webpki::Error::UnknownIssuer => {
            bad("the certificate was not issued by this mesh's CA".into())
        }
        other => bad(other.to_string()),
    })?;

    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| bad(e.to_string()))?;
    let mut ids = meshca_provider::uri_names(&cert)
        .into_iter()
        .filter(|u| u.starts_with("spiffe://"));
    let (Some(uri), None) = (ids.next(), ids.next()) else {
        return Err(bad(
            "the certificate must carry exactly one SPIFFE ID".into()
        ));
    };
    let identity = Identity::from_spiffe_id(uri).map_err(|e| bad(e.to_string()))?;
    if identity.trust_domain() != trust_domain {
        return Err(bad(format!(
            "the certificate belongs to trust domain {}, not {trust_domain}",
            identity.trust_domain()
        )));
    }
    Ok(identity)
}
