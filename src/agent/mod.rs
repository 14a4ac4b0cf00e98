//! The workload-side client: generate a key locally, send a CSR, write the
//! certificate, key and bundle for the workload, renew before expiry and
//! follow bundle changes.
//!
//! The private key never leaves this process except into `key.pem` (0600).

mod files;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use thiserror::Error;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::{keys, renewal};

/// Settings of `meshca agent`.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Base URL of the signing API, e.g. `https://127.0.0.1:9443`.
    pub server: String,
    /// PEM bundle used to verify the server at first contact.
    pub ca_file: PathBuf,
    /// File holding the bearer token, re-read for every request (projected
    /// tokens rotate). Without it, renewal authenticates with the current
    /// certificate in `out_dir`.
    pub token_file: Option<PathBuf>,
    /// Where `cert.pem`, `key.pem` and `ca.pem` are written.
    pub out_dir: PathBuf,
    /// Requested lifetime; the server clamps it.
    pub ttl: Option<Duration>,
    /// Exit after the first successful write.
    pub once: bool,
    /// How often the trust bundle is re-fetched between renewals.
    pub bundle_refresh: Duration,
}

/// Why the agent stopped or a round failed.
#[derive(Debug, Error)]
pub enum AgentError {
    /// A local file could not be read or written.
    #[error("failed to {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Which file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Local setup is unusable (bad CA file, no credential).
    #[error("{0}")]
    Setup(String),
    /// The server could not be reached.
    #[error("failed to reach {url}: {source}")]
    Transport {
        /// The URL.
        url: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// The server refused the request.
    #[error("the server refused the request: {status} {code}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The contract's error code.
        code: String,
        /// The server's message.
        message: String,
        /// The server's Retry-After, if any.
        retry_after: Option<Duration>,
    },
    /// The server answered something that is not the contract.
    #[error("unexpected answer from the server: {0}")]
    InvalidResponse(String),
}

