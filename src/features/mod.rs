//! The features the daemon is built of, each a folder that plugs in
//! through `crate::feature`: its config sections, its Kubernetes adapter,
//! its metrics, its tasks and what it mounts. Removing one is deleting its
//! folder and its two lines here.

pub mod events;
pub mod federation;
pub mod ingress;
pub mod istio_ca;
pub mod jwt;
pub mod pod_certificates;
pub mod revocation;

use crate::feature::Definition;

/// Every feature, in the order they prepare and start.
pub const ALL: &[&Definition] = &[
    &jwt::FEATURE,
    &federation::FEATURE,
    &pod_certificates::FEATURE,
    &istio_ca::FEATURE,
    &ingress::FEATURE,
    &events::FEATURE,
    &revocation::FEATURE,
];
