use std::sync::Arc;
use std::time::{Duration, Instant};

use meshca_provider::{LeafProfile, SignedChain, ValidatedCsr};
use reqwest::Method;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};
use tokio::sync::RwLock;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::client::Client;
use crate::error::VaultError;
use crate::VaultConfig;

/// What meshca needs to know of the signing role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RoleSettings {
    /// Vault signs the names the CSR carries, not the ones meshca passes.
    pub use_csr_sans: bool,
    /// Leaves carry basicConstraints CA:FALSE (SPIFFE clients need it).
    pub basic_constraints: bool,
    /// How far Vault backdates NotBefore (`not_before_duration`); `None`
    /// when the role does not say.
    pub backdate: Option<Duration>,
}

/// The TTL to ask Vault for so that the leaf's window, NotAfter −
/// NotBefore, is `lifetime`: Vault sets NotBefore `backdate` before now and
/// NotAfter `ttl` after it. An unknown backdate is not guessed: the whole
/// lifetime is asked for and the window is checked on what comes back.
///
/// # Errors
/// When the backdate leaves nothing of the lifetime (asking Vault for a
/// zero TTL would get the role's default instead).
pub(crate) fn ttl_for(lifetime: Duration, backdate: Option<Duration>) -> Result<Duration, String> {
    match backdate {
        None => Ok(lifetime),
        Some(b) if b < lifetime => Ok(lifetime - b),
        Some(b) => Err(format!(
            "the Vault role backdates NotBefore by {}s (not_before_duration), which leaves nothing of a {}s lifetime",
            b.as_secs(),
            lifetime.as_secs()
        )),
    }
}

/// The PKI engine at one mount, signing with one role.
pub(crate) struct Pki {
    client: Arc<Client>,
    mount: String,
    role: String,
    /// The role for CSRs of ML-DSA keys, when there is one.
    post_quantum_role: Option<String>,
    /// The role as read at start; `None` when meshca's policy cannot read
    /// it.
    pub(crate) settings: Option<RoleSettings>,
    /// Vault's backdate as measured on a probe at start, when the role
    /// does not state it.
    measured_backdate: Option<Duration>,
    refresh: Duration,
    anchors: RwLock<Option<(Instant, Vec<CertificateDer<'static>>)>>,
    revocations: crate::revoke::Revocations,
}

fn is_self_signed(der: &[u8]) -> bool {
    X509Certificate::from_der(der).is_ok_and(|(_, c)| c.subject().as_raw() == c.issuer().as_raw())
}

fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, VaultError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| VaultError::Protocol(format!("malformed PEM from Vault: {e}")))
}

fn json(body: &[u8], what: &'static str) -> Result<Value, VaultError> {
    serde_json::from_slice(body).map_err(VaultError::not_json(what))
}

impl Pki {
    pub(crate) fn new(client: Arc<Client>, config: &VaultConfig) -> Self {
        Self {
            client,
            mount: config.mount.trim_matches('/').to_owned(),
            role: config.role.clone(),
            post_quantum_role: config.post_quantum_role.clone(),
            settings: None,
            measured_backdate: None,
            refresh: config.anchors_refresh,
            anchors: RwLock::new(None),
            revocations: crate::revoke::Revocations::default(),
        }
    }

    /// The mount's CRL once `request`'s serials are revoked there (see
    /// [`crate::revoke`]).
    ///
    /// # Errors
    /// [`VaultError`]: Vault could not be asked, or refused.
    pub(crate) async fn revocation_lists(
        &self,
        request: &meshca_provider::revocation::CrlRequest,
    ) -> Result<Vec<meshca_provider::revocation::SignedCrl>, VaultError> {
        self.revocations
            .lists(&self.client, &self.mount, request)
            .await
    }

    /// Read `<mount>/roles/<role>` and say what in it will trouble
    /// workloads; `None` (with a warning) when the policy does not allow
    /// the read.
    pub(crate) async fn read_role(&mut self) {
        let path = format!("{}/roles/{}", self.mount, self.role);
        let read = self.client.call(Method::GET, &path, None).await;
        let settings = read.and_then(|b| json(&b, "role")).map(|v| RoleSettings {
            use_csr_sans: v
                .pointer("/data/use_csr_sans")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            basic_constraints: v
                .pointer("/data/basic_constraints_valid_for_non_ca")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            backdate: v
                .pointer("/data/not_before_duration")
                .and_then(Value::as_u64)
                .map(Duration::from_secs),
        });
        match settings {
            Ok(s) => {
                if s.use_csr_sans {
                    tracing::warn!(role = %path, "the Vault role has use_csr_sans=true: Vault signs only the names a CSR carries, so CSRs that do not name their identity are refused; set use_csr_sans=false on the role to let meshca name them");
                }
                if s.backdate.is_none() {
                    tracing::warn!(role = %path, "the Vault role does not state not_before_duration: leaves are asked for their whole lifetime and refused if Vault's backdate makes them longer");
                }
                if !s.basic_constraints {
                    tracing::warn!(role = %path, "the Vault role has basic_constraints_valid_for_non_ca=false: its leaves lack basicConstraints, which SPIFFE clients reject; set it to true");
                }
                self.settings = Some(s);
            }
            Err(e) => {
                tracing::warn!(role = %path, error = %e, "cannot read the Vault role (grant meshca's policy read on it); its settings will only show in what Vault signs");
            }
        }
    }

