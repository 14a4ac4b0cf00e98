//! meshca's cryptography. The choices (the rustls provider, the TLS
//! versions, the random source, the digests) are made once, in
//! `meshca_provider::crypto`, which every crate of meshca shares and this
//! module re-exports; what only the daemon needs is built on them here.
//! Nothing else in meshca names a cryptography library.

pub mod names;
pub mod signing;

pub use meshca_provider::crypto::*;

use std::sync::Arc;

use rustls::ClientConfig;

/// A client configuration whose server certificates `verifier` checks
/// (a SPIFFE ID on a chain to a bundle, instead of a host name), without
/// client authentication.
///
/// # Errors
/// As [`client_config`].
pub(crate) fn client_with_verifier(
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
) -> Result<ClientConfig, rustls::Error> {
    Ok(client_config()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}
