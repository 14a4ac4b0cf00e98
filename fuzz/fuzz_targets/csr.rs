//! CSR validation: any DER either validates for the identity or is
//! refused with an error; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshca_provider::{Identity, TrustDomain, ValidatedCsr};

fuzz_target!(|data: &[u8]| {
    let Ok(td) = TrustDomain::new("cluster.local") else { return };
    let Ok(identity) = Identity::new(td, "bookstore", "bookstore") else { return };
    if let Ok(csr) = ValidatedCsr::new(data, &identity) {
        // What validated names only the identity's names.
        assert!(!csr.der().is_empty());
    }
});
