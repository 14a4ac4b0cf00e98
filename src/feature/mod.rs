//! How a feature plugs into the daemon.
//!
//! A feature (JWT-SVIDs, federation, Istio's CA, pod certificates, ingress
//! Secrets, Events) is one folder under `features/` exporting one
//! [`Definition`]: the config sections it owns and how it reads them into a
//! [`Feature`]. The daemon is the list of definitions (`features::ALL`);
//! everything a feature adds comes back through a [`Plug`], in two phases
//! whose order the daemon keeps:
//!
//! 1. [`Feature::prepare`], before the issuer exists: bundle sinks, a token
//!    minter, the JWT keys and peers' bundles the SPIFFE bundle endpoints
//!    serve, tasks;
//! 2. [`Feature::start`], with the issuer, the serving certificate and the
//!    caller authentication: routes on the signing API, listeners of its
//!    own, `/readyz` reasons, tasks.
//!
//! A feature also says which listeners it binds (so the config refuses
//! clashes), which names meshca's serving certificate must carry for it,
//! and its lines of `meshca config check`. Its metrics it registers itself
//! (`Metrics::register`), its Kubernetes adapter lives in its folder, and
//! its tasks are spawned by the supervisor under their names, through
//! [`Plug::task`]. Nothing outside `features/` names a feature.

mod command;
mod plug;
mod settings;

pub use command::{author, cluster, Command, LoadSettings, Settings, EX_USAGE};
pub use plug::{Listener, ListenerTls, Plug};
pub use settings::{Common, Features, Sections, Syntax};

use std::any::Any;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meshca_provider::{Identity, ServerName, TrustDomain};
use tokio::sync::{watch, Notify};

use crate::auth::{Authenticator, TokenReviewer};
use crate::bundle::spiffe::Served;
use crate::bundle::BundleReceiver;
use crate::cluster::Cluster;
use crate::custody::{CustodyConfig, CustodyMetrics};
use crate::issuer::{Issuer, Lifetimes};
use crate::listener::ServingTls;
use crate::metrics::Metrics;
use crate::rollout::RolloutStatus;
use crate::validation::Errors;

/// A feature before the config is read: the top-level config sections it
/// owns, and how it reads them.
pub struct Definition {
    /// The sections (top-level keys) of the config file it owns.
    pub sections: &'static [&'static str],
    /// Its settings from its sections; `None` when it is off. Problems of
    /// value go into `errors` (all are reported at once), settings that
    /// will have no effect into `warnings`.
    ///
    /// # Errors
    /// [`Syntax`]: a section does not parse (unknown key, wrong type).
    pub configure: Configure,
    /// The commands it adds to `meshca`.
    pub commands: &'static [Command],
}

/// How a feature reads its sections: with what it may read of the rest,
/// into the problems and warnings of the whole file.
pub type Configure = fn(
    &Sections<'_>,
    &Common<'_>,
    &mut Errors,
    &mut Vec<String>,
) -> Result<Option<Arc<dyn Feature>>, Syntax>;

/// Why a feature could not start. It reads `failed to start F: why`, so
/// a start error says why on its own line; its source is why's source, so
/// a chain of causes tells each once.
#[derive(Debug)]
pub struct FeatureError {
    /// The feature.
    pub feature: &'static str,
    /// Why.
    pub reason: Box<dyn std::error::Error + Send + Sync>,
}

impl std::fmt::Display for FeatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "failed to start {}: {}", self.feature, self.reason)
    }
}

impl std::error::Error for FeatureError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.reason.source()
    }
}

impl FeatureError {
    /// `source`, as `feature`'s.
    pub fn of(
        feature: &'static str,
    ) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> Self {
        move |reason| Self { feature, reason }
    }
}

/// What `meshca config check` says of a feature.
#[derive(Debug, Default)]
pub struct Plan {
    /// Where it puts the trust bundle.
    pub sinks: Vec<String>,
    /// One line per aspect.
    pub lines: Vec<String>,
}

/// A configured feature: its settings, and what the daemon asks of it.
#[async_trait::async_trait]
pub trait Feature: Send + Sync + std::fmt::Debug + 'static {
    /// Its name, for logs and errors.
    fn name(&self) -> &'static str;

    /// The listeners it binds, by config key: no two may share a port.
    fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        Vec::new()
    }

    /// The names meshca's serving certificate must carry for it.
    fn server_names(&self) -> Vec<ServerName> {
        Vec::new()
    }

    /// Its lines of `meshca config check`.
    fn plan(&self, common: &Common<'_>) -> Plan;

    /// Before the issuer exists.
    ///
    /// # Errors
    /// [`FeatureError`]: the start stops.
    async fn prepare(&self, _core: &Core, _plug: &mut Plug) -> Result<(), FeatureError> {
        Ok(())
    }

    /// With the issuer, the serving certificate and caller authentication.
    ///
    /// # Errors
    /// [`FeatureError`]: the start stops.
    async fn start(&self, _ctx: &Context<'_>, _plug: &mut Plug) -> Result<(), FeatureError> {
        Ok(())
    }

    /// Itself, to be found by type ([`Features::find`]).
    fn as_any(&self) -> &dyn Any;
}

/// What exists before features prepare.
#[derive(Clone)]
pub struct Core {
    /// The mesh's trust domain.
    pub trust_domain: TrustDomain,
    /// The daemon's own identity.
    pub daemon_identity: Identity,
    /// Where meshca keeps its files.
    pub state_dir: PathBuf,
    /// Workload certificate lifetimes.
    pub lifetimes: Lifetimes,
    /// `rotation.propagation_delay`: how long a new anchor or key is
    /// published before it is used.
    pub propagation_delay: Duration,
    /// The cluster, when meshca runs with one.
    pub cluster: Option<Cluster>,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// The custodian of meshca's long-lived keys (`key_custody:`), when
    /// not meshca's own files.
    pub key_custody: Option<CustodyConfig>,
    /// The key-custody metrics, shared by every user of a custodian.
    pub custody_metrics: CustodyMetrics,
    /// The trust bundle.
    pub bundle: BundleReceiver,
    /// Wakes the bundle publisher (a sink saw its copy changed).
    pub resync: Arc<Notify>,
}

/// What features start with.
pub struct Context<'a> {
    /// What exists before features prepare.
    pub core: &'a Core,
    /// The issuer every frontend shares.
    pub issuer: Issuer,
    /// The signing API's caller authentication.
    pub auth: Authenticator,
    /// The TokenReview cache every frontend shares, with a cluster.
    pub reviewer: Option<Arc<TokenReviewer>>,
    /// meshca's own serving certificate.
    pub serving: ServingTls,
    /// `api.max_body_bytes`: the largest request body a frontend on the
    /// signing API reads.
    pub max_body_bytes: usize,
    /// This trust domain's SPIFFE bundle as served.
    pub spiffe: Arc<Served>,
    /// The features in force, followed as the config file changes.
    pub features: watch::Receiver<Features>,
    /// The signer rollout's state.
    pub rollout: watch::Receiver<RolloutStatus>,
    /// What the health monitor found wrong in its last round.
    pub probes: watch::Receiver<Vec<String>>,
}
