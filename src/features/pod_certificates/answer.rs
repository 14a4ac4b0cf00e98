//! What meshca answers a PodCertificateRequest, as pure functions: whether
//! to sign and for whom, how a signing result becomes a status, and the
//! status object itself.
//!
//! kubelet treats `Denied` and `Failed` as final, so only a request meshca
//! will never sign gets one; a backend that may recover is retried instead.

use std::time::Duration;

use k8s_openapi::api::certificates::v1::{PodCertificateRequest, PodCertificateRequestStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use meshca_provider::{CsrError, Identity, TrustDomain};
use time::OffsetDateTime;

use super::config::{SignerName, MIN_LIFETIME};
use crate::issuer::{Code, IssuedCertificate, LifetimeBounds, Lifetimes, Refusal, Verdict};

/// What the API server sets when `maxExpirationSeconds` is omitted.
const DEFAULT_MAX_EXPIRATION: Duration = Duration::from_secs(86_400);
/// How far from the API server's clock it accepts `status.notBefore`.
const NOT_BEFORE_TOLERANCE: Duration = Duration::from_secs(300);
/// The API server wants `beginRefreshAt` at least this far from either end
/// of the validity.
const REFRESH_MARGIN: Duration = Duration::from_secs(600);
/// The longest condition message the API server stores.
const MAX_CONDITION_MESSAGE: usize = 32 * 1024;
/// The largest `status.certificateChain` the API server stores.
const MAX_CHAIN_BYTES: usize = 100 * 1024;

/// The key types kubelet offers that meshca certifies.
pub const SUPPORTED_KEY_TYPES: &str = "ECDSAP256, ECDSAP384, ED25519, RSA3072 and RSA4096";

/// A final answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A certificate for the pod.
    Issued {
        /// PEM, leaf first, then intermediates.
        chain_pem: String,
        /// The leaf's NotBefore.
        not_before: OffsetDateTime,
        /// The leaf's NotAfter.
        not_after: OffsetDateTime,
        /// When kubelet should start renewing.
        begin_refresh_at: OffsetDateTime,
    },
    /// meshca will not sign this request.
    Denied {
        /// `UnsupportedKeyType` and the like.
        reason: &'static str,
        /// For the pod's author.
        message: String,
    },
    /// meshca cannot sign this request.
    Failed {
        /// Why, in one word.
        reason: &'static str,
        /// The provider's or the CSR's message.
        message: String,
    },
}

impl Answer {
    /// Its message, for a refusal (empty for a certificate).
    pub fn message(&self) -> &str {
        match self {
            Self::Issued { .. } => "",
            Self::Denied { message, .. } | Self::Failed { message, .. } => message,
        }
    }

    /// Which condition it sets, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Issued { .. } => "Issued",
            Self::Denied { .. } => "Denied",
            Self::Failed { .. } => "Failed",
        }
    }
}

/// What to do with a request before any signing.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Not meshca's, or already answered.
    Skip,
    /// Answer without signing: the request itself is malformed.
    Refuse(Answer),
    /// Sign the stub CSR for `identity`, within `bounds`.
    Sign {
        /// From the PCR's namespace and ServiceAccount.
        identity: Identity,
        /// At least an hour, at most `maxExpirationSeconds` and
        /// `certificates.max_ttl`.
        bounds: LifetimeBounds,
    },
}

/// Whether the request already carries a final condition.
pub fn is_answered(pcr: &PodCertificateRequest) -> bool {
    pcr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter().any(|c| {
                matches!(c.type_.as_str(), "Issued" | "Denied" | "Failed") && c.status == "True"
            })
        })
}

/// The bounds of a pod certificate's validity window: at most what the pod
/// asked for and `max_ttl`, at least the hour the API server requires
/// (`certificates.max_ttl` under an hour is refused at load).
pub fn bounds(max_expiration_seconds: Option<i32>, lifetimes: &Lifetimes) -> LifetimeBounds {
    let asked = max_expiration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(DEFAULT_MAX_EXPIRATION, Duration::from_secs);
    lifetimes.between(MIN_LIFETIME, asked.max(MIN_LIFETIME))
}

