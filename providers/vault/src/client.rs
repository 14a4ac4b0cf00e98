//! Authenticated calls to Vault: the transport, the session's token
//! (logging in again once on a 403) and the breaker that holds calls back
//! while Vault is down.

use std::sync::Arc;

use meshca_provider::ProviderError;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::auth::Session;
use crate::breaker::Breaker;
use crate::error::{classify, VaultError};
use crate::http::{Http, TlsFiles};
use crate::Connection;

/// The HTTP side of the provider: the transport, the current token, and
/// the breaker.
pub(crate) struct Client {
    http: Http,
    session: Session,
    breaker: Breaker,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.address())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of `config`, with its TLS files.
    pub(crate) fn new(config: &Connection, files: &TlsFiles) -> Result<Self, ProviderError> {
        Ok(Self {
            http: Http::new(config, files)?,
            session: Session::new(config.auth.clone()),
            breaker: Breaker::default(),
        })
    }

    pub(crate) fn address(&self) -> &str {
        self.http.address()
    }

    /// An authenticated call through the breaker. A 403 is retried once
    /// after logging in again (the token may have expired); a second 403 is
    /// a policy problem.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Vec<u8>, VaultError> {
        self.breaker.check().map_err(VaultError::BackingOff)?;
        let mut relogged = false;
        loop {
            let token = self.session.token(&self.http).await;
            let token = match token {
                Ok(t) => t,
                Err(e) => return Err(self.note(e)),
            };
            let result = self
                .http
                .raw(method.clone(), path, Some(&token), body)
                .await;
            let (status, bytes) = match result {
                Ok(r) => r,
                Err(e) => return Err(self.note(e)),
            };
            if status.is_success() {
                self.breaker.success();
                return Ok(bytes);
            }
            if status == StatusCode::FORBIDDEN && !relogged && self.session.can_login() {
                tracing::info!("Vault refused the token; logging in again");
                self.session.invalidate().await;
                relogged = true;
                continue;
            }
            return Err(self.note(classify(status, &bytes)));
        }
    }

    /// Record outages in the breaker.
    fn note(&self, e: VaultError) -> VaultError {
        if e.is_outage() {
            let wait = self.breaker.failure();
            tracing::warn!(error = %e, backoff = ?wait, "Vault is unavailable");
        } else {
            self.breaker.success();
        }
        e
    }

    pub(crate) async fn login(&self) -> Result<(), VaultError> {
        self.session.token(&self.http).await.map(|_| ())
    }

    /// When the token stops working for good, if meshca cannot get another.
    pub(crate) fn credential_expiry(&self) -> Option<i64> {
        self.session.hard_expiry()
    }

    /// `GET sys/health`: Vault is initialised, unsealed and active (or a
    /// standby that forwards). A healthy answer also closes the breaker.
    pub(crate) async fn health(&self) -> Result<(), VaultError> {
        let (status, body) = self
            .http
            .raw(
                Method::GET,
                "sys/health?standbyok=true&perfstandbyok=true",
                None,
                None,
            )
            .await?;
        if status.is_success() {
            self.breaker.success();
            Ok(())
        } else {
            let sealed = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("sealed").and_then(Value::as_bool))
                .unwrap_or(false);
            Err(VaultError::Unavailable(if sealed {
                "Vault is sealed".to_owned()
            } else {
                format!("sys/health answered HTTP {status}")
            }))
        }
    }

    /// Keep the token valid until `shutdown`: renew at two thirds of its
    /// TTL, log in again when renewal is refused or the token cannot be
    /// renewed, retry with backoff while Vault is down.
    pub(crate) async fn maintain_token(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let wait = self.session.refresh_in().await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            if let Err(e) = self.session.refresh(&self.http).await {
                tracing::warn!(error = %e, "failed to refresh the Vault token; will retry");
                let wait = self.breaker.failure();
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}
