//! The one accept loop every listener goes through (the signing API,
//! health and metrics, Istio's certificate service, the bundle endpoint,
//! OIDC), with the limits that keep a flood, a slow client or an
//! unauthenticated one from taking the process down ([`Limits`]):
//!
//! - at most [`Limits::max_connections`] connections at once per listener,
//!   a share of the process's open-files limit, so one flooded port
//!   cannot starve the other (or the files and outgoing connections the
//!   daemon needs); beyond it, connections wait in the kernel's backlog;
//! - at most [`Limits::max_requests`] requests in flight across those
//!   connections, so that memory held by requests has a ceiling whatever
//!   the number of connections; one more is answered at once, unread;
//! - HTTP/2 streams per connection and flow-control windows sized to
//!   messages of kilobytes, so a connection holds little;
//! - deadlines for the TLS handshake, the request head (HTTP/1), the
//!   request body ([`body::Deadline`], from the head, whichever handler
//!   reads it) and idleness: a connection with no request in flight for
//!   [`Limits::idle_timeout`] is closed, whatever else the client sends
//!   (HTTP/2 pings included);
//! - one warning when accepting starts failing (out of file descriptors),
//!   not one per attempt.
//!
//! Frontends authenticate from the request head before they read a body
//! (see `api` and `istio_ca`); these limits bound what a client can hold
//! before that answer, and after it.

mod body;
mod connection;
mod handshakes;
mod limits;

pub use handshakes::{HandshakeLabels, Handshakes};
pub use limits::Limits;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use connection::Connection;

/// A listener's current TLS configuration; swapped whole when the serving
/// certificate is renewed, so new handshakes use the new certificate while
/// established connections carry on.
pub type ServingTls = Arc<ArcSwap<ServerConfig>>;

/// The certificates a client presented on its TLS connection (leaf first),
/// attached to every request of that connection. Not authenticated here:
/// a frontend verifies them (see `auth`).
#[derive(Clone, Debug)]
pub struct PeerCertificates(pub Arc<Vec<CertificateDer<'static>>>);

/// Time in-flight requests get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head hyper buffers for HTTP/1; the API answers heads
/// over its own, smaller limit with a JSON 431 before this is reached.
const MAX_HEAD: usize = 256 * 1024;

/// Serve `router` on `listener` until `shutdown`, then drain: over TLS
/// with the configuration current at each accept when `tls` is given
/// (each handshake counted by its key exchange group), otherwise plain
/// HTTP. The client's certificates, if any, are attached to every request
/// of the connection as [`PeerCertificates`].
pub async fn serve(
    listener: TcpListener,
    tls: Option<(ServingTls, Handshakes)>,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let builder = http_builder(&limits);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let requests = Arc::new(Semaphore::new(limits.max_requests));
    let mut failing = AcceptFailures::default();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, remote) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    failing.recovered();
                    a
                }
                Err(e) => {
                    failing.failed(&e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            router: router.clone(),
            builder: builder.clone(),
            requests: requests.clone(),
            limits,
            remote,
        };
        let acceptor = tls
            .as_ref()
            .map(|(t, counted)| (TlsAcceptor::from(t.load_full()), counted.clone()));
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                Some(accept) => connection.serve_tls(accept, stream, watcher).await,
                None => connection.serve(stream, None, watcher).await,
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections were still open when the drain timeout passed");
    }
}

/// HTTP/1 and HTTP/2 (by ALPN, or by preface on plain HTTP) with
/// `limits`.
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let h2 = limits.http2;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(h2.max_concurrent_streams)
        .initial_stream_window_size(h2.stream_window)
        .initial_connection_window_size(h2.connection_window)
        .max_header_list_size(h2.max_header_list)
        .max_send_buf_size(h2.max_send_buffer)
        .max_pending_accept_reset_streams(h2.max_pending_resets)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

/// Logs the first failed accept of a streak, and the recovery.
#[derive(Default)]
struct AcceptFailures(usize);

impl AcceptFailures {
    fn failed(&mut self, e: &std::io::Error) {
        if self.0 == 0 {
            tracing::warn!(error = %e, "failed to accept a connection; retrying (further failures are logged at debug level)");
        } else {
            tracing::debug!(error = %e, "failed to accept a connection");
        }
        self.0 += 1;
    }

    fn recovered(&mut self) {
        if self.0 > 0 {
            tracing::info!(failures = self.0, "accepting connections again");
            self.0 = 0;
        }
    }
}