    /// The role that signs CSRs of ML-DSA keys.
    pub(crate) fn post_quantum_role(&self) -> Option<&str> {
        self.post_quantum_role.as_deref()
    }

    /// How far Vault backdates NotBefore: as the role states it, else as
    /// measured at start; `None` when neither is known. The post-quantum
    /// role is taken to backdate as the classical one does (set its
    /// `not_before_duration` alike).
    pub(crate) fn backdate(&self) -> Option<Duration> {
        self.settings
            .and_then(|s| s.backdate)
            .or(self.measured_backdate)
    }

    /// Measure the backdate on one throwaway signature: the time after
    /// Vault answered less the leaf's NotBefore, rounded up. That is never
    /// less than the real backdate, so leaves asked for with it never run
    /// past their window (they end a second or two early instead).
    pub(crate) async fn measure_backdate(&mut self, csr: &ValidatedCsr, leaf: &LeafProfile) {
        let measured = match self.sign(csr, leaf).await {
            Ok(SignedChain(chain)) => chain.first().and_then(|der| {
                let (_, cert) = X509Certificate::from_der(der).ok()?;
                let answered = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .and_then(|d| i64::try_from(d.as_secs()).ok())?
                    + 1;
                let backdate = answered - cert.validity().not_before.timestamp();
                u64::try_from(backdate).ok().map(Duration::from_secs)
            }),
            Err(e) => {
                tracing::warn!(error = %e, "failed to sign a probe certificate to measure Vault's backdate");
                None
            }
        };
        if let Some(b) = measured {
            tracing::info!(
                backdate_seconds = b.as_secs(),
                "measured how far Vault backdates NotBefore, which the role does not state"
            );
        }
        self.measured_backdate = measured;
    }

    /// `POST <mount>/sign/<role>` with the CSR and the identity's names.
    pub(crate) async fn sign(
        &self,
        csr: &ValidatedCsr,
        leaf: &LeafProfile,
    ) -> Result<SignedChain, VaultError> {
        let body = self.sign_request(csr, leaf)?;
        // An ML-DSA key is signed by the post-quantum role's issuer (the
        // capabilities keep it from here without one).
        let role = match (
            &self.post_quantum_role,
            csr.key_algorithm().is_post_quantum(),
        ) {
            (Some(pq), true) => pq,
            _ => &self.role,
        };
        let bytes = self
            .client
            .call(
                Method::POST,
                &format!("{}/sign/{role}", self.mount),
                Some(&body),
            )
            .await?;
        let (mut chain, issuers) = signed(&json(&bytes, "sign")?)?;
        // Intermediates go in the chain; a root there is an anchor instead.
        let (roots, intermediates): (Vec<_>, Vec<_>) =
            issuers.into_iter().partition(|c| is_self_signed(c));
        chain.extend(intermediates);
        self.know_roots(&roots).await?;
        Ok(SignedChain(chain))
    }

    /// The body of a sign request: the CSR, the identity's names, and a
    /// TTL that fits the window with Vault's backdate.
    fn sign_request(&self, csr: &ValidatedCsr, leaf: &LeafProfile) -> Result<Value, VaultError> {
        let mut csr_pem = String::new();
        meshca_provider::pem::encode_block("CERTIFICATE REQUEST", csr.der(), &mut csr_pem);
        let identity = leaf.identity();
        let ttl = ttl_for(leaf.lifetime(), self.backdate()).map_err(VaultError::Config)?;
        let ips: Vec<String> = leaf
            .ip_addresses()
            .iter()
            .map(ToString::to_string)
            .collect();
        Ok(json!({
            "csr": csr_pem,
            "common_name": identity.dns_name(),
            "alt_names": leaf.dns_names().join(","),
            "uri_sans": identity.spiffe_id(),
            "ip_sans": ips.join(","),
            "ttl": format!("{}s", ttl.as_secs()),
            "format": "pem",
        }))
    }