/// Decide what to do with `pcr`. The identity comes from the request's
/// namespace and `spec.serviceAccountName` only: the API server has checked
/// both against the pod.
pub fn decide(
    pcr: &PodCertificateRequest,
    signer: &SignerName,
    trust_domain: &TrustDomain,
    lifetimes: &Lifetimes,
) -> Next {
    let spec = &pcr.spec;
    if spec.signer_name != signer.as_str() || is_answered(pcr) {
        return Next::Skip;
    }
    if let Some(keys) = spec
        .unverified_user_annotations
        .as_ref()
        .filter(|a| !a.is_empty())
    {
        let names: Vec<&str> = keys.keys().map(String::as_str).collect();
        return Next::Refuse(Answer::Denied {
            reason: "UnsupportedAnnotation",
            message: format!(
                "meshca recognises no unverifiedUserAnnotations; remove {}",
                names.join(", ")
            ),
        });
    }
    let namespace = pcr.metadata.namespace.as_deref().unwrap_or_default();
    match Identity::new(trust_domain.clone(), namespace, &spec.service_account_name) {
        Ok(identity) => Next::Sign {
            identity,
            bounds: bounds(spec.max_expiration_seconds, lifetimes),
        },
        Err(e) => Next::Refuse(Answer::Failed {
            reason: "InvalidIdentity",
            message: e.to_string(),
        }),
    }
}

/// The issuer's verdict as an answer, or `Err(after)` to try again later:
/// kubelet takes `Denied` and `Failed` as final, so a refusal the issuer
/// classes as worth a wait is never one. `max_expiration` is the request's
/// `spec.maxExpirationSeconds`, `now` the time of the status write.
pub fn after_signing(
    verdict: Result<Box<IssuedCertificate>, Refusal>,
    max_expiration: Option<i32>,
    now: OffsetDateTime,
) -> Result<Answer, Duration> {
    let refusal = match verdict {
        Ok(issued) => return Ok(issued_answer(&issued, max_expiration, now)),
        Err(refusal) => refusal,
    };
    if let Some(after) = refusal.retry_after() {
        return Err(after);
    }
    let message = crate::report::error_chain(&refusal);
    let (denied, reason) = match (&refusal, refusal.code()) {
        (Refusal::Csr(CsrError::UnsupportedKey(detail)), _) => {
            return Ok(Answer::Denied {
                reason: "UnsupportedKeyType",
                message: format!("meshca signs {SUPPORTED_KEY_TYPES} keys; this one is {detail}"),
            })
        }
        (Refusal::Csr(_), _) => (false, "InvalidStubCSR"),
        (_, Code::IdentityDenied) => (true, "IdentityDenied"),
        (_, Code::ProviderDenied) => (true, "ProviderDenied"),
        (Refusal::Provider(_), Code::InvalidCsr) => (false, "ProviderCannotSign"),
        (Refusal::DenyList(_), _) => (false, "DenyListUnreadable"),
        _ => (false, "ProviderFailed"),
    };
    Ok(if denied {
        Answer::Denied { reason, message }
    } else {
        Answer::Failed { reason, message }
    })
}

/// The Issued answer for `issued`, or Failed when the certificate is one
/// the API server would refuse to store: the answer is checked against
/// kube-apiserver's rules for a PodCertificateRequest's status before it is
/// written, so meshca never sends a status that cannot be accepted.
fn issued_answer(
    issued: &IssuedCertificate,
    max_expiration: Option<i32>,
    now: OffsetDateTime,
) -> Answer {
    let cert = &issued.issued;
    let (not_before, not_after) = (cert.not_before(), cert.not_after());
    let answer = Answer::Issued {
        chain_pem: meshca_provider::pem::encode_certificates(cert.chain()),
        not_before,
        not_after,
        begin_refresh_at: begin_refresh_at(not_before, not_after, now),
    };
    match acceptable(&answer, max_expiration, now) {
        Ok(()) => answer,
        Err(message) => Answer::Failed {
            reason: "CertificateNotAcceptable",
            message,
        },
    }
}

