//! The workload-side client: generate a key locally, send a CSR, deliver
//! the certificate, key and bundle to the workload, renew before expiry and
//! follow bundle changes.
//!
//! Two deliveries, either or both: files in `--out-dir` (written atomically,
//! the key at 0600) and the SPIFFE Workload API on a Unix socket. The
//! private key never leaves this process except into those.

mod client;
mod files;
mod svid;
mod workload_api;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

pub use crate::crypto::names::KeyAlgorithmName;
use crate::renewal;
use client::{CrlAnswer, SigningApi};
pub use workload_api::WorkloadApiConfig;
pub(crate) use workload_api::ALLOWED_MODES as SOCKET_MODES;

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
    pub out_dir: Option<PathBuf>,
    /// Also write the SPIFFE file layout in `out_dir`:
    /// `credential-bundle.pem` (key, then chain) and
    /// `<trust-domain>.trust-bundle.pem`.
    pub spiffe_files: bool,
    /// Serve the SPIFFE Workload API.
    pub workload_api: Option<WorkloadApiConfig>,
    /// Requested lifetime; the server clamps it.
    pub ttl: Option<Duration>,
    /// Exit after the first successful write.
    pub once: bool,
    /// How often the trust bundle is re-fetched between renewals.
    pub bundle_refresh: Duration,
    /// How often the CRLs are re-fetched: a revocation reaches the
    /// workload's data plane within this (plus the daemon's few seconds).
    pub crl_refresh: Duration,
    /// The workload's key algorithm (`ecdsa-p256` by default; `ml-dsa-65`
    /// for a post-quantum identity, signed under a post-quantum root).
    pub key_algorithm: KeyAlgorithmName,
}

impl AgentConfig {
    /// Refuse combinations that cannot work, before any request.
    fn check(&self) -> Result<(), AgentError> {
        let setup = |m: &str| Err(AgentError::Setup(m.to_owned()));
        match (&self.out_dir, &self.workload_api) {
            (None, None) => setup("nothing to deliver to: give --out-dir, --workload-api-socket or both"),
            (None, _) if self.token_file.is_none() => setup(
                "without --token-file the agent renews with the certificate in --out-dir, so --out-dir is needed",
            ),
            (None, _) if self.spiffe_files => setup("--spiffe-files writes into --out-dir, which is not given"),
            (_, Some(_)) if self.once => {
                setup("--once exits after the first certificate, so it cannot serve the Workload API")
            }
            _ => Ok(()),
        }
    }
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
    /// The Workload API server failed.
    #[error("the Workload API server failed: {0}")]
    WorkloadApi(#[source] tonic::transport::Error),
    /// The server answered something that is not the contract.
    #[error("unexpected answer from the server: {0}")]
    InvalidResponse(String),
}

/// Wrap an I/O error with what was being done to which file.
fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AgentError + 'a {
    move |source| AgentError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// What the agent holds between rounds.
struct Held {
    /// The identity the server said the credential stands for.
    identity: meshca_provider::Identity,
    chain_pem: String,
    key_pem: Zeroizing<String>,
    bundle_pem: String,
    /// The federated trust domains' bundles this identity receives.
    federated: Federated,
    /// The CRLs, in PEM, when the server publishes them.
    crl_pem: Option<String>,
    /// Their entity tag, to ask whether they changed.
    crl_etag: Option<String>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    /// The signer generation that issued it, when the server said.
    generation: Option<u64>,
}

/// Federated bundles by `spiffe://<trust domain>`, checked on arrival.
type Federated = Arc<std::collections::BTreeMap<String, Arc<crate::bundle::spiffe::PeerBundle>>>;

/// Where a new certificate or bundle goes.
struct Outputs {
    files: Option<files::Layout>,
    workload_api: Option<workload_api::Publisher>,
    /// The Workload API's JWT profile, which follows the held identity.
    tokens: Option<Arc<workload_api::Tokens>>,
}

impl Outputs {
    async fn deliver(&self, held: &Held) -> Result<(), AgentError> {
        if let Some(files) = &self.files {
            files.write(held).await?;
        }
        self.serve(held);
        Ok(())
    }

    /// Serve `held` over the Workload API only: it came from the files.
    fn serve(&self, held: &Held) {
        if let Some(publisher) = &self.workload_api {
            publisher.publish(held);
        }
        if let Some(tokens) = &self.tokens {
            tokens.hold(held);
        }
    }

