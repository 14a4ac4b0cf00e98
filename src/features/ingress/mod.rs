//! Ingress policy: expose mesh services through an ingress controller over
//! HTTPS, with the controller verifying the backend's mesh identity against
//! the trust bundle.
//!
//! - [`model`]: Ingress objects of `networking.k8s.io/v1` and `v1beta1`,
//!   read into one shape;
//! - [`render`]: the configuration nginx, Azure Application Gateway (AGIC)
//!   and Gloo need, offline (`meshca ingress render`).

mod backends;
mod cli;
mod config;
mod feature;
pub mod model;
mod reconciler;
pub mod render;

pub use backends::discover_ingress_api;
pub use config::{BackendProtocol, IngressConfig, IngressContext, RawIngress};
pub use feature::{IngressFeature, FEATURE};
pub use model::BackendPort;
pub use reconciler::{reconciler, Mesh};
pub use render::{render_manifest, Controller, RenderOptions};
