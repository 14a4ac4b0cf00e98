//! `istio.v1.auth.IstioCertificateService/CreateCertificate`: authenticate
//! the caller, decide whose certificate it may have, ask the issuer, and
//! render the outcome as a chain or a gRPC status.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::middleware::Next;
use http::HeaderMap;
use meshca_provider::Identity;
use prost_types::value::Kind;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::node::{self, Denied, NodeAuthorizer};
use super::proto::istio_certificate_service_server::IstioCertificateService;
use super::proto::{IstioCertificateRequest, IstioCertificateResponse};
use crate::auth::{AuthError, Authenticator, Caller};
use crate::issuer::{self, Busy, Frontend, IssuedCertificate, Issuer, Outcome, Refused};
use crate::listener::PeerCertificates;
use crate::metrics::{ImpersonationLabels, Metrics};

/// The gRPC metadata istio-agent names its cluster with.
const CLUSTER_HEADER: &str = "clusterid";
/// The same, as a key of the request's `metadata` struct.
const CLUSTER_KEY: &str = "ClusterID";
/// ztunnel's key for the identity it asks on a pod's behalf.
const IMPERSONATED_KEY: &str = "ImpersonatedIdentity";

/// Why a call gets no certificate; mapped to a gRPC status once, in
/// [`CallError::status`].
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The caller did not authenticate.
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// The caller names another cluster.
    #[error("the request is for cluster {asked:?}, and this CA serves cluster {served:?} (istio_ca.cluster_id)")]
    WrongCluster {
        /// The caller's cluster.
        asked: String,
        /// `istio_ca.cluster_id`.
        served: String,
    },
    /// A node agent may not have the identity it asked for.
    #[error(transparent)]
    Impersonation(#[from] Denied),
    /// The pods could not be read.
    #[error(transparent)]
    PodsUnavailable(#[from] node::Unavailable),
    /// The `csr` field is not one PEM CSR.
    #[error("csr must be exactly one PEM \"CERTIFICATE REQUEST\" block: {0}")]
    Csr(String),
    /// The issuer did not issue.
    #[error("{}", crate::error_chain(.0))]
    Outcome(Outcome),
}

impl CallError {
    /// The gRPC status: the code says whose move it is, and a retryable
    /// refusal carries `google.rpc.RetryInfo`.
    pub fn status(&self) -> Status {
        let message = self.to_string();
        match self {
            Self::Unauthenticated(AuthError::Unavailable(_)) | Self::PodsUnavailable(_) => {
                retry_after(Code::Unavailable, message, Duration::from_secs(1))
            }
            // As istiod: a caller of another cluster is not authenticated
            // here (its token is that cluster's to review).
            Self::Unauthenticated(_) | Self::WrongCluster { .. } => {
                Status::unauthenticated(message)
            }
            Self::Impersonation(_) => Status::permission_denied(message),
            Self::Csr(_) => Status::invalid_argument(message),
            Self::Outcome(outcome) => outcome_status(outcome, message),
        }
    }
}

fn outcome_status(outcome: &Outcome, message: String) -> Status {
    match outcome {
        Outcome::Refused(Refused::Csr(e)) if e.is_identity_mismatch() => {
            Status::permission_denied(message)
        }
        Outcome::Refused(Refused::IdentityDenied(_) | Refused::ProviderDenied(_)) => {
            Status::permission_denied(message)
        }
        Outcome::Refused(_) => Status::invalid_argument(message),
        Outcome::Retry(retry) => {
            let code = match retry.why {
                Busy::Provider(_) => Code::Unavailable,
                _ => Code::ResourceExhausted,
            };
            retry_after(code, message, retry.after)
        }
        Outcome::Failed(_) => Status::internal(message),
        // Never built: an issued certificate is no error.
        Outcome::Issued(_) => Status::internal("issued"),
    }
}

fn retry_after(code: Code, message: String, after: Duration) -> Status {
    Status::with_error_details(code, message, ErrorDetails::with_retry_info(Some(after)))
}

/// What authenticates a call before its body is read: the credential and
/// the cluster it names in its head.
#[derive(Debug)]
pub struct Gate {
    pub(super) auth: Authenticator,
    pub(super) cluster_id: String,
}

/// Authenticate the caller from the request's head, before tonic reads
/// its body: a call without a valid credential, or for another cluster, is
/// answered at once and nothing it sends is buffered. The caller goes on
/// in the request's extensions.
pub async fn authenticate_first(
    State(gate): State<Arc<Gate>>,
    mut request: axum::extract::Request,
    next: Next,
) -> axum::response::Response {
    let peer = request.extensions().get::<PeerCertificates>();
    let authenticated = match gate.auth.authenticate(request.headers(), peer).await {
        Ok(caller) => check_cluster(
            &gate.cluster_id,
            header_cluster(request.headers()).as_deref(),
        )
        .map(|()| caller),
        Err(e) => Err(CallError::from(e)),
    };
    match authenticated {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => {
            tracing::info!(error = %e, "Istio certificate request refused");
            e.status().into_http()
        }
    }
}

/// The service, as tonic serves it.
#[derive(Clone, Debug)]
pub struct IstioCa {
    pub(super) issuer: Issuer,
    pub(super) nodes: NodeAuthorizer,
    pub(super) cluster_id: String,
    pub(super) metrics: Arc<Metrics>,
}

#[tonic::async_trait]
impl IstioCertificateService for IstioCa {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let (_, extensions, body) = request.into_parts();
        // Set by `authenticate_first`, which every call passes.
        let caller = extensions
            .get::<Caller>()
            .ok_or_else(|| CallError::from(AuthError::Missing).status())?;
        match self.create(caller, &body).await {
            Ok(issued) => Ok(Response::new(IstioCertificateResponse {
                cert_chain: cert_chain(&issued),
            })),
            Err(e) => {
                tracing::info!(error = %e, "Istio certificate request refused");
                Err(e.status())
            }
        }
    }
}

