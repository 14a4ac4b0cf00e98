//! The body of `POST /v1/certificates`: JSON, then exactly one PEM CSR.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meshca::fuzzing::parse_request_body(data);
});
