use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::error::VaultError;
use crate::http::Http;

/// How meshca authenticates to Vault. Secrets are only ever read from
/// files or the environment, never from the config file or command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VaultAuth {
    /// A token in a file (re-read when it is replaced).
    TokenFile(PathBuf),
    /// A token in the named environment variable.
    TokenEnv(String),
    /// Kubernetes auth: log in with the pod's ServiceAccount JWT.
    Kubernetes {
        /// Mount of the auth method (default `kubernetes`).
        mount: String,
        /// The Vault role to log in as.
        role: String,
        /// The projected ServiceAccount token.
        jwt_file: PathBuf,
    },
    /// AppRole: `role_id` plus a secret id from a file.
    AppRole {
        /// Mount of the auth method (default `approle`).
        mount: String,
        /// The role id (an identifier, not a secret).
        role_id: String,
        /// File holding the secret id.
        secret_id_file: PathBuf,
    },
}

impl VaultAuth {
    /// Whether this method can obtain a new token by itself.
    pub(crate) fn can_login(&self) -> bool {
        !matches!(self, Self::TokenFile(_) | Self::TokenEnv(_))
    }

    fn describe(&self) -> String {
        match self {
            Self::TokenFile(p) => format!("token file {}", p.display()),
            Self::TokenEnv(v) => format!("token from ${v}"),
            Self::Kubernetes { mount, role, .. } => {
                format!("kubernetes auth (auth/{mount}, role {role})")
            }
            Self::AppRole { mount, .. } => format!("AppRole (auth/{mount})"),
        }
    }
}

struct Token {
    secret: Zeroizing<String>,
    obtained: Instant,
    /// Zero when the token does not expire.
    ttl: Duration,
    renewable: bool,
}

impl Token {
    fn expired(&self) -> bool {
        !self.ttl.is_zero() && self.obtained.elapsed() >= self.ttl
    }
}

/// The current Vault token and how to get a new one.
pub(crate) struct Session {
    method: VaultAuth,
    current: Mutex<Option<Token>>,
    /// When the token in use stops working for good (Unix time): a static
    /// token at its maximum TTL. `None` when meshca can log in again.
    hard_expiry: std::sync::Mutex<Option<i64>>,
}

impl Session {
    pub(crate) fn new(method: VaultAuth) -> Self {
        Self {
            method,
            current: Mutex::new(None),
            hard_expiry: std::sync::Mutex::new(None),
        }
    }

    pub(crate) fn can_login(&self) -> bool {
        self.method.can_login()
    }

    /// See [`Session::hard_expiry`](Self).
    pub(crate) fn hard_expiry(&self) -> Option<i64> {
        self.hard_expiry.lock().ok().and_then(|h| *h)
    }

    /// The current token, logging in first if there is none or it expired.
    pub(crate) async fn token(&self, http: &Http) -> Result<Zeroizing<String>, VaultError> {
        let mut current = self.current.lock().await;
        if let Some(t) = current.as_ref().filter(|t| !t.expired()) {
            return Ok(t.secret.clone());
        }
        let fresh = self.obtain(http).await?;
        let secret = fresh.secret.clone();
        *current = Some(fresh);
        Ok(secret)
    }

    /// Forget the token, so the next call logs in.
    pub(crate) async fn invalidate(&self) {
        *self.current.lock().await = None;
    }

    /// When the token should next be refreshed: two thirds into its TTL,
    /// or in five minutes for tokens that do not expire (a replaced token
    /// file is picked up then).
    pub(crate) async fn refresh_in(&self) -> Duration {
        match self.current.lock().await.as_ref() {
            Some(t) if !t.ttl.is_zero() => {
                let due = t.ttl.mul_f64(2.0 / 3.0);
                due.saturating_sub(t.obtained.elapsed())
                    .max(Duration::from_millis(500))
            }
            Some(_) => Duration::from_secs(300),
            None => Duration::from_secs(1),
        }
    }

    /// Renew the token if Vault allows it, else obtain a new one.
    pub(crate) async fn refresh(&self, http: &Http) -> Result<(), VaultError> {
        let mut current = self.current.lock().await;
        if let Some(t) = current.as_ref().filter(|t| t.renewable && !t.expired()) {
            let result = http
                .raw(
                    Method::POST,
                    "auth/token/renew-self",
                    Some(&t.secret),
                    Some(&json!({})),
                )
                .await?;
            if result.0.is_success() {
                let (_, ttl, renewable) = parse_auth(&result.1)?;
                // Vault caps renewals at the token's max TTL; a renewal that
                // barely extends it means the end is near: log in again.
                if ttl >= t.ttl / 2 || !self.can_login() {
                    tracing::debug!(ttl = ?ttl, "renewed the Vault token");
                    *current = Some(Token {
                        secret: t.secret.clone(),
                        obtained: Instant::now(),
                        ttl,
                        renewable,
                    });
                    return Ok(());
                }
            } else {
                tracing::info!(status = %result.0, "Vault refused to renew the token; obtaining a new one");
            }
        }
        *current = Some(self.obtain(http).await?);
        Ok(())
    }

