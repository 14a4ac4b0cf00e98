//! The transport to Vault: one reqwest client with meshca's TLS settings,
//! and single exchanges without retries, tokens or breaker.

use std::path::PathBuf;
use std::time::Duration;

use meshca_provider::ProviderError;
use reqwest::{Method, StatusCode};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::error::VaultError;
use crate::Connection;

/// The files of the TLS settings, read by the caller without blocking.
#[derive(Default)]
pub(crate) struct TlsFiles {
    /// `ca_file`'s PEM.
    pub(crate) ca: Option<Vec<u8>>,
    /// `client_cert`'s certificate chain and key, PEM.
    pub(crate) client: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
}

impl TlsFiles {
    /// Read the files `config` names.
    pub(crate) async fn read(config: &Connection) -> Result<Self, ProviderError> {
        let read = |path: PathBuf| async move {
            tokio::fs::read(&path)
                .await
                .map_err(|e| bad(format!("{}: {e}", path.display())))
        };
        let mut files = Self::default();
        if let Some(path) = &config.ca_file {
            files.ca = Some(read(path.clone()).await?);
        }
        if let Some((cert, key)) = &config.client_cert {
            let chain = read(cert.clone()).await?;
            files.client = Some((chain, Zeroizing::new(read(key.clone()).await?)));
        }
        Ok(files)
    }
}

/// Vault's address and the HTTP client that reaches it.
pub(crate) struct Http {
    client: reqwest::Client,
    address: String,
}

/// A local setting that makes the client unusable.
fn bad(message: String) -> ProviderError {
    ProviderError::Misconfigured(format!("vault: {message}"))
}

/// The address, trailing `/` removed: `https://`, or `http://` when
/// allowed.
fn address(config: &Connection) -> Result<String, ProviderError> {
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
    Ok(address)
}

/// The roots that verify Vault: the CA file's, else the system's.
fn roots(
    config: &Connection,
    ca_pem: Option<&[u8]>,
) -> Result<rustls::RootCertStore, ProviderError> {
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
    Ok(roots)
}

/// The TLS configuration: the roots, and the client certificate when one
/// is configured.
fn tls(config: &Connection, files: &TlsFiles) -> Result<rustls::ClientConfig, ProviderError> {
    let builder =
        meshca_provider::crypto::client_config_trusting(roots(config, files.ca.as_deref())?)
            .map_err(|e| bad(e.to_string()))?;
    Ok(match (&config.client_cert, &files.client) {
        (Some((cert, key)), Some((chain_pem, key_pem))) => {
            let chain = CertificateDer::pem_slice_iter(chain_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("{}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|e| bad(format!("{}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad(e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    })
}

impl Http {
    /// The transport of `config`, with its TLS files.
    pub(crate) fn new(config: &Connection, files: &TlsFiles) -> Result<Self, ProviderError> {
        let address = address(config)?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls(config, files)?)
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(2).min(config.timeout))
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self { client, address })
    }

    /// Vault's address.
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
        let mut req = self.client.request(method, &url);
        if let Some(t) = token {
            req = req.header("X-Vault-Token", t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let unreachable = |source| VaultError::Unreachable {
            url: url.clone(),
            source,
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(unreachable)?;
        Ok((status, bytes.to_vec()))
    }
}