    /// Fetch the trust domain's JWT keys for the Workload API.
    async fn refresh_jwt_keys(&self) {
        if let Some(tokens) = &self.tokens {
            if let Err(e) = tokens.refresh().await {
                tracing::warn!(error = %e, "failed to refresh the JWT keys");
            }
        }
    }
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
    config.check()?;
    let api = Arc::new(SigningApi::new(&config).await?);
    // Without a token, renewal rests on the certificate a previous run
    // wrote; with one, every round starts from the token.
    let held = match (&config.out_dir, api.has_token()) {
        (Some(dir), false) => Some(load_held(dir).await?),
        _ => None,
    };
    let stop = shutdown.child_token();
    let (publisher, server, tokens) = match &config.workload_api {
        Some(w) => {
            let tokens = Arc::new(workload_api::Tokens::new(api.clone()));
            let (publisher, task) = w.build(tokens.clone(), stop.clone()).await?;
            (Some(publisher), Some(task), Some(tokens))
        }
        None => (None, None, None),
    };
    let outputs = Outputs {
        files: config.out_dir.clone().map(|dir| files::Layout {
            dir,
            spiffe: config.spiffe_files,
        }),
        workload_api: publisher,
        tokens,
    };
    let renewing = renew(&config, &api, outputs, held, stop.clone());
    let Some(server) = server else {
        return renewing.await;
    };
    // Either one ending stops the other; the streams end when the renewal
    // loop drops its publisher.
    let (renewed, served) = tokio::join!(
        async {
            let r = renewing.await;
            stop.cancel();
            r
        },
        async {
            let r = server.await;
            stop.cancel();
            r
        }
    );
    renewed.and(served)
}

/// Obtain, deliver and renew until `stop`.
async fn renew(
    config: &AgentConfig,
    api: &SigningApi,
    outputs: Outputs,
    mut held: Option<Held>,
    stop: CancellationToken,
) -> Result<(), AgentError> {
    if let Some(h) = &held {
        // Still valid: serve it while its renewal is asked for.
        outputs.serve(h);
    }
    let mut backoff = RETRY_MIN;
    loop {
        match api.certificate(held.as_ref()).await {
            Ok(mut new) => {
                new.federated = match api.federated(&new).await {
                    Ok(federated) => federated,
                    Err(e) => {
                        tracing::warn!(error = %e, "failed to fetch the federated bundles; keeping those held");
                        held.as_ref()
                            .map(|h| h.federated.clone())
                            .unwrap_or_default()
                    }
                };
                if let Some(h) = &held {
                    (new.crl_pem, new.crl_etag) = (h.crl_pem.clone(), h.crl_etag.clone());
                }
                refresh_crls(api, &mut new).await;
                outputs.deliver(&new).await?;
                outputs.refresh_jwt_keys().await;
                tracing::info!(not_after = %new.not_after, "delivered a new certificate");
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
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(wait) => continue,
                }
            }
        }
        let Some(h) = held.as_mut() else { continue };
        if !follow_until_renewal(config, api, &outputs, h, &stop).await? {
            return Ok(());
        }
    }
}

/// Wait for the renewal point, following bundle and CRL changes
/// meanwhile and renewing early after a change of signer. False when
/// stopped.
async fn follow_until_renewal(
    config: &AgentConfig,
    api: &SigningApi,
    outputs: &Outputs,
    h: &mut Held,
    stop: &CancellationToken,
) -> Result<bool, AgentError> {
    let renew_in = renewal::renewal_delay(
        h.not_before,
        h.not_after,
        OffsetDateTime::now_utc(),
        renewal::random_jitter(),
    );
    let mut renew_at = tokio::time::Instant::now() + renew_in;
    tracing::info!(renew_in = ?renew_in, "next renewal scheduled");
    let start = tokio::time::Instant::now();
    let (mut next_bundle, mut next_crl) =
        (start + config.bundle_refresh, start + config.crl_refresh);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(false),
            () = tokio::time::sleep_until(next_bundle.min(next_crl).min(renew_at)) => {}
        }
        let now = tokio::time::Instant::now();
        if now >= renew_at {
            return Ok(true);
        }
        let mut changed = false;
        if now >= next_crl {
            next_crl = now + config.crl_refresh;
            changed |= refresh_crls(api, h).await;
        }
        if now >= next_bundle {
            next_bundle = now + config.bundle_refresh;
            outputs.refresh_jwt_keys().await;
            if let Some((bundles_changed, generation)) = refresh_bundles(api, h).await {
                changed |= bundles_changed;
                renew_at = renew_at.min(renewal_after_switch(h, generation).unwrap_or(renew_at));
            }
        }
        if changed {
            outputs.deliver(h).await?;
            tracing::info!("the trust bundle or the CRLs changed; delivered them");
        }
    }
}

