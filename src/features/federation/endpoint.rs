//! TLS of the bundle endpoint's `https_web` profile: a Web PKI
//! certificate and key from files, reloaded when either changes (as
//! cert-manager or an ACME client renews them).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// How often the files' modification times are looked at.
const RECHECK: Duration = Duration::from_secs(5);

/// Why the endpoint's certificate could not be used.
#[derive(Debug, Error)]
pub enum EndpointError {
    /// A file could not be read or holds no PEM of its kind.
    #[error("failed to read {what} from {}", path.display())]
    Read {
        /// `certificate chain` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the pair (a key that does not match, say).
    #[error("failed to serve with {} and {}", cert.display(), key.display())]
    Tls {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The reload task on the blocking pool did not finish.
    #[error("the certificate reload was interrupted: {0}")]
    Interrupted(String),
}

/// The TLS configuration served from `cert_file` and `key_file`, read
/// now on the blocking pool, and the task that swaps it when they change
/// (a pair that does not load is logged and the previous one kept).
///
/// # Errors
/// [`EndpointError`] when the files cannot be used now.
pub async fn web_tls(
    cert_file: &Path,
    key_file: &Path,
) -> Result<(Arc<ArcSwap<ServerConfig>>, Reload), EndpointError> {
    let paths = Arc::new((cert_file.to_owned(), key_file.to_owned()));
    let tls = Arc::new(ArcSwap::from_pointee(
        load_off_runtime(paths.clone()).await?,
    ));
    let reload = Reload {
        paths,
        handle: tls.clone(),
    };
    Ok((tls, reload))
}

/// Swaps the endpoint's TLS configuration when its files change.
pub struct Reload {
    paths: Arc<(PathBuf, PathBuf)>,
    handle: Arc<ArcSwap<ServerConfig>>,
}

impl Reload {
    /// Look at the files every few seconds until `shutdown`; they are
    /// looked at, and read, on the blocking pool.
    pub async fn run(self, shutdown: CancellationToken) {
        let look = |paths: Arc<(PathBuf, PathBuf)>| async move {
            tokio::task::spawn_blocking(move || stamps(&paths.0, &paths.1))
                .await
                .unwrap_or_default()
        };
        let mut seen = look(self.paths.clone()).await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RECHECK) => {}
            }
            let now = look(self.paths.clone()).await;
            if now == seen {
                continue;
            }
            seen = now;
            match load_off_runtime(self.paths.clone()).await {
                Ok(config) => {
                    self.handle.store(Arc::new(config));
                    tracing::info!(cert_file = %self.paths.0.display(), "reloaded the bundle endpoint's certificate");
                }
                Err(e) => {
                    tracing::error!(error = %crate::report::error_chain(&e), "kept the bundle endpoint's previous certificate");
                }
            }
        }
    }
}

/// [`load`] on the blocking pool.
async fn load_off_runtime(paths: Arc<(PathBuf, PathBuf)>) -> Result<ServerConfig, EndpointError> {
    tokio::task::spawn_blocking(move || load(&paths.0, &paths.1))
        .await
        .unwrap_or_else(|e| Err(EndpointError::Interrupted(e.to_string())))
}

/// The files' stamps (blocking).
fn stamps(a: &Path, b: &Path) -> [Option<(SystemTime, u64)>; 2] {
    let stamp = |p: &Path| crate::store::fs::stamp(p).ok().flatten();
    [stamp(a), stamp(b)]
}

fn load(cert_file: &Path, key_file: &Path) -> Result<ServerConfig, EndpointError> {
    fn read<'a>(
        what: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(rustls::pki_types::pem::Error) -> EndpointError + 'a {
        move |source| EndpointError::Read {
            what,
            path: path.to_owned(),
            source,
        }
    }
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(read("certificate chain", cert_file))?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(read("private key", key_file))?;
    let tls = |source| EndpointError::Tls {
        cert: cert_file.to_owned(),
        key: key_file.to_owned(),
        source,
    };
    let mut config = crate::crypto::server_config_without_client_auth()
        .map_err(tls)?
        .with_single_cert(chain, key)
        .map_err(tls)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
