//! Istio's certificate service (`istio.v1.auth.IstioCertificateService`),
//! so that istio-agent (sidecars) and ztunnel (ambient) get their
//! certificates from meshca, whichever provider signs.
//!
//! One more frontend of the [`Issuer`]: it authenticates the caller (a
//! ServiceAccount token reviewed for `istio_ca.token_audiences`, or a
//! client certificate meshca issued), decides whose certificate it may
//! have (its own, or for ztunnel a pod's on its node, see [`node`]), and
//! renders the issuer's outcome as a chain or a gRPC status. Istio's trust
//! distribution, the ConfigMap `istio-ca-root-cert`, is a bundle sink
//! ([`root_cert`]).

pub mod codec;
mod config;
mod feature;
mod istiod;
pub mod node;
pub mod root_cert;
mod service;

pub use config::{IstioCaConfig, IstiodCertificate, RawIstioCa};
pub use feature::{IstioCaFeature, FEATURE};

#[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
mod proto {
    tonic::include_proto!("istio.v1.auth");
}
