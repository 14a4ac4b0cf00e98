//! SPIFFE federation as a feature of the daemon: `federation:`, its
//! metrics, the task that fetches the peers' bundles, the peers' bundles
//! the signing API serves, `/readyz` reasons, and the bundle endpoint.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;

use super::metrics::FederationMetrics;
use super::{EndpointProfile, FederationConfig, FederationContext, PeerProfile, RawFederation};
use crate::feature::{
    Common, Context, Core, Definition, Feature, FeatureError, Listener, ListenerTls, Plan, Plug,
    Sections, Syntax,
};
use crate::validation::Errors;

/// The feature's definition: its section and how it reads it.
pub const FEATURE: Definition = Definition {
    sections: &["federation"],
    configure,
    commands: &[],
};

/// SPIFFE federation, as configured.
#[derive(Debug)]
pub struct FederationFeature {
    /// `federation:`.
    pub config: FederationConfig,
}

fn configure(
    sections: &Sections<'_>,
    common: &Common<'_>,
    errors: &mut Errors,
    _warnings: &mut Vec<String>,
) -> Result<Option<Arc<dyn Feature>>, Syntax> {
    let raw: RawFederation = sections.get("federation")?;
    let config = raw.validate(
        &FederationContext {
            trust_domain: common.trust_domain,
            daemon_identity: common.daemon_identity,
        },
        errors,
    );
    let on = config.endpoint.is_some() || !config.trust_domains.is_empty();
    Ok(on.then(|| Arc::new(FederationFeature { config }) as Arc<dyn Feature>))
}

#[async_trait::async_trait]
impl Feature for FederationFeature {
    fn name(&self) -> &'static str {
        "federation"
    }

    fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        self.config
            .endpoint
            .iter()
            .map(|e| ("federation.bundle_endpoint.listen", e.listen))
            .collect()
    }

    fn plan(&self, common: &Common<'_>) -> Plan {
        Plan {
            sinks: Vec::new(),
            lines: self.plan_lines(common),
        }
    }

    async fn prepare(&self, core: &Core, plug: &mut Plug) -> Result<(), FeatureError> {
        let metrics = FederationMetrics::register(&core.metrics);
        if let Some(endpoint) = &self.config.endpoint {
            plug.refresh_hint(endpoint.refresh_hint);
        }
        let started = super::start(
            &self.config,
            &core.state_dir,
            core.cluster.as_ref(),
            &metrics,
        )
        .await
        .map_err(|e| FeatureError::of(self.name())(Box::new(e)))?;
        if let Some((federation, fetching)) = started {
            plug.task("federation", fetching);
            let federation = Arc::new(federation);
            plug.peers(federation.clone());
            plug.ready(federation);
        }
        Ok(())
    }

    async fn start(&self, ctx: &Context<'_>, plug: &mut Plug) -> Result<(), FeatureError> {
        let Some(endpoint) = &self.config.endpoint else {
            return Ok(());
        };
        let tls = match &endpoint.profile {
            EndpointProfile::HttpsSpiffe => ListenerTls::Serving,
            EndpointProfile::HttpsWeb {
                cert_file,
                key_file,
            } => {
                let (tls, reload) = super::endpoint::web_tls(cert_file, key_file)
                    .await
                    .map_err(|e| FeatureError::of(self.name())(Box::new(e)))?;
                plug.task("bundle-endpoint-certificate", |token| reload.run(token));
                ListenerTls::Own(tls)
            }
        };
        tracing::info!(addr = %endpoint.listen, profile = ?endpoint.profile, "serving the SPIFFE bundle endpoint");
        plug.listener(Listener {
            name: "bundle-endpoint",
            addr: endpoint.listen,
            tls,
            router: crate::api::bundle_endpoint_router(ctx.spiffe.clone()),
        });
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl FederationFeature {
    /// The bundle endpoint this mesh serves and the peers it fetches.
    fn plan_lines(&self, common: &Common<'_>) -> Vec<String> {
        let mut lines: Vec<String> = self
            .config
            .endpoint
            .iter()
            .map(|e| {
                let profile = match &e.profile {
                    EndpointProfile::HttpsSpiffe => format!(
                        "https_spiffe, as {} (the serving certificate)",
                        common
                            .daemon_identity
                            .map(meshca_provider::Identity::spiffe_id)
                            .unwrap_or_default()
                    ),
                    EndpointProfile::HttpsWeb { cert_file, .. } => format!(
                        "https_web, certificate {} (reloaded on change)",
                        cert_file.display()
                    ),
                };
                format!(
                    "federation: bundle endpoint https://{}/ ({profile}); refresh hint {}",
                    e.listen,
                    humantime::format_duration(e.refresh_hint)
                )
            })
            .collect();
        for d in &self.config.trust_domains {
            let auth = match &d.profile {
                PeerProfile::HttpsWeb => "https_web (system roots or SSL_CERT_FILE)".to_owned(),
                PeerProfile::HttpsSpiffe {
                    endpoint_spiffe_id,
                    bundle_file,
                } => format!(
                    "https_spiffe as {endpoint_spiffe_id}, first bundle {}",
                    bundle_file.display()
                ),
            };
            let who = if d.namespaces.is_empty() {
                "every workload".to_owned()
            } else {
                format!("namespaces {}", d.namespaces.join(", "))
            };
            let kept = common
                .state_dir
                .join("federation")
                .join(format!("{}.json", d.trust_domain));
            lines.push(format!(
                "federation: trust {} from {} ({auth}), kept in {}; for {who}",
                d.trust_domain,
                d.url,
                kept.display()
            ));
        }
        lines
    }
}
