//! `istio.v1.auth.IstioCertificateService/CreateCertificate`: authenticate
//! the caller, decide whose certificate it may have, ask the issuer, and
//! render the outcome as a chain or a gRPC status.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::middleware::Next;
use http::HeaderMap;
use meshca_provider::Identity;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prost_types::value::Kind;
use rustls_pki_types::CertificateSigningRequestDer;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::node::NodeAuthorizer;
use super::proto::istio_certificate_service_server::IstioCertificateService;
use super::proto::{IstioCertificateRequest, IstioCertificateResponse};
use crate::auth::{AuthError, Authenticator, Caller};
use crate::issuer::{self, Class, Frontend, IssuedCertificate, Issuer, Refusal, Unasked, Verdict};
use crate::listener::PeerCertificates;

/// The gRPC metadata istio-agent names its cluster with.
const CLUSTER_HEADER: &str = "clusterid";
/// The same, as a key of the request's `metadata` struct.
const CLUSTER_KEY: &str = "ClusterID";
/// ztunnel's key for the identity it asks on a pod's behalf.
const IMPERSONATED_KEY: &str = "ImpersonatedIdentity";

/// Labels of `meshca_istio_impersonations_denied_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ImpersonationLabels {
    /// Why: `untrusted_caller`, `no_node`, `not_on_node`, `foreign_identity`.
    pub reason: &'static str,
}

/// The caller names a cluster this CA does not serve.
#[derive(Debug, thiserror::Error)]
#[error("the request is for cluster {asked:?}, and this CA serves cluster {served:?} (istio_ca.cluster_id)")]
pub struct WrongCluster {
    /// The caller's cluster (its first 64 characters).
    asked: String,
    /// `istio_ca.cluster_id`.
    served: String,
}

/// The issuer's verdict as a gRPC status, decided by its class once: the
/// code says whose move it is, and a refusal worth a wait carries
/// `google.rpc.RetryInfo`. As istiod, a caller of another cluster is not
/// authenticated here (its token is that cluster's to review).
pub fn status(refusal: &dyn Verdict) -> Status {
    let message = crate::report::error_chain(refusal);
    let code = match refusal.class() {
        Class::Invalid => Code::InvalidArgument,
        Class::Unauthenticated => Code::Unauthenticated,
        Class::Forbidden => Code::PermissionDenied,
        Class::Busy => Code::ResourceExhausted,
        Class::Unavailable => Code::Unavailable,
        Class::Rejected | Class::Operator => Code::Internal,
    };
    match refusal.retry_after() {
        Some(after) => {
            Status::with_error_details(code, message, ErrorDetails::with_retry_info(Some(after)))
        }
        None => Status::new(code, message),
    }
}

/// What authenticates a call before its body is read: the credential and
/// the cluster it names in its head; the issuer counts a refusal.
#[derive(Debug)]
pub struct Gate {
    pub(super) auth: Authenticator,
    pub(super) cluster_id: String,
    pub(super) issuer: Issuer,
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
        Err(e) => Err(Unasked::Credential(e)),
    };
    match authenticated {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(unasked) => {
            let refusal = gate.issuer.refuse(Frontend::Istio, unasked);
            tracing::info!(error = %refusal, "Istio certificate request refused");
            status(&refusal).into_http()
        }
    }
}

/// The service, as tonic serves it.
#[derive(Clone, Debug)]
pub struct IstioCa {
    pub(super) issuer: Issuer,
    pub(super) nodes: NodeAuthorizer,
    pub(super) cluster_id: String,
    pub(super) impersonations_denied: Family<ImpersonationLabels, Counter>,
}

#[tonic::async_trait]
impl IstioCertificateService for IstioCa {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let (_, extensions, body) = request.into_parts();
        // Set by `authenticate_first`, which every call passes.
        let Some(caller) = extensions.get::<Caller>() else {
            let unasked = Unasked::Credential(AuthError::Missing);
            return Err(status(&self.issuer.refuse(Frontend::Istio, unasked)));
        };
        match self.create(caller, &body).await {
            Ok(issued) => Ok(Response::new(IstioCertificateResponse {
                cert_chain: cert_chain(&issued),
            })),
            Err(refusal) => {
                tracing::info!(error = %crate::report::error_chain(&refusal), "Istio certificate request refused");
                Err(status(&refusal))
            }
        }
    }
}

impl IstioCa {
    async fn create(
        &self,
        caller: &Caller,
        body: &IstioCertificateRequest,
    ) -> Result<Box<IssuedCertificate>, Refusal> {
        let (identity, csr) = self
            .read(caller, body)
            .await
            .map_err(|unasked| self.issuer.refuse(Frontend::Istio, unasked))?;
        let lifetime = self.issuer.lifetimes().for_request(
            u64::try_from(body.validity_duration)
                .ok()
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
        );
        let request = issuer::Request::workload(Frontend::Istio, &identity, csr.as_ref(), lifetime);
        let issued = self.issuer.issue(request).await?;
        tracing::info!(identity = %identity, caller = %caller.identity, serial = issued.issued.serial(), "issued an Istio certificate");
        Ok(issued)
    }

