use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use webpki::{anchor_from_trusted_cert, EndEntityCert, KeyUsage};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::{
    Health, Identity, LeafProfile, Provider, ProviderError, ProviderKind, SignatureCheck,
    SignedChain, ValidatedCsr,
};

/// How far a backend's clock or rounding may put NotBefore in the future or
/// NotAfter past the requested lifetime before meshca refuses the result.
const VALIDITY_SLACK: Duration = Duration::from_secs(300);

/// A certificate that passed every check: it is for exactly the requested
/// identity, binds the CSR's key, is not a CA, lies within the requested
/// lifetime and chains to the provider's anchors.
///
/// Only [`Checked::sign`] creates one, so anything holding an `Issued` may
/// hand it out.
#[derive(Clone)]
pub struct Issued {
    chain: Vec<CertificateDer<'static>>,
    identity: Identity,
    serial: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    provider: ProviderKind,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("identity", &self.identity)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

impl Issued {
    /// Leaf first, then intermediates (never the anchor).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// Whom it identifies.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The serial number, lower-case hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Start of validity, as written in the certificate.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// End of validity, as written in the certificate (never assumed from
    /// the requested TTL).
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Which backend signed it.
    pub fn provider(&self) -> ProviderKind {
        self.provider
    }
}

/// The one gate every provider's output passes (DESIGN section 2).
///
/// It wraps any [`Provider`]; the daemon only ever talks to providers through
/// it, so a backend bug or a compromised backend cannot hand a workload a
/// certificate for another name, a CA certificate or one outside its trust.
#[derive(Clone)]
pub struct Checked {
    inner: Arc<dyn Provider>,
}

impl fmt::Debug for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checked")
            .field("provider", &self.inner.kind())
            .finish()
    }
}

impl Checked {
    /// Put `inner` behind the checks.
    pub fn new(inner: Arc<dyn Provider>) -> Self {
        Self { inner }
    }

    /// Which backend is behind the checks.
    pub fn kind(&self) -> ProviderKind {
        self.inner.kind()
    }

    /// Sign through the backend, then check the result against `csr` and
    /// `leaf`.
    ///
    /// # Errors
    /// The backend's own error, or [`ProviderError::InvalidResponse`] naming
    /// the first check that failed.
    pub async fn sign(
        &self,
        csr: &ValidatedCsr,
        leaf: &LeafProfile,
    ) -> Result<Issued, ProviderError> {
        let SignedChain(chain) = self.inner.sign(csr, leaf).await?;
        let anchors = self.inner.trust_anchors().await?;
        check(
            chain,
            csr,
            leaf,
            &anchors,
            OffsetDateTime::now_utc(),
            self.inner.signature_check(),
            self.inner.kind(),
        )
        .map_err(ProviderError::InvalidResponse)
    }

    /// The backend's trust anchors.
    ///
    /// # Errors
    /// As the backend's, plus an empty list, which is never a valid answer.
    pub async fn trust_anchors(&self) -> Result<Vec<CertificateDer<'static>>, ProviderError> {
        let anchors = self.inner.trust_anchors().await?;
        if anchors.is_empty() {
            return Err(ProviderError::InvalidResponse(
                "the backend reported no trust anchors".into(),
            ));
        }
        Ok(anchors)
    }

    /// The backend's health.
    pub async fn health(&self) -> Health {
        self.inner.health().await
    }
}

