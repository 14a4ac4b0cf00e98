use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::revocation::{CrlRequest, Revocation, SignedCrl};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use webpki::{anchor_from_trusted_cert, EndEntityCert, KeyUsage};
use x509_parser::asn1_rs;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::{
    Capabilities, Health, Identity, LeafProfile, PostQuantum, Provider, ProviderError,
    ProviderKind, SignatureCheck, SignedChain, ValidatedCsr,
};

/// How far a backend's clock may put NotBefore in the future before meshca
/// refuses the result. (The window itself gets no slack: its bounds are
/// exact.)
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

/// The one gate every provider's output passes.
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

    /// See [`Provider::credential_expiry`].
    pub fn credential_expiry(&self) -> Option<i64> {
        self.inner.credential_expiry()
    }

    /// See [`Provider::capabilities`].
    pub fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
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
        let capabilities = self.inner.capabilities();
        // A backend that signs only what a CSR names gets a leaf named as
        // the CSR is: the identity's names, or its SPIFFE ID alone.
        let spiffe_id_only;
        let leaf = match capabilities.names_from_profile {
            true => leaf,
            false => {
                spiffe_id_only = leaf.clone().spiffe_id_only();
                match csr.names_exactly(&spiffe_id_only) {
                    true => &spiffe_id_only,
                    false => leaf,
                }
            }
        };
        if !capabilities.names_from_profile && !csr.names_exactly(leaf) {
            return Err(ProviderError::UnsupportedRequest(format!(
                "the {} provider signs only the names a CSR carries: the CSR must name exactly DNS:{} and URI:{}, or the URI alone (GET /v1/identity tells them){}",
                self.inner.kind(),
                leaf.identity().dns_name(),
                leaf.identity().spiffe_id(),
                capabilities.hint.map(|h| format!(", or {h}")).unwrap_or_default()
            )));
        }
        if let (true, PostQuantum::Cannot(why)) = (
            csr.key_algorithm().is_post_quantum(),
            capabilities.post_quantum,
        ) {
            return Err(ProviderError::UnsupportedRequest(format!(
                "the {} provider cannot sign a certificate for an {} key: {why}; ask with a classical key (ecdsa-p256)",
                self.inner.kind(),
                csr.key_algorithm()
            )));
        }
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

    /// See [`Provider::revocation`].
    pub fn revocation(&self) -> Revocation {
        self.inner.revocation()
    }

    /// The backend's CRLs over `request`.
    ///
    /// # Errors
    /// As the backend's; a backend that cannot revoke is not asked.
    pub async fn revocation_lists(
        &self,
        request: &CrlRequest,
    ) -> Result<Vec<SignedCrl>, ProviderError> {
        match self.inner.revocation() {
            Revocation::SignsCrls => self.inner.revocation_lists(request).await,
            Revocation::Cannot(why) => Err(ProviderError::Misconfigured(format!(
                "the {} provider cannot revoke certificates: {why}",
                self.inner.kind()
            ))),
        }
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
    check_validity(not_before, not_after, leaf, now)?;

    match signatures {
        SignatureCheck::Full => verify_chain(leaf_der, &chain[1..], anchors, now)?,
        SignatureCheck::LocalSigner => check_issuer_linkage(&cert, &chain[1..], anchors)?,
    }

    let mut serial = cert.raw_serial();
    while serial.len() > 1 && serial[0] == 0 {
        serial = &serial[1..];
    }
    let serial = base16ct::lower::encode_string(serial);

    Ok(Issued {
        identity: csr.identity().clone(),
        serial,
        not_before,
        not_after,
        provider,
        chain,
    })
}

/// The leaf is valid now (give or take a backend's clock) and its whole
/// window, NotAfter − NotBefore, lies within the profile's bounds: a
/// relying party that bounds lifetimes (kube-apiserver, for pod
/// certificates) counts the backdate too.
fn check_validity(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    leaf: &LeafProfile,
    now: OffsetDateTime,
) -> Result<(), String> {
    if not_after <= now {
        return Err(format!("the leaf expired at {not_after}"));
    }
    if not_before > now + VALIDITY_SLACK {
        return Err(format!("the leaf is not valid before {not_before}"));
    }
    let window = not_after - not_before;
    if window > leaf.ceiling() {
        return Err(format!(
            "the leaf is valid for {}s ({not_before} to {not_after}), beyond the longest lifetime meshca hands out here ({}s)",
            window.whole_seconds(),
            leaf.ceiling().as_secs()
        ));
    }
    if window < leaf.floor() {
        return Err(format!(
            "the leaf is valid for {}s ({not_before} to {not_after}), shorter than the {}s this certificate must last",
            window.whole_seconds(),
            leaf.floor().as_secs()
        ));
    }
    Ok(())
}

