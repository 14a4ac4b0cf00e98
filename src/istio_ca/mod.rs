//! Istio's certificate service (`istio.v1.auth.IstioCertificateService`),
//! so that istio-agent (sidecars) and ztunnel (ambient) get their
//! certificates from meshca, whichever provider signs.
//!
//! One more frontend of the [`Issuer`]: it authenticates the caller (a
//! ServiceAccount token reviewed for `istio_ca.token_audiences`, or a
//! client certificate meshca issued), decides whose certificate it may
//! have (its own, or for ztunnel a pod's on its node, see [`node`]), and
//! renders the issuer's outcome as a chain or a gRPC status. Istio's trust
//! distribution, the ConfigMap `istio-ca-root-cert`, is a bundle sink
//! ([`root_cert`]).

pub mod codec;
mod config;
mod istiod;
pub mod node;
pub mod root_cert;
mod service;

pub use config::{IstioCaConfig, IstiodCertificate, RawIstioCa};
use service::IstioCa;

use std::net::SocketAddr;
use std::sync::Arc;

use meshca_provider::TrustDomain;
use tokio::net::TcpListener;

use crate::auth::{Authenticator, TokenReviewer};
use crate::listener::{self, Limits, ServingTls};

use crate::cluster::Cluster;
use crate::issuer::Issuer;
use crate::metrics::Metrics;
use crate::supervisor::Spawner;

#[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
mod proto {
    tonic::include_proto!("istio.v1.auth");
}

use proto::istio_certificate_service_server::IstioCertificateServiceServer;

/// The largest request message: an Istio CSR is a few kilobytes (RSA
/// 4096 with its PEM armour under 2 KiB), its metadata a few names.
const MAX_MESSAGE: usize = 64 * 1024;

/// What the service is built from.
pub struct Deps<'a> {
    /// The issuer every frontend shares.
    pub issuer: Issuer,
    /// The signing API's authenticator: meshca's tokens and client
    /// certificates; ServiceAccount tokens are reviewed for Istio's
    /// audiences instead of the API's.
    pub auth: Authenticator,
    /// The TokenReview cache every frontend shares, with a cluster.
    pub reviewer: Option<Arc<TokenReviewer>>,
    /// The cluster, when meshca runs with one.
    pub cluster: Option<&'a Cluster>,
    /// The serving certificate (its names include `serving_dns_names`).
    pub tls: ServingTls,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The mesh's trust domain.
    pub trust_domain: TrustDomain,
    /// The bundle (for istiod's `ca.crt`).
    pub bundle: crate::bundle::BundleReceiver,
}

/// Bind `config.listen` and serve Istio's certificate service there until
/// the spawner stops; returns the bound address.
///
/// # Errors
/// The listener could not be bound.
pub async fn serve(
    config: &IstioCaConfig,
    deps: Deps<'_>,
    spawner: &Spawner,
) -> Result<SocketAddr, std::io::Error> {
    let auth = match &deps.reviewer {
        Some(reviewer) => deps
            .auth
            .with_kubernetes(reviewer.for_audiences(config.token_audiences.clone())),
        None => deps.auth,
    };
    let gate = Arc::new(service::Gate {
        auth,
        cluster_id: config.cluster_id.clone(),
        issuer: deps.issuer.clone(),
    });
    let service = IstioCa {
        issuer: deps.issuer.clone(),
        nodes: node::NodeAuthorizer::new(
            deps.cluster.map(|c| c.client.clone()),
            config.trusted_node_accounts.clone(),
        ),
        cluster_id: config.cluster_id.clone(),
        metrics: deps.metrics,
    };
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let server = IstioCertificateServiceServer::new(service).max_decoding_message_size(MAX_MESSAGE);
    // The caller is authenticated from the request's head before tonic
    // reads a byte of its body.
    let router = tonic::service::Routes::new(server)
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            gate,
            service::authenticate_first,
        ));
    if let (Some(cluster), Some(istiod)) = (deps.cluster, &config.istiod_certificate) {
        let (client, istiod, leader) = (
            cluster.client.clone(),
            istiod.clone(),
            cluster.leader.clone(),
        );
        let (td, issuer, bundle) = (
            deps.trust_domain.clone(),
            deps.issuer.clone(),
            deps.bundle.clone(),
        );
        spawner.spawn_child("istiod-certificate", |token| {
            istiod::keep(client, istiod, td, issuer, bundle, leader, token)
        });
    }
    let tls = deps.tls;
    spawner.spawn_child("istio-ca-server", |token| {
        listener::serve(listener, Some(tls), router, Limits::api(), token)
    });
    tracing::info!(%addr, cluster_id = %config.cluster_id, "serving Istio's certificate service");
    Ok(addr)
}