/// When to renew after the server said its signer generation is
/// `generation`: soon when it differs from the held certificate's.
fn renewal_after_switch(h: &mut Held, generation: Option<u64>) -> Option<tokio::time::Instant> {
    let (Some(now), Some(mine)) = (generation, h.generation) else {
        return None;
    };
    if now == mine {
        return None;
    }
    h.generation = Some(now);
    let lifetime = (h.not_after - h.not_before)
        .try_into()
        .unwrap_or(Duration::ZERO);
    tracing::info!(generation = now, "the signer changed; renewing early");
    Some(tokio::time::Instant::now() + early_renewal(lifetime))
}

/// Fetch the bundle and the federated bundles into `h`: whether either
/// changed, and the server's signer generation; `None` when the bundle
/// could not be fetched.
async fn refresh_bundles(api: &SigningApi, h: &mut Held) -> Option<(bool, Option<u64>)> {
    let (bundle, generation) = match api.bundle(h).await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(error = %e, "failed to refresh the trust bundle");
            return None;
        }
    };
    let mut changed = bundle != h.bundle_pem;
    h.bundle_pem = bundle;
    match api.federated(h).await {
        Ok(federated) if federated != h.federated => {
            tracing::info!(trust_domains = ?federated.keys().collect::<Vec<_>>(), "the federated bundles changed");
            h.federated = federated;
            changed = true;
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "failed to refresh the federated bundles"),
    }
    Some((changed, generation))
}

/// Fetch the CRLs into `h` if they changed; whether they did. Those held
/// are kept when the server cannot be asked.
async fn refresh_crls(api: &SigningApi, h: &mut Held) -> bool {
    let (pem, etag) = match api.crls(h).await {
        Ok(CrlAnswer::Unchanged) => return false,
        Ok(CrlAnswer::Lists { pem, etag }) => (Some(pem), etag),
        Ok(CrlAnswer::NotServed) => (None, None),
        Err(e) => {
            tracing::warn!(error = %e, "failed to refresh the CRLs; keeping those held");
            return false;
        }
    };
    h.crl_etag = etag;
    if pem == h.crl_pem {
        return false;
    }
    tracing::info!("the CRLs changed");
    h.crl_pem = pem;
    true
}

/// The certificate, key and bundle a previous run left in `dir`.
async fn load_held(dir: &Path) -> Result<Held, AgentError> {
    let read = |name: &str| {
        let path = dir.join(name);
        async move {
            tokio::fs::read_to_string(&path)
                .await
                .map_err(io("read", &path))
        }
    };
    let chain_pem = read("cert.pem").await?;
    let key_pem = Zeroizing::new(read("key.pem").await?);
    let bundle_pem = read("ca.pem").await?;
    let crl_pem = read("crl.pem").await.ok();
    let chain = meshca_provider::pem::decode_certificates(chain_pem.as_bytes())
        .map_err(|e| AgentError::Setup(format!("cert.pem: {e}")))?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| AgentError::Setup(format!("cert.pem: {e}")))?;
    let identity = meshca_provider::uri_names(&leaf)
        .into_iter()
        .find_map(|u| meshca_provider::Identity::from_spiffe_id(u).ok())
        .ok_or_else(|| AgentError::Setup("cert.pem carries no SPIFFE ID".into()))?;
    let not_before = leaf.validity().not_before.to_datetime();
    let not_after = leaf.validity().not_after.to_datetime();
    if not_after <= OffsetDateTime::now_utc() {
        return Err(AgentError::Setup(format!(
            "the certificate in {} expired at {not_after}; a token file is needed to get a new one",
            dir.display()
        )));
    }
    Ok(Held {
        identity,
        chain_pem,
        key_pem,
        bundle_pem,
        federated: Federated::default(),
        crl_pem,
        crl_etag: None,
        not_before,
        not_after,
        generation: None,
    })
}