    /// A root that appeared since the anchors were read (rotation in
    /// Vault) must be known before the leaf is checked against them.
    async fn know_roots(&self, roots: &[CertificateDer<'static>]) -> Result<(), VaultError> {
        let known = self
            .anchors
            .read()
            .await
            .as_ref()
            .map(|(_, a)| a.clone())
            .unwrap_or_default();
        if roots.iter().any(|r| !known.contains(r)) {
            tracing::info!(
                "Vault signed under a root meshca has not seen yet; re-reading the trust anchors"
            );
            self.refresh_anchors().await?;
        }
        Ok(())
    }

    /// The cached anchors, re-read when older than the refresh interval. If
    /// Vault cannot be read, the last known anchors stay in use: the bundle
    /// must never shrink because Vault is down.
    pub(crate) async fn anchors(&self) -> Result<Vec<CertificateDer<'static>>, VaultError> {
        if let Some((at, anchors)) = self.anchors.read().await.as_ref() {
            if at.elapsed() < self.refresh {
                return Ok(anchors.clone());
            }
        }
        match self.refresh_anchors().await {
            Ok(a) => Ok(a),
            Err(e) => match self.anchors.read().await.as_ref() {
                Some((_, anchors)) => {
                    tracing::warn!(error = %e, "failed to re-read the trust anchors from Vault; keeping the last known");
                    Ok(anchors.clone())
                }
                None => Err(e),
            },
        }
    }

    /// Read every issuer of the mount and keep the self-signed ones.
    pub(crate) async fn refresh_anchors(&self) -> Result<Vec<CertificateDer<'static>>, VaultError> {
        let listed = self
            .client
            .call(
                Method::GET,
                &format!("{}/issuers?list=true", self.mount),
                None,
            )
            .await;
        let certs = match listed {
            Ok(bytes) => self.issuers(&json(&bytes, "issuers")?).await?,
            // Engines without the issuers API: the default chain.
            Err(VaultError::NotFound(_)) => {
                let bytes = self
                    .client
                    .call(Method::GET, &format!("{}/ca_chain", self.mount), None)
                    .await?;
                pem_certs(&String::from_utf8_lossy(&bytes))?
            }
            Err(e) => return Err(e),
        };
        let mut anchors: Vec<CertificateDer<'static>> = Vec::new();
        for c in certs {
            if is_self_signed(&c) && !anchors.contains(&c) {
                anchors.push(c);
            }
        }
        if anchors.is_empty() {
            return Err(VaultError::Config(format!(
                "the PKI mount {} has no root CA; generate or import one",
                self.mount
            )));
        }
        *self.anchors.write().await = Some((Instant::now(), anchors.clone()));
        Ok(anchors)
    }

    /// Every certificate of the issuers `listed` names: each issuer's own
    /// and its chain.
    async fn issuers(&self, listed: &Value) -> Result<Vec<CertificateDer<'static>>, VaultError> {
        let ids = listed
            .pointer("/data/keys")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str);
        let mut certs = Vec::new();
        for id in ids {
            let bytes = self
                .client
                .call(
                    Method::GET,
                    &format!("{}/issuer/{id}/json", self.mount),
                    None,
                )
                .await?;
            let v = json(&bytes, "issuer")?;
            if let Some(cert) = v.pointer("/data/certificate").and_then(Value::as_str) {
                certs.extend(pem_certs(cert)?);
            }
            if let Some(chain) = v.pointer("/data/ca_chain").and_then(Value::as_array) {
                for pem in chain.iter().filter_map(Value::as_str) {
                    certs.extend(pem_certs(pem)?);
                }
            }
        }
        Ok(certs)
    }
}

/// The leaf's chain and its issuers, from a sign answer.
fn signed(
    answer: &Value,
) -> Result<(Vec<CertificateDer<'static>>, Vec<CertificateDer<'static>>), VaultError> {
    let data = answer
        .get("data")
        .ok_or_else(|| VaultError::Protocol("sign answer without data".into()))?;
    let certificate = data
        .get("certificate")
        .and_then(Value::as_str)
        .ok_or_else(|| VaultError::Protocol("sign answer without certificate".into()))?;
    let chain = pem_certs(certificate)?;
    if chain.is_empty() {
        return Err(VaultError::Protocol(
            "sign answer with an empty certificate".into(),
        ));
    }
    let mut issuers = Vec::new();
    if let Some(ca_chain) = data.get("ca_chain").and_then(Value::as_array) {
        for pem in ca_chain.iter().filter_map(Value::as_str) {
            issuers.extend(pem_certs(pem)?);
        }
    } else if let Some(issuing) = data.get("issuing_ca").and_then(Value::as_str) {
        issuers.extend(pem_certs(issuing)?);
    }
    Ok((chain, issuers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ttl_leaves_room_for_vaults_backdate_and_an_unknown_one_is_not_guessed() {
        let hour = Duration::from_secs(3600);
        assert_eq!(
            ttl_for(hour, Some(Duration::from_secs(30))),
            Ok(Duration::from_secs(3570))
        );
        assert_eq!(ttl_for(hour, Some(Duration::ZERO)), Ok(hour));
        assert_eq!(ttl_for(hour, None), Ok(hour));
        let e = ttl_for(hour, Some(hour)).expect_err("nothing left");
        assert!(e.contains("not_before_duration"), "{e}");
    }
}