/// When kubelet should start renewing: meshca's usual point (two thirds
/// of what remains), kept at least ten minutes from either end as the API
/// server requires.
pub fn begin_refresh_at(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> OffsetDateTime {
    let earliest = not_before + REFRESH_MARGIN;
    let latest = not_after - REFRESH_MARGIN;
    crate::renewal::renew_after(not_before, not_after, now)
        .min(latest)
        .max(earliest)
}

/// Whether kube-apiserver would accept `answer` as the status of a request
/// with `max_expiration`, written at `now`; why not otherwise. (The
/// validity window is also held to these bounds by the signing gate; this
/// is the last word before the write.)
pub fn acceptable(
    answer: &Answer,
    max_expiration: Option<i32>,
    now: OffsetDateTime,
) -> Result<(), String> {
    let Answer::Issued {
        chain_pem,
        not_before,
        not_after,
        begin_refresh_at,
    } = answer
    else {
        return Ok(());
    };
    let window = *not_after - *not_before;
    let most = max_expiration
        .and_then(|s| u64::try_from(s).ok())
        .map_or(DEFAULT_MAX_EXPIRATION, Duration::from_secs);
    if window > most || window < MIN_LIFETIME {
        return Err(format!(
            "the certificate is valid for {}s, outside the {}s to {}s (maxExpirationSeconds) the API server accepts",
            window.whole_seconds(),
            MIN_LIFETIME.as_secs(),
            most.as_secs()
        ));
    }
    if (*not_before - now).abs() >= NOT_BEFORE_TOLERANCE {
        return Err(format!(
            "the certificate's NotBefore ({not_before}) is more than {}s from now; the provider backdates it too far (a Vault role's not_before_duration?)",
            NOT_BEFORE_TOLERANCE.as_secs()
        ));
    }
    if *begin_refresh_at < *not_before + REFRESH_MARGIN
        || *begin_refresh_at > *not_after - REFRESH_MARGIN
    {
        return Err(format!(
            "beginRefreshAt {begin_refresh_at} is not ten minutes inside {not_before} to {not_after}"
        ));
    }
    if chain_pem.len() > MAX_CHAIN_BYTES {
        return Err(format!(
            "the certificate chain is {} bytes, over the {MAX_CHAIN_BYTES} the API server stores",
            chain_pem.len()
        ));
    }
    Ok(())
}

/// The status that carries `answer`, in one write.
pub fn status(
    answer: &Answer,
    generation: Option<i64>,
    now: OffsetDateTime,
) -> PodCertificateRequestStatus {
    let condition = |type_: &str, reason: &str, message: String| Condition {
        type_: type_.to_owned(),
        status: "True".to_owned(),
        reason: reason.to_owned(),
        message: crate::cluster::truncated(&message, MAX_CONDITION_MESSAGE),
        last_transition_time: time_of(now),
        observed_generation: generation,
    };
    match answer {
        Answer::Issued {
            chain_pem,
            not_before,
            not_after,
            begin_refresh_at,
        } => PodCertificateRequestStatus {
            certificate_chain: Some(chain_pem.clone()),
            not_before: Some(time_of(*not_before)),
            not_after: Some(time_of(*not_after)),
            begin_refresh_at: Some(time_of(*begin_refresh_at)),
            conditions: Some(vec![condition(
                "Issued",
                "Issued",
                format!("issued by meshca, valid until {not_after}"),
            )]),
        },
        Answer::Denied { reason, message } => PodCertificateRequestStatus {
            conditions: Some(vec![condition("Denied", reason, message.clone())]),
            ..PodCertificateRequestStatus::default()
        },
        Answer::Failed { reason, message } => PodCertificateRequestStatus {
            conditions: Some(vec![condition("Failed", reason, message.clone())]),
            ..PodCertificateRequestStatus::default()
        },
    }
}

/// Kubernetes times are whole seconds; the leaf's are too.
fn time_of(t: OffsetDateTime) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_second(t.unix_timestamp())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

#[cfg(test)]
mod tests;
