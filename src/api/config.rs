//! `api:`: the limits that protect the signing API.

use std::num::NonZeroU32;

use serde::Deserialize;

use crate::crypto::names::KeyAlgorithmName;
use crate::validation::Errors;

/// Limits that protect the signing API.
#[derive(Clone, Copy, Debug)]
pub struct ApiLimits {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Signing requests processed at once; more get 429.
    pub max_in_flight: usize,
    /// Sustained signing requests per second allowed to one identity.
    pub per_identity_per_second: NonZeroU32,
    /// Requests one identity may make at once before the sustained rate
    /// applies.
    pub per_identity_burst: NonZeroU32,
    /// The key algorithm of meshca's own serving certificate.
    pub serving_key_algorithm: KeyAlgorithmName,
}

/// `api:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawApi {
    max_body_bytes: usize,
    max_in_flight: usize,
    per_identity_per_second: u32,
    per_identity_burst: u32,
    serving_key_algorithm: String,
}

impl Default for RawApi {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_in_flight: 1024,
            per_identity_per_second: 50,
            per_identity_burst: 200,
            serving_key_algorithm: "ecdsa-p256".into(),
        }
    }
}

impl RawApi {
    /// The limits, or `None` with the problems in `errors`.
    pub fn validate(&self, errors: &mut Errors) -> Option<ApiLimits> {
        if self.max_body_bytes < 1024 {
            errors.add("api.max_body_bytes", "must be at least 1024");
        }
        if self.max_in_flight == 0 {
            errors.add("api.max_in_flight", "must be at least 1");
        }
        let per_second = NonZeroU32::new(self.per_identity_per_second);
        if per_second.is_none() {
            errors.add("api.per_identity_per_second", "must be at least 1");
        }
        let burst = NonZeroU32::new(self.per_identity_burst);
        if burst.is_none() {
            errors.add("api.per_identity_burst", "must be at least 1");
        }
        use KeyAlgorithmName::{EcdsaP256, EcdsaP384, Ed25519, MlDsa44, MlDsa65, MlDsa87};
        let serving = [EcdsaP256, EcdsaP384, Ed25519, MlDsa44, MlDsa65, MlDsa87];
        let serving_key_algorithm = KeyAlgorithmName::one_of(&self.serving_key_algorithm, &serving)
            .map_err(|e| errors.add("api.serving_key_algorithm", e))
            .ok();
        Some(ApiLimits {
            max_body_bytes: self.max_body_bytes,
            max_in_flight: self.max_in_flight,
            per_identity_per_second: per_second?,
            per_identity_burst: burst?,
            serving_key_algorithm: serving_key_algorithm?,
        })
    }
}
