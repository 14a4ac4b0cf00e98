//! PEM decoding of certificates (bundles, chains from backends).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(certs) = meshca_provider::pem::decode_certificates(data) {
        // Re-encoding what decoded decodes to the same.
        let pem = meshca_provider::pem::encode_certificates(&certs);
        let again = meshca_provider::pem::decode_certificates(pem.as_bytes()).expect("round trip");
        assert_eq!(again, certs);
    }
});
