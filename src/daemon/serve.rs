//! The listeners: the signing API (with the features' routes), the health
//! port, and each listener a feature asked for. Every address is bound
//! before any accepts, so a daemon that cannot listen somewhere fails to
//! start instead of serving half its surface.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::DaemonError;
use crate::api::{self, ApiState, Readiness};
use crate::bundle::PublishStatus;
use crate::config::Config;
use crate::feature::{Context, ListenerTls, Plug};
use crate::listener::{self, HandshakeLabels, Handshakes, Limits};
use crate::metrics::Metrics;
use crate::supervisor::Spawner;

/// Bind and serve every listener; returns where the signing API and the
/// health port listen.
pub(super) async fn serve(
    config: &Config,
    ctx: Context<'_>,
    plug: Plug,
    (publish, failed_tasks): (PublishStatus, watch::Receiver<Vec<&'static str>>),
    spawner: &Spawner,
) -> Result<(SocketAddr, SocketAddr), DaemonError> {
    let counts = handshake_counts(&ctx.core.metrics);
    let (api_listener, api_addr) = bind(config.listen).await?;
    let (health_listener, metrics_addr) = bind(config.metrics_listen).await?;
    let mut features = Vec::with_capacity(plug.listeners.len());
    for wanted in plug.listeners {
        let (bound, addr) = bind(wanted.addr).await?;
        let tls = match wanted.tls {
            ListenerTls::Serving => ctx.serving.clone(),
            ListenerTls::Own(tls) => tls,
        };
        features.push((wanted.name, bound, addr, tls, wanted.router));
    }
    for (name, bound, addr, tls, router) in features {
        let tls = (tls, Handshakes::new(name, counts.clone()));
        spawner.spawn_child(name, |token| {
            listener::serve(bound, Some(tls), router, Limits::api(), token)
        });
        tracing::info!(%addr, listener = name, "serving");
    }
    let readiness = Readiness {
        probes: ctx.probes,
        publish,
        failed_tasks,
        metrics: ctx.core.metrics.clone(),
        features: plug.ready,
    };
    let state = Arc::new(ApiState::new(
        ctx.issuer,
        ctx.auth,
        ctx.max_body_bytes,
        ctx.rollout,
        ctx.spiffe,
    ));
    let serving = (ctx.serving, Handshakes::new("api-server", counts));
    let routes = plug.routes;
    spawner.spawn_child("api-server", |token| {
        listener::serve(
            api_listener,
            Some(serving),
            api::router(state, routes),
            Limits::api(),
            token,
        )
    });
    spawner.spawn_child("health-server", |token| {
        listener::serve(
            health_listener,
            None,
            api::health_router(readiness),
            Limits::health(),
            token,
        )
    });
    tracing::info!(%api_addr, %metrics_addr, "meshca is serving");
    Ok((api_addr, metrics_addr))
}

/// `meshca_tls_handshakes_total`, shared by every TLS listener.
fn handshake_counts(metrics: &Metrics) -> Family<HandshakeLabels, Counter> {
    metrics.register(
        "tls_handshakes",
        "TLS handshakes completed, by listener and negotiated key exchange group (X25519MLKEM768 is the hybrid post-quantum one)",
        Family::default(),
    )
}

/// Bind `addr`; the address actually bound (port 0 picks one).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), DaemonError> {
    let failed = |source| DaemonError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(failed)?;
    let local = listener.local_addr().map_err(failed)?;
    Ok((listener, local))
}
