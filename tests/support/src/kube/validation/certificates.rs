//! `certificates.k8s.io/v1` PodCertificateRequests and ClusterTrustBundles
//! (`pkg/apis/certificates/validation`, KEP-4317): the spec kubelet
//! creates, the status a signer writes, and the trust bundles published.

use serde_json::{json, Value};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{meta, names, text, Errors, FieldError, Write};

/// Defaulted when omitted.
const DEFAULT_MAX_EXPIRATION: i64 = 86_400;
/// `MinMaxExpirationSeconds`.
const MIN_MAX_EXPIRATION: i64 = 3600;
/// `MaxMaxExpirationSeconds` (non-Kubernetes signers).
const MAX_MAX_EXPIRATION: i64 = 91 * 86_400;
/// `KubernetesMaxMaxExpirationSeconds` (`kubernetes.io` signers).
const KUBERNETES_MAX_EXPIRATION: i64 = 86_400;
/// `MaxStubPKCS10RequestSize`.
const STUB_CSR_MAX: usize = 10 * 1024;
/// `MaxCertificateChainSize`.
const CHAIN_MAX: usize = 100 * 1024;
/// `MaxTrustBundleSize`.
const TRUST_BUNDLE_MAX: usize = 1024 * 1024;
const UID_MAX: usize = 128;
/// How far from the server's clock `status.notBefore` may be.
const NOT_BEFORE_SKEW: i64 = 300;
/// How far `beginRefreshAt` stays from either end of the validity.
const REFRESH_MARGIN: i64 = 600;
const TERMINAL: [&str; 3] = ["Issued", "Denied", "Failed"];

/// A PodCertificateRequest written through `write`.
pub(crate) fn pod_certificate_request(
    write: Write,
    old: Option<&Value>,
    new: &mut Value,
    now: OffsetDateTime,
) -> Errors {
    match (write, old) {
        (Write::Create, _) | (_, None) => {
            if new
                .pointer("/spec/maxExpirationSeconds")
                .is_none_or(Value::is_null)
            {
                new["spec"]["maxExpirationSeconds"] = json!(DEFAULT_MAX_EXPIRATION);
            }
            // PrepareForCreate: a request starts without a status.
            if let Some(o) = new.as_object_mut() {
                o.remove("status");
            }
            pcr_spec(new)
        }
        (Write::Update, Some(old)) => {
            if old.get("spec") != new.get("spec") {
                vec![FieldError::immutable("spec")]
            } else {
                Errors::new()
            }
        }
        (Write::Status, Some(old)) => pcr_status(old, new, now),
    }
}

fn pcr_spec(pcr: &Value) -> Errors {
    let mut errors = Errors::new();
    let signer = text(pcr, "/spec/signerName");
    if signer.is_empty() {
        errors.push(FieldError::required("spec.signerName"));
    } else if let Err(e) = names::signer_name(signer) {
        errors.push(FieldError::invalid(
            "spec.signerName",
            format!("{signer:?}: {e}"),
        ));
    }
    errors.extend(user_annotations(
        pcr.pointer("/spec/unverifiedUserAnnotations"),
    ));
    for field in ["podName", "serviceAccountName", "nodeName"] {
        let value = text(pcr, &format!("/spec/{field}"));
        if let Err(e) = names::dns1123_subdomain(value) {
            errors.push(FieldError::invalid(
                format!("spec.{field}"),
                format!("{value:?}: {e}"),
            ));
        }
    }
    for field in ["podUID", "serviceAccountUID", "nodeUID"] {
        let value = text(pcr, &format!("/spec/{field}"));
        if value.is_empty() {
            errors.push(FieldError::invalid(
                format!("spec.{field}"),
                "\"\": must not be empty",
            ));
        } else if value.len() > UID_MAX {
            errors.push(FieldError::too_long(format!("spec.{field}"), UID_MAX));
        }
    }
    let max = pcr
        .pointer("/spec/maxExpirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let top = if signer
        .split('/')
        .next()
        .is_some_and(|d| d == "kubernetes.io" || d.ends_with(".kubernetes.io"))
    {
        KUBERNETES_MAX_EXPIRATION
    } else {
        MAX_MAX_EXPIRATION
    };
    if !(MIN_MAX_EXPIRATION..=top).contains(&max) {
        errors.push(FieldError::invalid(
            "spec.maxExpirationSeconds",
            format!("{max}: must be in the range [{MIN_MAX_EXPIRATION}, {top}]"),
        ));
    }
    if let Err(e) = stub_key(pcr) {
        errors.push(e);
    }
    errors
}

/// `ValidateUserAnnotations`: every key domain-prefixed.
fn user_annotations(annotations: Option<&Value>) -> Errors {
    let field = "spec.unverifiedUserAnnotations";
    let mut errors = meta::annotations(field, annotations);
    for key in annotations
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.keys())
    {
        if !key.contains('/') {
            errors.push(FieldError::invalid(
                field,
                format!("{key:?}: must be a domain-prefixed path"),
            ));
        }
    }
    errors
}