fn check(
    chain: Vec<CertificateDer<'static>>,
    csr: &ValidatedCsr,
    leaf: &LeafProfile,
    anchors: &[CertificateDer<'static>],
    now: OffsetDateTime,
    signatures: SignatureCheck,
    provider: ProviderKind,
) -> Result<Issued, String> {
    let leaf_der = chain.first().ok_or("the chain is empty")?;
    let (_, cert) = X509Certificate::from_der(leaf_der)
        .map_err(|e| format!("failed to parse the leaf: {e}"))?;

    if cert.tbs_certificate.subject_pki.raw != csr.spki_der() {
        return Err("the leaf's public key is not the CSR's".into());
    }
    if let Ok(Some(bc)) = cert.basic_constraints() {
        if bc.value.ca {
            return Err("the leaf is a CA certificate".into());
        }
    }
    check_names(&cert, leaf)?;
    match cert.extended_key_usage() {
        Ok(Some(eku)) if eku.value.server_auth && eku.value.client_auth => {}
        _ => return Err("the leaf lacks extended key usage serverAuth + clientAuth".into()),
    }

    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    if not_after <= now {
        return Err(format!("the leaf expired at {not_after}"));
    }
    if not_before > now + VALIDITY_SLACK {
        return Err(format!("the leaf is not valid before {not_before}"));
    }
    if not_after > now + leaf.ttl() + VALIDITY_SLACK {
        return Err(format!(
            "the leaf is valid until {not_after}, beyond the requested lifetime of {}s",
            leaf.ttl().as_secs()
        ));
    }

    match signatures {
        SignatureCheck::Full => verify_chain(leaf_der, &chain[1..], anchors, now)?,
        SignatureCheck::LocalSigner => check_issuer_linkage(&cert, &chain[1..], anchors)?,
    }

    let mut serial = cert.raw_serial();
    while serial.len() > 1 && serial[0] == 0 {
        serial = &serial[1..];
    }
    let serial = serial.iter().map(|b| format!("{b:02x}")).collect();

    Ok(Issued {
        identity: csr.identity().clone(),
        serial,
        not_before,
        not_after,
        provider,
        chain,
    })
}

fn check_names(cert: &X509Certificate<'_>, leaf: &LeafProfile) -> Result<(), String> {
    let mut want: BTreeSet<String> = leaf
        .dns_names()
        .into_iter()
        .map(|d| format!("DNS:{d}"))
        .collect();
    want.insert(format!("URI:{}", leaf.identity().spiffe_id()));
    want.extend(leaf.ip_addresses().iter().map(|ip| format!("IP:{ip}")));

    let mut got = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            got.insert(match name {
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                GeneralName::URI(u) => format!("URI:{u}"),
                GeneralName::IPAddress(b) => match ip_from_bytes(b) {
                    Some(ip) => format!("IP:{ip}"),
                    None => return Err("the leaf carries a malformed IP SAN".into()),
                },
                other => return Err(format!("the leaf carries an unexpected name {other}")),
            });
        }
    }
    if got != want {
        return Err(format!("the leaf names {got:?}, expected exactly {want:?}"));
    }
    Ok(())
}

fn ip_from_bytes(b: &[u8]) -> Option<std::net::IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'static>],
    anchors: &[CertificateDer<'static>],
    now: OffsetDateTime,
) -> Result<(), String> {
    let anchors = anchors
        .iter()
        .map(|a| anchor_from_trusted_cert(a).map_err(|e| format!("unusable trust anchor: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let ee = EndEntityCert::try_from(leaf).map_err(|e| format!("unusable leaf: {e}"))?;
    let secs = u64::try_from(now.unix_timestamp()).map_err(|_| "clock before 1970")?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        UnixTime::since_unix_epoch(Duration::from_secs(secs)),
        KeyUsage::server_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| format!("the leaf does not chain to the trust anchors: {e}"))
}

/// For in-process signers: the leaf names as issuer the subject of the next
/// certificate in the chain, and the top of the chain is one of the anchors
/// or was issued by one.
fn check_issuer_linkage(
    cert: &X509Certificate<'_>,
    intermediates: &[CertificateDer<'static>],
    anchors: &[CertificateDer<'static>],
) -> Result<(), String> {
    let mut issuer = cert.issuer().as_raw().to_vec();
    for der in intermediates {
        let (_, inter) = X509Certificate::from_der(der)
            .map_err(|e| format!("failed to parse an intermediate: {e}"))?;
        if inter.subject().as_raw() != issuer {
            return Err("the chain is out of order or incomplete".into());
        }
        issuer = inter.issuer().as_raw().to_vec();
    }
    for der in anchors {
        if let Ok((_, anchor)) = X509Certificate::from_der(der) {
            if anchor.subject().as_raw() == issuer {
                return Ok(());
            }
        }
    }
    Err("the chain does not end at a trust anchor".into())
}
