//! Revocation as a feature of the daemon: `revocation:`, the ledger read
//! before anything is served, the task that makes the CRLs, `GET
//! /v1/crl`, and `meshca certificate revoke`.

use std::any::Any;
use std::sync::Arc;

use tokio::sync::watch;

use super::events::Announcer;
use super::ledger::{Ledger, LedgerStore, CONFIGMAP, KEY};
use super::metrics::RevocationMetrics;
use super::publisher::{Crls, Publisher, CONFIGMAP as CRL_CONFIGMAP, CONFIGMAP_KEY};
use super::{api, RawRevocation, RevocationConfig};
use crate::feature::{
    Common, Context, Core, Definition, Feature, FeatureError, Plan, Plug, Sections, Syntax,
};
use crate::store::Store;
use crate::validation::Errors;

/// The feature's definition: its section, how it reads it, its command.
pub const FEATURE: Definition = Definition {
    sections: &["revocation"],
    configure,
    commands: &[super::cli::CERTIFICATE],
};

/// Revocation, as configured: always on, so that an empty CRL is
/// published from the start and a revocation needs no restart.
#[derive(Debug)]
pub struct RevocationFeature {
    /// `revocation:`.
    pub config: RevocationConfig,
}

fn configure(
    sections: &Sections<'_>,
    _common: &Common<'_>,
    errors: &mut Errors,
    _warnings: &mut Vec<String>,
) -> Result<Option<Arc<dyn Feature>>, Syntax> {
    let raw: RawRevocation = sections.get("revocation")?;
    Ok(raw
        .validate(errors)
        .map(|config| Arc::new(RevocationFeature { config }) as Arc<dyn Feature>))
}

fn ledger_store(core: &Core) -> LedgerStore {
    let cluster = core
        .cluster
        .as_ref()
        .map(|c| (c.client.clone(), c.config.namespace.as_str()));
    LedgerStore::new(&core.state_dir, cluster)
}

#[async_trait::async_trait]
impl Feature for RevocationFeature {
    fn name(&self) -> &'static str {
        "revocation"
    }

    fn plan(&self, common: &Common<'_>) -> Plan {
        let file = common.state_dir.join(KEY);
        let ledger = match common.kubernetes {
            Some(k) => format!(
                "the ConfigMap {}/{CONFIGMAP} in a cluster, {} without one",
                k.namespace,
                file.display()
            ),
            None => file.display().to_string(),
        };
        Plan {
            sinks: Vec::new(),
            lines: vec![format!(
                "revocation: CRLs at GET /v1/crl{}, next update {} (made again at half of it); revoked serials kept in {ledger}",
                common.kubernetes.map(|k| format!(" and in the ConfigMap {}/{CRL_CONFIGMAP} (key {CONFIGMAP_KEY}) in a cluster", k.namespace)).unwrap_or_default(),
                humantime::format_duration(self.config.crl_next_update)
            )],
        }
    }

    /// Read the ledger before anything is served: one that cannot be read
    /// stops the start, naming it.
    async fn prepare(&self, core: &Core, plug: &mut Plug) -> Result<(), FeatureError> {
        let store = ledger_store(core);
        let ledger = store
            .load()
            .await
            .map_err(|e| FeatureError::of(self.name())(Box::new(e)))?;
        let listed = ledger.listed(time::OffsetDateTime::now_utc()).len();
        tracing::info!(listed, ledger = %store.describe(), "read the revocation ledger");
        plug.hold::<(LedgerStore, Ledger)>((store, ledger));
        Ok(())
    }

    async fn start(&self, ctx: &Context<'_>, plug: &mut Plug) -> Result<(), FeatureError> {
        let Some((store, ledger)) = plug.take_held::<(LedgerStore, Ledger)>() else {
            return Err(FeatureError::of(self.name())(
                "started without being prepared".into(),
            ));
        };
        let (crls, served) = watch::channel(Crls::NotYet);
        // In a cluster, the leader also keeps the lists in a ConfigMap and
        // records each revocation as an Event.
        let (configmap, events) = match ctx.core.cluster.as_ref() {
            Some(c) => {
                let (client, namespace) = (c.client.clone(), c.config.namespace.as_str());
                let store =
                    Store::configmap(client.clone(), namespace, CRL_CONFIGMAP, CONFIGMAP_KEY);
                let events = Announcer::new(client, namespace, c.leader.clone());
                (Some((store, c.leader.clone())), Some(events))
            }
            None => (None, None),
        };
        let publisher = Publisher {
            ledger: store,
            signer: ctx.issuer.signer().clone(),
            next_update: self.config.crl_next_update,
            metrics: RevocationMetrics::register(&ctx.core.metrics),
            crls,
            configmap,
            events,
        };
        plug.route(api::routes(served));
        plug.task("revocation-lists", move |token| {
            publisher.run(ledger, token)
        });
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
