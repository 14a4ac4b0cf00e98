//! Who is calling the signing API.
//!
//! A caller proves an identity with a bearer token (the static token store)
//! or with a client certificate meshca issued earlier (renewal). The
//! identity put in a certificate always comes from here, never from the CSR.

mod config;
pub mod danger;
mod kubernetes;
mod mtls;
mod tokens;

pub use config::{AuthConfig, RawAuth};
pub use kubernetes::{BoundPod, Reviewed, TokenReviewer};
pub use tokens::{Revoke, TokenRecord, TokenStore};

use http::{HeaderMap, HeaderValue};
use meshca_provider::{Identity, TrustDomain};
use thiserror::Error;

use std::sync::Arc;

use crate::bundle::BundleReceiver;
use crate::listener::PeerCertificates;

/// Checks bearer tokens that are not meshca's own (ServiceAccount tokens)
/// with an outside authority. [`TokenReviewer`] asks the Kubernetes API
/// server; tests can pass their own.
#[async_trait::async_trait]
pub trait ReviewTokens: Send + Sync + std::fmt::Debug {
    /// The identity `token` authenticates, and the pod it is bound to
    /// when the authority says so.
    ///
    /// # Errors
    /// [`AuthError::Rejected`] for a token the authority refuses,
    /// [`AuthError::Unavailable`] when it cannot be asked now.
    async fn review(&self, token: &str) -> Result<Reviewed, AuthError>;
}

/// Why a caller was not authenticated. Every variant is a 401.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Neither a bearer token nor a client certificate was presented.
    #[error("no credential: send `Authorization: Bearer <token>` or a client certificate issued by meshca")]
    Missing,
    /// The Authorization header is not `Bearer <token>`.
    #[error("the Authorization header must be `Bearer <token>`")]
    MalformedHeader,
    /// More than one Authorization header: which one speaks is ambiguous.
    #[error("send exactly one Authorization header")]
    AmbiguousCredentials,
    /// The token is not in the store.
    #[error("the bearer token is not valid")]
    UnknownToken,
    /// The Kubernetes API server did not accept the token for meshca.
    #[error("{0}")]
    Rejected(String),
    /// The token cannot be checked right now (API server unreachable).
    #[error("cannot verify the token now: {0}")]
    Unavailable(String),
    /// The client certificate does not authenticate anyone.
    #[error("the client certificate is not valid: {0}")]
    ClientCertificate(String),
    /// The token store could not be read.
    #[error("failed to read the token store: {0}")]
    Store(String),
}

/// How the caller authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// A bearer token.
    Token,
    /// A client certificate meshca issued.
    ClientCertificate,
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Who it is.
    pub identity: Identity,
    /// How it proved it.
    pub method: AuthMethod,
    /// The pod its token is bound to, as the API server recorded it; only
    /// for a bound ServiceAccount token.
    pub bound: Option<BoundPod>,
}

/// Authenticates callers against the token store, Kubernetes (when
/// configured) and the trust bundle.
#[derive(Clone, Debug)]
pub struct Authenticator {
    tokens: TokenStore,
    kubernetes: Option<Arc<dyn ReviewTokens>>,
    trust_domain: TrustDomain,
    bundle: BundleReceiver,
}

impl Authenticator {
    /// Authenticate with `tokens` and certificates chaining to `bundle`,
    /// for identities in `trust_domain`.
    pub fn new(tokens: TokenStore, trust_domain: TrustDomain, bundle: BundleReceiver) -> Self {
        Self {
            tokens,
            kubernetes: None,
            trust_domain,
            bundle,
        }
    }

    /// Also accept ServiceAccount tokens, checked by `reviewer`.
    pub fn with_kubernetes(mut self, reviewer: Arc<dyn ReviewTokens>) -> Self {
        self.kubernetes = Some(reviewer);
        self
    }

    /// Authenticate a request. A bearer token, when present, decides;
    /// otherwise the connection's client certificate does. meshca's own
    /// tokens (prefix `meshca_`) are looked up in the store; any other
    /// token goes to Kubernetes, when configured.
    ///
    /// # Errors
    /// [`AuthError`].
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerCertificates>,
    ) -> Result<Caller, AuthError> {
        let mut authorization = headers.get_all(http::header::AUTHORIZATION).iter();
        if let Some(header) = authorization.next() {
            if authorization.next().is_some() {
                return Err(AuthError::AmbiguousCredentials);
            }
            let token = bearer_token(header).ok_or(AuthError::MalformedHeader)?;
            let reviewed = match &self.kubernetes {
                Some(reviewer) if !TokenStore::is_static(token) => reviewer.review(token).await?,
                _ => Reviewed {
                    identity: self.tokens.lookup(token, &self.trust_domain).await?,
                    bound: None,
                },
            };
            return Ok(Caller {
                identity: reviewed.identity,
                method: AuthMethod::Token,
                bound: reviewed.bound,
            });
        }
        if let Some(peer) = peer {
            let bundle = self.bundle.borrow().clone();
            let identity = mtls::authenticate(peer, bundle.anchors(), &self.trust_domain)?;
            return Ok(Caller {
                identity,
                method: AuthMethod::ClientCertificate,
                bound: None,
            });
        }
        Err(AuthError::Missing)
    }
}

/// The token of `Bearer <token>`; the scheme is case-insensitive (RFC 9110,
/// section 11.1).
fn bearer_token(header: &HeaderValue) -> Option<&str> {
    let (scheme, token) = header.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