/// The stub CSR's public key (SubjectPublicKeyInfo DER), after the checks
/// the API server makes at admission: it parses, its signature verifies,
/// and its key is one kubelet may use.
fn stub_key(pcr: &Value) -> Result<Vec<u8>, FieldError> {
    use base64::Engine;
    let field = "spec.stubPKCS10Request";
    let der = base64::engine::general_purpose::STANDARD
        .decode(text(pcr, "/spec/stubPKCS10Request"))
        .map_err(|e| FieldError::invalid(field, format!("<value omitted>: not base64: {e}")))?;
    if der.is_empty() {
        return Err(FieldError::required(field));
    }
    if der.len() > STUB_CSR_MAX {
        return Err(FieldError::too_long(field, STUB_CSR_MAX));
    }
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| {
            FieldError::invalid(
                field,
                format!(
                    "<value omitted>: must be a valid PKCS#10 certificate signing request: {e}"
                ),
            )
        })?;
    let spki = &csr.certification_request_info.subject_pki;
    let kind =
        key_kind(spki).map_err(|m| FieldError::invalid(field, format!("<value omitted>: {m}")))?;
    // x509-parser's verification has no P-521: those stub CSRs are
    // admitted unverified (meshca denies the key type anyway).
    if kind != "ECDSAP521" && csr.verify_signature().is_err() {
        return Err(FieldError::invalid(
            field,
            "<value omitted>: the CSR's signature does not verify",
        ));
    }
    Ok(spki.raw.to_vec())
}

/// The kubelet key type of a SubjectPublicKeyInfo, or why it is not one.
fn key_kind(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<&'static str, String> {
    use x509_parser::public_key::PublicKey;
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => match rsa.key_size() {
            3072 => Ok("RSA3072"),
            4096 => Ok("RSA4096"),
            bits => Err(format!(
                "RSA keys must have modulus size 3072 or 4096, not {bits}"
            )),
        },
        Ok(PublicKey::EC(point)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            match (curve.as_deref(), point.key_size()) {
                (Some("1.2.840.10045.3.1.7"), _) => Ok("ECDSAP256"),
                (Some("1.3.132.0.34"), _) => Ok("ECDSAP384"),
                (Some("1.3.132.0.35"), _) => Ok("ECDSAP521"),
                _ => Err("elliptic public keys must use curve P256, P384 or P521".into()),
            }
        }
        _ if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => Ok("ED25519"),
        _ => Err("unknown public key type; supported types are Ed25519, ECDSA, and RSA".into()),
    }
}

/// `ValidatePodCertificateRequestStatusUpdate`, with the spec as stored.
fn pcr_status(old: &Value, new: &Value, now: OffsetDateTime) -> Errors {
    let conditions = conditions(new);
    if !conditions.is_empty() {
        return conditions;
    }
    let (was, is) = (terminal(old), terminal(new));
    let same_status = stripped(old.get("status")) == stripped(new.get("status"));
    match is {
        _ if was.is_some() && !same_status => vec![FieldError::invalid(
            "status",
            "<value omitted>: immutable after PodCertificateRequest is issued, denied, or failed",
        )],
        _ if was.is_some() => Errors::new(),
        Some("Denied" | "Failed") => {
            let mut only = stripped(new.get("status"));
            if let Some(o) = only.as_object_mut() {
                o.retain(|k, _| k == "conditions");
            }
            if only == stripped(new.get("status")) {
                Errors::new()
            } else {
                vec![FieldError::invalid(
                    "status",
                    "<value omitted>: non-condition status fields must be empty when denying or failing the PodCertificateRequest",
                )]
            }
        }
        Some(_) => issued(old, new, now).err().into_iter().collect(),
        None if same_status => Errors::new(),
        None => vec![FieldError::invalid(
            "status",
            "<value omitted>: status is immutable unless transitioning to \"Issued\", \"Denied\", or \"Failed\"",
        )],
    }
}

