use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::Identity;

/// How far a leaf's NotBefore is set in the past, so that a peer whose clock
/// is slightly behind does not reject a certificate issued a moment ago.
/// The backdate counts inside the leaf's lifetime: NotAfter moves earlier
/// by as much.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// The backdate for a leaf of `lifetime`: [`CLOCK_SKEW_ALLOWANCE`], or a
/// tenth of a lifetime under ten minutes, so that a leaf of a few seconds
/// is not over before it reaches its holder. Whole seconds, as X.509
/// times are: a fraction would be cut from NotBefore and NotAfter alike
/// and could end a one-second leaf before it is issued.
pub fn backdate_for(lifetime: Duration) -> Duration {
    Duration::from_secs((lifetime / 10).as_secs()).min(CLOCK_SKEW_ALLOWANCE)
}

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
/// Lifetimes are validity windows, NotAfter − NotBefore, because that is
/// what relying parties bound: kube-apiserver refuses a pod certificate
/// whose window exceeds `maxExpirationSeconds`, whatever the signer's
/// backdate. A provider that backdates NotBefore (for clock skew) takes the
/// backdate out of the lifetime it asks its backend for.
///
/// Providers turn it into their own request shape; the [`Checked`] wrapper
/// then holds what they return to it, window included.
///
/// [`Checked`]: crate::Checked
#[derive(Clone, Debug)]
pub struct LeafProfile {
    identity: Identity,
    lifetime: Duration,
    /// The shortest window accepted: a backend may cap the lifetime (a
    /// Vault role's `max_ttl`), but not below what the caller needs.
    floor: Duration,
    /// The longest window accepted; a backend may return a leaf longer
    /// than requested (cert-manager issuers round up) up to this.
    ceiling: Duration,
    extra_names: Vec<ServerName>,
    /// Whether the identity's DNS name is a SAN (always, but for a leaf
    /// named only by its SPIFFE ID: see [`LeafProfile::spiffe_id_only`]).
    identity_dns: bool,
    /// Where relying parties fetch the CRL covering it, written into the
    /// leaf by providers that build it (Tresor); a Vault mount and a
    /// cert-manager issuer write their own.
    crl_url: Option<String>,
}

impl LeafProfile {
    /// A workload leaf for `identity` whose validity window is `lifetime`
    /// (already clamped to the configured bounds by the caller). Shorter
    /// leaves are accepted, longer ones are not.
    pub fn workload(identity: Identity, lifetime: Duration) -> Self {
        Self {
            identity,
            lifetime,
            floor: Duration::ZERO,
            ceiling: lifetime,
            extra_names: Vec::new(),
            identity_dns: true,
            crl_url: None,
        }
    }

    /// Name `url` as the leaf's CRL distribution point.
    #[must_use]
    pub fn with_crl_url(mut self, url: Option<String>) -> Self {
        self.crl_url = url;
        self
    }

    /// The CRL distribution point to write, if any.
    pub fn crl_url(&self) -> Option<&str> {
        self.crl_url.as_deref()
    }

    /// The same workload leaf named by its SPIFFE ID alone (an X509-SVID's
    /// one required SAN), for a CSR that names only that, signed by a
    /// backend that signs only what a CSR names (cert-manager): Istio's
    /// agents ask so. A leaf with server names keeps them all.
    #[must_use]
    pub fn spiffe_id_only(mut self) -> Self {
        self.identity_dns = !self.extra_names.is_empty();
        self
    }

    /// Accept a leaf up to `ceiling` (never below the requested lifetime):
    /// the configured `certificates.max_ttl`.
    #[must_use]
    pub fn with_ceiling(mut self, ceiling: Duration) -> Self {
        self.ceiling = ceiling.max(self.lifetime);
        self
    }

    /// Refuse a leaf shorter than `floor` (never above the requested
    /// lifetime): the hour kube-apiserver requires of pod certificates.
    #[must_use]
    pub fn with_floor(mut self, floor: Duration) -> Self {
        self.floor = floor.min(self.lifetime);
        self
    }

    /// The longest validity window a returned leaf may have.
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }

    /// The shortest validity window a returned leaf may have.
    pub fn floor(&self) -> Duration {
        self.floor
    }

    /// The daemon's own serving leaf: its identity plus the names clients
    /// dial it by.
    pub fn server(identity: Identity, lifetime: Duration, names: Vec<ServerName>) -> Self {
        Self {
            extra_names: names,
            ..Self::workload(identity, lifetime)
        }
    }

    /// Whom the certificate is for.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The requested validity window, NotAfter − NotBefore, backdate
    /// included. Providers may return less (a Vault role's `max_ttl`), down
    /// to [`LeafProfile::floor`]; the real validity is always read from the
    /// certificate.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Extra server names (empty for workloads).
    pub fn extra_names(&self) -> &[ServerName] {
        &self.extra_names
    }

    /// Every DNS SAN the leaf must carry, identity name first.
    pub fn dns_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        if self.identity_dns {
            names.push(self.identity.dns_name());
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrustDomain;

    #[test]
    fn a_spiffe_id_only_leaf_names_the_uri_alone_but_a_server_keeps_its_names() {
        let id = Identity::new(TrustDomain::new("cluster.local").expect("td"), "web", "web")
            .expect("identity");
        let workload = LeafProfile::workload(id.clone(), Duration::from_secs(60));
        assert_eq!(
            workload.san_set(),
            BTreeSet::from([
                "DNS:web.web.cluster.local".to_owned(),
                "URI:spiffe://cluster.local/ns/web/sa/web".to_owned()
            ])
        );
        assert_eq!(
            workload.spiffe_id_only().san_set(),
            BTreeSet::from(["URI:spiffe://cluster.local/ns/web/sa/web".to_owned()])
        );
        let server = LeafProfile::server(
            id,
            Duration::from_secs(60),
            vec![ServerName::parse("localhost")],
        );
        assert_eq!(server.clone().spiffe_id_only().san_set(), server.san_set());
    }
}
