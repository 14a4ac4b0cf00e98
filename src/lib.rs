//! meshca: a certificate authority daemon for service meshes.
//!
//! It hands every workload a short-lived X.509 identity
//! (`SA.NS.TD` / `spiffe://TD/ns/NS/sa/SA`), renews it, and publishes the
//! trust bundle. Signing happens behind one narrow trait
//! ([`meshca_provider::Provider`]); the daemon itself authenticates callers,
//! applies policy and checks what every provider returns.
//!
//! `docs/ARCHITECTURE.md` maps the modules. They are private; the public
//! interface is the block of `pub use` below.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::too_many_lines, clippy::disallowed_methods))]

mod agent;
mod api;
mod auth;
mod bundle;
mod cli;
mod cluster;
mod config;
mod crypto;
mod custody;
mod daemon;
mod feature;
mod features;
mod issuer;
mod jose;
mod keys;
mod listener;
mod metrics;
mod provider;
mod reload;
mod renewal;
mod report;
mod rollout;
mod store;
mod supervisor;
mod tls_secret;
mod validation;
mod vault_connection;
mod watched;

pub use agent::{run as run_agent, AgentConfig, AgentError, WorkloadApiConfig};
pub use auth::{AuthError, Revoke, TokenRecord, TokenStore};
pub use cli::main;
pub use config::{Config, ConfigError, EMBEDDED_DEFAULT};
pub use crypto::names::KeyAlgorithmName;
pub use daemon::{start, DaemonError, RunningDaemon};
pub use feature::Feature;
pub use features::events::EventsFeature;
pub use features::federation::FederationFeature;
pub use features::ingress::{
    render_manifest, BackendProtocol, Controller, IngressFeature, RenderOptions,
};
pub use features::istio_ca::IstioCaFeature;
pub use features::jwt::JwtSvidsFeature;
pub use features::pod_certificates::PodCertificatesFeature;
pub use features::revocation::index::{
    Page as CertificateIndexPage, Pages as CertificateIndexPages, Record as IndexedCertificate,
};
pub use features::revocation::ledger::{Entry as RevokedEntry, Ledger as RevocationLedger};
pub use features::revocation::RevocationFeature;
pub use meshca_provider::{Identity, TrustDomain};
pub use provider::ProviderConfig;
pub use renewal::{renew_after, renewal_delay};

/// Entry points for the fuzz targets (`fuzz/`): the parsers that take
/// input from outside, as the daemon calls them.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::api::parse_request_body;
}
