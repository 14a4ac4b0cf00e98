//! PEM text for certificates and trust bundles.
//!
//! Decoding goes through `rustls-pki-types`' `PemObject`; this module only
//! adds the encoding side and the "bundle of many certificates" reading that
//! every component (API, bundle sinks, agent) needs the same way.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};

/// Encode DER certificates as concatenated `CERTIFICATE` PEM blocks, in order.
pub fn encode_certificates<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    let mut out = String::new();
    for cert in certs {
        encode_block("CERTIFICATE", cert.as_ref(), &mut out);
    }
    out
}

/// Append one PEM block with a 64-column body and LF line endings, as
/// OpenSSL writes it.
pub fn encode_block(label: &str, der: &[u8], out: &mut String) {
    let config = ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF);
    out.push_str(&::pem::encode_config(
        &::pem::Pem::new(label, der.to_vec()),
        config,
    ));
}

/// Read every `CERTIFICATE` block in `pem`, refusing text that holds none or
/// that cannot be decoded, so that a truncated bundle is never mistaken for
/// a smaller one.
pub fn decode_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("malformed PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".to_owned());
    }
    Ok(certs)
}

/// The one PEM `CERTIFICATE REQUEST` block `pem` must be: anything more (a
/// second request, a key sent along) is refused, not ignored.
///
/// # Errors
/// Why it is not exactly one request, for the caller's error message.
pub fn decode_one_csr(pem: &str) -> Result<CertificateSigningRequestDer<'static>, String> {
    let mut sections = CertificateSigningRequestDer::pem_slice_iter(pem.as_bytes());
    let first: CertificateSigningRequestDer<'static> = match sections.next() {
        Some(Ok(csr)) => csr,
        Some(Err(e)) => return Err(e.to_string()),
        None => return Err("none found".into()),
    };
    match pem.matches("-----BEGIN ").count() {
        1 => Ok(first),
        blocks => Err(format!("found {blocks} PEM blocks")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_pki_types() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let cert = CertificateDer::from(der.clone());
        let pem = encode_certificates([&cert, &cert]);
        assert!(pem.lines().all(|l| l.len() <= 64));
        let back = decode_certificates(pem.as_bytes()).expect("decodes");
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].as_ref(), der.as_slice());
    }

    #[test]
    fn empty_or_garbage_is_refused() {
        assert!(decode_certificates(b"").is_err());
        assert!(decode_certificates(b"hello").is_err());
        assert!(decode_certificates(
            b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"
        )
        .is_err());
    }
}
