//! Key custody in Vault's (or OpenBao's) Transit engine: keys are made
//! there, non-exportable, and sign through `<mount>/sign/<name>`; meshca
//! reads only their public keys.
//!
//! It logs in as the PKI provider does, and shares its breaker: while
//! Transit is sealed or unreachable, signing fails at once with a retry
//! hint instead of waiting on each call.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use meshca_provider::crypto::custody::{Custody, CustodyAlgorithm, CustodyError, CustodyKey};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::client::Client;
use crate::error::VaultError;
use crate::http::TlsFiles;
use crate::Connection;

const BACKEND: &str = "transit";

/// Where the Transit engine is; built by the daemon from `key_custody`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransitConfig {
    /// Where Vault is and how meshca logs in.
    pub connection: Connection,
    /// Mount path of the Transit engine (default `transit`).
    pub mount: String,
}

/// The Transit engine as a custodian.
#[derive(Debug)]
pub struct Transit {
    client: Arc<Client>,
    mount: String,
}

impl Transit {
    /// Log in (so that refused credentials stop the start) and return the
    /// custodian with the task that keeps its token fresh until
    /// `shutdown`.
    ///
    /// # Errors
    /// [`CustodyError::Refused`] for local problems and refused
    /// credentials; [`CustodyError::Unavailable`] when Vault cannot be
    /// reached.
    pub async fn connect(
        config: &TransitConfig,
        shutdown: CancellationToken,
    ) -> Result<(Self, impl Future<Output = ()> + Send + 'static), CustodyError> {
        let refused = |e: meshca_provider::ProviderError| CustodyError::Refused {
            backend: BACKEND,
            message: meshca_provider::error_chain(&e),
        };
        let files = TlsFiles::read(&config.connection).await.map_err(refused)?;
        let client = Arc::new(Client::new(&config.connection, &files).map_err(refused)?);
        client.login().await.map_err(custody_error)?;
        let maintenance = {
            let client = client.clone();
            async move { client.maintain_token(shutdown).await }
        };
        let mount = config.mount.trim_matches('/').to_owned();
        tracing::info!(address = %config.connection.address, %mount, "key custody in Transit");
        Ok((Self { client, mount }, maintenance))
    }

    /// `GET <mount>/keys/<name>`, `None` when there is no such key.
    async fn read_key(&self, name: &str) -> Result<Option<Value>, CustodyError> {
        let path = format!("{}/keys/{name}", self.mount);
        match self.client.call(Method::GET, &path, None).await {
            Ok(body) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| custody_error(VaultError::not_json("a Transit key")(e))),
            Err(VaultError::NotFound(_)) => Ok(None),
            Err(e) => Err(custody_error(e)),
        }
    }

    /// `POST <mount>/keys/<name>`: a new non-exportable key.
    async fn create_key(
        &self,
        name: &str,
        algorithm: CustodyAlgorithm,
    ) -> Result<(), CustodyError> {
        let path = format!("{}/keys/{name}", self.mount);
        let body = json!({ "type": transit_type(algorithm), "exportable": false });
        self.client
            .call(Method::POST, &path, Some(&body))
            .await
            .map(drop)
            .map_err(custody_error)?;
        tracing::info!(key = %path, algorithm = algorithm.name(), "made a new key in Transit");
        Ok(())
    }
}

#[async_trait]
impl Custody for Transit {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn key(
        &self,
        name: &str,
        algorithm: CustodyAlgorithm,
    ) -> Result<Arc<dyn CustodyKey>, CustodyError> {
        let read = match self.read_key(name).await? {
            Some(read) => read,
            None => {
                self.create_key(name, algorithm).await?;
                self.read_key(name)
                    .await?
                    .ok_or_else(|| CustodyError::Refused {
                        backend: BACKEND,
                        message: format!(
                            "{}/keys/{name} is missing right after it was made",
                            self.mount
                        ),
                    })?
            }
        };
        let key = TransitKey::from_read(self, name, algorithm, &read)?;
        Ok(Arc::new(key))
    }

    async fn health(&self) -> Result<(), CustodyError> {
        self.client.health().await.map_err(custody_error)
    }

    /// Transit deletes only a key configured `deletion_allowed`: set it,
    /// then delete (meshca's policy needs `delete` on its keys).
    async fn destroy(&self, name: &str) -> Result<(), CustodyError> {
        let path = format!("{}/keys/{name}", self.mount);
        let allow = json!({ "deletion_allowed": true });
        let deleted = match self
            .client
            .call(Method::POST, &format!("{path}/config"), Some(&allow))
            .await
        {
            Ok(_) => self.client.call(Method::DELETE, &path, None).await,
            Err(e) => Err(e),
        };
        match deleted {
            Ok(_) | Err(VaultError::NotFound(_)) => Ok(()),
            Err(e) => Err(custody_error(e)),
        }
    }
}

