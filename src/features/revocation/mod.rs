//! Revocation: certificates meshca issued, listed in CRLs that data
//! planes enforce until they expire.
//!
//! `meshca certificate revoke` writes a serial to the ledger (`ledger`);
//! the daemon reads it every few seconds and asks the provider signing now
//! for its CRLs over the serials listed (`publisher`: one list per CA, each
//! signed by that CA, made again at half of `revocation.crl_next_update`);
//! `GET /v1/crl` serves them (`api`) and the agent writes them to
//! `crl.pem`; in a cluster the leader keeps them in the ConfigMap
//! `meshca-crl` and records an Event per revocation (`events`). `feature`
//! plugs it into the daemon.

mod admin;
mod api;
mod cli;
mod config;
mod events;
mod feature;
pub mod index;
pub mod ledger;
mod metrics;
pub mod publisher;
pub mod revoking;

pub use config::{RawRevocation, RevocationConfig};
pub use feature::{RevocationFeature, FEATURE};
