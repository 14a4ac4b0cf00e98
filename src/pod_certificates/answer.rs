//! What meshca answers a PodCertificateRequest, as pure functions: whether
//! to sign and for whom, how a signing result becomes a status, and the
//! status object itself.
//!
//! kubelet treats `Denied` and `Failed` as final, so only a request meshca
//! will never sign gets one; a backend that may recover is retried instead.

use std::time::Duration;

use k8s_openapi::api::certificates::v1::{PodCertificateRequest, PodCertificateRequestStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use meshca_provider::{CsrError, Identity, ProviderKind, TrustDomain};
use time::OffsetDateTime;

use super::config::{SignerName, MIN_LIFETIME};
use crate::issuer::{IssueError, IssuedCertificate};

/// What the API server assumes when `maxExpirationSeconds` is omitted.
const DEFAULT_MAX_EXPIRATION: Duration = Duration::from_secs(86_400);

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
    /// The `result` label of `meshca_certificates_issued_total`.
    pub fn metric_result(&self) -> &'static str {
        match self {
            Self::Issued { .. } => "success",
            Self::Denied { .. } => "denied",
            Self::Failed { .. } => "failed",
        }
    }
}

/// What to do with a request before any signing.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Not meshca's, or already answered.
    Skip,
    /// Answer without signing.
    Answer(Answer),
    /// Sign the stub CSR for `identity`, valid for `ttl`.
    Sign {
        /// From the PCR's namespace and ServiceAccount.
        identity: Identity,
        /// Within `maxExpirationSeconds` and `certificates.max_ttl`.
        ttl: Duration,
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

/// The lifetime of a pod certificate: at most what the pod asked for and
/// `max_ttl`, never under the hour the API server requires.
pub fn lifetime(max_expiration_seconds: Option<i32>, max_ttl: Duration) -> Duration {
    let asked = max_expiration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(DEFAULT_MAX_EXPIRATION, Duration::from_secs);
    asked.min(max_ttl).max(MIN_LIFETIME)
}

/// Decide what to do with `pcr`. The identity comes from the request's
/// namespace and `spec.serviceAccountName` only: the API server has checked
/// both against the pod.
pub fn decide(
    pcr: &PodCertificateRequest,
    signer: &SignerName,
    trust_domain: &TrustDomain,
    provider: ProviderKind,
    max_ttl: Duration,
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
        return Next::Answer(Answer::Denied {
            reason: "UnsupportedAnnotation",
            message: format!(
                "meshca recognises no unverifiedUserAnnotations; remove {}",
                names.join(", ")
            ),
        });
    }
    if provider == ProviderKind::CertManager {
        return Next::Answer(Answer::Failed {
            reason: "ProviderCannotSign",
            message: "the cert-manager provider signs only the names a CSR carries, and kubelet's stub CSR carries none; pod certificates need the tresor or vault provider".into(),
        });
    }
    let namespace = pcr.metadata.namespace.as_deref().unwrap_or_default();
    match Identity::new(trust_domain.clone(), namespace, &spec.service_account_name) {
        Ok(identity) => Next::Sign {
            identity,
            ttl: lifetime(spec.max_expiration_seconds, max_ttl),
        },
        Err(e) => Next::Answer(Answer::Failed {
            reason: "InvalidIdentity",
            message: e.to_string(),
        }),
    }
}

/// A signing result as an answer, or `Err(after)` to try again later.
pub fn after_signing(
    result: Result<IssuedCertificate, IssueError>,
) -> Result<Answer, Option<Duration>> {
    match result {
        Ok(issued) => Ok(issued_answer(&issued)),
        Err(IssueError::Csr(CsrError::UnsupportedKey(detail))) => Ok(Answer::Denied {
            reason: "UnsupportedKeyType",
            message: format!("meshca signs {SUPPORTED_KEY_TYPES} keys; this one is {detail}"),
        }),
        Err(IssueError::Csr(e)) => Ok(Answer::Failed {
            reason: "InvalidStubCSR",
            message: e.to_string(),
        }),
        Err(IssueError::IdentityDenied(identity)) => Ok(Answer::Denied {
            reason: "IdentityDenied",
            message: format!("{identity} is denied any certificate"),
        }),
        Err(IssueError::Provider(e)) if e.is_retryable() => Err(e.retry_after()),
        Err(IssueError::Provider(e)) => Ok(Answer::Failed {
            reason: "ProviderFailed",
            message: e.to_string(),
        }),
        Err(IssueError::DenyList(_)) => Err(None),
    }
}

fn issued_answer(issued: &IssuedCertificate) -> Answer {
    let cert = &issued.issued;
    Answer::Issued {
        chain_pem: meshca_provider::pem::encode_certificates(cert.chain()),
        not_before: cert.not_before(),
        not_after: cert.not_after(),
        begin_refresh_at: issued.renew_after,
    }
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
        message,
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
