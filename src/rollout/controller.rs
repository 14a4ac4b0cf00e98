//! The rollout driver: follows the configuration for a new signer, and
//! performs what each [`RolloutStatus::step`] asks (build, wait, switch,
//! renew, stop), feeding back what happened.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use meshca_provider::Checked;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::ledger::Writer;
use super::state::{Effect, Event, RolloutStatus};
use super::Signer;
use crate::bundle::{BundleReceiver, PublishStatus};
use crate::provider::{self, ProviderConfig};

/// How long the new anchors may take to reach every sink.
const DISTRIBUTE_LIMIT: Duration = Duration::from_secs(300);
/// How long signatures in flight at the switch are waited for; past it,
/// the retiring anchors stay for `certificates.max_ttl`.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);
/// How long after a retained set's time the ledger drops it: the refresher
/// drops it from the bundle at its time, so `GET /v1/rotation` never says
/// steady while the bundle still holds it.
const AFTER_BUNDLE: Duration = Duration::from_secs(1);

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
    /// The published bundle.
    pub bundle: BundleReceiver,
    /// Whether every sink holds it.
    pub publish: PublishStatus,
    /// Wakes the serving-certificate task for an immediate renewal.
    pub renew_serving: Arc<Notify>,
    /// Where the state is kept.
    pub store: Writer,
    /// The other replicas' issuance, in a cluster.
    pub peers: Option<super::Peers>,
    /// What building the incoming provider needs.
    pub deps: provider::Deps,
    /// Where the stage and generation are exported.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// `certificates.max_ttl`: how long anchors stay when the last
    /// certificate they signed cannot be known.
    pub max_ttl: Duration,
}

/// Why a rollout stopped before its switch.
enum Stopped {
    /// The configuration moved away from the target (a rollback, or
    /// another signer).
    Superseded,
    /// The daemon is stopping; the persisted stage resumes at next start.
    ShuttingDown,
    /// Building, reading anchors or distributing failed.
    Failed(String),
}