#[derive(Deserialize)]
struct Issued {
    certificate_chain: String,
    trust_bundle: String,
    not_before: String,
    not_after: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// What the agent holds between rounds.
struct Held {
    chain_pem: String,
    key_pem: Zeroizing<String>,
    bundle_pem: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    /// The signer generation that issued it, when the server said.
    generation: Option<u64>,
}

/// The server's signer generation (`x-meshca-generation`).
fn generation_of(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers
        .get("x-meshca-generation")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// After a change of signer: renew within a few seconds, spread so that
/// every workload does not renew in the same instant.
fn early_renewal(lifetime: Duration) -> Duration {
    let spread = (lifetime / 10).min(Duration::from_secs(300));
    spread.mul_f64((renewal::random_jitter() + 1.0) / 2.0)
}

const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Run the agent until `shutdown` (or after one write with `once`).
///
/// # Errors
/// With `once`, the first failure; otherwise only setup errors end the
/// loop, and failed rounds are retried with backoff.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let initial_roots = read_pem_certs(&config.ca_file)?;
    // Without a token, renewal rests on the certificate a previous run
    // wrote; with one, every round starts from the token.
    let mut held: Option<Held> = match &config.token_file {
        Some(_) => None,
        None => Some(load_held(&config.out_dir)?),
    };
    let mut backoff = RETRY_MIN;
    loop {
        match fetch_certificate(&config, &initial_roots, held.as_ref()).await {
            Ok(new) => {
                files::write(
                    &config.out_dir,
                    &new.chain_pem,
                    &new.key_pem,
                    &new.bundle_pem,
                )?;
                tracing::info!(
                    out_dir = %config.out_dir.display(),
                    not_after = %new.not_after,
                    "wrote a new certificate"
                );
                held = Some(new);
                backoff = RETRY_MIN;
                if config.once {
                    return Ok(());
                }
            }
            Err(e) if config.once => return Err(e),
            Err(e) => {
                let wait = match &e {
                    AgentError::Refused {
                        retry_after: Some(d),
                        ..
                    } => *d,
                    _ => backoff,
                };
                backoff = (backoff * 2).min(RETRY_MAX);
                tracing::warn!(error = %e, retry_in = ?wait, "failed to obtain a certificate; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(wait) => continue,
                }
            }
        }

        // Wait for the renewal point, following bundle changes meanwhile.
        let Some(h) = held.as_mut() else { continue };
        let renew_in = renewal::renewal_delay(
            h.not_before,
            h.not_after,
            OffsetDateTime::now_utc(),
            renewal::random_jitter(),
        );
        let mut renew_at = tokio::time::Instant::now() + renew_in;
        tracing::info!(renew_in = ?renew_in, "next renewal scheduled");
        loop {
            let next_bundle_check =
                (tokio::time::Instant::now() + config.bundle_refresh).min(renew_at);
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(next_bundle_check) => {}
            }
            if tokio::time::Instant::now() >= renew_at {
                break;
            }
            match fetch_bundle(&config, &initial_roots, h).await {
                Ok((bundle, generation)) => {
                    if bundle != h.bundle_pem {
                        files::write(&config.out_dir, &h.chain_pem, &h.key_pem, &bundle)?;
                        tracing::info!("the trust bundle changed; wrote ca.pem");
                        h.bundle_pem = bundle;
                    }
                    if let (Some(now), Some(mine)) = (generation, h.generation) {
                        if now != mine {
                            let lifetime = (h.not_after - h.not_before)
                                .try_into()
                                .unwrap_or(Duration::ZERO);
                            let soon = tokio::time::Instant::now() + early_renewal(lifetime);
                            if soon < renew_at {
                                tracing::info!(
                                    generation = now,
                                    "the signer changed; renewing early"
                                );
                                renew_at = soon;
                            }
                            h.generation = Some(now);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "failed to refresh the trust bundle"),
            }
        }
    }
}

/// The certificate, key and bundle a previous run left in `dir`.
fn load_held(dir: &Path) -> Result<Held, AgentError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| AgentError::Io {
            action: "read",
            path,
            source,
        })
    };
    let chain_pem = read("cert.pem")?;
    let key_pem = Zeroizing::new(read("key.pem")?);
    let bundle_pem = read("ca.pem")?;
    let chain = meshca_provider::pem::decode_certificates(chain_pem.as_bytes())
        .map_err(|e| AgentError::Setup(format!("cert.pem: {e}")))?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| AgentError::Setup(format!("cert.pem: {e}")))?;
    let not_before = leaf.validity().not_before.to_datetime();
    let not_after = leaf.validity().not_after.to_datetime();
    if not_after <= OffsetDateTime::now_utc() {
        return Err(AgentError::Setup(format!(
            "the certificate in {} expired at {not_after}; a token file is needed to get a new one",
            dir.display()
        )));
    }
    Ok(Held {
        chain_pem,
        key_pem,
        bundle_pem,
        not_before,
        not_after,
        generation: None,
    })
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, AgentError> {
    let bytes = std::fs::read(path).map_err(|source| AgentError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    meshca_provider::pem::decode_certificates(&bytes)
        .map_err(|e| AgentError::Setup(format!("{}: {e}", path.display())))
}

/// A client trusting the initial CA file plus the last bundle received,
/// presenting the held certificate when renewing without a token.
fn client(
    initial_roots: &[CertificateDer<'static>],
    held: Option<&Held>,
    present_certificate: bool,
) -> Result<reqwest::Client, AgentError> {
    let mut roots = RootCertStore::empty();
    let mut extra = Vec::new();
    if let Some(h) = held {
        extra =
            meshca_provider::pem::decode_certificates(h.bundle_pem.as_bytes()).unwrap_or_default();
    }
    for cert in initial_roots.iter().chain(extra.iter()) {
        roots
            .add(cert.clone())
            .map_err(|e| AgentError::Setup(format!("unusable CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| AgentError::Setup(e.to_string()))?
        .with_root_certificates(roots);
    let tls = match held.filter(|_| present_certificate) {
        Some(h) => {
            let chain = CertificateDer::pem_slice_iter(h.chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| AgentError::Setup(format!("held certificate: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(h.key_pem.as_bytes())
                .map_err(|e| AgentError::Setup(format!("held key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| AgentError::Setup(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| AgentError::Setup(e.to_string()))
}

async fn fetch_certificate(
    config: &AgentConfig,
    initial_roots: &[CertificateDer<'static>],
    held: Option<&Held>,
) -> Result<Held, AgentError> {
    let token = match &config.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| AgentError::Io {
                action: "read",
                path: path.clone(),
                source,
            })?;
            Some(Zeroizing::new(text.trim().to_owned()))
        }
        None if held.is_some() => None,
        None => {
            return Err(AgentError::Setup(
                "a token file is needed for the first certificate".into(),
            ))
        }
    };
    let client = client(initial_roots, held, token.is_none())?;
    let identity = whoami(&client, config, token.as_deref().map(String::as_str)).await?;
    let key = keys::generate().map_err(|e| AgentError::Setup(e.to_string()))?;
    let csr = keys::request_for(&key, &identity, &[])
        .and_then(|c| c.pem())
        .map_err(|e| AgentError::Setup(e.to_string()))?;

    let url = format!("{}/v1/certificates", config.server.trim_end_matches('/'));
    let mut body = serde_json::json!({ "csr": csr });
    if let Some(ttl) = config.ttl {
        body["ttl_seconds"] = ttl.as_secs().into();
    }
    let mut request = client.post(&url).json(&body);
    if let Some(token) = &token {
        request = request.bearer_auth(token.as_str());
    }
    let (issued, generation): (Issued, _) = exchange(request, &url).await?;
    let parse = |s: &str| {
        OffsetDateTime::parse(s, &Rfc3339)
            .map_err(|e| AgentError::InvalidResponse(format!("{s:?}: {e}")))
    };
    meshca_provider::pem::decode_certificates(issued.certificate_chain.as_bytes())
        .map_err(AgentError::InvalidResponse)?;
    meshca_provider::pem::decode_certificates(issued.trust_bundle.as_bytes())
        .map_err(AgentError::InvalidResponse)?;
    Ok(Held {
        not_before: parse(&issued.not_before)?,
        not_after: parse(&issued.not_after)?,
        chain_pem: issued.certificate_chain,
        key_pem: Zeroizing::new(key.serialize_pem()),
        bundle_pem: issued.trust_bundle,
        generation,
    })
}

#[derive(Deserialize)]
struct WhoAmI {
    spiffe_id: String,
}

/// Ask the server which identity the credential stands for.
async fn whoami(
    client: &reqwest::Client,
    config: &AgentConfig,
    token: Option<&str>,
) -> Result<meshca_provider::Identity, AgentError> {
    let url = format!("{}/v1/identity", config.server.trim_end_matches('/'));
    let mut request = client.get(&url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let (who, _): (WhoAmI, _) = exchange(request, &url).await?;
    meshca_provider::Identity::from_spiffe_id(&who.spiffe_id)
        .map_err(|e| AgentError::InvalidResponse(e.to_string()))
}

/// Send `request` and decode a successful JSON answer; errors carry the
/// server's code, message and Retry-After.
async fn exchange<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    url: &str,
) -> Result<(T, Option<u64>), AgentError> {
    let response = request
        .send()
        .await
        .map_err(|source| AgentError::Transport {
            url: url.to_owned(),
            source,
        })?;
    let response = refused(response).await?;
    let generation = generation_of(response.headers());
    let body = response
        .json()
        .await
        .map_err(|e| AgentError::InvalidResponse(e.to_string()))?;
    Ok((body, generation))
}

/// Pass a successful response through; turn an error answer into
/// [`AgentError::Refused`] with the server's code, message and Retry-After.
async fn refused(response: reqwest::Response) -> Result<reqwest::Response, AgentError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    let (code, message) = match response.json::<ErrorBody>().await {
        Ok(b) => (b.error.code, b.error.message),
        Err(_) => ("unknown".into(), "no error body".into()),
    };
    Err(AgentError::Refused {
        status: status.as_u16(),
        code,
        message,
        retry_after,
    })
}

async fn fetch_bundle(
    config: &AgentConfig,
    initial_roots: &[CertificateDer<'static>],
    held: &Held,
) -> Result<(String, Option<u64>), AgentError> {
    let client = client(initial_roots, Some(held), false)?;
    let url = format!("{}/v1/bundle", config.server.trim_end_matches('/'));
    let response = client
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|source| AgentError::Transport {
            url: url.clone(),
            source,
        })?;
    let generation = generation_of(response.headers());
    let text = response
        .text()
        .await
        .map_err(|source| AgentError::Transport { url, source })?;
    meshca_provider::pem::decode_certificates(text.as_bytes())
        .map_err(AgentError::InvalidResponse)?;
    Ok((text, generation))
}
