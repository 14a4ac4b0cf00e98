//! The rollout task: watches the configuration for a new signer and walks
//! the stages.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::state::{Retained, RolloutStatus, Stage, StateStore};
use super::{AnchorSet, Signer};
use crate::bundle::{BundleReceiver, PublishStatus};
use crate::provider::{self, ProviderConfig};

/// What the rollout follows: the signer the configuration in force names,
/// and how long to distribute its anchors before it signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The provider that should sign.
    pub provider: ProviderConfig,
    /// `rotation.propagation_delay` in force.
    pub propagation_delay: Duration,
}

/// Everything the rollout needs.
pub struct Rollout {
    /// The signer slot.
    pub signer: Arc<Signer>,
    /// Extra anchors.
    pub anchors: Arc<AnchorSet>,
    /// The published bundle.
    pub bundle: BundleReceiver,
    /// Whether every sink holds it.
    pub publish: PublishStatus,
    /// Wakes the serving-certificate task for an immediate renewal.
    pub renew_serving: Arc<Notify>,
    /// Where the state is kept.
    pub store: StateStore,
    /// What building the incoming provider needs.
    pub deps: provider::Deps,
    /// Where the stage and generation are exported.
    pub metrics: Arc<crate::metrics::Metrics>,
}

fn now_text() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn pem(certs: &[CertificateDer<'static>]) -> String {
    meshca_provider::pem::encode_certificates(certs)
}

/// Restore anchors retained before a restart into `anchors`; returns the
/// status to start from (its generation continues).
pub fn restore(
    persisted: Option<RolloutStatus>,
    anchors: &AnchorSet,
    provider: &str,
    max_ttl: Duration,
) -> RolloutStatus {
    let mut status = persisted.unwrap_or(RolloutStatus {
        stage: Stage::Steady,
        generation: 0,
        provider: provider.to_owned(),
        incoming: None,
        retained: Vec::new(),
        history: Vec::new(),
    });
    let now = OffsetDateTime::now_utc();
    // Interrupted during distribute: the signer of the configuration in
    // force now is the incoming one, so count a switch.
    if status.stage == Stage::Distribute {
        status.generation += 1;
    }
    // Anchors whose certificates' last expiry was not yet known when the
    // state was saved (a restart before retire): keep them for the longest
    // lifetime a certificate can have, since the issuance records are gone.
    let bound = (now + max_ttl).format(&Rfc3339).ok();
    for r in &mut status.retained {
        if r.until.is_none() {
            r.until.clone_from(&bound);
        }
    }
    let parse = |u: &Option<String>| {
        u.as_deref()
            .and_then(|u| OffsetDateTime::parse(u, &Rfc3339).ok())
    };
    status
        .retained
        .retain(|r| parse(&r.until).is_none_or(|u| u > now));
    for (i, r) in status.retained.iter().enumerate() {
        let certs = meshca_provider::pem::decode_certificates(r.pem.as_bytes()).unwrap_or_default();
        anchors.retain(
            &format!("restored-{i}"),
            certs,
            parse(&r.until).map(OffsetDateTime::unix_timestamp),
        );
    }
    if !status.retained.is_empty() {
        tracing::info!(
            sets = status.retained.len(),
            "kept anchors retained before the restart"
        );
    }
    // A rollout interrupted before its switch starts again from the
    // configuration now in force; one interrupted after it keeps retiring.
    status.stage = if status.retained.is_empty() {
        Stage::Steady
    } else {
        Stage::Retire
    };
    status.provider = provider.to_owned();
    status.incoming = None;
    status
}

impl Rollout {
    /// Run until `shutdown`, publishing the status on the returned channel.
    pub fn run(
        self,
        initial: RolloutStatus,
        mut config: watch::Receiver<Target>,
        shutdown: CancellationToken,
    ) -> (
        watch::Receiver<RolloutStatus>,
        impl Future<Output = ()> + Send + 'static,
    ) {
        self.export(&initial);
        let (tx, rx) = watch::channel(initial);
        let task = async move {
            let mut applied = config.borrow_and_update().provider.clone();
            loop {
                // Retained anchors leave at their own time; the stage
                // follows when the last set is gone.
                let retire_wait = self.retire_wait(&tx);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = config.changed() => if r.is_err() { return },
                    () = tokio::time::sleep(retire_wait.unwrap_or(Duration::from_secs(3600))), if retire_wait.is_some() => {
                        self.prune_retained(&tx);
                        continue;
                    }
                }
                let target = config.borrow_and_update().clone();
                if target.provider == applied {
                    continue;
                }
                match self.roll(&target, &tx, &config, &shutdown).await {
                    Ok(Outcome::Done) => applied = target.provider,
                    Ok(Outcome::Superseded) => {
                        tracing::info!(
                            "the configuration changed again during distribute; starting over"
                        );
                        self.abort(&tx);
                        // Re-examine the configuration now in force.
                        config.mark_changed();
                    }
                    // Stopping: keep the persisted stage as it is, so the
                    // next start resumes from it.
                    Err(_) if shutdown.is_cancelled() => return,
                    Err(e) => {
                        tracing::error!(error = %e, "the signer change failed; the current signer stays");
                        self.abort(&tx);
                    }
                }
            }
        };
        (rx, task)
    }

    /// Undo a distribute that did not reach its switch.
    fn abort(&self, tx: &watch::Sender<RolloutStatus>) {
        self.anchors.release("incoming");
        // The current signer's anchors, noted at distribute, are not
        // retiring after all.
        tx.send_modify(|s| {
            s.incoming = None;
            s.retained.retain(|r| r.until.is_some());
        });
        let stage = if tx.borrow().retained.is_empty() {
            Stage::Steady
        } else {
            Stage::Retire
        };
        self.enter(tx, stage);
    }

    /// How long until the next retained set may go, if any is dated.
    fn retire_wait(&self, tx: &watch::Sender<RolloutStatus>) -> Option<Duration> {
        let now = OffsetDateTime::now_utc();
        tx.borrow()
            .retained
            .iter()
            .filter_map(|r| {
                r.until
                    .as_deref()
                    .and_then(|u| OffsetDateTime::parse(u, &Rfc3339).ok())
            })
            .min()
            .map(|u| (u - now).try_into().unwrap_or(Duration::ZERO) + Duration::from_secs(1))
    }

    /// Forget retained sets whose time has passed; steady when none is left.
    fn prune_retained(&self, tx: &watch::Sender<RolloutStatus>) {
        let now = OffsetDateTime::now_utc();
        tx.send_modify(|s| {
            s.retained.retain(|r| {
                r.until
                    .as_deref()
                    .and_then(|u| OffsetDateTime::parse(u, &Rfc3339).ok())
                    .is_none_or(|u| u > now)
            });
        });
        let (empty, stage) = {
            let s = tx.borrow();
            (s.retained.is_empty(), s.stage)
        };
        if empty && stage == Stage::Retire {
            self.enter(tx, Stage::Steady);
        } else {
            self.store.save(&tx.borrow());
        }
    }

    fn export(&self, status: &RolloutStatus) {
        self.metrics
            .rotation_generation
            .set(i64::try_from(status.generation).unwrap_or(i64::MAX));
        for s in Stage::ALL {
            self.metrics
                .rotation_stage
                .get_or_create(&crate::metrics::StageLabels { stage: s.as_str() })
                .set(i64::from(s == status.stage));
        }
    }

    fn enter(&self, tx: &watch::Sender<RolloutStatus>, stage: Stage) {
        tx.send_modify(|s| {
            s.stage = stage;
            s.history.push((stage, now_text()));
            if s.history.len() > 50 {
                s.history.remove(0);
            }
        });
        tracing::info!(
            stage = stage.as_str(),
            generation = tx.borrow().generation,
            "rollout stage"
        );
        self.export(&tx.borrow());
        self.store.save(&tx.borrow());
    }

    async fn roll(
        &self,
        target: &Target,
        tx: &watch::Sender<RolloutStatus>,
        config: &watch::Receiver<Target>,
        shutdown: &CancellationToken,
    ) -> Result<Outcome, String> {
        let incoming = provider::build(&target.provider, &self.deps)
            .await
            .map_err(|e| e.to_string())?;
        // Until the switch, the incoming provider's task stops with any
        // abort (the guard is defused once it signs).
        let incoming_guard = incoming.stop.clone().drop_guard();
        let kind = incoming.provider.kind().to_string();
        let new_anchors = incoming
            .provider
            .trust_anchors()
            .await
            .map_err(|e| e.to_string())?;
        tx.send_modify(|s| s.incoming = Some(kind.clone()));

        // 1. Distribute: old + new anchors everywhere, then wait.
        if let Outcome::Superseded = self
            .distribute(&new_anchors, target, tx, config, shutdown)
            .await?
        {
            return Ok(Outcome::Superseded);
        }

        // 2. Switch.
        let (old, _) = self.signer.current();
        let old_anchors = old.trust_anchors().await.unwrap_or_default();
        incoming_guard.disarm();
        let (old_generation, old_stop) = self.signer.switch(incoming.provider, incoming.stop);
        let tag = format!("generation-{old_generation}");
        self.anchors.retain(&tag, old_anchors.clone(), None);
        self.anchors.release("incoming");
        tx.send_modify(|s| {
            s.generation = old_generation + 1;
            s.provider = kind.clone();
            s.incoming = None;
            let old = pem(&old_anchors);
            if !s.retained.iter().any(|r| r.pem == old) {
                s.retained.push(Retained {
                    pem: old,
                    until: None,
                });
            }
        });
        self.enter(tx, Stage::Switch);

        // 3. Re-issue: the daemon's own certificate now; agents follow the
        // generation they see on /v1/bundle.
        self.renew_serving.notify_one();
        self.enter(tx, Stage::Reissue);
        // In-flight signatures of the old generation finish meanwhile.
        tokio::time::sleep(Duration::from_secs(2)).await;

        // 4. Retire once the last old certificate has expired.
        let until = self
            .signer
            .issued_until(old_generation)
            .unwrap_or_else(|| OffsetDateTime::now_utc().unix_timestamp())
            + 1;
        self.anchors.retain(&tag, old_anchors.clone(), Some(until));
        let until_text = OffsetDateTime::from_unix_timestamp(until)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok());
        let old_pem = pem(&old_anchors);
        tx.send_modify(|s| {
            for r in &mut s.retained {
                if r.pem == old_pem {
                    r.until = until_text.clone();
                }
            }
        });
        // The old provider signs no more: stop its task (a Vault token
        // renewal, a re-login) now; its anchors stay until `until`.
        old_stop.cancel();
        self.enter(tx, Stage::Retire);
        Ok(Outcome::Done)
    }

    /// Put the incoming anchors beside the current ones, wait until every
    /// sink holds them, then the propagation delay. The current anchors are
    /// noted as retained first, so a restart from here keeps them.
    async fn distribute(
        &self,
        new_anchors: &[CertificateDer<'static>],
        target: &Target,
        tx: &watch::Sender<RolloutStatus>,
        config: &watch::Receiver<Target>,
        shutdown: &CancellationToken,
    ) -> Result<Outcome, String> {
        let (current, _) = self.signer.current();
        let current_pem = pem(&current.trust_anchors().await.map_err(|e| e.to_string())?);
        tx.send_modify(|s| {
            if !s.retained.iter().any(|r| r.pem == current_pem) {
                s.retained.push(Retained {
                    pem: current_pem.clone(),
                    until: None,
                });
            }
        });
        self.enter(tx, Stage::Distribute);
        self.anchors.retain("incoming", new_anchors.to_vec(), None);
        let mut bundle = self.bundle.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            let has_all = {
                let b = bundle.borrow_and_update();
                new_anchors.iter().all(|a| b.anchors().contains(a))
            };
            if has_all && self.publish.check().is_ok() {
                break;
            }
            if superseded(config, target) {
                return Ok(Outcome::Superseded);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(
                    "the new anchors did not reach every bundle sink within 5 minutes".into(),
                );
            }
            tokio::select! {
                () = shutdown.cancelled() => return Err("shutting down".into()),
                _ = bundle.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Err("shutting down".into()),
            () = tokio::time::sleep(target.propagation_delay) => {}
        }
        if superseded(config, target) {
            return Ok(Outcome::Superseded);
        }
        Ok(Outcome::Done)
    }
}

/// How a rollout ended.
enum Outcome {
    /// The new signer signs; its predecessor's anchors are retiring.
    Done,
    /// The configuration changed before the switch (a rollback, or another
    /// signer): nothing was switched.
    Superseded,
}

/// Whether the configuration moved away from `target` since the rollout to
/// it began (back to the current signer, or to another one).
fn superseded(config: &watch::Receiver<Target>, target: &Target) -> bool {
    config.has_changed().unwrap_or(false) && config.borrow().provider != target.provider
}
