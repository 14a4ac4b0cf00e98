//! The signing-provider interface of meshca.
//!
//! Every backend (meshca's own root, cert-manager, Vault) implements the one
//! narrow [`Provider`] trait. Everything that must hold whatever the backend is
//! lives here instead, so that it is written once:
//!
//! - who a certificate is for ([`Identity`]) and which names that implies;
//! - what a CSR may ask for ([`ValidatedCsr`]): a good signature, an accepted
//!   key, no CA bit, no names beyond the caller's identity;
//! - what a leaf must look like ([`LeafProfile`]);
//! - the check of what a backend returned ([`Checked`]), which is the only way
//!   to obtain an [`Issued`] certificate.
//!
//! The public interface is:
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::too_many_lines, clippy::disallowed_methods))]

mod checked;
pub mod crypto;
mod csr;
mod error;
mod identity;
mod leaf;
pub mod pem;
mod provider;
pub mod revocation;

pub use checked::{Checked, Issued};
pub use csr::{CsrError, KeyAlgorithm, ValidatedCsr};
pub use error::{error_chain, ProviderError};
pub use identity::{uri_names, Identity, IdentityError, TrustDomain};
pub use leaf::{backdate_for, LeafProfile, ServerName, CLOCK_SKEW_ALLOWANCE};
pub use provider::{
    Capabilities, Health, PostQuantum, Provider, ProviderKind, SignatureCheck, SignedChain,
};
