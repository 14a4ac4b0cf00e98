//! Clients that behave as attackers do, for the listener abuse tests: many
//! HTTP/2 streams over many connections, bodies that never end or end far
//! too late, streams reset as soon as opened; and the daemon's memory as
//! the kernel counts it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
pub use h2;

use h2::client::SendRequest;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

/// The resident set of process `pid`, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS")
}

/// An HTTP/2 connection over TLS to `127.0.0.1:port`, dialled as
/// `server_name` and trusting `bundle_pem`; the connection is driven by
/// a task of its own.
pub async fn h2_connect(
    port: u16,
    server_name: &str,
    bundle_pem: &str,
) -> Result<SendRequest<Bytes>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (send, connection) = h2::client::Builder::new()
        // The client's own window: answers are small.
        .initial_window_size(1 << 20)
        .handshake(tls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(send)
}

/// A request head: `POST path`, as gRPC (`grpc`) or JSON, with
/// `authorization` when given.
pub fn post(path: &str, grpc: bool, authorization: Option<&str>) -> http::Request<()> {
    let mut request = http::Request::post(format!("https://localhost{path}"));
    request = if grpc {
        request
            .header("content-type", "application/grpc")
            .header("te", "trailers")
    } else {
        request.header("content-type", "application/json")
    };
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.body(()).expect("a request head")
}

/// How the server ended a stream the client opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// It answered with this HTTP status, and this `grpc-status` (from the
    /// head or the trailers) when it sent one.
    Answered {
        /// The HTTP status.
        status: u16,
        /// The gRPC status code.
        grpc_status: Option<String>,
    },
    /// It reset the stream or closed the connection without an answer.
    Reset(String),
}

impl Ended {
    /// The gRPC status, or the HTTP status as text.
    pub fn code(&self) -> String {
        match self {
            Self::Answered {
                grpc_status: Some(g),
                ..
            } => format!("grpc-{g}"),
            Self::Answered { status, .. } => status.to_string(),
            Self::Reset(why) => format!("reset: {why}"),
        }
    }
}

/// Open a stream with `head` and send `body` in `chunk`-byte pieces, as
/// flow control allows, never ending it; then wait (at most `within`) for
/// the server to end the stream. Returns how it ended, after how long,
/// and how many body bytes the server let through.
pub async fn send_unfinished(
    send: &mut SendRequest<Bytes>,
    head: http::Request<()>,
    body: Bytes,
    within: Duration,
) -> (Ended, Duration, usize) {
    let started = Instant::now();
    let ready = match send.clone().ready().await {
        Ok(r) => r,
        Err(e) => return (Ended::Reset(e.to_string()), started.elapsed(), 0),
    };
    let mut ready = ready;
    let (response, mut stream) = match ready.send_request(head, false) {
        Ok(pair) => pair,
        Err(e) => return (Ended::Reset(e.to_string()), started.elapsed(), 0),
    };
    let mut sent = 0usize;
    let mut rest = body;
    let pushing = async {
        while !rest.is_empty() {
            stream.reserve_capacity(rest.len().min(16 * 1024));
            match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(Ok(n)) if n > 0 => {
                    let piece = rest.split_to(n.min(rest.len()));
                    sent += piece.len();
                    if stream.send_data(piece, false).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    };
    // Push the body while the server lets it; then (everything sent, or
    // the stream refused) hold the stream open, waiting for the answer.
    let answered = async {
        let mut response = std::pin::pin!(response);
        tokio::select! {
            () = pushing => {}
            r = response.as_mut() => return r,
        }
        response.await
    };
    let ended = match tokio::time::timeout(within, answered).await {
        Err(_) => {
            return (
                Ended::Reset("not ended in time".into()),
                started.elapsed(),
                sent,
            )
        }
        Ok(Err(e)) => Ended::Reset(e.to_string()),
        Ok(Ok(response)) => ended_with(response).await,
    };
    (ended, started.elapsed(), sent)
}

/// The status of `response`, and its `grpc-status` from the head or the
/// trailers.
async fn ended_with(response: http::Response<h2::RecvStream>) -> Ended {
    let status = response.status().as_u16();
    let head_status = grpc_status(response.headers());
    let mut body = response.into_body();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = match body.trailers().await {
        Ok(Some(t)) => grpc_status(&t),
        _ => None,
    };
    Ended::Answered {
        status,
        grpc_status: head_status.or(trailers),
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A gRPC message frame's prefix: uncompressed, `len` bytes to follow.
pub fn grpc_prefix(len: u32) -> [u8; 5] {
    let l = len.to_be_bytes();
    [0, l[0], l[1], l[2], l[3]]
}

/// Percentile `p` (0..=100) of `samples`, which it sorts.
pub fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    let index = (samples.len() * p / 100).min(samples.len() - 1);
    samples[index]
}

/// Serve `router` over HTTPS on a free loopback port with `chain` and
/// `key` (PKCS#8 DER), until the test ends; HTTP/1.1 and HTTP/2. For
/// peers that misbehave on purpose.
pub async fn https_server(
    router: axum::Router,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
) -> u16 {
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    tower::ServiceExt::oneshot(router.clone(), req)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    port
}

/// Serve `router` over plain HTTP on a free loopback port.
pub async fn http_server(router: axum::Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    port
}
