//! Pod certificates as a feature of the daemon: `pod_certificates:`, the
//! ClusterTrustBundle sink linked to the signer, and the signer of
//! PodCertificateRequests; with a cluster that serves them (Kubernetes
//! 1.37), else meshca says so once and runs without.

use std::any::Any;
use std::sync::Arc;

use super::{ClusterTrustBundleSink, PodCertificatesConfig, RawPodCertificates, SignerDeps};
use crate::feature::{
    Common, Context, Core, Definition, Feature, FeatureError, Plan, Plug, Sections, Syntax,
};
use crate::validation::Errors;

/// The feature's definition: its section and how it reads it.
pub const FEATURE: Definition = Definition {
    sections: &["pod_certificates"],
    configure,
    commands: &[],
};

/// Pod certificates, as configured.
#[derive(Debug)]
pub struct PodCertificatesFeature {
    /// `pod_certificates:`.
    pub config: PodCertificatesConfig,
}

/// Held from prepare to start when the cluster serves the API.
struct Served;

fn configure(
    sections: &Sections<'_>,
    common: &Common<'_>,
    errors: &mut Errors,
    warnings: &mut Vec<String>,
) -> Result<Option<Arc<dyn Feature>>, Syntax> {
    let raw: RawPodCertificates = sections.get("pod_certificates")?;
    let config = raw.validate(
        common.lifetimes.max_ttl,
        common.kubernetes.is_some(),
        errors,
    );
    if !config.enabled {
        if sections.written("pod_certificates.signer_name") {
            warnings.push(
                "pod_certificates.signer_name has no effect: pod_certificates.enabled is false"
                    .into(),
            );
        }
        return Ok(None);
    }
    if let Some(provider) = common
        .provider
        .filter(|p| p.names_from_profile() == Some(false))
    {
        warnings.push(format!(
            "pod_certificates: the {} provider signs only the names a CSR carries and kubelet's stub CSR carries none, so every PodCertificateRequest will be marked Failed; use a provider that names leaves itself (tresor; vault with use_csr_sans=false), for {} keys",
            provider.kind(),
            super::SUPPORTED_KEY_TYPES
        ));
    }
    Ok(Some(Arc::new(PodCertificatesFeature { config })))
}

#[async_trait::async_trait]
impl Feature for PodCertificatesFeature {
    fn name(&self) -> &'static str {
        "pod-certificates"
    }

    fn plan(&self, _common: &Common<'_>) -> Plan {
        Plan {
            sinks: vec![format!(
                "ClusterTrustBundle {}",
                self.config.signer_name.trust_bundle_name()
            )],
            lines: vec![format!(
                "pod certificates: signer {}",
                self.config.signer_name.as_str()
            )],
        }
    }

    async fn prepare(&self, core: &Core, plug: &mut Plug) -> Result<(), FeatureError> {
        let Some(cluster) = &core.cluster else {
            return Ok(());
        };
        if !super::served(&cluster.client).await {
            tracing::warn!("the cluster does not serve certificates.k8s.io/v1 PodCertificateRequests and ClusterTrustBundles (Kubernetes 1.37); running without pod certificates");
            return Ok(());
        }
        tracing::info!(
            signer = self.config.signer_name.as_str(),
            "signing pod certificates"
        );
        plug.hold(Served);
        let sink = ClusterTrustBundleSink::new(
            cluster.client.clone(),
            self.config.signer_name.trust_bundle_name(),
            self.config.signer_name.as_str().to_owned(),
            cluster.leader.clone(),
        );
        let resync = core.resync.clone();
        plug.task("bundle-ctb-watch", |token| {
            sink.watch_changes(resync, token)
        });
        plug.sink(Arc::new(sink));
        Ok(())
    }

    async fn start(&self, ctx: &Context<'_>, plug: &mut Plug) -> Result<(), FeatureError> {
        let Some(cluster) = ctx.core.cluster.as_ref() else {
            return Ok(());
        };
        if plug.take_held::<Served>().is_none() {
            return Ok(());
        }
        let deps = SignerDeps {
            issuer: ctx.issuer.clone(),
            trust_domain: ctx.core.trust_domain.clone(),
            metrics: ctx.core.metrics.clone(),
        };
        let config = self.config.clone();
        plug.task("pod-certificate-signer", |token| {
            super::signer(cluster, config, deps, token)
        });
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
