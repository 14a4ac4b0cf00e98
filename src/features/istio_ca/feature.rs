//! Istio's CA as a feature of the daemon: `istio_ca:`, the names it adds
//! to the serving certificate, the `istio-ca-root-cert` sink, the gRPC
//! service on its listener, istiod's Secret, and its metric.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;

use meshca_provider::ServerName;
use prometheus_client::metrics::family::Family;
use tokio::sync::Notify;

use super::proto::istio_certificate_service_server::IstioCertificateServiceServer;
use super::root_cert::RootCertSink;
use super::service::{self, IstioCa};
use super::{istiod, node, IstioCaConfig, RawIstioCa};
use crate::feature::{
    Common, Context, Core, Definition, Feature, FeatureError, Listener, ListenerTls, Plan, Plug,
    Sections, Syntax,
};
use crate::validation::Errors;

/// The largest request message: an Istio CSR is a few kilobytes (RSA
/// 4096 with its PEM armour under 2 KiB), its metadata a few names.
const MAX_MESSAGE: usize = 64 * 1024;

/// The feature's definition: its section and how it reads it.
pub const FEATURE: Definition = Definition {
    sections: &["istio_ca"],
    configure,
    commands: &[],
};

/// Istio's CA, as configured.
#[derive(Debug)]
pub struct IstioCaFeature {
    /// `istio_ca:`.
    pub config: IstioCaConfig,
}

fn configure(
    sections: &Sections<'_>,
    _common: &Common<'_>,
    errors: &mut Errors,
    _warnings: &mut Vec<String>,
) -> Result<Option<Arc<dyn Feature>>, Syntax> {
    let raw: RawIstioCa = sections.get("istio_ca")?;
    Ok(raw
        .validate(errors)
        .map(|config| Arc::new(IstioCaFeature { config }) as Arc<dyn Feature>))
}

#[async_trait::async_trait]
impl Feature for IstioCaFeature {
    fn name(&self) -> &'static str {
        "istio-ca"
    }

    fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        vec![("istio_ca.listen", self.config.listen)]
    }

    fn server_names(&self) -> Vec<ServerName> {
        self.config.serving_dns_names.clone()
    }

    fn plan(&self, common: &Common<'_>) -> Plan {
        let istio = &self.config;
        let mut sinks = Vec::new();
        if common.kubernetes.is_some() {
            let namespaces = istio
                .root_cert_namespaces
                .as_ref()
                .map_or("every namespace".to_owned(), |s| {
                    format!("namespaces matching {s}")
                });
            sinks.push(format!(
                "ConfigMap istio-ca-root-cert (root-cert.pem) in {namespaces}"
            ));
        }
        Plan {
            sinks,
            lines: vec![self.service_line(common)],
        }
    }

    async fn prepare(&self, core: &Core, plug: &mut Plug) -> Result<(), FeatureError> {
        if let Some(cluster) = &core.cluster {
            let sink = RootCertSink::new(
                cluster.client.clone(),
                self.config.root_cert_namespaces.clone(),
                cluster.leader.clone(),
            );
            let resync = core.resync.clone();
            plug.task("bundle-istio-root-cert-watch", |token| {
                sink.watch_changes(resync, token)
            });
            plug.sink(Arc::new(sink));
        }
        Ok(())
    }

    async fn start(&self, ctx: &Context<'_>, plug: &mut Plug) -> Result<(), FeatureError> {
        let config = &self.config;
        let auth = match &ctx.reviewer {
            Some(reviewer) => ctx
                .auth
                .clone()
                .with_kubernetes(reviewer.for_audiences(config.token_audiences.clone())),
            None => ctx.auth.clone(),
        };
        let gate = Arc::new(service::Gate {
            auth,
            cluster_id: config.cluster_id.clone(),
            issuer: ctx.issuer.clone(),
        });
        let service = IstioCa {
            issuer: ctx.issuer.clone(),
            nodes: node::NodeAuthorizer::new(
                ctx.core.cluster.as_ref().map(|c| c.client.clone()),
                config.trusted_node_accounts.clone(),
            ),
            cluster_id: config.cluster_id.clone(),
            impersonations_denied: ctx.core.metrics.register(
                "istio_impersonations_denied",
                "Certificates an Istio node agent asked for on another identity's behalf and was refused, by reason",
                Family::default(),
            ),
        };
        let server =
            IstioCertificateServiceServer::new(service).max_decoding_message_size(MAX_MESSAGE);
        // The caller is authenticated from the request's head before tonic
        // reads a byte of its body.
        let router = tonic::service::Routes::new(server)
            .into_axum_router()
            .layer(axum::middleware::from_fn_with_state(
                gate,
                service::authenticate_first,
            ));
        self.keep_istiod_secret(ctx, plug);
        tracing::info!(addr = %config.listen, cluster_id = %config.cluster_id, "serving Istio's certificate service");
        plug.listener(Listener {
            name: "istio-ca-server",
            addr: config.listen,
            tls: ListenerTls::Serving,
            router,
        });
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl IstioCaFeature {
    /// Keep istiod's Secret, when asked and meshca runs with a cluster.
    fn keep_istiod_secret(&self, ctx: &Context<'_>, plug: &mut Plug) {
        let (Some(cluster), Some(istiod)) = (&ctx.core.cluster, &self.config.istiod_certificate)
        else {
            return;
        };
        let changed = Arc::new(Notify::new());
        let (client, leader) = (cluster.client.clone(), cluster.leader.clone());
        let watch = (client.clone(), leader.clone(), changed.clone());
        plug.task("istiod-secret-watch", |token| {
            istiod::follow(watch.0, istiod, watch.1, watch.2, token)
        });
        let (istiod, td) = (istiod.clone(), ctx.core.trust_domain.clone());
        let (issuer, bundle) = (ctx.issuer.clone(), ctx.core.bundle.clone());
        plug.task("istiod-certificate", |token| {
            istiod::keep(client, istiod, td, issuer, bundle, leader, changed, token)
        });
    }

    /// The plan's line for the service.
    fn service_line(&self, common: &Common<'_>) -> String {
        let istio = &self.config;
        let callers = if common.kubernetes.is_some() {
            format!(
                "ServiceAccount tokens for {} by TokenReview, or client certificates meshca issued",
                istio.token_audiences.join(", ")
            )
        } else {
            "client certificates meshca issued only (no cluster to review tokens)".to_owned()
        };
        let agents: Vec<String> = istio
            .trusted_node_accounts
            .iter()
            .map(|(ns, sa)| format!("{ns}/{sa}"))
            .collect();
        let names: Vec<String> = istio
            .serving_dns_names
            .iter()
            .map(ToString::to_string)
            .collect();
        let istiod = istio
            .istiod_certificate
            .as_ref()
            .map_or(String::new(), |i| {
                format!(
                    "; istiod's Secret {}/{} for {}/{}",
                    i.namespace, i.secret_name, i.namespace, i.service_account
                )
            });
        format!(
            "istio ca:  gRPC IstioCertificateService on https://{} as {} for cluster {}; callers: {callers}; node agents {} may ask for pods on their node{istiod}",
            istio.listen,
            names.join(", "),
            istio.cluster_id,
            agents.join(", ")
        )
    }
}
