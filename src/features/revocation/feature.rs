//! Revocation as a feature of the daemon: `revocation:`, the ledger read
//! before anything is served, the task that makes the CRLs, `GET
//! /v1/crl`, and `meshca certificate revoke`.

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;

use meshca_provider::ProviderKind;
use tokio::sync::watch;

use super::events::Announcer;
use super::index::{self, IndexStore, Recorder};
use super::ledger::{Ledger, LedgerStore, CONFIGMAP, KEY};
use super::metrics::RevocationMetrics;
use super::publisher::{Crls, Publisher, CONFIGMAP as CRL_CONFIGMAP, CONFIGMAP_KEY};
use super::revoking::Revoker;
use super::{admin, api, RawRevocation, RevocationConfig};
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
    /// `auth.denied_file`: where revoking an identity denies it without a
    /// cluster.
    pub denied_file: PathBuf,
}

fn configure(
    sections: &Sections<'_>,
    common: &Common<'_>,
    errors: &mut Errors,
    warnings: &mut Vec<String>,
) -> Result<Option<Arc<dyn Feature>>, Syntax> {
    let raw: RawRevocation = sections.get("revocation")?;
    let config = raw.validate(errors);
    let kind = common.provider.map(|p| p.kind());
    if config.as_ref().is_some_and(|c| c.crl_url.is_some()) {
        match kind {
            Some(ProviderKind::Vault) => warnings.push("revocation.crl_url has no effect with the vault provider: the PKI mount writes its own CRL Distribution Points (bao write <mount>/config/urls crl_distribution_points=URL)".into()),
            Some(ProviderKind::CertManager) => warnings.push("revocation.crl_url has no effect with the cert-manager provider: its issuer writes what it writes, and it has no revocation".into()),
            _ => {}
        }
    }
    Ok(config.map(|config| {
        Arc::new(RevocationFeature {
            config,
            denied_file: common.denied_file.to_owned(),
        }) as Arc<dyn Feature>
    }))
}

fn ledger_store(core: &Core) -> LedgerStore {
    LedgerStore::new(&core.state_dir, cluster(core))
}

fn cluster(core: &Core) -> Option<(kube::Client, &str)> {
    core.cluster
        .as_ref()
        .map(|c| (c.client.clone(), c.config.namespace.as_str()))
}

/// What `prepare` makes for `start`.
struct Prepared {
    ledger: (LedgerStore, Ledger),
    index: (IndexStore, Arc<Recorder>),
}

/// Read every page of the certificate index (one that cannot be read
/// stops the start) and take note of every certificate issued from now.
async fn prepare_index(
    core: &Core,
    plug: &mut Plug,
) -> Result<(IndexStore, Arc<Recorder>), index::IndexError> {
    let store = IndexStore::new(&core.state_dir, cluster(core));
    let pages = store.pages().await?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let live = pages
        .iter()
        .flat_map(|p| &p.records)
        .filter(|r| r.not_after > now)
        .count();
    tracing::info!(live, pages = pages.len(), index = %store.describe(), "read the certificate index");
    // Named per start: a page has one writer, even across restarts.
    let random = crate::crypto::random::<4>().map_err(|e| {
        index::IndexError::Store(crate::store::StoreError::Write {
            place: store.describe(),
            source: std::io::Error::other(e.to_string()),
        })
    })?;
    let writer = base16ct::lower::encode_string(&random);
    let recorder = index::recorder(&writer, core.lifetimes.max_ttl, &core.metrics);
    plug.record_issued(recorder.clone());
    Ok((store, recorder))
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
        let admins = match self.config.admins.as_slice() {
            [] => "no identity (revocation.admins is empty)".to_owned(),
            admins => admins.join(", "),
        };
        Plan {
            sinks: Vec::new(),
            lines: vec![
                format!("revocation: POST /v1/revocations open to {admins}"),
                format!(
                    "revocation: CRLs at GET /v1/crl{}, next update {} (made again at half of it); revoked serials kept in {ledger}",
                    common.kubernetes.map(|k| format!(" and in the ConfigMap {}/{CRL_CONFIGMAP} (key {CONFIGMAP_KEY}) in a cluster", k.namespace)).unwrap_or_default(),
                    humantime::format_duration(self.config.crl_next_update)
                ),
                format!(
                    "revocation: every certificate issued is indexed (for `meshca certificate revoke --identity`) in {}{}",
                    common.state_dir.join(index::DIR).display(),
                    common.kubernetes.map(|k| format!(", or the ConfigMaps {}/{}* in a cluster", k.namespace, index::PREFIX)).unwrap_or_default(),
                ),
            ],
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
        if let Some(url) = &self.config.crl_url {
            plug.crl_url(url.clone());
        }
        let index = prepare_index(core, plug)
            .await
            .map_err(|e| FeatureError::of(self.name())(Box::new(e)))?;
        plug.hold(Prepared {
            ledger: (store, ledger),
            index,
        });
        Ok(())
    }

    async fn start(&self, ctx: &Context<'_>, plug: &mut Plug) -> Result<(), FeatureError> {
        let Some(Prepared {
            ledger: (store, ledger),
            index: (index_store, recorder),
        }) = plug.take_held::<Prepared>()
        else {
            return Err(FeatureError::of(self.name())(
                "started without being prepared".into(),
            ));
        };
        let leader = ctx.core.cluster.as_ref().map(|c| c.leader.clone());
        plug.task("certificate-index", move |token| {
            index::write(recorder, index_store, leader, token)
        });
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
        plug.route(admin::routes(Arc::new(admin::AdminApi {
            auth: ctx.auth.clone(),
            admins: self.config.admins.clone(),
            revoker: Revoker::new(
                &ctx.core.state_dir,
                &self.denied_file,
                cluster(ctx.core),
                ctx.core.lifetimes.max_ttl,
            ),
            max_body_bytes: ctx.max_body_bytes,
            crls: served.clone(),
        })));
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
