//! `meshca ingress render` on any manifest, for every controller.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(td) = meshca::TrustDomain::new("cluster.local") else { return };
    let mut options = meshca::RenderOptions::new(td);
    options.bundle_pem = Some("-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n".into());
    for controller in [meshca::Controller::Nginx, meshca::Controller::Agic, meshca::Controller::Gloo] {
        let _ = meshca::render_manifest(controller, text, &options);
    }
});
