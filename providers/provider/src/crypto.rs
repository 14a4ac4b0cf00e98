//! The one place meshca's cryptography is chosen: aws-lc-rs, for the
//! rustls [`CryptoProvider`] every TLS configuration is built with (key
//! exchange preferring the hybrid X25519MLKEM768, classical groups still
//! accepted; the signature algorithms certificates are verified with,
//! ML-DSA included), the random source and the digests. Every crate of
//! meshca asks here; none names a cryptography library itself.

pub mod custody;
mod ml_dsa;

pub use ml_dsa::{Level as MlDsaLevel, MlDsaError, MlDsaKey};

use std::sync::Arc;

use rustls::client::WantsClientCert;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::WantsServerCert;
use rustls::{ClientConfig, ConfigBuilder, RootCertStore, ServerConfig, WantsVerifier};
use thiserror::Error;

/// The first DER element of `input`: its tag, its contents and what
/// follows it; `None` when it is cut short or its length takes more than
/// four bytes.
pub(crate) fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        let len = bytes.iter().fold(0usize, |l, b| (l << 8) | usize::from(*b));
        (len, rest)
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

/// The TLS versions meshca speaks, as client and server.
static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The random source failed (the system has no entropy to give).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("the system random source failed")]
pub struct RandomError;

/// The rustls provider: aws-lc-rs, as compiled in (with
/// `prefer-post-quantum`, X25519MLKEM768 first among its key exchange
/// groups).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Install [`provider`] as the process default, for libraries that build
/// their own TLS configurations (the Kubernetes client). Idempotent.
pub fn install_default() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A server configuration of [`provider`] and TLS 1.2 and 1.3 only, before
/// client authentication is chosen.
///
/// # Errors
/// Only if the provider lacked a TLS 1.2/1.3 cipher suite, a build defect
/// kept as an error rather than a panic.
pub fn server_config() -> Result<ConfigBuilder<ServerConfig, WantsVerifier>, rustls::Error> {
    ServerConfig::builder_with_provider(provider()).with_protocol_versions(VERSIONS)
}

/// A server configuration as [`server_config`], without client
/// authentication.
///
/// # Errors
/// As [`server_config`].
pub fn server_config_without_client_auth(
) -> Result<ConfigBuilder<ServerConfig, WantsServerCert>, rustls::Error> {
    Ok(server_config()?.with_no_client_auth())
}

/// A client configuration of [`provider`] and TLS 1.2 and 1.3 only,
/// before server verification is chosen.
///
/// # Errors
/// As [`server_config`].
pub fn client_config() -> Result<ConfigBuilder<ClientConfig, WantsVerifier>, rustls::Error> {
    ClientConfig::builder_with_provider(provider()).with_protocol_versions(VERSIONS)
}

/// A client configuration trusting `roots`, before client authentication
/// is chosen.
///
/// # Errors
/// As [`server_config`].
pub fn client_config_trusting(
    roots: RootCertStore,
) -> Result<ConfigBuilder<ClientConfig, WantsClientCert>, rustls::Error> {
    Ok(client_config()?.with_root_certificates(roots))
}

/// The signature algorithms TLS peers and certificate chains are verified
/// with.
pub fn verification_algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
}

/// The signature algorithms rustls-webpki verifies certificate chains
/// with.
pub fn webpki_algorithms(
) -> &'static [&'static dyn rustls_pki_types::SignatureVerificationAlgorithm] {
    webpki::ALL_VERIFICATION_ALGS
}

/// `out` filled from the system's secure random source.
///
/// # Errors
/// [`RandomError`]: the system has no entropy to give.
pub fn fill_random(out: &mut [u8]) -> Result<(), RandomError> {
    aws_lc_rs::rand::fill(out).map_err(|_| RandomError)
}

/// `N` random bytes.
///
/// # Errors
/// As [`fill_random`].
pub fn random<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut out = [0u8; N];
    fill_random(&mut out)?;
    Ok(out)
}

/// A number in `[0, 1)` for jitter, where a failed random source may fall
/// back to the middle of the range: no security rests on it.
pub fn jitter_fraction() -> f64 {
    random::<4>().map_or(0.5, |b| {
        f64::from(u32::from_be_bytes(b)) / (f64::from(u32::MAX) + 1.0)
    })
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(data);
    hash.finish()
}

/// SHA-256 over data given in parts.
pub struct Sha256(aws_lc_rs::digest::Context);

impl Sha256 {
    /// An empty hash.
    pub fn new() -> Self {
        Self(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }

    /// Add `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest.
    pub fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_abc_is_the_fips_180_example() {
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(base16ct::lower::encode_string(&sha256(b"abc")), expected);
        let mut parts = Sha256::new();
        parts.update(b"a");
        parts.update(b"bc");
        assert_eq!(base16ct::lower::encode_string(&parts.finish()), expected);
    }

    #[test]
    fn random_bytes_differ_and_jitter_stays_in_range() {
        assert_ne!(random::<16>(), random::<16>());
        for _ in 0..100 {
            let j = jitter_fraction();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }
}
