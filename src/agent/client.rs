//! The agent's side of the signing API: who am I, sign this, what is the
//! bundle. Every call builds a client that trusts the CA file plus the last
//! bundle received, so a rotated root keeps verifying the server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::{io, AgentError, Held};
use crate::crypto::names::KeyAlgorithmName;
use crate::keys;

/// The signing API as the agent reaches it.
pub(super) struct SigningApi {
    base: String,
    initial_roots: Vec<CertificateDer<'static>>,
    token_file: Option<PathBuf>,
    ttl: Option<Duration>,
    key_algorithm: KeyAlgorithmName,
}

#[derive(Deserialize)]
struct Issued {
    certificate_chain: String,
    trust_bundle: String,
    not_before: String,
    not_after: String,
}

/// A JWT-SVID as the signing API answers it.
#[derive(Clone, Deserialize)]
pub(super) struct MintedToken {
    /// The compact JWS.
    pub token: String,
    /// Its subject.
    pub spiffe_id: String,
    /// Its `exp`, RFC 3339.
    pub expires_at: String,
}

#[derive(Deserialize)]
struct WhoAmI {
    spiffe_id: String,
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

impl SigningApi {
    pub(super) async fn new(config: &super::AgentConfig) -> Result<Self, AgentError> {
        Ok(Self {
            base: config.server.trim_end_matches('/').to_owned(),
            initial_roots: read_pem_certs(&config.ca_file).await?,
            token_file: config.token_file.clone(),
            ttl: config.ttl,
            key_algorithm: config.key_algorithm,
        })
    }

    /// Whether certificates are obtained with a token (otherwise with the
    /// held certificate).
    pub(super) fn has_token(&self) -> bool {
        self.token_file.is_some()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A new key and a certificate for it, authenticated with the token
    /// or, without one, with the held certificate.
    pub(super) async fn certificate(&self, held: Option<&Held>) -> Result<Held, AgentError> {
        let token = self.token().await?;
        if token.is_none() && held.is_none() {
            return Err(AgentError::Setup(
                "a token file is needed for the first certificate".into(),
            ));
        }
        let client = self.client(held, token.is_none())?;
        let identity = self
            .whoami(&client, token.as_ref().map(|t| t.as_str()))
            .await?;
        let key =
            keys::generate_as(self.key_algorithm).map_err(|e| AgentError::Setup(e.to_string()))?;
        let csr = keys::request_for(&key, &identity, &[])
            .and_then(|c| c.pem())
            .map_err(|e| AgentError::Setup(e.to_string()))?;

        let url = self.url("/v1/certificates");
        let mut body = serde_json::json!({ "csr": csr });
        if let Some(ttl) = self.ttl {
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
            identity,
            chain_pem: issued.certificate_chain,
            key_pem: Zeroizing::new(key.serialize_pem()),
            bundle_pem: issued.trust_bundle,
            federated: super::Federated::default(),
            crl_pem: None,
            crl_etag: None,
            generation,
        })
    }

