//! The rollout's state: its stage, the one ledger of anchors kept beyond
//! the signer in force, and the pure [`RolloutStatus::step`] that moves it.
//!
//! Everything here is a plain value: the driver (`controller`) performs the
//! I/O an [`Effect`] asks for and feeds what happened back as an
//! [`Event`]. Every transition is unit-tested below.

use std::time::Duration;

use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Where a signer change stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// No change under way.
    Steady,
    /// The bundle holds old and new anchors; waiting for it to spread.
    Distribute,
    /// The new provider signs.
    Switch,
    /// Certificates are being re-issued by the new provider.
    Reissue,
    /// Waiting for the last old certificate to expire.
    Retire,
}

impl Stage {
    /// Every stage, in rollout order.
    pub const ALL: [Stage; 5] = [
        Self::Steady,
        Self::Distribute,
        Self::Switch,
        Self::Reissue,
        Self::Retire,
    ];

    /// The name used in JSON, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Steady => "steady",
            Self::Distribute => "distribute",
            Self::Switch => "switch",
            Self::Reissue => "reissue",
            Self::Retire => "retire",
        }
    }
}

/// The rollout's state: the stage and the ledger of retained anchors.
/// Persisted by `ledger`, answered by `GET /v1/rotation` in its own type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutStatus {
    /// The stage.
    pub stage: Stage,
    /// The signer generation (one more at every switch).
    pub generation: u64,
    /// The provider signing now.
    pub provider: String,
    /// The provider being rolled in, during distribute.
    pub incoming: Option<String>,
    /// The incoming provider's anchors, in the bundle from distribute until
    /// the switch has drained. Not persisted: after a restart the
    /// configuration in force signs.
    pub incoming_anchors: Vec<CertificateDer<'static>>,
    /// Anchors kept for certificates of earlier signers.
    pub retained: Vec<Retained>,
    /// Stages entered, oldest first, with their times.
    pub history: Vec<(Stage, OffsetDateTime)>,
}

/// Anchors kept beyond their signer's time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retained {
    /// The generation whose signer they belong to (`None` in state saved
    /// by older versions).
    pub generation: Option<u64>,
    /// The anchors.
    pub anchors: Vec<CertificateDer<'static>>,
    /// When they may leave the bundle; `None` while the last certificate
    /// they signed is not known yet.
    pub until: Option<OffsetDateTime>,
}

/// What happened, fed to [`RolloutStatus::step`].
#[derive(Clone, Debug)]
pub enum Event {
    /// A rollout to `provider` begins: `current` are the anchors of the
    /// signer in force, `incoming` those of the provider rolled in.
    Begin {
        /// The incoming provider's kind.
        provider: String,
        /// The anchors of the signer in force.
        current: Vec<CertificateDer<'static>>,
        /// The incoming provider's anchors.
        incoming: Vec<CertificateDer<'static>>,
    },
    /// The incoming anchors are in every sink and the propagation delay
    /// has passed.
    Distributed,
    /// The rollout stopped before its switch (superseded or failed).
    Aborted,
    /// The previous generation's signatures in flight at the switch are
    /// done; `last_not_after` is the latest NotAfter it issued, if any.
    Drained {
        /// The latest NotAfter issued under the previous generation.
        last_not_after: Option<OffsetDateTime>,
    },
    /// Time passed: retained anchors whose time has come leave.
    Tick,
}

/// What the driver must do after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Make the incoming provider the signer.
    SwitchSigner,
    /// Renew the daemon's own certificate now, under the new signer.
    RenewServing,
    /// Stop the previous provider's task: it signs no more.
    StopPrevious,
    /// Stop the incoming provider's task: it will not sign.
    StopIncoming,
}

/// How many stage entries the history keeps.
const HISTORY: usize = 50;

impl RolloutStatus {
    /// The state of a daemon that has never changed its signer.
    pub fn fresh(provider: &str) -> Self {
        Self {
            stage: Stage::Steady,
            generation: 0,
            provider: provider.to_owned(),
            incoming: None,
            incoming_anchors: Vec::new(),
            retained: Vec::new(),
            history: Vec::new(),
        }
    }

