//! Ingress policy as a feature of the daemon: `ingress:`, and the
//! reconciler that keeps each HTTPS backend's identity Secret (with a
//! cluster), following its settings as the config file changes.

use std::any::Any;
use std::sync::Arc;

use super::{IngressConfig, IngressContext, Mesh, RawIngress};
use crate::feature::{
    Common, Context, Definition, Feature, FeatureError, Features, Plan, Plug, Sections, Syntax,
};
use crate::validation::Errors;

/// The feature's definition: its section and how it reads it.
pub const FEATURE: Definition = Definition {
    sections: &["ingress"],
    configure,
    commands: &[super::cli::RENDER],
};

/// Ingress policy, as configured.
#[derive(Debug)]
pub struct IngressFeature {
    /// `ingress:`.
    pub config: IngressConfig,
}

/// Settings that have an effect only with `ingress.enabled`.
const ONLY_WHEN_ENABLED: [&str; 5] = [
    "ingress.backend_protocol",
    "ingress.monitored_namespaces",
    "ingress.manage_annotations",
    "ingress.controller",
    "ingress.client_certificate",
];

fn configure(
    sections: &Sections<'_>,
    common: &Common<'_>,
    errors: &mut Errors,
    warnings: &mut Vec<String>,
) -> Result<Option<Arc<dyn Feature>>, Syntax> {
    let raw: RawIngress = sections.get("ingress")?;
    let config = raw.validate(
        &IngressContext {
            trust_domain: common.trust_domain_text,
            lifetimes: common.lifetimes,
            cluster: common.kubernetes.is_some(),
            bundle_secret: common.bundle_secret,
        },
        errors,
    );
    if !config.enabled {
        for key in ONLY_WHEN_ENABLED.iter().filter(|k| sections.written(k)) {
            warnings.push(format!("{key} has no effect: ingress.enabled is false"));
        }
        return Ok(None);
    }
    Ok(Some(Arc::new(IngressFeature { config })))
}

/// The ingress settings in force: those of `features`, or (ingress turned
/// off since the start) these turned off.
fn in_force(features: &Features, started: &IngressConfig) -> IngressConfig {
    features.find::<IngressFeature>().map_or_else(
        || IngressConfig {
            enabled: false,
            ..started.clone()
        },
        |f| f.config.clone(),
    )
}

#[async_trait::async_trait]
impl Feature for IngressFeature {
    fn name(&self) -> &'static str {
        "ingress"
    }

    fn plan(&self, _common: &Common<'_>) -> Plan {
        Plan {
            sinks: Vec::new(),
            lines: vec![format!(
                "ingress:   backend protocol {:?}",
                self.config.backend_protocol
            )],
        }
    }

    async fn start(&self, ctx: &Context<'_>, plug: &mut Plug) -> Result<(), FeatureError> {
        let Some(cluster) = ctx.core.cluster.as_ref() else {
            return Ok(());
        };
        let resource = super::discover_ingress_api(&cluster.client)
            .await
            .map_err(|e| FeatureError::of(self.name())(Box::new(e)))?;
        let started = self.config.clone();
        let settings = plug.project(&ctx.features, move |f| in_force(f, &started));
        let mesh = Mesh {
            trust_domain: ctx.core.trust_domain.clone(),
        };
        let (issuer, bundle) = (ctx.issuer.clone(), ctx.core.bundle.clone());
        plug.task("ingress-reconciler", |token| {
            super::reconciler(cluster, resource, issuer, mesh, settings, bundle, token)
        });
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