    /// The identity granted and the CSR, or why the call is refused before
    /// the issuer is asked.
    async fn read(
        &self,
        caller: &Caller,
        body: &IstioCertificateRequest,
    ) -> Result<(Identity, CertificateSigningRequestDer<'static>), Unasked> {
        check_cluster(&self.cluster_id, string_field(body, CLUSTER_KEY))?;
        let identity = self.identity_for(caller, body).await?;
        let csr = meshca_provider::pem::decode_one_csr(&body.csr).map_err(|why| {
            Unasked::MalformedCsr(format!(
                "csr must be exactly one PEM \"CERTIFICATE REQUEST\" block: {why}"
            ))
        })?;
        Ok((identity, csr))
    }

    /// The caller's own identity, or the one a trusted node agent asks for
    /// on behalf of a pod on its node.
    async fn identity_for(
        &self,
        caller: &Caller,
        body: &IstioCertificateRequest,
    ) -> Result<Identity, Unasked> {
        let Some(requested) =
            string_field(body, IMPERSONATED_KEY).filter(|id| *id != caller.identity.spiffe_id())
        else {
            return Ok(caller.identity.clone());
        };
        let decided = self
            .nodes
            .authorize(caller, requested)
            .await
            .map_err(|e| Unasked::Unverifiable(Box::new(e)))?;
        decided.map_err(|denied| {
            self.impersonations_denied
                .get_or_create(&ImpersonationLabels {
                    reason: denied.reason(),
                })
                .inc();
            tracing::warn!(caller = %caller.identity, requested, reason = denied.reason(), "refused a node agent another identity's certificate");
            Unasked::NotPermitted(Box::new(denied))
        })
    }
}

/// The cluster the caller names, in the `clusterid` header istio-agent
/// sends or the request's `ClusterID`, must be this one when named. The
/// refusal repeats at most 64 characters of what was asked, as it is
/// logged.
fn check_cluster(served: &str, asked: Option<&str>) -> Result<(), Unasked> {
    match asked {
        Some(asked) if asked != served => Err(Unasked::Unauthenticated(Box::new(WrongCluster {
            asked: asked.chars().take(64).collect(),
            served: served.to_owned(),
        }))),
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
    use crate::issuer::Busy;
    use meshca_provider::{CsrError, ProviderError};

    /// A gRPC code and the retry delay it carries.
    type Rendered = (Code, Option<Duration>);

    fn code_and_retry(refusal: &dyn Verdict) -> Rendered {
        let status = status(refusal);
        let retry = status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay);
        (status.code(), retry)
    }

    #[test]
    fn each_refusal_has_the_status_that_says_whose_move_it_is() {
        let seven = Duration::from_secs(7);
        let cases: Vec<(Box<dyn Verdict>, Rendered)> = vec![
            (
                Box::new(Refusal::Busy {
                    why: Busy::IdentityRate,
                    after: seven,
                }),
                (Code::ResourceExhausted, Some(seven)),
            ),
            (
                Box::new(Refusal::Provider(ProviderError::Unavailable {
                    message: "sealed".into(),
                    retry_after: seven,
                    source: None,
                })),
                (Code::Unavailable, Some(seven)),
            ),
            (
                Box::new(Unasked::Credential(AuthError::Unavailable("down".into()))),
                (Code::Unavailable, Some(Duration::from_secs(1))),
            ),
            (
                Box::new(Unasked::Credential(AuthError::Missing)),
                (Code::Unauthenticated, None),
            ),
            (
                Box::new(check_cluster("Kubernetes", Some("east")).expect_err("another cluster")),
                (Code::Unauthenticated, None),
            ),
            (
                Box::new(Unasked::NotPermitted(Box::new(
                    super::super::node::Denied::NoNode("x".into()),
                ))),
                (Code::PermissionDenied, None),
            ),
            (
                Box::new(Refusal::Csr(CsrError::BadSignature)),
                (Code::InvalidArgument, None),
            ),
            (
                Box::new(Unasked::MalformedCsr("none found".into())),
                (Code::InvalidArgument, None),
            ),
            (
                Box::new(Refusal::Provider(ProviderError::Denied("role".into()))),
                (Code::PermissionDenied, None),
            ),
            (
                Box::new(Refusal::Provider(ProviderError::Misconfigured(
                    "403".into(),
                ))),
                (Code::Internal, None),
            ),
        ];
        for (refusal, expected) in cases {
            assert_eq!(code_and_retry(refusal.as_ref()), expected, "{refusal}");
        }
    }
}
