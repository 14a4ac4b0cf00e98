//! The SPIFFE Workload API, served by the agent on a Unix socket, so that a
//! workload using any SPIFFE library (go-spiffe, py-spiffe, java-spiffe,
//! Envoy's SDS bridge) gets its X509-SVID and bundle without reading files.
//!
//! The agent publishes every certificate and bundle it receives; each open
//! `FetchX509SVID` / `FetchX509Bundles` stream has its own receiver, sends
//! the current state as soon as there is one and then every change. A
//! client that stops reading holds up nobody but itself. The JWT profile
//! is in [`jwt`]; it answers `Unimplemented` when the server has JWT-SVIDs
//! disabled.

mod authority;
mod jwt;
mod socket;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::svid::Svid;
use super::{AgentError, Held};

pub(crate) use jwt::Tokens;
pub(crate) use socket::ALLOWED_MODES;

#[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
mod proto {
    tonic::include_proto!("_");
}

use proto::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};

/// The metadata every Workload API call must carry: it proves the caller
/// meant to talk to a Workload API (a browser tricked into a request cannot
/// set it).
const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Where and how the agent serves the Workload API.
#[derive(Clone, Debug)]
pub struct WorkloadApiConfig {
    /// The Unix socket, e.g. `/run/meshca/agent.sock`.
    pub socket: PathBuf,
    /// 0600 (the agent's user only) or 0660 (and its group).
    pub mode: u32,
}

/// What the streams serve.
#[derive(Clone)]
enum Served {
    /// No certificate yet: calls wait.
    Pending,
    Ready(Arc<Svid>),
    /// The provider's certificate breaks the X509-SVID rules; calls fail
    /// with this reason instead of handing out an SVID clients reject.
    Unusable(Arc<str>),
}

/// The agent's handle on the server: what it publishes, every open stream
/// receives.
pub(super) struct Publisher {
    state: watch::Sender<Served>,
}

impl Publisher {
    /// Serve `held` from now on (checked against the X509-SVID rules).
    pub(super) fn publish(&self, held: &Held) {
        let served = match Svid::from_pem(
            &held.identity,
            &held.chain_pem,
            &held.key_pem,
            &held.bundle_pem,
            &held.federated,
            held.crl_pem.as_deref(),
        ) {
            Ok(svid) => Served::Ready(Arc::new(svid)),
            Err(e) => {
                tracing::error!(error = %e, "cannot serve this certificate over the Workload API");
                Served::Unusable(e.to_string().into())
            }
        };
        self.state.send_replace(served);
    }
}

impl WorkloadApiConfig {
    /// Bind the socket now (so setup errors surface before any work) and
    /// return the publisher and the server task, which runs until
    /// `shutdown` and the publisher's drop, then removes the socket.
    pub(super) async fn build(
        &self,
        tokens: Arc<Tokens>,
        shutdown: CancellationToken,
    ) -> Result<(Publisher, impl Future<Output = Result<(), AgentError>>), AgentError> {
        let (path, mode) = (self.socket.clone(), self.mode);
        let (listener, bound) = tokio::task::spawn_blocking(move || socket::bind(&path, mode))
            .await
            .map_err(|e| {
                AgentError::Setup(format!(
                    "binding the Workload API socket was interrupted: {e}"
                ))
            })??;
        let (state, receiver) = watch::channel(Served::Pending);
        let service = SpiffeWorkloadApiServer::new(Service {
            state: receiver,
            tokens: Some(tokens),
        });
        let socket = self.socket.clone();
        let task = async move {
            tracing::info!(socket = %socket.display(), "serving the SPIFFE Workload API");
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(connections(listener), shutdown.cancelled_owned())
                .await;
            drop(bound);
            served.map_err(AgentError::WorkloadApi)
        };
        Ok((Publisher { state }, task))
    }
}

/// Accepted connections, each behind the [`authority`] shim. Accept
/// errors (out of file descriptors, say) are logged and retried, never
/// fatal.
fn connections(listener: UnixListener) -> impl Stream<Item = std::io::Result<DuplexStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((socket, _)) => return Some((Ok(shim(socket)), listener)),
                Err(e) => {
                    tracing::warn!(error = %e, "failed to accept a Workload API connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// The server's end of one client connection, fed through the shim.
fn shim(socket: UnixStream) -> DuplexStream {
    const BUFFER: usize = 64 * 1024;
    let (server_end, shim_end) = tokio::io::duplex(BUFFER);
    let (from_client, mut to_client) = socket.into_split();
    let (mut from_server, to_server) = tokio::io::split(shim_end);
    tokio::spawn(async move {
        let requests = authority::forward_requests(from_client, to_server);
        let responses = async {
            let copied = tokio::io::copy(&mut from_server, &mut to_client).await;
            let _ = to_client.shutdown().await;
            copied
        };
        let (requests, responses) = tokio::join!(requests, responses);
        if let Err(e) = requests.and(responses.map(|_| ())) {
            tracing::debug!(error = %e, "Workload API connection closed");
        }
    });
    server_end
}

struct Service {
    state: watch::Receiver<Served>,
    /// The JWT profile; `None` answers it `Unimplemented`.
    tokens: Option<Arc<Tokens>>,
}

impl Service {
    fn tokens(&self) -> Result<&Tokens, Status> {
        self.tokens.as_deref().ok_or_else(jwt_unimplemented)
    }
}

type Updates<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn require_security_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get(SECURITY_HEADER) {
        Some(v) if v == "true" => Ok(()),
        _ => Err(Status::invalid_argument(format!(
            "security header missing from request: {SECURITY_HEADER}: true"
        ))),
    }
}

/// A stream of `message(svid)` for the current SVID and every later one
/// that `same` does not consider equal to the last sent. It ends after an
/// error, and when the agent stops.
fn updates<T: Send + 'static>(
    mut state: watch::Receiver<Served>,
    same: fn(&Svid, &Svid) -> bool,
    message: fn(&Svid) -> T,
) -> Updates<T> {
    state.mark_changed();
    let stream = futures_util::stream::unfold(Some((state, None)), move |open| async move {
        let (mut state, last): (_, Option<Arc<Svid>>) = open?;
        loop {
            state.changed().await.ok()?;
            let current = state.borrow_and_update().clone();
            match current {
                Served::Pending => {}
                Served::Ready(svid) if last.as_deref().is_some_and(|l| same(l, &svid)) => {}
                Served::Ready(svid) => {
                    return Some((Ok(message(&svid)), Some((state, Some(svid)))))
                }
                Served::Unusable(why) => {
                    return Some((Err(Status::unavailable(why.to_string())), None))
                }
            }
        }
    });
    Box::pin(stream)
}