/// The one terminal condition type of a request, if it has one.
fn terminal(pcr: &Value) -> Option<&str> {
    pcr.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| TERMINAL.contains(&text(c, "/type")) && text(c, "/status") == "True")
        .map(|c| text(c, "/type"))
}

/// The value with nulls and empty objects and lists dropped: semantic
/// equality, as `apiequality.Semantic.DeepEqual` sees unset fields.
fn stripped(v: Option<&Value>) -> Value {
    match v {
        Some(Value::Object(m)) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), stripped(Some(v))))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Some(Value::Array(a)) => Value::Array(a.iter().map(|v| stripped(Some(v))).collect()),
        Some(v) => v.clone(),
        None => Value::Null,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// The condition rules: at most one terminal condition, status True; no
/// other types; `metav1validation.ValidateConditions` for each.
fn conditions(pcr: &Value) -> Errors {
    let mut errors = Errors::new();
    let list = pcr
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut seen = 0;
    for (i, c) in list.iter().enumerate() {
        let at = |f: &str| format!("status.conditions[{i}].{f}");
        let kind = text(c, "/type");
        if !TERMINAL.contains(&kind) {
            errors.push(FieldError::not_supported(at("type"), kind, &TERMINAL));
            continue;
        }
        seen += 1;
        if seen > 1 {
            errors.push(FieldError::invalid(at("type"), format!("{kind:?}: There may be at most one condition with type \"Issued\", \"Denied\", or \"Failed\"")));
        }
        if text(c, "/status") != "True" {
            errors.push(FieldError::not_supported(
                at("status"),
                text(c, "/status"),
                &["True"],
            ));
        }
        errors.extend(condition(c, &at));
    }
    errors
}

/// `ValidateCondition`: a reason as the API requires it, a bounded
/// message, a transition time.
fn condition(c: &Value, at: &dyn Fn(&str) -> String) -> Errors {
    let mut errors = Errors::new();
    let reason = text(c, "/reason");
    let reason_ok = reason.len() <= 1024
        && reason
            .chars()
            .next()
            .is_some_and(|f| f.is_ascii_alphabetic())
        && reason
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "_,:".contains(ch))
        && !reason.ends_with([',', ':']);
    if reason.is_empty() {
        errors.push(FieldError::required(at("reason")));
    } else if !reason_ok {
        errors.push(FieldError::invalid(at("reason"), format!("{reason:?}: a condition reason must start with alphabetic character, optionally followed by a string of alphanumeric characters or '_,:', and must end with an alphanumeric character or '_'")));
    }
    if text(c, "/message").len() > 32_768 {
        errors.push(FieldError::too_long(at("message"), 32_768));
    }
    if rfc3339(text(c, "/lastTransitionTime")).is_none() {
        errors.push(FieldError::required(at("lastTransitionTime")));
    }
    if c.get("observedGeneration")
        .and_then(Value::as_i64)
        .is_some_and(|g| g < 0)
    {
        errors.push(FieldError::invalid(
            at("observedGeneration"),
            "must be greater than or equal to zero",
        ));
    }
    errors
}

fn rfc3339(s: &str) -> Option<i64> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

