//! meshca: a certificate authority daemon for service meshes.
//!
//! It hands every workload a short-lived X.509 identity
//! (`SA.NS.TD` / `spiffe://TD/ns/NS/sa/SA`), renews it, and publishes the
//! trust bundle. Signing happens behind one narrow trait
//! ([`meshca_provider::Provider`]); the daemon itself authenticates callers,
//! applies policy and checks what every provider returns.
//!
//! Modules are private; the public interface is:

mod agent;
mod api;
mod auth;
mod bundle;
mod config;
mod daemon;
mod ingress;
mod issuer;
mod keys;
mod kube;
mod metrics;
mod reload;
mod rollout;
mod rotation;

pub use agent::{run as run_agent, AgentConfig, AgentError};
pub use auth::{AuthError, TokenStore};
pub use config::{BackendProtocol, Config, ConfigError, ProviderConfig, EMBEDDED_DEFAULT};
pub use daemon::{start, DaemonError, RunningDaemon};
pub use ingress::{render_manifest, Controller, RenderOptions};
pub use meshca_provider::{Identity, TrustDomain};
pub use rotation::{renew_after, renewal_delay};