    /// The current trust bundle and the server's signer generation.
    pub(super) async fn bundle(&self, held: &Held) -> Result<(String, Option<u64>), AgentError> {
        let client = self.client(Some(held), false)?;
        let url = self.url("/v1/bundle");
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

    /// The CRLs in PEM (`GET /v1/crl`), each checked to be a CRL, asked
    /// only if they changed since those `held` has (its entity tag).
    pub(super) async fn crls(&self, held: &Held) -> Result<CrlAnswer, AgentError> {
        let client = self.client(Some(held), false)?;
        let url = self.url("/v1/crl");
        let mut request = client
            .get(&url)
            .header(reqwest::header::ACCEPT, "application/x-pem-file");
        if let (Some(_), Some(etag)) = (&held.crl_pem, &held.crl_etag) {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let response = request
            .send()
            .await
            .map_err(|source| AgentError::Transport {
                url: url.clone(),
                source,
            })?;
        if response.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(CrlAnswer::Unchanged);
        }
        let response = match refused(response).await {
            Ok(response) => response,
            Err(AgentError::Refused {
                status: 404 | 501, ..
            }) => return Ok(CrlAnswer::NotServed),
            Err(e) => return Err(e),
        };
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let pem = response
            .text()
            .await
            .map_err(|source| AgentError::Transport { url, source })?;
        check_crls(&pem).map_err(AgentError::InvalidResponse)?;
        Ok(CrlAnswer::Lists { pem, etag })
    }

    /// The federated bundles `held`'s identity receives (`GET
    /// /v1/bundle/federated`), each checked as the daemon checked it; a
    /// server without that endpoint has none to give.
    pub(super) async fn federated(&self, held: &Held) -> Result<super::Federated, AgentError> {
        let client = self.client(Some(held), !self.has_token())?;
        let token = self.token().await?;
        let url = self.url("/v1/bundle/federated");
        let mut request = client.get(&url);
        if let Some(token) = &token {
            request = request.bearer_auth(token.as_str());
        }
        let documents: std::collections::BTreeMap<String, serde_json::Value> =
            match exchange(request, &url).await {
                Ok((documents, _)) => documents,
                Err(AgentError::Refused { status: 404, .. }) => {
                    return Ok(super::Federated::default())
                }
                Err(e) => return Err(e),
            };
        let mut federated = std::collections::BTreeMap::new();
        for (id, document) in documents {
            let invalid =
                |e: String| AgentError::InvalidResponse(format!("federated bundle {id}: {e}"));
            let td = id
                .strip_prefix("spiffe://")
                .ok_or_else(|| invalid("not a spiffe:// trust domain ID".into()))
                .and_then(|td| {
                    meshca_provider::TrustDomain::new(td).map_err(|e| invalid(e.to_string()))
                })?;
            let bundle =
                crate::bundle::spiffe::PeerBundle::parse(&td, document.to_string().as_bytes())
                    .map_err(|e| invalid(e.to_string()))?;
            federated.insert(id, std::sync::Arc::new(bundle));
        }
        Ok(std::sync::Arc::new(federated))
    }

    /// A client for the JWT calls while `held` is the agent's: it trusts
    /// the held bundle and, without a token, presents the held
    /// certificate. Kept by the caller, so that connections are reused.
    pub(super) fn jwt_client(&self, held: &Held) -> Result<reqwest::Client, AgentError> {
        self.client(Some(held), !self.has_token())
    }

    /// A JWT-SVID for `audience` through `client` (from
    /// [`SigningApi::jwt_client`]), authenticated with the token or,
    /// without one, with the held certificate.
    pub(super) async fn jwt_svid(
        &self,
        client: &reqwest::Client,
        audience: &[String],
    ) -> Result<MintedToken, AgentError> {
        let token = self.token().await?;
        let url = self.url("/v1/jwt-svids");
        let mut request = client
            .post(&url)
            .json(&serde_json::json!({ "audience": audience }));
        if let Some(token) = &token {
            request = request.bearer_auth(token.as_str());
        }
        Ok(exchange(request, &url).await?.0)
    }

    /// The trust domain's SPIFFE bundle (`GET /v1/bundle/spiffe`).
    pub(super) async fn spiffe_bundle(
        &self,
        client: &reqwest::Client,
    ) -> Result<serde_json::Value, AgentError> {
        let url = self.url("/v1/bundle/spiffe");
        Ok(exchange(client.get(&url), &url).await?.0)
    }

    /// The token, re-read for every request (projected tokens rotate).
    async fn token(&self) -> Result<Option<Zeroizing<String>>, AgentError> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = Zeroizing::new(
            tokio::fs::read_to_string(path)
                .await
                .map_err(io("read", path))?,
        );
        Ok(Some(Zeroizing::new(text.trim().to_owned())))
    }

    /// A client trusting the initial CA file plus the last bundle received,
    /// presenting the held certificate when renewing without a token.
    fn client(
        &self,
        held: Option<&Held>,
        present_certificate: bool,
    ) -> Result<reqwest::Client, AgentError> {
        let mut roots = RootCertStore::empty();
        let extra = held
            .and_then(|h| meshca_provider::pem::decode_certificates(h.bundle_pem.as_bytes()).ok())
            .unwrap_or_default();
        for cert in self.initial_roots.iter().chain(extra.iter()) {
            roots
                .add(cert.clone())
                .map_err(|e| AgentError::Setup(format!("unusable CA certificate: {e}")))?;
        }
        let builder = crate::crypto::client_config_trusting(roots)
            .map_err(|e| AgentError::Setup(e.to_string()))?;
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

    /// Ask the server which identity the credential stands for.
    async fn whoami(
        &self,
        client: &reqwest::Client,
        token: Option<&str>,
    ) -> Result<meshca_provider::Identity, AgentError> {
        let url = self.url("/v1/identity");
        let mut request = client.get(&url);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let (who, _): (WhoAmI, _) = exchange(request, &url).await?;
        meshca_provider::Identity::from_spiffe_id(&who.spiffe_id)
            .map_err(|e| AgentError::InvalidResponse(e.to_string()))
    }
}

async fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, AgentError> {
    let bytes = tokio::fs::read(path).await.map_err(io("read", path))?;
    meshca_provider::pem::decode_certificates(&bytes)
        .map_err(|e| AgentError::Setup(format!("{}: {e}", path.display())))
}

/// The server's signer generation (`x-meshca-generation`).
fn generation_of(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers
        .get("x-meshca-generation")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
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

/// What `GET /v1/crl` answered.
pub(super) enum CrlAnswer {
    /// The lists held are current (304).
    Unchanged,
    /// The lists, and their entity tag.
    Lists {
        /// Every list, PEM.
        pem: String,
        /// Sent back to ask whether they changed.
        etag: Option<String>,
    },
    /// The server publishes none (its provider cannot revoke).
    NotServed,
}

/// Every PEM block of `text` is a CRL, and there is one.
fn check_crls(text: &str) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    let mut count = 0;
    for crl in rustls_pki_types::CertificateRevocationListDer::pem_slice_iter(text.as_bytes()) {
        let crl = crl.map_err(|e| format!("the CRLs: {e}"))?;
        x509_parser::parse_x509_crl(&crl).map_err(|e| format!("a CRL does not parse: {e}"))?;
        count += 1;
    }
    match count {
        0 => Err("the server sent no CRL".into()),
        _ => Ok(()),
    }
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
