//! Fetching a peer's bundle from its bundle endpoint (SPIFFE Federation,
//! section 5), authenticated by its profile: `https_web` by the Web PKI,
//! `https_spiffe` by the peer's SPIFFE ID on a chain to the bundle meshca
//! last held for it, so the peer can rotate its root without breaking the
//! link.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshca_provider::TrustDomain;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use thiserror::Error;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::config::{PeerProfile, DEFAULT_REFRESH, MAX_REFRESH, MIN_REFRESH};
use crate::bundle::spiffe::{PeerBundle, Refused};

/// The largest bundle accepted; SPIRE's are a few kilobytes.
const MAX_BUNDLE_BYTES: usize = 1024 * 1024;
/// How long one fetch may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The first retry after a fetch failed.
const RETRY_MIN: Duration = Duration::from_secs(5);
/// Redirects an `https_web` fetch follows, each to an `https://` URL and
/// authenticated by the Web PKI again; an `https_spiffe` fetch follows
/// none, as its endpoint is authenticated by the peer's SPIFFE ID.
const MAX_WEB_REDIRECTS: usize = 3;

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
    /// The endpoint answered something other than `200 OK`: a redirect
    /// an `https_spiffe` fetch does not follow, or an error.
    #[error("{url} answered {status}{}", .location.as_ref().map(|l| format!(" (Location: {l}), which is not followed: the bundle must come from the authenticated endpoint itself")).unwrap_or_default())]
    Status {
        /// The endpoint.
        url: String,
        /// The status it answered.
        status: reqwest::StatusCode,
        /// Where a redirect pointed.
        location: Option<String>,
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
            Self::Refused { .. } | Self::TooLarge { .. } | Self::Status { .. } => "refused",
            Self::Unreachable { .. } => "unreachable",
            Self::Setup { .. } => "setup",
        }
    }

    /// Whether the next fetch backs off: every failure but a bundle that
    /// was fetched and refused, which is asked for again at the refresh
    /// interval, since asking sooner would not change it.
    pub fn backs_off(&self) -> bool {
        !matches!(self, Self::Refused { .. })
    }
}

/// When to fetch again: at the bundle's refresh hint (bounded) after a
/// success or a refused bundle; after other failures sooner, doubling from
/// [`RETRY_MIN`] with each in a row, but never later than the hint.
pub fn next_fetch(hint: Option<Duration>, failed_in_a_row: u32) -> Duration {
    let interval = hint
        .unwrap_or(DEFAULT_REFRESH)
        .clamp(MIN_REFRESH, MAX_REFRESH);
    if failed_in_a_row == 0 {
        return interval;
    }
    let exponent = failed_in_a_row.saturating_sub(1).min(16);
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
    held: Option<&PeerBundle>,
) -> Result<PeerBundle, FetchError> {
    let (client, presented) = client(url, profile, held)?;
    let unreachable = |source| FetchError::Unreachable {
        url: url.to_owned(),
        source,
    };
    let mut response = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(unreachable)?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status: response.status(),
            location: response.headers().get(reqwest::header::LOCATION).map(|l| {
                String::from_utf8_lossy(l.as_bytes())
                    .chars()
                    .take(256)
                    .collect()
            }),
        });
    }
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
    let bundle = PeerBundle::parse(trust_domain, &body).map_err(refused)?;
    bundle.follows(held).map_err(refused)?;
    if let Some(presented) = presented {
        still_authenticates(&bundle, &presented).map_err(refused)?;
    }
    Ok(bundle)
}

/// `https_spiffe`: the new bundle must hold an authority of the
/// certificate its own endpoint served, or trusting it would break the
/// link at the next fetch, with no bundle left to mend it.
fn still_authenticates(bundle: &PeerBundle, presented: &Presented) -> Result<(), Refused> {
    let chain = presented.lock().map(|c| c.clone()).unwrap_or_default();
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Ok(());
    };
    verify_chain(
        &bundle.x509_authorities,
        leaf,
        intermediates,
        UnixTime::now(),
    )
    .map_err(|e| Refused::LocksOut(e.to_string()))
}

/// The chain an `https_spiffe` endpoint presented on the fetch's
/// connection, leaf first.
type Presented = Arc<Mutex<Vec<CertificateDer<'static>>>>;