    /// The state to start from after a restart, from what was persisted.
    ///
    /// A rollout interrupted in distribute counts its switch (the
    /// configuration in force names the incoming signer). Retained anchors
    /// whose last certificate was not known yet are kept for `max_ttl`,
    /// the longest any certificate can live, since the issuance records
    /// are gone. A rollout interrupted after its switch keeps retiring.
    pub fn restored(
        persisted: Option<Self>,
        provider: &str,
        max_ttl: Duration,
        now: OffsetDateTime,
    ) -> Self {
        let mut s = persisted.unwrap_or_else(|| Self::fresh(provider));
        if s.stage == Stage::Distribute {
            s.generation += 1;
        }
        for r in &mut s.retained {
            r.until.get_or_insert(now + max_ttl);
        }
        s.retained.retain(|r| r.until.is_some_and(|u| u > now));
        s.stage = if s.retained.is_empty() {
            Stage::Steady
        } else {
            Stage::Retire
        };
        s.provider = provider.to_owned();
        s.incoming = None;
        s.incoming_anchors.clear();
        s
    }

    /// Move the state by `event` at `now`; returns what the driver must
    /// do. An event that does not apply in the current stage changes
    /// nothing.
    pub fn step(&mut self, event: Event, now: OffsetDateTime) -> Vec<Effect> {
        match (self.stage, event) {
            (
                Stage::Steady | Stage::Retire,
                Event::Begin {
                    provider,
                    current,
                    incoming,
                },
            ) => {
                self.incoming = Some(provider);
                self.incoming_anchors = incoming;
                // Noted before anything is switched, so a restart from
                // here keeps the current anchors.
                self.retain(self.generation, current, None);
                self.enter(Stage::Distribute, now);
                Vec::new()
            }
            (Stage::Distribute, Event::Distributed) => {
                self.generation += 1;
                self.provider = self.incoming.take().unwrap_or_default();
                // The incoming anchors stay in the ledger until the switch
                // has drained: until the driver has switched the signer,
                // the signer's own anchors are still the old ones.
                self.enter(Stage::Switch, now);
                self.enter(Stage::Reissue, now);
                vec![Effect::SwitchSigner, Effect::RenewServing]
            }
            (Stage::Distribute, Event::Aborted) => {
                self.incoming = None;
                self.incoming_anchors.clear();
                // The current signer's anchors are not retiring after all.
                let current = self.generation;
                self.retained.retain(|r| r.generation != Some(current));
                self.enter(self.resting_stage(), now);
                vec![Effect::StopIncoming]
            }
            (Stage::Reissue, Event::Drained { last_not_after }) => {
                let previous = self.generation.saturating_sub(1);
                // One second past the last NotAfter: a certificate is valid
                // through its NotAfter.
                let until = last_not_after.unwrap_or(now) + Duration::from_secs(1);
                self.incoming_anchors.clear();
                for r in &mut self.retained {
                    if r.generation == Some(previous) {
                        r.until = Some(until);
                    }
                }
                self.enter(Stage::Retire, now);
                vec![Effect::StopPrevious]
            }
            (_, Event::Tick) => {
                self.retained.retain(|r| r.until.is_none_or(|u| u > now));
                if self.stage == Stage::Retire && self.retained.is_empty() {
                    self.enter(Stage::Steady, now);
                }
                Vec::new()
            }
            (stage, event) => {
                tracing::debug!(stage = stage.as_str(), ?event, "rollout event ignored");
                Vec::new()
            }
        }
    }