impl Rollout {
    /// Run until `shutdown`, publishing the status (which holds the anchor
    /// ledger) on the returned channel.
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
                let deadline = tx.borrow().next_deadline();
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = config.changed() => if r.is_err() { return },
                    () = sleep_until(deadline), if deadline.is_some() => {
                        self.apply(&tx, Event::Tick).await;
                        continue;
                    }
                }
                let target = config.borrow_and_update().clone();
                if target.provider == applied {
                    continue;
                }
                match self.roll(&target, &tx, &config, &shutdown).await {
                    Ok(()) => applied = target.provider,
                    Err(Stopped::ShuttingDown) => return,
                    Err(Stopped::Superseded) => {
                        tracing::info!(
                            "the configuration changed again during distribute; starting over"
                        );
                        // Re-examine the configuration now in force.
                        config.mark_changed();
                    }
                    Err(Stopped::Failed(e)) => {
                        tracing::error!(error = %e, "the signer change failed; the current signer stays");
                    }
                }
            }
        };
        (rx, task)
    }

    /// One rollout to `target`, from build to retire.
    async fn roll(
        &self,
        target: &Target,
        tx: &watch::Sender<RolloutStatus>,
        config: &watch::Receiver<Target>,
        shutdown: &CancellationToken,
    ) -> Result<(), Stopped> {
        let incoming = provider::build(&target.provider, &self.deps)
            .await
            .map_err(|e| Stopped::Failed(e.to_string()))?;
        let begun = self.begin(&incoming.provider, tx).await;
        let distributed = match begun {
            Ok(new_anchors) => {
                self.distribute(&new_anchors, target, config, shutdown)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(stopped) = distributed {
            if !matches!(stopped, Stopped::ShuttingDown) {
                self.apply(tx, Event::Aborted).await;
            }
            incoming.stop.cancel();
            return Err(stopped);
        }
        let effects = self.apply(tx, Event::Distributed).await;
        if !effects.contains(&Effect::SwitchSigner) {
            incoming.stop.cancel();
            return Err(Stopped::Failed(
                "the rollout state did not reach the switch".into(),
            ));
        }
        let (old_generation, old_stop) = self.signer.switch(incoming.provider, incoming.stop);
        if effects.contains(&Effect::RenewServing) {
            self.renew_serving.notify_one();
        }
        let last_not_after = self.last_not_after(old_generation).await;
        if self
            .apply(tx, Event::Drained { last_not_after })
            .await
            .contains(&Effect::StopPrevious)
        {
            // It signs no more: no further token renewal or re-login.
            old_stop.cancel();
        }
        Ok(())
    }

    /// The latest NotAfter any certificate of `generation` has, once every
    /// signature started under it here is done and the other replicas had
    /// time to share theirs. When that cannot be known (a signature still
    /// in flight after [`DRAIN_LIMIT`], the replicas' ledger unreadable),
    /// the longest lifetime meshca hands out, from now: the anchors stay
    /// for as long as any certificate could live, said loudly.
    async fn last_not_after(&self, generation: u64) -> Option<OffsetDateTime> {
        let drained = self.signer.drained(generation, DRAIN_LIMIT).await;
        tokio::time::sleep(super::peers::PUBLISH_AFTER * 2).await;
        let shared = match &self.peers {
            Some(peers) => peers
                .latest(generation)
                .await
                .map_err(|e| crate::report::error_chain(&e)),
            None => Ok(None),
        };
        let local = self.signer.issued_until(generation);
        match (drained, shared) {
            (true, Ok(shared)) => local
                .max(shared)
                .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok()),
            (drained, shared) => {
                let keep = OffsetDateTime::now_utc() + self.max_ttl;
                tracing::error!(
                    generation,
                    drained,
                    replicas = ?shared.err(),
                    keep_until = %keep,
                    "cannot tell when the last certificate of the retiring signer expires; its anchors stay for certificates.max_ttl"
                );
                Some(keep)
            }
        }
    }

    /// Note the anchors of both signers in the ledger; returns the
    /// incoming ones.
    async fn begin(
        &self,
        incoming: &Checked,
        tx: &watch::Sender<RolloutStatus>,
    ) -> Result<Vec<CertificateDer<'static>>, Stopped> {
        let failed = |e: meshca_provider::ProviderError| Stopped::Failed(e.to_string());
        let new_anchors = incoming.trust_anchors().await.map_err(failed)?;
        let (current, _) = self.signer.current();
        let current = current.trust_anchors().await.map_err(failed)?;
        self.apply(
            tx,
            Event::Begin {
                provider: incoming.kind().to_string(),
                current,
                incoming: new_anchors.clone(),
            },
        )
        .await;
        Ok(new_anchors)
    }

    /// Wait until every sink holds the incoming anchors, then the
    /// propagation delay.
    async fn distribute(
        &self,
        new_anchors: &[CertificateDer<'static>],
        target: &Target,
        config: &watch::Receiver<Target>,
        shutdown: &CancellationToken,
    ) -> Result<(), Stopped> {
        let mut bundle = self.bundle.clone();
        let deadline = tokio::time::Instant::now() + DISTRIBUTE_LIMIT;
        loop {
            // Every sink must hold this very bundle, not just an earlier
            // one without errors: the new signer signs only once peers
            // everywhere can verify it.
            let current = bundle.borrow_and_update().clone();
            let has_all = new_anchors.iter().all(|a| current.anchors().contains(a));
            if has_all && self.publish.holds(&current) {
                break;
            }
            if superseded(config, target) {
                return Err(Stopped::Superseded);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Stopped::Failed(
                    "the new anchors did not reach every bundle sink within 5 minutes".into(),
                ));
            }
            tokio::select! {
                () = shutdown.cancelled() => return Err(Stopped::ShuttingDown),
                _ = bundle.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Err(Stopped::ShuttingDown),
            () = tokio::time::sleep(target.propagation_delay) => {}
        }
        if superseded(config, target) {
            return Err(Stopped::Superseded);
        }
        Ok(())
    }

    /// Step the state by `event` now; persist, export and log a change.
    async fn apply(&self, tx: &watch::Sender<RolloutStatus>, event: Event) -> Vec<Effect> {
        let mut effects = Vec::new();
        let mut entered = Vec::new();
        let changed = tx.send_if_modified(|s| {
            let before = s.clone();
            effects = s.step(event, OffsetDateTime::now_utc());
            // The stages this step entered: the history past its last
            // entry before (the history is capped, so not by length).
            entered = s
                .history
                .iter()
                .rev()
                .take_while(|e| Some(*e) != before.history.last())
                .map(|(stage, _)| *stage)
                .collect();
            entered.reverse();
            *s != before
        });
        if changed {
            // A copy: the watch is not held while the ledger is written.
            let status = tx.borrow().clone();
            for stage in entered {
                tracing::info!(
                    stage = stage.as_str(),
                    generation = status.generation,
                    "rollout stage"
                );
            }
            self.export(&status);
            self.store.save(status).await;
        }
        effects
    }

    fn export(&self, status: &RolloutStatus) {
        self.metrics
            .rotation_generation
            .set(i64::try_from(status.generation).unwrap_or(i64::MAX));
        for s in super::state::Stage::ALL {
            self.metrics
                .rotation_stage
                .get_or_create(&crate::metrics::StageLabels { stage: s.as_str() })
                .set(i64::from(s == status.stage));
        }
    }
}

async fn sleep_until(deadline: Option<OffsetDateTime>) {
    let left = deadline.map_or(Duration::ZERO, |d| {
        (d - OffsetDateTime::now_utc())
            .try_into()
            .unwrap_or(Duration::ZERO)
    });
    tokio::time::sleep(left + AFTER_BUNDLE).await;
}

/// Whether the configuration moved away from `target` since the rollout to
/// it began (back to the current signer, or to another one).
fn superseded(config: &watch::Receiver<Target>, target: &Target) -> bool {
    config.has_changed().unwrap_or(false) && config.borrow().provider != target.provider
}
