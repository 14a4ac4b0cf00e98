use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::Identity;

/// How far a leaf's NotBefore is set in the past, so that a peer whose clock
/// is slightly behind does not reject a certificate issued a moment ago.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// A name, beyond the identity's own, that only the daemon's serving
/// certificate carries: the host names and addresses clients dial.
///
/// The signing API never puts one in a [`LeafProfile`]; workloads get exactly
/// their identity's names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServerName {
    /// A DNS name, e.g. `meshca.osm-system.svc`.
    Dns(String),
    /// An IP address, e.g. `127.0.0.1`.
    Ip(IpAddr),
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(d) => f.write_str(d),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl ServerName {
    /// Parse a configured name: an IP literal if it is one, else a DNS name.
    pub fn parse(s: &str) -> Self {
        match s.parse::<IpAddr>() {
            Ok(ip) => Self::Ip(ip),
            Err(_) => Self::Dns(s.to_owned()),
        }
    }
}

/// What a leaf certificate must be, decided by policy before any provider is
/// called: for whom, for how long, and (for the daemon only) which extra
/// server names.
///
/// Providers turn it into their own request shape; the [`Checked`] wrapper
/// then holds what they return to it.
///
/// [`Checked`]: crate::Checked
#[derive(Clone, Debug)]
pub struct LeafProfile {
    identity: Identity,
    ttl: Duration,
    /// The longest lifetime meshca hands out; a backend may return a leaf
    /// longer than requested (cert-manager issuers round up) up to this.
    ceiling: Duration,
    extra_names: Vec<ServerName>,
}

impl LeafProfile {
    /// A workload leaf for `identity`, valid for `ttl` (already clamped to
    /// the configured bounds by the caller).
    pub fn workload(identity: Identity, ttl: Duration) -> Self {
        Self {
            identity,
            ttl,
            ceiling: ttl,
            extra_names: Vec::new(),
        }
    }

    /// Accept a leaf up to `ceiling` (never below the requested lifetime):
    /// the configured `certificates.max_ttl`.
    #[must_use]
    pub fn with_ceiling(mut self, ceiling: Duration) -> Self {
        self.ceiling = ceiling.max(self.ttl);
        self
    }

    /// The longest lifetime a returned leaf may have.
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }

    /// The daemon's own serving leaf: its identity plus the names clients
    /// dial it by.
    pub fn server(identity: Identity, ttl: Duration, names: Vec<ServerName>) -> Self {
        Self {
            identity,
            ttl,
            ceiling: ttl,
            extra_names: names,
        }
    }

    /// Whom the certificate is for.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Requested lifetime from now. Providers may return less (a Vault role's
    /// `max_ttl`); the real expiry is always read from the certificate.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Extra server names (empty for workloads).
    pub fn extra_names(&self) -> &[ServerName] {
        &self.extra_names
    }

    /// Every DNS SAN the leaf must carry, identity name first.
    pub fn dns_names(&self) -> Vec<String> {
        let mut names = vec![self.identity.dns_name()];
        for n in &self.extra_names {
            if let ServerName::Dns(d) = n {
                if !names.contains(d) {
                    names.push(d.clone());
                }
            }
        }
        names
    }

    /// Every SAN the leaf must carry, as `DNS:…`, `URI:…` and `IP:…`
    /// strings: the one form in which requested, expected and issued names
    /// are compared.
    pub(crate) fn san_set(&self) -> BTreeSet<String> {
        let mut set: BTreeSet<String> = self
            .dns_names()
            .into_iter()
            .map(|d| format!("DNS:{d}"))
            .collect();
        set.insert(format!("URI:{}", self.identity.spiffe_id()));
        set.extend(self.ip_addresses().iter().map(|ip| format!("IP:{ip}")));
        set
    }

    /// Every IP SAN the leaf must carry.
    pub fn ip_addresses(&self) -> Vec<IpAddr> {
        self.extra_names
            .iter()
            .filter_map(|n| match n {
                ServerName::Ip(ip) => Some(*ip),
                ServerName::Dns(_) => None,
            })
            .collect()
    }
}