impl IstioCa {
    async fn create(
        &self,
        caller: &Caller,
        body: &IstioCertificateRequest,
    ) -> Result<Box<IssuedCertificate>, CallError> {
        check_cluster(&self.cluster_id, string_field(body, CLUSTER_KEY))?;
        let identity = self.identity_for(caller, body).await?;
        let csr = meshca_provider::pem::decode_one_csr(&body.csr).map_err(CallError::Csr)?;
        let lifetime = self.issuer.lifetimes().for_request(
            u64::try_from(body.validity_duration)
                .ok()
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
        );
        let request = issuer::Request::workload(Frontend::Istio, &identity, csr.as_ref(), lifetime);
        match self.issuer.issue(request).await {
            Outcome::Issued(issued) => {
                tracing::info!(identity = %identity, caller = %caller.identity, serial = issued.issued.serial(), "issued an Istio certificate");
                Ok(issued)
            }
            other => Err(CallError::Outcome(other)),
        }
    }

    /// The caller's own identity, or the one a trusted node agent asks for
    /// on behalf of a pod on its node.
    async fn identity_for(
        &self,
        caller: &Caller,
        body: &IstioCertificateRequest,
    ) -> Result<Identity, CallError> {
        let Some(requested) =
            string_field(body, IMPERSONATED_KEY).filter(|id| *id != caller.identity.spiffe_id())
        else {
            return Ok(caller.identity.clone());
        };
        self.nodes.authorize(caller, requested).await?.map_err(|denied| {
            self.metrics
                .istio_impersonations_denied
                .get_or_create(&ImpersonationLabels { reason: denied.reason() })
                .inc();
            tracing::warn!(caller = %caller.identity, requested, reason = denied.reason(), "refused a node agent another identity's certificate");
            CallError::Impersonation(denied)
        })
    }
}

/// The cluster the caller names, in the `clusterid` header istio-agent
/// sends or the request's `ClusterID`, must be this one when named. The
/// refusal repeats at most 64 characters of what was asked, as it is
/// logged.
fn check_cluster(served: &str, asked: Option<&str>) -> Result<(), CallError> {
    match asked {
        Some(asked) if asked != served => Err(CallError::WrongCluster {
            asked: asked.chars().take(64).collect(),
            served: served.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// The `clusterid` header, when sent.
fn header_cluster(headers: &HeaderMap) -> Option<std::borrow::Cow<'_, str>> {
    headers
        .get(CLUSTER_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
}

/// A string value of the request's `metadata` struct.
fn string_field<'a>(body: &'a IstioCertificateRequest, key: &str) -> Option<&'a str> {
    match body.metadata.as_ref()?.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.as_str()),
        _ => None,
    }
}

/// The chain as Istio's clients read it: the leaf, the intermediates, and
/// last every anchor of the bundle (one PEM text), so that through a root
/// rotation a workload trusts peers under the old root and the new.
fn cert_chain(issued: &IssuedCertificate) -> Vec<String> {
    let anchors = issued.trust_bundle.anchors();
    let mut out: Vec<String> = issued
        .issued
        .chain()
        .iter()
        .filter(|c| !anchors.contains(c))
        .map(|c| meshca_provider::pem::encode_certificates([c]))
        .collect();
    out.push(issued.trust_bundle.pem().to_owned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::{Failure, Retry};
    use meshca_provider::{CsrError, ProviderError};

    fn code_and_retry(error: CallError) -> (Code, Option<Duration>) {
        let status = error.status();
        let retry = status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay);
        (status.code(), retry)
    }

    #[test]
    fn each_outcome_has_the_status_that_says_whose_move_it_is() {
        let retry = |why| {
            CallError::Outcome(Outcome::Retry(Retry {
                after: Duration::from_secs(7),
                why,
            }))
        };
        let cases = [
            (
                retry(Busy::IdentityRate),
                (Code::ResourceExhausted, Some(Duration::from_secs(7))),
            ),
            (
                retry(Busy::Provider(ProviderError::Unavailable {
                    message: "sealed".into(),
                    retry_after: Duration::from_secs(7),
                })),
                (Code::Unavailable, Some(Duration::from_secs(7))),
            ),
            (
                CallError::Unauthenticated(AuthError::Unavailable("down".into())),
                (Code::Unavailable, Some(Duration::from_secs(1))),
            ),
            (
                CallError::Unauthenticated(AuthError::Missing),
                (Code::Unauthenticated, None),
            ),
            (
                CallError::WrongCluster {
                    asked: "east".into(),
                    served: "Kubernetes".into(),
                },
                (Code::Unauthenticated, None),
            ),
            (
                CallError::Impersonation(Denied::NoNode("x".into())),
                (Code::PermissionDenied, None),
            ),
            (
                CallError::Outcome(Outcome::Refused(Refused::Csr(CsrError::BadSignature))),
                (Code::InvalidArgument, None),
            ),
            (
                CallError::Csr("none found".into()),
                (Code::InvalidArgument, None),
            ),
            (
                CallError::Outcome(Outcome::Refused(Refused::ProviderDenied(
                    ProviderError::Denied("role".into()),
                ))),
                (Code::PermissionDenied, None),
            ),
            (
                CallError::Outcome(Outcome::Failed(Failure::Provider(
                    ProviderError::Misconfigured("403".into()),
                ))),
                (Code::Internal, None),
            ),
        ];
        for (error, expected) in cases {
            let what = error.to_string();
            assert_eq!(code_and_retry(error), expected, "{what}");
        }
    }
}