/// One Transit key, at the version its public key was read from.
#[derive(Debug)]
struct TransitKey {
    client: Arc<Client>,
    sign_path: String,
    name: String,
    version: u64,
    algorithm: CustodyAlgorithm,
    public_key: Vec<u8>,
}

impl TransitKey {
    /// The key `read` describes, refused unless it is the `algorithm`
    /// meshca expects and cannot be exported.
    fn from_read(
        transit: &Transit,
        name: &str,
        algorithm: CustodyAlgorithm,
        read: &Value,
    ) -> Result<Self, CustodyError> {
        let path = format!("{}/keys/{name}", transit.mount);
        let refused = |message: String| CustodyError::Refused {
            backend: BACKEND,
            message,
        };
        let data = read.get("data").unwrap_or(&Value::Null);
        let kind = data.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != transit_type(algorithm) {
            return Err(refused(format!(
                "{path} is of type {kind:?}, not {:?}: give meshca another key name",
                transit_type(algorithm)
            )));
        }
        if data.get("exportable").and_then(Value::as_bool) != Some(false) {
            return Err(refused(format!(
                "{path} can be exported (exportable=true): a CA key in custody must not be; make a new key"
            )));
        }
        let version = data
            .get("latest_version")
            .and_then(Value::as_u64)
            .ok_or_else(|| refused(format!("{path} states no latest_version")))?;
        let pem = data
            .pointer(&format!("/keys/{version}/public_key"))
            .and_then(Value::as_str)
            .ok_or_else(|| refused(format!("{path} version {version} has no public key")))?;
        Ok(Self {
            client: transit.client.clone(),
            sign_path: format!("{}/sign/{name}", transit.mount),
            name: name.to_owned(),
            version,
            algorithm,
            public_key: point(pem).map_err(refused)?,
        })
    }
}

#[async_trait]
impl CustodyKey for TransitKey {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn algorithm(&self) -> CustodyAlgorithm {
        self.algorithm
    }

    fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// `POST <mount>/sign/<name>` at this key's version, the message
    /// hashed by Transit, the signature in ASN.1 DER as X.509 carries it.
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CustodyError> {
        let hash = match self.algorithm {
            CustodyAlgorithm::EcdsaP384 => "sha2-384",
            _ => "sha2-256",
        };
        // ECDSA as X.509 carries it (DER, not JWS's r || s); RSA as
        // PKCS#1 v1.5, which rcgen names the certificate's algorithm as
        // (Transit's default for RSA is PSS).
        let mut body = json!({
            "input": STANDARD.encode(message),
            "hash_algorithm": hash,
            "marshaling_algorithm": "asn1",
            "key_version": self.version,
        });
        if self.algorithm.rsa_bits().is_some() {
            body["signature_algorithm"] = json!("pkcs1v15");
        }
        let answer = self
            .client
            .call(Method::POST, &self.sign_path, Some(&body))
            .await
            .map_err(custody_error)?;
        let answer: Value = serde_json::from_slice(&answer)
            .map_err(|e| custody_error(VaultError::not_json("a Transit signature")(e)))?;
        let signature = answer
            .pointer("/data/signature")
            .and_then(Value::as_str)
            .and_then(|s| s.strip_prefix(&format!("vault:v{}:", self.version)))
            .and_then(|s| STANDARD.decode(s).ok());
        signature.ok_or_else(|| {
            custody_error(VaultError::Protocol(format!(
                "{} answered no signature of version {}",
                self.sign_path, self.version
            )))
        })
    }
}

/// Transit's name of a key type.
fn transit_type(algorithm: CustodyAlgorithm) -> &'static str {
    match algorithm {
        CustodyAlgorithm::EcdsaP256 => "ecdsa-p256",
        CustodyAlgorithm::EcdsaP384 => "ecdsa-p384",
        CustodyAlgorithm::Rsa2048 => "rsa-2048",
        CustodyAlgorithm::Rsa3072 => "rsa-3072",
        CustodyAlgorithm::Rsa4096 => "rsa-4096",
    }
}

/// The EC point of a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
fn point(pem: &str) -> Result<Vec<u8>, String> {
    let block = ::pem::parse(pem).map_err(|e| format!("malformed public key PEM: {e}"))?;
    let (_, spki) = SubjectPublicKeyInfo::from_der(block.contents())
        .map_err(|e| format!("malformed public key: {e}"))?;
    Ok(spki.subject_public_key.data.to_vec())
}

/// A Vault failure as custody sees it: an outage is retried later, with
/// the breaker's hint; anything else needs someone to act.
fn custody_error(error: VaultError) -> CustodyError {
    let message = meshca_provider::error_chain(&error);
    match error.retry_after() {
        Some(retry_after) => CustodyError::Unavailable {
            backend: BACKEND,
            message,
            retry_after,
            source: Some(Box::new(error)),
        },
        None => CustodyError::Refused {
            backend: BACKEND,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_key_pem_gives_its_point() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        assert_eq!(
            point(&key.public_key_pem()).expect("point"),
            key.public_key_raw()
        );
        assert!(point("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").is_err());
    }
}
