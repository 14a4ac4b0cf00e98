use std::sync::Arc;
use std::time::Duration;

use meshca_provider::ProviderError;
use reqwest::{Method, StatusCode};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::auth::Session;
use crate::breaker::Breaker;
use crate::VaultConfig;

/// What went wrong talking to Vault, classified by what the caller should
/// do about it; mapped once onto [`ProviderError`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum VaultError {
    /// Vault could not be reached, timed out, is sealed or is in standby.
    #[error("Vault is unavailable: {0}")]
    Unavailable(String),
    /// Requests are held back after recent failures.
    #[error("Vault was unavailable moments ago; retrying in {0:?}")]
    BackingOff(Duration),
    /// Vault refused meshca's credentials or policy does not allow the call.
    #[error("Vault refused the request (403), check meshca's Vault policy and auth: {0}")]
    Forbidden(String),
    /// The PKI role does not allow this certificate (names, TTL).
    #[error("the Vault role does not allow this certificate: {0}")]
    RoleDenied(String),
    /// Vault refused the request for another reason.
    #[error("Vault rejected the request: {0}")]
    Rejected(String),
    /// The mount, role or auth method does not exist.
    #[error("not found in Vault (check the mount, role and auth paths): {0}")]
    NotFound(String),
    /// A local setting is unusable.
    #[error("invalid Vault settings: {0}")]
    Config(String),
    /// Vault answered something meshca cannot use.
    #[error("unexpected answer from Vault: {0}")]
    Protocol(String),
}

impl VaultError {
    /// The provider-level meaning of this error.
    pub fn into_provider(self) -> ProviderError {
        match self {
            Self::Unavailable(_) => ProviderError::Unavailable {
                message: self.to_string(),
                retry_after: Duration::from_secs(5),
            },
            Self::BackingOff(wait) => ProviderError::Unavailable {
                message: self.to_string(),
                retry_after: wait.max(Duration::from_secs(1)),
            },
            Self::RoleDenied(_) => ProviderError::Denied(self.to_string()),
            Self::Rejected(m) => ProviderError::Rejected {
                reason: "VaultRejected".into(),
                message: m,
            },
            Self::Forbidden(_) | Self::NotFound(_) | Self::Config(_) => {
                ProviderError::Misconfigured(self.to_string())
            }
            Self::Protocol(m) => ProviderError::InvalidResponse(m),
        }
    }

    fn is_outage(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Vault's `{"errors": [...]}` as one line.
fn errors_text(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("errors").and_then(Value::as_array).map(|e| {
                e.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect())
}

/// Classify a non-success answer.
fn classify(status: StatusCode, body: &[u8]) -> VaultError {
    let text = errors_text(body);
    match status.as_u16() {
        403 => VaultError::Forbidden(text),
        404 => VaultError::NotFound(text),
        400 if text.contains("not allowed")
            || text.contains("not in allowed")
            || text.contains("does not match allowed") =>
        {
            VaultError::RoleDenied(text)
        }
        400 => VaultError::Rejected(text),
        429 | 472 | 473 | 500..=599 => VaultError::Unavailable(format!("HTTP {status}: {text}")),
        _ => VaultError::Protocol(format!("HTTP {status}: {text}")),
    }
}

/// The HTTP side of the provider: one reqwest client, the current token,
/// and the breaker.
pub(crate) struct Client {
    http: reqwest::Client,
    address: String,
    session: Session,
    breaker: Breaker,
}

impl Client {
    /// A client of `config`; the CA file, if any, is read into `ca_pem`
    /// by the caller (asynchronously).
    pub(crate) fn new(config: &VaultConfig, ca_pem: Option<&[u8]>) -> Result<Self, ProviderError> {
        let bad = |m: String| ProviderError::Misconfigured(format!("vault: {m}"));
        let address = config.address.trim_end_matches('/').to_owned();
        if address.starts_with("http://") {
            if !config.allow_http {
                return Err(bad(format!(
                    "{address} is plain HTTP; set provider.vault.allow_http: true to permit it"
                )));
            }
        } else if !address.starts_with("https://") {
            return Err(bad(format!("address {address:?} must start with https://")));
        }

        let mut roots = rustls::RootCertStore::empty();
        match (&config.ca_file, ca_pem) {
            (Some(path), Some(pem)) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| bad(format!("{}: {e}", path.display())))?;
                    roots
                        .add(cert)
                        .map_err(|e| bad(format!("{}: {e}", path.display())))?;
                }
                if roots.is_empty() {
                    return Err(bad(format!("{}: no certificates", path.display())));
                }
            }
            _ => {
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
            }
        }
        let builder = meshca_provider::crypto::client_config_trusting(roots)
            .map_err(|e| bad(e.to_string()))?;
        let tls = match &config.client_cert {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| bad(format!("{}: {e}", cert.display())))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| bad(format!("{}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad(e.to_string()))?
            }
            None => builder.with_no_client_auth(),
        };
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(2).min(config.timeout))
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            http,
            address,
            session: Session::new(config.auth.clone()),
            breaker: Breaker::default(),
        })
    }

    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// One HTTP exchange with Vault, no retries. `token` is sent as
    /// `X-Vault-Token` when given.
    pub(crate) async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Vec<u8>), VaultError> {
        let url = format!("{}/v1/{}", self.address, path.trim_start_matches('/'));
        let mut req = self.http.request(method, &url);
        if let Some(t) = token {
            req = req.header("X-Vault-Token", t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            VaultError::Unavailable(format!(
                "{url}: {}",
                std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string())
            ))
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| VaultError::Unavailable(format!("{url}: {e}")))?;
        Ok((status, bytes.to_vec()))
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
            let token = self.session.token(self).await;
            let token = match token {
                Ok(t) => t,
                Err(e) => return Err(self.note(e)),
            };
            let result = self.raw(method.clone(), path, Some(&token), body).await;
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
        self.session.token(self).await.map(|_| ())
    }

    /// When the token stops working for good, if meshca cannot get another.
    pub(crate) fn credential_expiry(&self) -> Option<i64> {
        self.session.hard_expiry()
    }

    /// `GET sys/health`: Vault is initialised, unsealed and active (or a
    /// standby that forwards). A healthy answer also closes the breaker.
    pub(crate) async fn health(&self) -> Result<(), VaultError> {
        let (status, body) = self
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
            if let Err(e) = self.session.refresh(&self).await {
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

/// Read a secret file, trimmed, zeroized on drop.
pub(crate) async fn read_secret(path: &std::path::Path) -> Result<Zeroizing<String>, VaultError> {
    let text = Zeroizing::new(
        tokio::fs::read_to_string(path)
            .await
            .map_err(|e| VaultError::Config(format!("{}: {e}", path.display())))?,
    );
    let trimmed = Zeroizing::new(text.trim().to_owned());
    if trimmed.is_empty() {
        return Err(VaultError::Config(format!("{} is empty", path.display())));
    }
    Ok(trimmed)
}

/// Parse Vault's `auth` block of a login answer.
pub(crate) fn parse_auth(body: &[u8]) -> Result<(Zeroizing<String>, Duration, bool), VaultError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| VaultError::Protocol(e.to_string()))?;
    let auth = v
        .get("auth")
        .ok_or_else(|| VaultError::Protocol("login answer without auth".into()))?;
    let token = auth
        .get("client_token")
        .and_then(Value::as_str)
        .ok_or_else(|| VaultError::Protocol("login answer without client_token".into()))?;
    let ttl = auth
        .get("lease_duration")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let renewable = auth
        .get("renewable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok((
        Zeroizing::new(token.to_owned()),
        Duration::from_secs(ttl),
        renewable,
    ))
}
