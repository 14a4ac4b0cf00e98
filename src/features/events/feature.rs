//! Events as a feature of the daemon: with a cluster, the announcer.

use std::any::Any;
use std::sync::Arc;

use crate::feature::{
    Common, Context, Definition, Feature, FeatureError, Plan, Plug, Sections, Syntax,
};
use crate::validation::Errors;

/// The feature's definition: no section of its own.
pub const FEATURE: Definition = Definition {
    sections: &[],
    configure,
    commands: &[],
};

/// Kubernetes Events on meshca's own pod.
#[derive(Debug)]
pub struct EventsFeature;

fn configure(
    _sections: &Sections<'_>,
    common: &Common<'_>,
    _errors: &mut Errors,
    _warnings: &mut Vec<String>,
) -> Result<Option<Arc<dyn Feature>>, Syntax> {
    Ok(common
        .kubernetes
        .is_some()
        .then(|| Arc::new(EventsFeature) as Arc<dyn Feature>))
}

#[async_trait::async_trait]
impl Feature for EventsFeature {
    fn name(&self) -> &'static str {
        "events"
    }

    fn plan(&self, _common: &Common<'_>) -> Plan {
        Plan::default()
    }

    async fn start(&self, ctx: &Context<'_>, plug: &mut Plug) -> Result<(), FeatureError> {
        if let Some(cluster) = ctx.core.cluster.as_ref() {
            let (rollout, probes) = (ctx.rollout.clone(), ctx.probes.clone());
            plug.task("events", |token| {
                super::announcer(cluster, rollout, probes, token)
            });
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