fn svid_response(svid: &Svid) -> proto::X509svidResponse {
    proto::X509svidResponse {
        svids: vec![proto::X509svid {
            spiffe_id: svid.spiffe_id.clone(),
            x509_svid: svid.chain.clone(),
            x509_svid_key: svid.key.to_vec(),
            bundle: svid.bundle.clone(),
            hint: String::new(),
        }],
        crl: svid.crl.clone(),
        federated_bundles: svid
            .federated
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn bundles_response(svid: &Svid) -> proto::X509BundlesResponse {
    proto::X509BundlesResponse {
        crl: svid.crl.clone(),
        bundles: std::iter::once((svid.trust_domain_id.clone(), svid.bundle.clone()))
            .chain(svid.federated.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect(),
    }
}

fn jwt_unimplemented() -> Status {
    Status::unimplemented("this agent serves X.509-SVIDs only")
}

/// Every change of the JWT keys (this trust domain's or a federated
/// one's), from the first known of this trust domain.
fn jwt_bundle_updates(
    (mut own, federated): jwt::JwtBundleFollowers,
) -> Updates<proto::JwtBundlesResponse> {
    own.mark_changed();
    let stream =
        futures_util::stream::unfold((own, federated), |(mut own, mut federated)| async move {
            loop {
                tokio::select! {
                    changed = own.changed() => changed.ok()?,
                    changed = federated.changed() => changed.ok()?,
                }
                let Some(mine) = own.borrow_and_update().clone() else {
                    continue;
                };
                let peers = federated.borrow_and_update().clone();
                let response = proto::JwtBundlesResponse {
                    bundles: std::iter::once(&mine)
                        .chain(peers.iter())
                        .map(|b| (b.trust_domain_id.clone(), b.jwks.clone()))
                        .collect(),
                };
                return Some((Ok(response), (own, federated)));
            }
        });
    Box::pin(stream)
}

/// JSON as a protobuf `Struct` value (the claims of `ValidateJWTSVID`).
fn proto_value(json: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(proto_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.into_iter().map(|(k, v)| (k, proto_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Service {
    async fn fetch_jwtsvid(
        &self,
        request: Request<proto::JwtsvidRequest>,
    ) -> Result<Response<proto::JwtsvidResponse>, Status> {
        require_security_header(&request)?;
        let request = request.into_inner();
        let minted = self
            .tokens()?
            .fetch(&request.audience, &request.spiffe_id)
            .await?;
        Ok(Response::new(proto::JwtsvidResponse {
            svids: vec![proto::Jwtsvid {
                spiffe_id: minted.spiffe_id,
                svid: minted.token,
                hint: String::new(),
            }],
        }))
    }

    type FetchJWTBundlesStream = Updates<proto::JwtBundlesResponse>;

    async fn fetch_jwt_bundles(
        &self,
        request: Request<proto::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        require_security_header(&request)?;
        Ok(Response::new(jwt_bundle_updates(self.tokens()?.bundles())))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<proto::ValidateJwtsvidRequest>,
    ) -> Result<Response<proto::ValidateJwtsvidResponse>, Status> {
        require_security_header(&request)?;
        let request = request.into_inner();
        let claims = self
            .tokens()?
            .validate(&request.audience, &request.svid)
            .await?;
        let fields = match serde_json::to_value(&claims) {
            Ok(serde_json::Value::Object(o)) => {
                o.into_iter().map(|(k, v)| (k, proto_value(v))).collect()
            }
            _ => Default::default(),
        };
        Ok(Response::new(proto::ValidateJwtsvidResponse {
            spiffe_id: claims.sub,
            claims: Some(prost_types::Struct { fields }),
        }))
    }

    type FetchX509SVIDStream = Updates<proto::X509svidResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<proto::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        require_security_header(&request)?;
        Ok(Response::new(updates(
            self.state.clone(),
            |a, b| a == b,
            svid_response,
        )))
    }

    type FetchX509BundlesStream = Updates<proto::X509BundlesResponse>;

    async fn fetch_x509_bundles(
        &self,
        request: Request<proto::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        require_security_header(&request)?;
        Ok(Response::new(updates(
            self.state.clone(),
            |a, b| {
                a.trust_domain_id == b.trust_domain_id
                    && a.bundle == b.bundle
                    && a.federated == b.federated
                    && a.crl == b.crl
            },
            bundles_response,
        )))
    }
}

#[cfg(test)]
mod tests;
