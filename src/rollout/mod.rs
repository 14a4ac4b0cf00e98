//! Changing the signer (another provider, or a new root) without a gap in
//! trust, in stages visible at `GET /v1/rotation`:
//!
//! 1. **distribute**: the bundle holds the current and the incoming
//!    anchors; wait until every sink has it, then the propagation delay;
//! 2. **switch**: the incoming provider signs from now on;
//! 3. **reissue**: the daemon's own certificate is renewed at once; agents
//!    see a new generation on `/v1/bundle` and renew early, with jitter;
//! 4. **retire**: once the last certificate the previous provider issued
//!    has expired (tracked at issuance), its anchors leave the bundle.
//!
//! Retained anchors and the stage are persisted (`ledger`), so a restart
//! does not drop anchors that valid certificates still chain to.
//!
//! The stages are a pure state machine ([`RolloutStatus::step`], in
//! `state`); `controller` is the driver that performs what each step asks
//! and feeds back what happened. The one ledger of anchors kept beyond the
//! signer in force lives in the status; `refresh` puts it in the bundle.
//! Leaf renewal timing is another matter, in `crate::renewal`.

mod config;
mod controller;
pub mod ledger;
mod peers;
mod refresh;
mod report;
mod signer;
mod state;

pub use config::{RawRotation, RotationConfig};
pub use controller::{Rollout, Target};
pub use peers::Peers;
pub use refresh::anchor_refresher;
pub use report::RotationReport;
pub use signer::Signer;
pub use state::{RolloutStatus, Stage};
