//! A trust domain's SPIFFE bundle (SPIFFE Trust Domain and Bundle
//! specification): the document meshca serves for its own trust domain
//! ([`Served`]: its anchors and, with JWT-SVIDs, the keys a [`JwtKeys`]
//! gives), the peers' bundles a [`PeerBundles`] holds, and the check of a
//! peer's before it is trusted (`peer`).

mod peer;

pub use peer::{PeerBundle, Refused};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshca_provider::Identity;

use super::BundleReceiver;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};

use crate::jose::Jwk;

/// How often peers should fetch this trust domain's bundle, unless the
/// bundle endpoint says otherwise.
pub const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(5 * 60);

/// The JWT keys this trust domain's SPIFFE bundle carries.
pub trait JwtKeys: Send + Sync + std::fmt::Debug {
    /// The keys relying parties must know now.
    fn jwt_keys(&self) -> Vec<Jwk>;
}

/// A peer trust domain's bundle, as a caller may ask for it.
#[derive(Clone, Debug)]
pub struct PeerLookup {
    /// The namespaces whose workloads receive it; empty: every workload.
    pub namespaces: Vec<String>,
    /// Its SPIFFE bundle, once fetched.
    pub document: Option<Value>,
}

impl PeerLookup {
    /// Whether a workload of `identity` receives it.
    pub fn visible_to(&self, identity: &Identity) -> bool {
        self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == identity.namespace())
    }
}

/// The peers' bundles held now.
pub trait PeerBundles: Send + Sync + std::fmt::Debug {
    /// The peer `trust_domain`, if it is one.
    fn lookup(&self, trust_domain: &str) -> Option<PeerLookup>;

    /// The bundles a workload of `identity` receives, keyed by
    /// `spiffe://<trust domain>` as the Workload API keys them.
    fn visible_to(&self, identity: &Identity) -> BTreeMap<String, Value>;
}

/// This trust domain's SPIFFE bundle as served: the anchors in force, the
/// JWT keys when JWT-SVIDs are on, numbered by a sequence that moves with
/// every change; and the peers' bundles, with federation.
#[derive(Debug)]
pub struct Served {
    /// This mesh's trust domain.
    pub trust_domain: meshca_provider::TrustDomain,
    /// `spiffe_refresh_hint`.
    pub refresh_hint: Duration,
    /// The trust bundle.
    pub bundle: BundleReceiver,
    /// The JWT keys, with JWT-SVIDs.
    pub jwt_keys: Option<Arc<dyn JwtKeys>>,
    /// The peers' bundles, with federation.
    pub peers: Option<Arc<dyn PeerBundles>>,
    /// Numbers the documents.
    pub sequence: Sequence,
}

impl Served {
    /// The document now.
    pub fn own(&self) -> Value {
        let anchors = self.bundle.borrow().clone();
        let jwt_keys = self
            .jwt_keys
            .as_ref()
            .map(|k| k.jwt_keys())
            .unwrap_or_default();
        let mut bundle = document(anchors.anchors(), &jwt_keys, 0, self.refresh_hint);
        let now = time::OffsetDateTime::now_utc()
            .unix_timestamp()
            .unsigned_abs();
        bundle["spiffe_sequence"] = self.sequence.of(&bundle["keys"], now).into();
        bundle
    }
}

/// A JWK with the members `extra` adds (`use`, `alg`, `x5c`).
pub fn member(jwk: &Jwk, extra: Value) -> Value {
    let mut value = serde_json::to_value(jwk).unwrap_or_default();
    if let (Some(target), Value::Object(extra)) = (value.as_object_mut(), extra) {
        target.extend(extra);
    }
    value
}

/// A trust domain's SPIFFE bundle: its X.509 anchors (`x5c`, with the key
/// they hold, as JWK parsers check) and its published JWT keys.
pub fn document(
    anchors: &[CertificateDer<'_>],
    jwt_keys: &[Jwk],
    sequence: u64,
    refresh_hint: Duration,
) -> Value {
    let mut keys: Vec<Value> = anchors
        .iter()
        .filter_map(|der| {
            let Some(jwk) = Jwk::of_certificate(der) else {
                tracing::warn!("a trust anchor's key type cannot be described in a SPIFFE bundle; it is left out");
                return None;
            };
            let mut value = member(
                &jwk,
                json!({ "use": "x509-svid", "x5c": [STANDARD.encode(der)] }),
            );
            // An x509-svid entry is found by its certificate, not by a kid.
            if let Some(o) = value.as_object_mut() {
                o.remove("kid");
            }
            Some(value)
        })
        .collect();
    keys.extend(
        jwt_keys
            .iter()
            .map(|jwk| member(jwk, json!({ "use": "jwt-svid" }))),
    );
    json!({
        "keys": keys,
        "spiffe_sequence": sequence,
        "spiffe_refresh_hint": refresh_hint.as_secs(),
    })
}

/// `spiffe_sequence`: greater with every change of the bundle's keys this
/// process serves. It starts from the Unix time, so a restarted daemon
/// continues above what it served before.
#[derive(Debug, Default)]
pub struct Sequence {
    last: Mutex<Option<(Vec<u8>, u64)>>,
}

impl Sequence {
    /// The sequence number of a bundle whose keys are `keys` (the
    /// rendered `keys` array), `now` being the Unix time.
    pub fn of(&self, keys: &Value, now: u64) -> u64 {
        let digest = crate::crypto::sha256(keys.to_string().as_bytes()).to_vec();
        let Ok(mut last) = self.last.lock() else {
            return now;
        };
        match &*last {
            Some((seen, n)) if *seen == digest => *n,
            previous => {
                let n = previous.as_ref().map_or(now, |(_, n)| now.max(n + 1));
                *last = Some((digest, n));
                n
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_moves_only_when_the_keys_do_and_never_back() {
        let s = Sequence::default();
        let a = json!([{"kid": "a"}]);
        let b = json!([{"kid": "b"}]);
        assert_eq!(s.of(&a, 1000), 1000);
        assert_eq!(s.of(&a, 1005), 1000, "same keys, same number");
        assert_eq!(s.of(&b, 1005), 1005);
        assert_eq!(
            s.of(&a, 1005),
            1006,
            "a change within the second still counts"
        );
    }

    #[test]
    fn an_anchor_is_an_x509_svid_key_with_its_certificate_and_no_kid() {
        let key = rcgen::KeyPair::generate().expect("as the test set it up");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("as the test set it up");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("as the test set it up");
        let bundle = document(&[cert.der().clone()], &[], 7, Duration::from_secs(300));
        let entry = &bundle["keys"][0];
        assert_eq!(entry["use"], "x509-svid");
        assert_eq!(entry["kty"], "EC");
        assert_eq!(entry["crv"], "P-256");
        assert_eq!(entry["x5c"][0], STANDARD.encode(cert.der()));
        assert!(entry.get("kid").is_none());
        assert_eq!(bundle["spiffe_sequence"], 7);
        assert_eq!(bundle["spiffe_refresh_hint"], 300);
    }
}
