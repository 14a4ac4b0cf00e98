//! One accepted connection: the TLS handshake, then HTTP until the client
//! leaves, the connection idles out or the daemon stops.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::body::Deadline;
use super::{Handshakes, Limits, PeerCertificates};

/// One accepted connection.
pub(super) struct Connection {
    pub(super) router: Router,
    pub(super) builder: auto::Builder<TokioExecutor>,
    /// The listener's requests in flight, across its connections.
    pub(super) requests: Arc<Semaphore>,
    pub(super) limits: Limits,
    pub(super) remote: std::net::SocketAddr,
}

impl Connection {
    pub(super) async fn serve_tls(
        self,
        (acceptor, handshakes): (TlsAcceptor, Handshakes),
        stream: tokio::net::TcpStream,
        watcher: Watcher,
    ) {
        let remote = self.remote;
        let handshake = acceptor.accept(stream);
        let tls = match tokio::time::timeout(self.limits.handshake_timeout, handshake).await {
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
        handshakes.record(tls.get_ref().1.negotiated_key_exchange_group());
        let peer = tls.get_ref().1.peer_certificates().map(|c| {
            PeerCertificates(Arc::new(c.iter().map(|c| c.clone().into_owned()).collect()))
        });
        self.serve(tls, peer, watcher).await;
    }

    /// Serve HTTP on `io` until the client leaves, the connection idles
    /// out, or the daemon stops.
    pub(super) async fn serve<T>(self, io: T, peer: Option<PeerCertificates>, watcher: Watcher)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Activity::new();
        let (router, requests, body_timeout) =
            (self.router, self.requests, self.limits.body_timeout);
        let tracked = activity.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let slot = requests.clone().try_acquire_owned().ok();
            let guard = InFlight::enter(&tracked);
            if let Some(peer) = &peer {
                req.extensions_mut().insert(peer.clone());
            }
            let req = req.map(|b| Body::new(Deadline::new(b, body_timeout)));
            let router = router.clone();
            async move {
                let response = match slot {
                    Some(slot) => answer(router, req, slot).await,
                    None => Ok(overloaded(&req)),
                };
                drop(guard);
                response
            }
        });
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let mut conn = std::pin::pin!(watcher.watch(conn));
        let (remote, idle_timeout) = (self.remote, self.limits.idle_timeout);
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
                    if activity.idle_for() > idle_timeout {
                        tracing::debug!(%remote, "closing an idle connection");
                        return;
                    }
                }
            }
        }
    }
}

/// The router's answer, holding the listener's slot until it is given.
async fn answer(
    router: Router,
    req: Request<Body>,
    _slot: OwnedSemaphorePermit,
) -> Result<Response, std::convert::Infallible> {
    router.oneshot(req).await
}

/// The answer to a request beyond [`Limits::max_requests`], given before
/// anything of it is read: `503` with `Retry-After` (the API's JSON error
/// form), or for gRPC `UNAVAILABLE`, which its clients retry.
fn overloaded(req: &Request<Body>) -> Response {
    const MESSAGE: &str = "meshca is serving as many requests as it takes at once; retry shortly";
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let mut response = if grpc {
        let mut r = Response::new(Body::empty());
        let headers = r.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", http::HeaderValue::from_static("14"));
        headers.insert("grpc-message", http::HeaderValue::from_static(MESSAGE));
        r
    } else {
        let body = serde_json::json!({ "error": { "code": "overloaded", "message": MESSAGE } });
        let mut r = Response::new(Body::from(body.to_string()));
        *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        let headers = r.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
        r
    };
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

/// A connection's requests in flight, and when the last one began or
/// ended: the connection is idle when none is in flight and none has
/// moved for a while. Bytes the client sends (pings, window updates,
/// frames of streams it never completes into a request) do not count, so
/// a client cannot keep a connection open by talking without asking.
#[derive(Clone)]
struct Activity {
    start: Instant,
    in_flight: Arc<AtomicUsize>,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            in_flight: Arc::new(AtomicUsize::new(0)),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// How long the connection has had no request in flight (zero while
    /// one is).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Counts a request in flight while alive.
struct InFlight(Activity);

impl InFlight {
    fn enter(activity: &Activity) -> Self {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        activity.touch();
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_idle_only_with_nothing_in_flight() {
        let activity = Activity::new();
        std::thread::sleep(Duration::from_millis(20));
        assert!(activity.idle_for() >= Duration::from_millis(20));
        let guard = InFlight::enter(&activity);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(activity.idle_for(), Duration::ZERO);
        drop(guard);
        assert!(activity.idle_for() < Duration::from_millis(20));
    }

    #[test]
    fn a_request_over_the_limit_is_told_to_retry_in_its_protocol() {
        let json = overloaded(&Request::new(Body::empty()));
        assert_eq!(json.status(), 503);
        assert_eq!(json.headers()[http::header::RETRY_AFTER], "1");
        let mut grpc = Request::new(Body::empty());
        grpc.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc+proto"),
        );
        let grpc = overloaded(&grpc);
        assert_eq!(grpc.status(), 200, "gRPC carries its status in grpc-status");
        assert_eq!(grpc.headers()["grpc-status"], "14");
    }
}