    /// A new token: the static one (checked, its TTL learnt), or one
    /// obtained by logging in.
    async fn obtain(&self, http: &Http) -> Result<Token, VaultError> {
        let (secret, ttl, renewable) = match &self.method {
            VaultAuth::TokenFile(path) => self.lookup(http, read_secret(path).await?).await?,
            VaultAuth::TokenEnv(var) => {
                let token = std::env::var(var).map_err(|_| {
                    VaultError::Config(format!("environment variable {var} is not set"))
                })?;
                self.lookup(http, Zeroizing::new(token)).await?
            }
            VaultAuth::Kubernetes {
                mount,
                role,
                jwt_file,
            } => {
                let jwt = read_secret(jwt_file).await?;
                let body = json!({ "role": role, "jwt": jwt.as_str() });
                self.login(http, mount, &body).await?
            }
            VaultAuth::AppRole {
                mount,
                role_id,
                secret_id_file,
            } => {
                let secret_id = read_secret(secret_id_file).await?;
                let body = json!({ "role_id": role_id, "secret_id": secret_id.as_str() });
                self.login(http, mount, &body).await?
            }
        };
        tracing::info!(method = %self.method.describe(), ttl = ?ttl, renewable, "obtained a Vault token");
        Ok(Token {
            secret,
            obtained: Instant::now(),
            ttl,
            renewable,
        })
    }

    /// Log in at `auth/<mount>/login` with `body`.
    async fn login(
        &self,
        http: &Http,
        mount: &str,
        body: &Value,
    ) -> Result<(Zeroizing<String>, Duration, bool), VaultError> {
        let path = format!("auth/{mount}/login");
        let (status, bytes) = http.raw(Method::POST, &path, None, Some(body)).await?;
        if status.is_success() {
            parse_auth(&bytes)
        } else if status.is_server_error() {
            Err(VaultError::Unavailable(format!(
                "login answered HTTP {status}"
            )))
        } else {
            Err(VaultError::Forbidden(format!(
                "login with {} failed: HTTP {status}: {}",
                self.method.describe(),
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(300)
                    .collect::<String>()
            )))
        }
    }

    /// Check a static token and learn its TTL.
    async fn lookup(
        &self,
        http: &Http,
        token: Zeroizing<String>,
    ) -> Result<(Zeroizing<String>, Duration, bool), VaultError> {
        let (status, body) = http
            .raw(Method::GET, "auth/token/lookup-self", Some(&token), None)
            .await?;
        if status.is_server_error() {
            return Err(VaultError::Unavailable(format!(
                "token lookup answered HTTP {status}"
            )));
        }
        if !status.is_success() {
            return Err(VaultError::Forbidden(format!(
                "Vault does not accept the {}: HTTP {status}",
                self.method.describe()
            )));
        }
        let v: Value = serde_json::from_slice(&body)
            .map_err(VaultError::not_json("auth/token/lookup-self"))?;
        let data = v.get("data");
        let ttl = data
            .and_then(|d| d.get("ttl"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let renewable = data
            .and_then(|d| d.get("renewable"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let number = |k: &str| {
            data.and_then(|d| d.get(k))
                .and_then(Value::as_i64)
                .unwrap_or(0)
        };
        let hard_expiry = hard_expiry(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            ttl,
            renewable,
            number("creation_time"),
            number("explicit_max_ttl"),
        );
        if let Ok(mut h) = self.hard_expiry.lock() {
            *h = hard_expiry;
        }
        Ok((token, Duration::from_secs(ttl), renewable))
    }
}

/// Read a secret file, trimmed, zeroized on drop.
pub(crate) async fn read_secret(path: &std::path::Path) -> Result<Zeroizing<String>, VaultError> {
    let text = Zeroizing::new(tokio::fs::read_to_string(path).await.map_err(|source| {
        VaultError::ReadFile {
            path: path.to_owned(),
            source,
        }
    })?);
    let trimmed = Zeroizing::new(text.trim().to_owned());
    if trimmed.is_empty() {
        return Err(VaultError::Config(format!("{} is empty", path.display())));
    }
    Ok(trimmed)
}

/// Parse Vault's `auth` block of a login answer.
pub(crate) fn parse_auth(body: &[u8]) -> Result<(Zeroizing<String>, Duration, bool), VaultError> {
    let v: Value = serde_json::from_slice(body).map_err(VaultError::not_json("login"))?;
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

/// When a static token stops working for good: its expiry if it cannot be
/// renewed, else its creation plus an explicit maximum TTL. `None` when
/// neither bounds it (renewals can go on) or it never expires.
fn hard_expiry(
    now: i64,
    ttl: u64,
    renewable: bool,
    creation_time: i64,
    explicit_max_ttl: i64,
) -> Option<i64> {
    let ttl = i64::try_from(ttl).ok()?;
    match (renewable, ttl, explicit_max_ttl) {
        (_, 0, _) => None,
        (false, ttl, _) => Some(now + ttl),
        (true, _, max) if max > 0 && creation_time > 0 => Some(creation_time + max),
        _ => None,
    }
}

#[cfg(test)]
mod hard_expiry_tests {
    use super::hard_expiry;

    #[test]
    fn only_a_bounded_static_token_has_a_hard_expiry() {
        assert_eq!(hard_expiry(1000, 0, false, 0, 0), None, "never expires");
        assert_eq!(
            hard_expiry(1000, 60, false, 0, 0),
            Some(1060),
            "not renewable"
        );
        assert_eq!(
            hard_expiry(1000, 60, true, 900, 3600),
            Some(4500),
            "explicit max TTL"
        );
        assert_eq!(
            hard_expiry(1000, 60, true, 900, 0),
            None,
            "renewable without a bound"
        );
    }
}
