use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use meshca_provider::{Identity, ServerName};
use rustls::ServerConfig;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::auth::danger::DeferredClientAuth;
use crate::crypto::names::KeyAlgorithmName;
use crate::issuer::{Frontend, Issuer, Refusal, Verdict};
use crate::listener::ServingTls;
use crate::metrics::Metrics;
use crate::renewal;

const RETRY: Duration = Duration::from_secs(5);

/// Issue the daemon's own serving certificate through its provider and
/// return the TLS configuration plus the task that renews it (at two thirds
/// of its lifetime) until `shutdown`.
///
/// The key is generated here and never leaves memory.
///
/// # Errors
/// The first issuance failed; the daemon cannot serve without it.
pub async fn serving_certificate(
    issuer: Issuer,
    own: Serving,
    metrics: Arc<Metrics>,
    renew_now: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) -> Result<(ServingTls, impl Future<Output = ()>), ServingError> {
    let (config, not_before, not_after) = issue(&issuer, &own, &metrics).await?;
    let tls: ServingTls = Arc::new(ArcSwap::from_pointee(config));
    let handle = tls.clone();
    let task = async move {
        let mut wait = renewal::renewal_delay(
            not_before,
            not_after,
            OffsetDateTime::now_utc(),
            renewal::random_jitter(),
        );
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = renew_now.notified() => {}
            }
            match issue(&issuer, &own, &metrics).await {
                Ok((config, nb, na)) => {
                    handle.store(Arc::new(config));
                    tracing::info!(not_after = %na, "renewed the signing API's serving certificate");
                    wait = renewal::renewal_delay(
                        nb,
                        na,
                        OffsetDateTime::now_utc(),
                        renewal::random_jitter(),
                    );
                }
                Err(e) => {
                    wait = match &e {
                        ServingError::NotIssued(refusal) => refusal.retry_after().unwrap_or(RETRY),
                        ServingError::Tls(_) => RETRY,
                    };
                    tracing::warn!(error = %crate::report::error_chain(&e), retry_in = ?wait, "failed to renew the serving certificate");
                }
            }
        }
    };
    Ok((tls, task))
}

/// Why the daemon has no serving certificate.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    /// The issuer did not issue it.
    #[error("failed to issue the signing API's serving certificate")]
    NotIssued(#[source] Refusal),
    /// rustls refused the certificate and key.
    #[error("failed to configure TLS with the serving certificate")]
    Tls(#[source] rustls::Error),
}

/// What meshca's own serving certificate is for: its identity, the names
/// it is dialled by, and its key's algorithm (`api.serving_key_algorithm`).
#[derive(Clone, Debug)]
pub struct Serving {
    /// The daemon's identity.
    pub identity: Identity,
    /// The names clients dial it by.
    pub names: Vec<ServerName>,
    /// The algorithm of its key.
    pub key_algorithm: KeyAlgorithmName,
}

async fn issue(
    issuer: &Issuer,
    serving: &Serving,
    metrics: &Metrics,
) -> Result<(ServerConfig, OffsetDateTime, OffsetDateTime), ServingError> {
    let lifetime = issuer.lifetimes().for_request(None);
    let own = issuer
        .issue_own(
            Frontend::Daemon,
            (&serving.identity, serving.key_algorithm),
            &serving.names,
            lifetime,
        )
        .await
        .map_err(ServingError::NotIssued)?;
    let cert = &own.issued.issued;
    metrics.record_serving_chain(cert.chain());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(own.key_der().to_vec()));
    let config = server_config(cert.chain().to_vec(), key).map_err(ServingError::Tls)?;
    Ok((config, cert.not_before(), cert.not_after()))
}

/// meshca's TLS policy (`crate::crypto`), h2 and HTTP/1.1, client
/// certificates requested but validated per request (see
/// [`crate::auth::danger`]).
fn server_config(
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, rustls::Error> {
    let verifier = Arc::new(DeferredClientAuth::new(
        crate::crypto::verification_algorithms(),
    ));
    let mut config = crate::crypto::server_config()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