    /// Every anchor the bundle must hold besides the signer's own: the
    /// retained sets not yet due to leave, and the incoming set.
    pub fn extra_anchors(&self, now: OffsetDateTime) -> Vec<CertificateDer<'static>> {
        self.retained
            .iter()
            .filter(|r| r.until.is_none_or(|u| u > now))
            .flat_map(|r| r.anchors.iter().cloned())
            .chain(self.incoming_anchors.iter().cloned())
            .collect()
    }

    /// When the next retained set leaves, if any is dated.
    pub fn next_deadline(&self) -> Option<OffsetDateTime> {
        self.retained.iter().filter_map(|r| r.until).min()
    }

    fn retain(
        &mut self,
        generation: u64,
        anchors: Vec<CertificateDer<'static>>,
        until: Option<OffsetDateTime>,
    ) {
        if !self
            .retained
            .iter()
            .any(|r| r.generation == Some(generation))
        {
            self.retained.push(Retained {
                generation: Some(generation),
                anchors,
                until,
            });
        }
    }

    fn resting_stage(&self) -> Stage {
        if self.retained.is_empty() {
            Stage::Steady
        } else {
            Stage::Retire
        }
    }

    fn enter(&mut self, stage: Stage, now: OffsetDateTime) {
        self.stage = stage;
        self.history.push((stage, now));
        if self.history.len() > HISTORY {
            self.history.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor(n: u8) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, n])]
    }

    fn t(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).expect("time")
    }

    fn begin(provider: &str, current: u8, incoming: u8) -> Event {
        Event::Begin {
            provider: provider.into(),
            current: anchor(current),
            incoming: anchor(incoming),
        }
    }

    /// A rollout from `from` to `to`, at retire, the last certificate of
    /// generation 0 expiring at `last`.
    fn retiring_after(from: &str, to: &str, last: OffsetDateTime) -> RolloutStatus {
        let mut s = RolloutStatus::fresh(from);
        s.step(begin(to, 1, 2), t(0));
        s.step(Event::Distributed, t(1));
        s.step(
            Event::Drained {
                last_not_after: Some(last),
            },
            t(2),
        );
        s
    }

    fn stages(s: &RolloutStatus) -> Vec<Stage> {
        s.history.iter().map(|(stage, _)| *stage).collect()
    }

    #[test]
    fn a_rollout_walks_distribute_switch_reissue_retire_then_steady_when_the_old_anchors_are_due() {
        let mut s = RolloutStatus::fresh("tresor");
        assert_eq!(s.step(begin("vault", 1, 2), t(0)), []);
        assert_eq!(s.stage, Stage::Distribute);
        assert_eq!(
            s.extra_anchors(t(0)),
            [anchor(1), anchor(2)].concat(),
            "old and new"
        );

        assert_eq!(
            s.step(Event::Distributed, t(10)),
            [Effect::SwitchSigner, Effect::RenewServing]
        );
        assert_eq!((s.generation, s.provider.as_str()), (1, "vault"));
        assert_eq!(
            s.extra_anchors(t(10)),
            [anchor(1), anchor(2)].concat(),
            "both stay while the signer switches"
        );

        let last = t(3600);
        assert_eq!(
            s.step(
                Event::Drained {
                    last_not_after: Some(last)
                },
                t(12)
            ),
            [Effect::StopPrevious]
        );
        assert_eq!(s.stage, Stage::Retire);
        assert_eq!(s.extra_anchors(t(12)), anchor(1), "the old anchors stay");
        assert_eq!(s.next_deadline(), Some(last + Duration::from_secs(1)));

        s.step(Event::Tick, last);
        assert_eq!(s.stage, Stage::Retire, "valid through its NotAfter");
        assert_eq!(s.extra_anchors(last), anchor(1));
        s.step(Event::Tick, last + Duration::from_secs(1));
        assert_eq!(s.stage, Stage::Steady);
        assert!(s.retained.is_empty() && s.extra_anchors(last).is_empty());
        assert_eq!(
            stages(&s),
            [
                Stage::Distribute,
                Stage::Switch,
                Stage::Reissue,
                Stage::Retire,
                Stage::Steady
            ]
        );
    }

    #[test]
    fn without_any_certificate_issued_by_the_old_signer_its_anchors_leave_a_second_after_the_switch(
    ) {
        let mut s = RolloutStatus::fresh("tresor");
        s.step(begin("vault", 1, 2), t(0));
        s.step(Event::Distributed, t(5));
        s.step(
            Event::Drained {
                last_not_after: None,
            },
            t(7),
        );
        assert_eq!(s.next_deadline(), Some(t(8)));
    }

    #[test]
    fn an_abort_during_distribute_switches_nothing_and_stops_the_incoming_provider() {
        let mut s = RolloutStatus::fresh("tresor");
        s.step(begin("vault", 1, 2), t(0));
        assert_eq!(s.step(Event::Aborted, t(1)), [Effect::StopIncoming]);
        assert_eq!((s.stage, s.generation), (Stage::Steady, 0));
        assert_eq!(s.provider, "tresor");
        assert!(s.incoming.is_none() && s.extra_anchors(t(1)).is_empty());
    }

    #[test]
    fn a_new_rollout_while_retiring_keeps_the_older_anchors_until_their_time() {
        let mut s = retiring_after("a", "b", t(100));
        assert_eq!(s.stage, Stage::Retire);

        // Back to a, while b's predecessor is still retiring.
        s.step(begin("a", 2, 1), t(3));
        assert_eq!(s.stage, Stage::Distribute);
        s.step(Event::Aborted, t(4));
        assert_eq!(
            s.stage,
            Stage::Retire,
            "generation 0's anchors still retire"
        );
        assert_eq!(s.retained.len(), 1);
        assert_eq!(s.retained[0].generation, Some(0));

        s.step(begin("a", 2, 1), t(5));
        s.step(Event::Distributed, t(6));
        s.step(
            Event::Drained {
                last_not_after: Some(t(50)),
            },
            t(7),
        );
        assert_eq!(s.generation, 2);
        let dated: Vec<_> = s.retained.iter().map(|r| (r.generation, r.until)).collect();
        assert_eq!(dated, [(Some(0), Some(t(101))), (Some(1), Some(t(51)))]);
        s.step(Event::Tick, t(60));
        assert_eq!(s.extra_anchors(t(60)), anchor(1));
        s.step(Event::Tick, t(101));
        assert_eq!(s.stage, Stage::Steady);
    }

    #[test]
    fn events_out_of_place_change_nothing() {
        let mut s = RolloutStatus::fresh("tresor");
        let before = s.clone();
        assert_eq!(s.step(Event::Distributed, t(0)), []);
        assert_eq!(s.step(Event::Aborted, t(0)), []);
        assert_eq!(
            s.step(
                Event::Drained {
                    last_not_after: None
                },
                t(0)
            ),
            []
        );
        assert_eq!(s, before);
        s.step(begin("vault", 1, 2), t(0));
        let distributing = s.clone();
        assert_eq!(
            s.step(begin("other", 1, 3), t(1)),
            [],
            "one rollout at a time"
        );
        assert_eq!(s, distributing);
    }

    #[test]
    fn a_restart_in_distribute_counts_the_switch_and_keeps_the_old_anchors_for_max_ttl() {
        let mut s = RolloutStatus::fresh("tresor");
        s.step(begin("vault", 1, 2), t(0));
        let r = RolloutStatus::restored(Some(s), "vault", Duration::from_secs(3600), t(10));
        assert_eq!(
            (r.stage, r.generation, r.provider.as_str()),
            (Stage::Retire, 1, "vault")
        );
        assert_eq!(r.retained[0].until, Some(t(3610)));
        assert!(r.incoming.is_none() && r.incoming_anchors.is_empty());
    }

    #[test]
    fn a_restart_while_retiring_keeps_the_until_time_and_drops_what_is_due() {
        let s = retiring_after("a", "b", t(100));
        let r = RolloutStatus::restored(Some(s.clone()), "b", Duration::from_secs(3600), t(50));
        assert_eq!((r.stage, r.generation), (Stage::Retire, 1));
        assert_eq!(r.retained[0].until, Some(t(101)));
        let late = RolloutStatus::restored(Some(s), "b", Duration::from_secs(3600), t(200));
        assert_eq!(late.stage, Stage::Steady);
        assert!(late.retained.is_empty());
    }

    #[test]
    fn a_first_start_is_steady_at_generation_zero() {
        let r = RolloutStatus::restored(None, "tresor", Duration::from_secs(60), t(0));
        assert_eq!(r, RolloutStatus::fresh("tresor"));
    }

    #[test]
    fn the_persisted_form_keeps_pem_and_rfc3339_and_reads_back_the_same() {
        let s = retiring_after("a", "b", t(100));
        let json: serde_json::Value =
            serde_json::from_slice(&super::super::ledger::encode(&s).expect("encodes"))
                .expect("json");
        assert!(json["retained"][0]["pem"]
            .as_str()
            .is_some_and(|p| p.starts_with("-----BEGIN CERTIFICATE-----")));
        assert_eq!(json["retained"][0]["until"], "2027-01-15T08:01:41Z");
        assert_eq!(json["history"][0][0], "distribute");
        let back =
            super::super::ledger::parse(json.to_string().as_bytes(), "test").expect("parses");
        assert_eq!(back, s);
    }

    #[test]
    fn state_saved_without_generations_still_loads() {
        let pem = meshca_provider::pem::encode_certificates(&anchor(1));
        let old = serde_json::json!({
            "stage": "retire", "generation": 1, "provider": "vault", "incoming": null,
            "retained": [{ "pem": pem, "until": "2027-01-15T08:01:41Z" }],
            "history": [["switch", "2027-01-15T07:00:00Z"]],
        });
        let s =
            super::super::ledger::parse(old.to_string().as_bytes(), "test").expect("older state");
        assert_eq!(s.retained[0].generation, None);
        assert_eq!(s.retained[0].anchors, anchor(1));
        assert_eq!(s.retained[0].until, Some(t(101)));
    }
}
