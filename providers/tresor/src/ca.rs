use std::sync::Arc;
use std::time::Duration;

use meshca_provider::crypto::custody::{finish_certificate, CustodyKey};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use crate::key::{load_private_key_pem, CaKey, RootKeyAlgorithm};
use crate::TresorError;

/// A CA certificate together with the key that signs under it.
///
/// Built only by generating one or by loading a pair whose key was checked to
/// match the certificate, so any `CaCertificate` can sign.
pub struct CaCertificate {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, CaKey>,
    subject: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    last_crl: crate::crl::LastCrl,
}

impl std::fmt::Debug for CaCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaCertificate")
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CaCertificate {
    /// Generate a self-signed root valid for `validity`.
    ///
    /// # Errors
    /// Key generation or signing failed.
    pub fn generate_root(
        algorithm: RootKeyAlgorithm,
        validity: Duration,
        common_name: &str,
    ) -> Result<Self, TresorError> {
        let key = algorithm.generate()?;
        let params = ca_params(common_name, validity, None);
        let cert = params.self_signed(&key)?;
        Ok(Self::from_parts(cert.der().clone(), params, key))
    }

    /// Load an operator's CA from PEM text, refusing a key that is not the
    /// certificate's, a certificate that is not a CA, or one that expired.
    ///
    /// # Errors
    /// [`TresorError::Certificate`], [`TresorError::Key`] or
    /// [`TresorError::KeyMismatch`].
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TresorError> {
        let der = CertificateDer::from_pem_slice(cert_pem)
            .map_err(|e| TresorError::Certificate(format!("no PEM certificate found: {e}")))?;
        let key = load_private_key_pem(key_pem)?;
        Self::checked(der, key)
    }

    /// `der` with `key`, once the key is the certificate's, the
    /// certificate a CA, and not expired.
    fn checked(der: CertificateDer<'_>, key: CaKey) -> Result<Self, TresorError> {
        let (_, cert) =
            X509Certificate::from_der(&der).map_err(|e| TresorError::Certificate(e.to_string()))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(TresorError::KeyMismatch);
        }
        match cert.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            _ => {
                return Err(TresorError::Certificate(
                    "the certificate is not a CA (basicConstraints CA:TRUE missing)".into(),
                ))
            }
        }
        let not_before = cert.validity().not_before.to_datetime();
        let not_after = cert.validity().not_after.to_datetime();
        if not_after <= OffsetDateTime::now_utc() {
            return Err(TresorError::Certificate(format!(
                "the CA certificate expired at {not_after}"
            )));
        }
        let subject = cert.subject().to_string();
        let issuer = Issuer::from_ca_cert_der(&der, key)?;
        Ok(Self {
            der: der.into_owned(),
            issuer,
            subject,
            not_before,
            not_after,
            last_crl: crate::crl::LastCrl::default(),
        })
    }

    /// Generate a self-signed root valid for `validity` whose key is held
    /// in custody: the custodian signs the root, and the signature is
    /// checked under the key before the root is used.
    ///
    /// # Errors
    /// The custodian did not sign, or its signature did not verify.
    pub async fn generate_root_in(
        key: Arc<dyn CustodyKey>,
        validity: Duration,
        common_name: &str,
    ) -> Result<Self, TresorError> {
        let key = CaKey::Custody(key);
        let params = ca_params(common_name, validity, None);
        let unsigned = params.self_signed(&key)?;
        let der = finish(&key, unsigned.der()).await?;
        Ok(Self::from_parts(der, params, key))
    }

    /// A root certificate brought back from storage, whose key is held in
    /// custody: refused when the key is not the certificate's, the
    /// certificate is not a CA, or it expired.
    ///
    /// # Errors
    /// [`TresorError::Certificate`] or [`TresorError::KeyMismatch`].
    pub fn from_custody(cert_pem: &[u8], key: Arc<dyn CustodyKey>) -> Result<Self, TresorError> {
        let der = CertificateDer::from_pem_slice(cert_pem)
            .map_err(|e| TresorError::Certificate(format!("no PEM certificate found: {e}")))?;
        let (_, cert) =
            X509Certificate::from_der(&der).map_err(|e| TresorError::Certificate(e.to_string()))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key() {
            return Err(TresorError::Certificate(format!(
                "the root certificate kept for the key {} in {} custody is not of that key: it belongs to another key (a changed key name or custodian); move the kept certificate away to make a new root, which the rollout brings in beside the old one",
                key.name(),
                key.backend()
            )));
        }
        Self::checked(der, CaKey::Custody(key))
    }

    /// Have this CA sign a new intermediate CA (path length 0) with a fresh
    /// key of the same family, valid for `validity` but never beyond this
    /// CA. A CA whose key is in custody has its custodian sign it, checked.
    ///
    /// # Errors
    /// Key generation or signing failed.
    pub async fn issue_intermediate(&self, validity: Duration) -> Result<Self, TresorError> {
        let key = RootKeyAlgorithm::like(self.issuer.key()).generate()?;
        let mut params = ca_params("meshca intermediate CA", validity, Some(0));
        params.not_after = params.not_after.min(self.not_after);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        let der = self.finish(cert.der()).await?;
        Ok(Self::from_parts(der, params, key))
    }

    /// A certificate this CA's builder signed, as it is to be used: for a
    /// key in custody, the custodian's checked signature in place of the
    /// empty one; otherwise the certificate as it is.
    ///
    /// # Errors
    /// [`TresorError::Custody`].
    pub async fn finish(
        &self,
        der: &CertificateDer<'_>,
    ) -> Result<CertificateDer<'static>, TresorError> {
        finish(self.issuer.key(), der).await
    }

    /// Whether this CA's key is held in custody.
    pub fn in_custody(&self) -> bool {
        self.issuer.key().custody().is_some()
    }

    fn from_parts(der: CertificateDer<'static>, params: CertificateParams, key: CaKey) -> Self {
        let subject = params
            .distinguished_name
            .get(&DnType::CommonName)
            .map(|cn| format!("CN={}", dn_value(cn)))
            .unwrap_or_default();
        let (not_before, not_after) = (params.not_before, params.not_after);
        Self {
            der,
            issuer: Issuer::new(params, key),
            subject,
            not_before,
            not_after,
            last_crl: crate::crl::LastCrl::default(),
        }
    }

    /// The certificate.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The subject, for logs.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Start of validity.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// When the certificate expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The certificate as PEM.
    pub fn cert_pem(&self) -> String {
        let mut out = String::new();
        meshca_provider::pem::encode_block("CERTIFICATE", &self.der, &mut out);
        out
    }

    /// The private key as PKCS#8 PEM, zeroized when dropped. Only for
    /// writing to the CA's own 0600 storage.
    ///
    /// # Errors
    /// The key could not be encoded.
    pub fn key_pem(&self) -> Result<Zeroizing<String>, TresorError> {
        self.issuer.key().serialize_pem()
    }

    /// Whether its key is post-quantum (ML-DSA).
    pub fn is_post_quantum(&self) -> bool {
        matches!(self.issuer.key(), CaKey::MlDsa(_))
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, CaKey> {
        &self.issuer
    }

    pub(crate) fn last_crl(&self) -> &crate::crl::LastCrl {
        &self.last_crl
    }
}

/// `der` signed by `key`'s custodian when `key` is in custody.
async fn finish(
    key: &CaKey,
    der: &CertificateDer<'_>,
) -> Result<CertificateDer<'static>, TresorError> {
    match key.custody() {
        Some(custody) => Ok(finish_certificate(der, custody).await?),
        None => Ok(der.clone().into_owned()),
    }
}

fn dn_value(v: &rcgen::DnValue) -> String {
    match v {
        rcgen::DnValue::Utf8String(s) => s.clone(),
        rcgen::DnValue::PrintableString(s) => s.as_str().to_owned(),
        other => format!("{other:?}"),
    }
}

fn ca_params(common_name: &str, validity: Duration, path_len: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "meshca");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - meshca_provider::CLOCK_SKEW_ALLOWANCE;
    params.not_after = now + validity;
    params.serial_number = Some(crate::leaf::random_serial());
    params
}
