//! The one rustls client policy meshca's own clients use: ring, TLS 1.2
//! and 1.3 only.

use std::sync::Arc;

use rustls::client::WantsClientCert;
use rustls::{ClientConfig, ConfigBuilder, RootCertStore};

/// A client configuration trusting `roots`, before client authentication
/// is chosen.
///
/// # Errors
/// Only if ring lacks a TLS 1.2/1.3 cipher suite, which would be a build
/// defect; kept as an error rather than a panic.
pub(crate) fn client_builder(
    roots: RootCertStore,
) -> Result<ConfigBuilder<ClientConfig, WantsClientCert>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots))
}

/// A client configuration whose server certificates `verifier` checks
/// (a SPIFFE ID on a chain to a bundle, instead of a host name), without
/// client authentication.
///
/// # Errors
/// As [`client_builder`].
pub(crate) fn client_with_verifier(
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
) -> Result<ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}