/// `chain` (leaf, intermediates) verified for serverAuth against
/// `anchors`, at `now`.
fn verify_chain(
    anchors: &[CertificateDer<'_>],
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), webpki::Error> {
    let anchors: Vec<_> = anchors
        .iter()
        .filter_map(|a| webpki::anchor_from_trusted_cert(a).ok())
        .collect();
    webpki::EndEntityCert::try_from(end_entity)?
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map(drop)
}

/// A client authenticating the endpoint by `profile`; with
/// `https_spiffe`, also where the chain it presented is kept.
fn client(
    url: &str,
    profile: &PeerProfile,
    held: Option<&PeerBundle>,
) -> Result<(reqwest::Client, Option<Presented>), FetchError> {
    let setup = |reason: String| FetchError::Setup {
        url: url.to_owned(),
        reason,
    };
    let mut presented = None;
    let redirects = match profile {
        PeerProfile::HttpsWeb => reqwest::redirect::Policy::limited(MAX_WEB_REDIRECTS),
        PeerProfile::HttpsSpiffe { .. } => reqwest::redirect::Policy::none(),
    };
    let tls = match profile {
        PeerProfile::HttpsWeb => crate::crypto::client_config_trusting(web_roots().map_err(setup)?)
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
                algorithms: crate::crypto::verification_algorithms(),
                presented: Presented::default(),
            };
            presented = Some(verifier.presented.clone());
            crate::crypto::client_with_verifier(Arc::new(verifier))
                .map_err(|e| setup(e.to_string()))?
        }
    };
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .https_only(true)
        .redirect(redirects)
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| setup(e.to_string()))?;
    Ok((client, presented))
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
    /// The chain the endpoint presented, once verified.
    presented: Presented,
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
        let invalid = |e: CertificateError| rustls::Error::InvalidCertificate(e);
        verify_chain(&self.anchors, end_entity, intermediates, now).map_err(|e| match e {
            webpki::Error::UnknownIssuer => invalid(CertificateError::UnknownIssuer),
            webpki::Error::CertExpired { .. } => invalid(CertificateError::Expired),
            webpki::Error::BadDer => invalid(CertificateError::BadEncoding),
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
        if let Ok(mut presented) = self.presented.lock() {
            *presented = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| c.clone().into_owned())
                .collect();
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

    /// A CA and a serverAuth leaf under it.
    fn ca_and_leaf() -> (CertificateDer<'static>, CertificateDer<'static>) {
        let ca_key = rcgen::KeyPair::generate().expect("as the test set it up");
        let mut ca =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("as the test set it up");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_der = ca
            .self_signed(&ca_key)
            .expect("as the test set it up")
            .der()
            .clone();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut leaf = rcgen::CertificateParams::new(vec!["endpoint".to_owned()])
            .expect("as the test set it up");
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = rcgen::KeyPair::generate().expect("as the test set it up");
        let leaf = leaf
            .signed_by(&leaf_key, &issuer)
            .expect("as the test set it up");
        (ca_der, leaf.der().clone())
    }

    fn bundle_of(anchor: &CertificateDer<'_>) -> PeerBundle {
        let doc =
            crate::bundle::spiffe::document(std::slice::from_ref(anchor), &[], 1, DEFAULT_REFRESH);
        PeerBundle::parse(
            &TrustDomain::new("b.test").expect("valid"),
            doc.to_string().as_bytes(),
        )
        .expect("valid")
    }

    #[test]
    fn a_bundle_that_would_lock_out_its_own_endpoint_is_refused() {
        let (ca, leaf) = ca_and_leaf();
        let (other_ca, _) = ca_and_leaf();
        let presented: Presented = Arc::new(Mutex::new(vec![leaf]));
        assert_eq!(still_authenticates(&bundle_of(&ca), &presented), Ok(()));
        let refused = still_authenticates(&bundle_of(&other_ca), &presented).expect_err("refused");
        assert!(matches!(refused, Refused::LocksOut(_)), "{refused}");
        let nothing_presented = Presented::default();
        assert_eq!(
            still_authenticates(&bundle_of(&other_ca), &nothing_presented),
            Ok(())
        );
    }

    #[test]
    fn every_failure_but_a_refused_bundle_backs_off() {
        let url = || "https://peer.example/bundle".to_owned();
        let backs_off = [
            FetchError::TooLarge { url: url() },
            FetchError::Status {
                url: url(),
                status: reqwest::StatusCode::FOUND,
                location: Some("http://elsewhere/".into()),
            },
            FetchError::Setup {
                url: url(),
                reason: "no roots".into(),
            },
        ];
        for e in backs_off {
            assert!(e.backs_off(), "{e}");
        }
        let refused = FetchError::Refused {
            url: url(),
            source: Refused::Empty,
        };
        assert!(!refused.backs_off());
        let redirect = FetchError::Status {
            url: url(),
            status: reqwest::StatusCode::FOUND,
            location: Some("http://elsewhere/".into()),
        };
        assert!(redirect.to_string().contains("not followed"), "{redirect}");
        assert_eq!(redirect.label(), "refused");
    }

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
