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
/// second request, a key sent along, text before or after the block) is
/// refused, not ignored.
///
/// # Errors
/// Why it is not exactly one request, for the caller's error message.
pub fn decode_one_csr(pem: &str) -> Result<CertificateSigningRequestDer<'static>, String> {
    const END: &str = "-----END CERTIFICATE REQUEST-----";
    let mut sections = CertificateSigningRequestDer::pem_slice_iter(pem.as_bytes());
    let first: CertificateSigningRequestDer<'static> = match sections.next() {
        Some(Ok(csr)) => csr,
        Some(Err(e)) => return Err(e.to_string()),
        None => return Err("none found".into()),
    };
    match pem.matches("-----BEGIN ").count() {
        1 => {}
        blocks => return Err(format!("found {blocks} PEM blocks")),
    }
    let before = pem.find("-----BEGIN ").map_or("", |at| &pem[..at]);
    let after = pem.rfind(END).map_or("", |at| &pem[at + END.len()..]);
    if before.trim().is_empty() && after.trim().is_empty() {
        Ok(first)
    } else {
        Err("text outside the PEM block".into())
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
    fn one_csr_is_all_the_text_may_hold() {
        let der = [0x30, 0x03, 0x02, 0x01, 0x00];
        let mut block = String::new();
        encode_block("CERTIFICATE REQUEST", &der, &mut block);
        assert!(decode_one_csr(&block).is_ok());
        assert!(decode_one_csr(&format!("\n{block}\n\n")).is_ok());
        for junk in [
            format!("{block}{}", "A".repeat(1 << 20)),
            format!("{block}trailing words\n"),
            format!("leading words\n{block}"),
        ] {
            let e = decode_one_csr(&junk).expect_err("refused");
            assert_eq!(e, "text outside the PEM block");
        }
        let e = decode_one_csr(&format!("{block}{block}")).expect_err("two");
        assert!(e.contains("2 PEM blocks"), "{e}");
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
