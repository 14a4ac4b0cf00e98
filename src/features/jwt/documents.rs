//! What relying parties read: the OIDC discovery document and the JWKS.

use serde::Serialize;
use serde_json::{json, Value};

use super::JwtSvids;
use crate::bundle::spiffe::member;

/// `GET /.well-known/openid-configuration`.
#[derive(Debug, Serialize)]
pub struct Discovery {
    issuer: String,
    jwks_uri: String,
    /// Empty: meshca authorizes nobody interactively; some relying
    /// parties (AWS) read the member and refuse a document without it.
    authorization_endpoint: String,
    response_types_supported: [&'static str; 1],
    subject_types_supported: [&'static str; 1],
    id_token_signing_alg_values_supported: Vec<&'static str>,
}

/// The discovery document: every algorithm a published key signs with
/// (relying parties such as go-oidc refuse tokens of any other).
pub fn discovery(jwt: &JwtSvids) -> Discovery {
    let mut algs: Vec<&'static str> = jwt.public_keys().iter().map(|(_, alg)| *alg).collect();
    algs.push(jwt.config().key_type.alg());
    algs.sort_unstable();
    algs.dedup();
    Discovery {
        issuer: jwt.config().issuer.as_str().to_owned(),
        jwks_uri: jwt.config().issuer.jwks_uri(),
        authorization_endpoint: String::new(),
        response_types_supported: ["id_token"],
        subject_types_supported: ["public"],
        id_token_signing_alg_values_supported: algs,
    }
}

/// The JWKS at `jwks_uri`: the published keys, `use: sig`.
pub fn jwks(jwt: &JwtSvids) -> Value {
    let keys: Vec<Value> = jwt
        .public_keys()
        .iter()
        .map(|(jwk, alg)| member(jwk, json!({ "use": "sig", "alg": alg })))
        .collect();
    json!({ "keys": keys })
}
