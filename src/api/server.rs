use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::ServingTls;
use crate::auth::PeerCertificates;

/// Time a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time in-flight requests get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve `router` over TLS on `listener` until `shutdown`, then drain.
///
/// Each connection is handshaken with the TLS configuration current at
/// accept time; the client's certificates, if any, are attached to every
/// request of the connection as [`PeerCertificates`].
pub async fn serve_tls(
    listener: TcpListener,
    tls: ServingTls,
    router: Router,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, remote) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.load_full());
        let router = router.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls_stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
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
            let peer = tls_stream.get_ref().1.peer_certificates().map(|c| {
                PeerCertificates(std::sync::Arc::new(
                    c.iter().map(|c| c.clone().into_owned()).collect(),
                ))
            });
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                if let Some(peer) = &peer {
                    req.extensions_mut().insert(peer.clone());
                }
                router.clone().oneshot(req)
            });
            let conn = builder
                .serve_connection(TokioIo::new(tls_stream), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
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