/// The rules of an Issued status: the chain, the leaf bound to the stub
/// CSR's key, the times equal to the leaf's, the lifetime within
/// `maxExpirationSeconds` and at least an hour, NotBefore near now,
/// `beginRefreshAt` ten minutes inside the validity.
fn issued(old: &Value, new: &Value, now: OffsetDateTime) -> Result<(), FieldError> {
    const CHAIN: &str = "status.certificateChain";
    let chain = text(new, "/status/certificateChain");
    if chain.len() > CHAIN_MAX {
        return Err(FieldError::too_long(CHAIN, CHAIN_MAX));
    }
    let blocks = pem::parse_many(chain)
        .map_err(|e| FieldError::invalid(CHAIN, format!("<value omitted>: {e}")))?;
    let leaf = blocks.first().ok_or_else(|| {
        FieldError::invalid(
            CHAIN,
            "<value omitted>: issued certificate chain must contain at least one certificate",
        )
    })?;
    if blocks.iter().any(|b| b.tag() != "CERTIFICATE") {
        return Err(FieldError::invalid(CHAIN, "<value omitted>: issued certificate chain must consist entirely of CERTIFICATE PEM blocks"));
    }
    let (_, cert) = X509Certificate::from_der(leaf.contents()).map_err(|_| {
        FieldError::invalid(
            CHAIN,
            "<value omitted>: leaf certificate does not parse as valid X.509",
        )
    })?;
    dns_names(&cert)?;
    let key = stub_key(old).map_err(|_| {
        FieldError::invalid(
            "spec.stubPKCS10Request",
            "<value omitted>: must be a valid PKCS#10 certificate signing request",
        )
    })?;
    if cert.public_key().raw != key.as_slice() {
        return Err(FieldError::invalid(
            CHAIN,
            "<value omitted>: leaf certificate was not issued to the requested public key",
        ));
    }
    times(old, new, &cert, now)?;
    for block in &blocks[1..] {
        X509Certificate::from_der(block.contents()).map_err(|_| {
            FieldError::invalid(
                CHAIN,
                "<value omitted>: intermediate certificate does not parse as valid X.509",
            )
        })?;
    }
    Ok(())
}

fn dns_names(cert: &X509Certificate<'_>) -> Result<(), FieldError> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Ok(());
    };
    for name in &san.value.general_names {
        if let GeneralName::DNSName(d) = name {
            if d.is_empty() || d.contains("..") || d.starts_with('.') || d.ends_with('.') {
                return Err(FieldError::invalid(
                    "status.certificateChain",
                    format!("{d:?}: leaf certificate's DNSName is malformed"),
                ));
            }
        }
    }
    Ok(())
}

