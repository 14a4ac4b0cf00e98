//! How errors are told: one line holding an error and all its causes.

pub use meshca_provider::error_chain;