fn check_names(cert: &X509Certificate<'_>, leaf: &LeafProfile) -> Result<(), String> {
    let want = leaf.san_set();

    let mut got = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            got.insert(match name {
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                GeneralName::URI(u) => format!("URI:{u}"),
                GeneralName::IPAddress(b) => match crate::csr::ip_from_bytes(b) {
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
    // webpki reads an anchor's subject without parsing its extensions, as
    // the Name's contents (no SEQUENCE header).
    let (_, top) = asn1_rs::Any::from_der(&issuer)
        .map_err(|e| format!("the chain's top issuer name does not parse: {e}"))?;
    let ends_at_anchor = anchors.iter().any(|der| {
        anchor_from_trusted_cert(der).is_ok_and(|anchor| anchor.subject.as_ref() == top.data)
    });
    if ends_at_anchor {
        Ok(())
    } else {
        Err("the chain does not end at a trust anchor".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrustDomain;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa,
        Issuer as RcgenIssuer, KeyPair, SanType,
    };

    struct Ca {
        cert: CertificateDer<'static>,
        issuer: RcgenIssuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("ca").der().clone();
        Ca {
            cert,
            issuer: RcgenIssuer::new(params, key),
        }
    }

    fn identity() -> Identity {
        Identity::new(TrustDomain::new("cluster.local").expect("td"), "ns", "sa").expect("id")
    }

    fn csr(key: &KeyPair) -> ValidatedCsr {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        let der = p.serialize_request(key).expect("csr");
        ValidatedCsr::new(der.der(), &identity()).expect("valid csr")
    }

    /// A leaf as a well-behaved backend would return it; `edit` breaks it.
    fn leaf(
        ca: &Ca,
        key: &KeyPair,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> CertificateDer<'static> {
        let id = identity();
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![
            SanType::DnsName(id.dns_name().try_into().expect("dns")),
            SanType::URI(id.spiffe_id().try_into().expect("uri")),
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.is_ca = IsCa::ExplicitNoCa;
        let now = OffsetDateTime::now_utc();
        // A one-hour window, backdated one minute.
        p.not_before = now - Duration::from_secs(60);
        p.not_after = now + Duration::from_secs(3540);
        edit(&mut p);
        p.signed_by(key, &ca.issuer).expect("sign").der().clone()
    }

    fn run(
        chain: Vec<CertificateDer<'static>>,
        csr: &ValidatedCsr,
        anchors: &[CertificateDer<'static>],
        mode: SignatureCheck,
    ) -> Result<Issued, String> {
        let profile = LeafProfile::workload(identity(), Duration::from_secs(3600));
        check(
            chain,
            csr,
            &profile,
            anchors,
            OffsetDateTime::now_utc(),
            mode,
            ProviderKind::Vault,
        )
    }

    /// Check a leaf `edit`ed from a good one, signed by `signer`, for the
    /// CSR of `key`, against `anchor`; return the refusal.
    fn refusal(
        signer: &Ca,
        anchor: &Ca,
        key: &KeyPair,
        subject_key: &KeyPair,
        mode: SignatureCheck,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> String {
        run(
            vec![leaf(signer, subject_key, edit)],
            &csr(key),
            std::slice::from_ref(&anchor.cert),
            mode,
        )
        .expect_err("refused")
    }

    #[test]
    fn a_correct_leaf_passes_and_its_expiry_is_read_from_the_certificate() {
        let ca = ca("root");
        let key = KeyPair::generate().expect("key");
        let issued = run(
            vec![leaf(&ca, &key, |p| {
                p.not_after = OffsetDateTime::now_utc() + Duration::from_secs(600)
            })],
            &csr(&key),
            std::slice::from_ref(&ca.cert),
            SignatureCheck::Full,
        )
        .expect("accepted");
        let left = issued.not_after() - OffsetDateTime::now_utc();
        assert!(left.whole_seconds() <= 600 && left.whole_seconds() > 590);
    }

    #[test]
    fn a_leaf_with_other_names_is_refused() {
        let ca = ca("root");
        let key = KeyPair::generate().expect("key");
        for edit in [
            (|p: &mut CertificateParams| {
                p.subject_alt_names.push(SanType::DnsName(
                    "evil.example.com".try_into().expect("dns"),
                ))
            }) as fn(&mut CertificateParams),
            |p| {
                p.subject_alt_names.pop();
            },
            |p| p.subject_alt_names = vec![],
        ] {
            let e = refusal(&ca, &ca, &key, &key, SignatureCheck::Full, edit);
            assert!(e.contains("names"), "{e}");
        }
    }

    #[test]
    fn a_ca_leaf_is_refused() {
        let ca = ca("root");
        let key = KeyPair::generate().expect("key");
        let e = refusal(&ca, &ca, &key, &key, SignatureCheck::Full, |p| {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
        });
        assert!(e.contains("CA"), "{e}");
    }

    #[test]
    fn a_leaf_for_another_key_is_refused() {
        let ca = ca("root");
        let key = KeyPair::generate().expect("key");
        let other = KeyPair::generate().expect("key");
        let e = refusal(&ca, &ca, &key, &other, SignatureCheck::Full, |_| {});
        assert!(e.contains("public key"), "{e}");
    }

    #[test]
    fn a_leaf_from_another_ca_is_refused_in_both_modes() {
        let ca1 = ca("root");
        let ca2 = ca("other root");
        let key = KeyPair::generate().expect("key");
        for mode in [SignatureCheck::Full, SignatureCheck::LocalSigner] {
            let e = refusal(&ca2, &ca1, &key, &key, mode, |_| {});
            assert!(e.contains("anchor"), "{mode:?}: {e}");
        }
    }

    #[test]
    fn a_forged_leaf_naming_the_right_issuer_fails_the_full_check() {
        // Same subject as the real root, different key: only a signature
        // check tells them apart.
        let real = ca("root");
        let forger = ca("root");
        let key = KeyPair::generate().expect("key");
        let e = refusal(&forger, &real, &key, &key, SignatureCheck::Full, |_| {});
        assert!(e.contains("chain"), "{e}");
    }

    #[test]
    fn lifetimes_outside_the_request_are_refused() {
        let ca = ca("root");
        let key = KeyPair::generate().expect("key");
        let now = OffsetDateTime::now_utc();
        for (edit, needle) in [
            (
                Box::new(move |p: &mut CertificateParams| {
                    p.not_after = now + Duration::from_secs(48 * 3600)
                }) as Box<dyn FnOnce(&mut CertificateParams)>,
                "beyond",
            ),
            (
                Box::new(move |p: &mut CertificateParams| {
                    p.not_before = now - Duration::from_secs(7200);
                    p.not_after = now - Duration::from_secs(60);
                }),
                "expired",
            ),
            (
                Box::new(move |p: &mut CertificateParams| {
                    p.not_before = now + Duration::from_secs(3600)
                }),
                "not valid before",
            ),
        ] {
            let e = refusal(&ca, &ca, &key, &key, SignatureCheck::Full, edit);
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn the_whole_window_counts_against_the_bounds_backdate_included() {
        let ca = ca("root");
        let key = KeyPair::generate().expect("key");
        let csr = csr(&key);
        let now = OffsetDateTime::now_utc();
        let profile = LeafProfile::workload(identity(), Duration::from_secs(3600))
            .with_floor(Duration::from_secs(1800));
        let window = |backdate: u64, lifetime: u64| {
            let chain = vec![leaf(&ca, &key, move |p| {
                p.not_before = now - Duration::from_secs(backdate);
                p.not_after = p.not_before + Duration::from_secs(lifetime);
            })];
            check(
                chain,
                &csr,
                &profile,
                std::slice::from_ref(&ca.cert),
                now,
                SignatureCheck::Full,
                ProviderKind::Tresor,
            )
        };
        assert!(window(60, 3600).is_ok(), "exactly the ceiling");
        assert!(window(60, 1800).is_ok(), "exactly the floor");
        let e = window(60, 3601).expect_err("one second over");
        assert!(e.contains("3601s") && e.contains("3600s"), "{e}");
        // NotAfter is within the hour from now, but a 30 s backdate on top
        // of a full hour makes the window too long all the same.
        let e = window(30, 3630).expect_err("backdate on top");
        assert!(e.contains("beyond"), "{e}");
        let e = window(60, 1799).expect_err("under the floor");
        assert!(e.contains("shorter than the 1800s"), "{e}");
    }

    #[test]
    fn a_leaf_without_both_usages_is_refused() {
        let ca = ca("root");
        let key = KeyPair::generate().expect("key");
        let e = refusal(&ca, &ca, &key, &key, SignatureCheck::Full, |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]
        });
        assert!(e.contains("usage"), "{e}");
    }

    #[test]
    fn an_empty_chain_is_refused() {
        let ca = ca("root");
        let key = KeyPair::generate().expect("key");
        assert!(run(vec![], &csr(&key), &[ca.cert], SignatureCheck::Full).is_err());
    }
}
