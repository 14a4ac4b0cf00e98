//! The accept loop both listeners share (HTTPS for the signing API, plain
//! HTTP for health and metrics), with the limits that keep a flood or a
//! slow client from taking the process down:
//!
//! - at most [`ConnectionLimits::max_connections`] connections at once per
//!   listener, a share of the process's open-files limit, so one flooded
//!   port cannot starve the other (or the files and outgoing connections
//!   the daemon needs); beyond it, connections wait in the kernel's
//!   backlog;
//! - a TLS handshake deadline, an HTTP/1 header-read timeout (a client
//!   trickling its headers is cut off), HTTP/2 keep-alive pings, and an
//!   idle timeout for connections with no request in flight and no
//!   traffic;
//! - one warning when accepting starts failing (out of file descriptors),
//!   not one per attempt.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::ServingTls;
use crate::auth::PeerCertificates;

/// Time a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time in-flight requests get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head hyper buffers; the router answers heads over
/// [`super::MAX_HEADER_BYTES`] with a JSON 431 before this is reached.
const MAX_HEAD: usize = 256 * 1024;
/// File descriptors kept for everything but client connections: state
/// files, the bundle, outgoing connections to Vault or the API server.
const RESERVED_FDS: u64 = 64;

/// Limits of one listener's connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time a client gets to send a request's headers (HTTP/1).
    pub header_read_timeout: Duration,
    /// Time a connection with no request in flight may stay silent.
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    /// Limits for a listener granted `share` of the open-files limit left
    /// after [`RESERVED_FDS`] (`share` of 4 → a quarter).
    pub fn with_share_of_open_files(numerator: u64, denominator: u64) -> Self {
        let soft = open_files_limit();
        let usable = soft.saturating_sub(RESERVED_FDS).max(16);
        let max = (usable * numerator / denominator).clamp(4, 65_536);
        Self {
            max_connections: usize::try_from(max).unwrap_or(4),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }

    /// The signing API's: three quarters of the usable descriptors.
    pub fn api() -> Self {
        Self::with_share_of_open_files(3, 4)
    }

    /// The health and metrics port's: an eighth, so probes keep working
    /// while the API port is flooded.
    pub fn health() -> Self {
        Self::with_share_of_open_files(1, 8)
    }
}

/// The soft open-files limit, from `/proc/self/limits` (1024 if unknown).
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|soft| soft.parse().ok())
        })
        .unwrap_or(1024)
}

/// Serve `router` on `listener` until `shutdown`, then drain: over TLS
/// with the configuration current at each accept when `tls` is given,
/// otherwise plain HTTP. The client's certificates, if any, are attached
/// to every request of the connection as [`PeerCertificates`].
pub async fn serve(
    listener: TcpListener,
    tls: Option<ServingTls>,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut failing = AcceptFailures::default();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
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
            idle_timeout: limits.idle_timeout,
            remote,
        };
        let acceptor = tls.as_ref().map(|t| TlsAcceptor::from(t.load_full()));
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                Some(acceptor) => connection.serve_tls(acceptor, stream, watcher).await,
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

/// One accepted connection.
struct Connection {
    router: Router,
    builder: auto::Builder<TokioExecutor>,
    idle_timeout: Duration,
    remote: std::net::SocketAddr,
}

impl Connection {
    async fn serve_tls(
        self,
        acceptor: TlsAcceptor,
        stream: tokio::net::TcpStream,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let remote = self.remote;
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "TLS handshake timed out");
                return;
            }
        };
        let peer = tls.get_ref().1.peer_certificates().map(|c| {
            PeerCertificates(Arc::new(c.iter().map(|c| c.clone().into_owned()).collect()))
        });
        self.serve(tls, peer, watcher).await;
    }

    /// Serve HTTP on `io` until the client leaves, the connection idles
    /// out, or the daemon stops.
    async fn serve<T>(
        self,
        io: T,
        peer: Option<PeerCertificates>,
        watcher: hyper_util::server::graceful::Watcher,
    ) where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Activity::new();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let router = self.router;
        let counter = in_flight.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            if let Some(peer) = &peer {
                req.extensions_mut().insert(peer.clone());
            }
            let guard = InFlight::enter(&counter);
            let response = router.clone().oneshot(req);
            async move {
                let r = response.await;
                drop(guard);
                r
            }
        });
        let io = Tracked {
            inner: io,
            activity: activity.clone(),
        };
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let mut conn = std::pin::pin!(watcher.watch(conn));
        let remote = self.remote;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%remote, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = tick.tick() => {
                    if in_flight.load(Ordering::SeqCst) == 0 && activity.idle_for() > self.idle_timeout {
                        tracing::debug!(%remote, "closing an idle connection");
                        return;
                    }
                }
            }
        }
    }
}

/// When a connection last moved a byte.
#[derive(Clone)]
struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Counts a request in flight while alive.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An IO stream that records its activity.
struct Tracked<T> {
    inner: T,
    activity: Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