fn times(
    old: &Value,
    new: &Value,
    cert: &X509Certificate<'_>,
    now: OffsetDateTime,
) -> Result<(), FieldError> {
    let get = |f: &str| rfc3339(text(new, &format!("/status/{f}")));
    let (Some(nb), Some(na), Some(refresh)) =
        (get("notBefore"), get("notAfter"), get("beginRefreshAt"))
    else {
        return Err(FieldError::required(
            "status.notBefore, status.notAfter and status.beginRefreshAt",
        ));
    };
    let validity = cert.validity();
    if nb != validity.not_before.timestamp() {
        return Err(FieldError::invalid(
            "status.notBefore",
            format!("{nb}: must be set to the NotBefore time encoded in the leaf certificate"),
        ));
    }
    if (nb - now.unix_timestamp()).abs() >= NOT_BEFORE_SKEW {
        return Err(FieldError::invalid(
            "status.notBefore",
            format!("{nb}: must be set to within 5 minutes of kube-apiserver's current time"),
        ));
    }
    if na != validity.not_after.timestamp() {
        return Err(FieldError::invalid(
            "status.notAfter",
            format!("{na}: must be set to the NotAfter time encoded in the leaf certificate"),
        ));
    }
    let lifetime = na - nb;
    let max = old
        .pointer("/spec/maxExpirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_MAX_EXPIRATION);
    if lifetime < MIN_MAX_EXPIRATION {
        return Err(FieldError::invalid(
            "status.certificateChain",
            format!("{lifetime}s: leaf certificate lifetime must be >= 1 hour"),
        ));
    }
    if lifetime > max {
        return Err(FieldError::invalid("status.certificateChain", format!("{lifetime}s: leaf certificate lifetime must be <= spec.maxExpirationSeconds ({max})")));
    }
    if refresh < nb + REFRESH_MARGIN {
        return Err(FieldError::invalid(
            "status.beginRefreshAt",
            format!("{refresh}: must be at least 10 minutes after status.notBefore"),
        ));
    }
    if refresh > na - REFRESH_MARGIN {
        return Err(FieldError::invalid(
            "status.beginRefreshAt",
            format!("{refresh}: must be at least 10 minutes before status.notAfter"),
        ));
    }
    Ok(())
}

/// A ClusterTrustBundle created, or updated from `old`.
pub(crate) fn cluster_trust_bundle(old: Option<&Value>, new: &Value) -> Errors {
    let mut errors = Errors::new();
    let signer = text(new, "/spec/signerName");
    let name = text(new, "/metadata/name");
    if let Err(e) = bundle_name(name, signer) {
        errors.push(FieldError::invalid(
            "metadata.name",
            format!("{name:?}: {e}"),
        ));
    }
    if !signer.is_empty() {
        if let Err(e) = names::signer_name(signer) {
            errors.push(FieldError::invalid(
                "spec.signerName",
                format!("{signer:?}: {e}"),
            ));
        }
    }
    let bundle = text(new, "/spec/trustBundle");
    if old.is_none_or(|o| text(o, "/spec/trustBundle") != bundle) {
        errors.extend(trust_bundle(bundle));
    }
    if old.is_some_and(|o| text(o, "/spec/signerName") != signer) {
        errors.push(FieldError::immutable("spec.signerName"));
    }
    errors
}

/// `ValidateClusterTrustBundleName`: a bundle linked to a signer is named
/// `<signer with ':' for '/'>:<DNS subdomain>`; an unlinked one has no ':'.
fn bundle_name(name: &str, signer: &str) -> Result<(), String> {
    if signer.is_empty() {
        if name.contains(':') {
            return Err(
                "ClusterTrustBundle without signer name must not have \":\" in its name".into(),
            );
        }
        return names::dns1123_subdomain(name);
    }
    let prefix = format!("{}:", signer.replace('/', ":"));
    let rest = name.strip_prefix(&prefix).ok_or_else(|| {
        format!("ClusterTrustBundle for signerName {signer} must be named with prefix {prefix}")
    })?;
    names::dns1123_subdomain(rest)
}

/// `validateTrustBundle`: CERTIFICATE blocks without headers, each a CA
/// with valid basic constraints, no duplicates, at least one, 1 MiB.
fn trust_bundle(bundle: &str) -> Errors {
    const FIELD: &str = "spec.trustBundle";
    if bundle.len() > TRUST_BUNDLE_MAX {
        return vec![FieldError::too_long(FIELD, TRUST_BUNDLE_MAX)];
    }
    let blocks = match pem::parse_many(bundle) {
        Ok(b) => b,
        Err(e) => return vec![FieldError::invalid(FIELD, format!("<value omitted>: {e}"))],
    };
    let mut errors = Errors::new();
    for (i, block) in blocks.iter().enumerate() {
        if let Err(m) = anchor(block) {
            errors.push(FieldError::invalid(
                FIELD,
                format!("<value omitted>: entry {i} {m}"),
            ));
        }
    }
    if !errors.is_empty() {
        return errors;
    }
    if blocks.is_empty() {
        errors.push(FieldError::invalid(
            FIELD,
            "<value omitted>: at least one trust anchor must be provided",
        ));
    }
    for (i, block) in blocks.iter().enumerate() {
        let same: Vec<usize> = (0..blocks.len())
            .filter(|j| blocks[*j].contents() == block.contents())
            .collect();
        if same.len() > 1 && same[0] == i {
            errors.push(FieldError::invalid(
                FIELD,
                format!("<value omitted>: duplicate trust anchor (indices {same:?})"),
            ));
        }
    }
    errors
}

fn anchor(block: &pem::Pem) -> Result<(), String> {
    if block.tag() != "CERTIFICATE" {
        return Err(format!("has bad block type: {}", block.tag()));
    }
    if block.headers().iter().next().is_some() {
        return Err("has PEM block headers".into());
    }
    let (_, cert) = X509Certificate::from_der(block.contents())
        .map_err(|_| "does not parse as X.509".to_owned())?;
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => Ok(()),
        Ok(_) => Err("does not have the CA bit set".into()),
        Err(_) => Err("has invalid basic constraints".into()),
    }
}
