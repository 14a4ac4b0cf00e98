//! TLS handshakes counted by listener and key exchange group, so that an
//! operator sees how much of the traffic is protected by the hybrid
//! post-quantum exchange (X25519MLKEM768) and which clients still offer
//! only classical groups.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::NamedGroup;

/// Labels of `meshca_tls_handshakes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// The listener (`api-server`, `istio-ca-server`, ...).
    pub listener: &'static str,
    /// The key exchange group negotiated: `X25519MLKEM768`, `X25519`,
    /// `secp256r1`, `secp384r1`, or `other`.
    pub group: &'static str,
}

/// One listener's count of its handshakes.
#[derive(Clone, Debug)]
pub struct Handshakes {
    listener: &'static str,
    counts: Family<HandshakeLabels, Counter>,
}

impl Handshakes {
    /// Handshakes of `listener`, counted in `counts` (the daemon's one
    /// `meshca_tls_handshakes_total`).
    pub fn new(listener: &'static str, counts: Family<HandshakeLabels, Counter>) -> Self {
        Self { listener, counts }
    }

    /// One completed handshake that agreed on `group`.
    pub(super) fn record(&self, group: Option<&dyn rustls::crypto::SupportedKxGroup>) {
        let group = group.map_or("other", |g| group_name(g.name()));
        self.counts
            .get_or_create(&HandshakeLabels {
                listener: self.listener,
                group,
            })
            .inc();
    }
}

/// The group's IANA name, for the groups meshca offers.
fn group_name(group: NamedGroup) -> &'static str {
    match group {
        NamedGroup::X25519MLKEM768 => "X25519MLKEM768",
        NamedGroup::X25519 => "X25519",
        NamedGroup::secp256r1 => "secp256r1",
        NamedGroup::secp384r1 => "secp384r1",
        NamedGroup::secp521r1 => "secp521r1",
        NamedGroup::MLKEM768 => "MLKEM768",
        _ => "other",
    }
}
