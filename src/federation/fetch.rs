//! Fetching a peer's bundle from its bundle endpoint (SPIFFE Federation,
//! section 5), authenticated by its profile: `https_web` by the Web PKI,
//! `https_spiffe` by the peer's SPIFFE ID on a chain to the bundle meshca
//! last held for it, so the peer can rotate its root without breaking the
//! link.

use std::sync::Arc;
use std::time::Duration;

use meshca_provider::TrustDomain;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use thiserror::Error;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::bundle::{FederatedBundle, Refused};
use super::config::{PeerProfile, DEFAULT_REFRESH, MAX_REFRESH, MIN_REFRESH};

/// The largest bundle accepted; SPIRE's are a few kilobytes.
const MAX_BUNDLE_BYTES: usize = 1024 * 1024;
/// How long one fetch may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The first retry after an endpoint could not be reached.
const RETRY_MIN: Duration = Duration::from_secs(5);

/// Why a fetch brought no new bundle.
#[derive(Debug, Error)]
pub enum FetchError {
    /// The endpoint could not be reached or did not answer 200: retried
    /// soon, with backoff.
    #[error("failed to fetch {url}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The endpoint answered with a bundle meshca refuses: asked again at
    /// the refresh interval only, as asking sooner would not change it.
    #[error("refused the bundle {url} served")]
    Refused {
        /// The endpoint.
        url: String,
        /// Why.
        #[source]
        source: Refused,
    },
    /// The answer exceeds [`MAX_BUNDLE_BYTES`].
    #[error("{url} answered more than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge {
        /// The endpoint.
        url: String,
    },
    /// No TLS client could be built (no system roots, say).
    #[error("cannot authenticate {url}: {reason}")]
    Setup {
        /// The endpoint.
        url: String,
        /// Why.
        reason: String,
    },
}

impl FetchError {
    /// The `result` label of `meshca_federated_bundle_fetches_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Refused { .. } | Self::TooLarge { .. } => "refused",
            Self::Unreachable { .. } => "unreachable",
            Self::Setup { .. } => "setup",
        }
    }
}

/// When to fetch again: at the bundle's refresh hint (bounded) after a
/// success or a refusal; sooner, backing off, while the endpoint cannot be
/// reached, but never later than the hint.
pub fn next_fetch(hint: Option<Duration>, unreachable_in_a_row: u32) -> Duration {
    let interval = hint
        .unwrap_or(DEFAULT_REFRESH)
        .clamp(MIN_REFRESH, MAX_REFRESH);
    if unreachable_in_a_row == 0 {
        return interval;
    }
    let exponent = unreachable_in_a_row.saturating_sub(1).min(16);
    RETRY_MIN.saturating_mul(1 << exponent).min(interval)
}

/// One fetch of `url`, checked against `held`.
///
/// # Errors
/// [`FetchError`]; nothing held changes.
pub async fn fetch(
    trust_domain: &TrustDomain,
    url: &str,
    profile: &PeerProfile,
    held: Option<&FederatedBundle>,
) -> Result<FederatedBundle, FetchError> {
    let client = client(url, profile, held)?;
    let unreachable = |source| FetchError::Unreachable {
        url: url.to_owned(),
        source,
    };
    let mut response = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(unreachable)?;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        if body.len() + chunk.len() > MAX_BUNDLE_BYTES {
            return Err(FetchError::TooLarge {
                url: url.to_owned(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    let refused = |source| FetchError::Refused {
        url: url.to_owned(),
        source,
    };
    let bundle = FederatedBundle::parse(trust_domain, &body).map_err(refused)?;
    bundle.follows(held).map_err(refused)?;
    Ok(bundle)
}

fn client(
    url: &str,
    profile: &PeerProfile,
    held: Option<&FederatedBundle>,
) -> Result<reqwest::Client, FetchError> {
    let setup = |reason: String| FetchError::Setup {
        url: url.to_owned(),
        reason,
    };
    let tls = match profile {
        PeerProfile::HttpsWeb => crate::tls::client_builder(web_roots().map_err(setup)?)
            .map_err(|e| setup(e.to_string()))?
            .with_no_client_auth(),
        PeerProfile::HttpsSpiffe {
            endpoint_spiffe_id, ..
        } => {
            let anchors = held.map(|h| h.x509_authorities.clone()).unwrap_or_default();
            if anchors.is_empty() {
                return Err(setup(
                    "no X.509 authority of the peer is held to authenticate its endpoint".into(),
                ));
            }
            let verifier = SpiffeEndpoint {
                anchors,
                spiffe_id: endpoint_spiffe_id.clone(),
                algorithms: rustls::crypto::ring::default_provider()
                    .signature_verification_algorithms,
            };
            crate::tls::client_with_verifier(Arc::new(verifier))
                .map_err(|e| setup(e.to_string()))?
        }
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| setup(e.to_string()))
}

/// The system's roots, or those of `SSL_CERT_FILE` / `SSL_CERT_DIR`.
fn web_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(format!(
            "no trusted root certificates found on this system ({}); set SSL_CERT_FILE",
            errors.join("; ")
        ));
    }
    Ok(roots)
}

/// `https_spiffe`: the endpoint's certificate chains to the peer's X.509
/// authorities as last held, for serverAuth, and carries exactly the
/// configured SPIFFE ID. The host name is not checked: the SPIFFE ID is
/// the endpoint's name.
#[derive(Debug)]
struct SpiffeEndpoint {
    anchors: Vec<CertificateDer<'static>>,
    spiffe_id: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeEndpoint {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchors: Vec<_> = self
            .anchors
            .iter()
            .filter_map(|a| webpki::anchor_from_trusted_cert(a).ok())
            .collect();
        let invalid = |e: CertificateError| rustls::Error::InvalidCertificate(e);
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| invalid(CertificateError::BadEncoding))?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::UnknownIssuer => invalid(CertificateError::UnknownIssuer),
            webpki::Error::CertExpired { .. } => invalid(CertificateError::Expired),
            other => invalid(CertificateError::Other(rustls::OtherError(Arc::new(other)))),
        })?;
        let (_, cert) = X509Certificate::from_der(end_entity)
            .map_err(|_| invalid(CertificateError::BadEncoding))?;
        let ids: Vec<&str> = meshca_provider::uri_names(&cert)
            .into_iter()
            .filter(|u| u.starts_with("spiffe://"))
            .collect();
        if ids != [self.spiffe_id.as_str()] {
            tracing::warn!(expected = %self.spiffe_id, presented = ?ids, "a bundle endpoint presented another SPIFFE ID");
            return Err(invalid(CertificateError::NotValidForName));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetch_follows_the_hint_within_bounds_and_backs_off_while_unreachable() {
        let s = Duration::from_secs;
        assert_eq!(next_fetch(None, 0), DEFAULT_REFRESH);
        assert_eq!(next_fetch(Some(s(1)), 0), MIN_REFRESH);
        assert_eq!(next_fetch(Some(s(86_400)), 0), MAX_REFRESH);
        assert_eq!(next_fetch(Some(s(120)), 0), s(120));
        assert_eq!(next_fetch(Some(s(120)), 1), s(5));
        assert_eq!(next_fetch(Some(s(120)), 2), s(10));
        assert_eq!(next_fetch(Some(s(120)), 5), s(80));
        assert_eq!(
            next_fetch(Some(s(120)), 6),
            s(120),
            "never later than the hint"
        );
        assert_eq!(next_fetch(Some(s(120)), u32::MAX), s(120));
    }
}
