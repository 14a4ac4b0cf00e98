//! A peer trust domain's SPIFFE bundle, checked before meshca trusts it
//! (SPIFFE Trust Domain and Bundle specification, section 4).
//!
//! A bundle does not name its trust domain: the relationship does. What
//! can be checked is that every key is usable, that no authority carries
//! the SPIFFE ID of another trust domain, and that the sequence does not go
//! back (a replayed or stale bundle).

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use meshca_provider::TrustDomain;
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use thiserror::Error;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::jose::Jwk;

/// Why a bundle was refused; the bundle held before is kept.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Refused {
    /// Neither a SPIFFE bundle (JSON) nor PEM certificates.
    #[error("not a SPIFFE bundle: {0}")]
    Parse(String),
    /// An entry cannot be used.
    #[error("keys[{index}] ({usage}): {reason}")]
    Key {
        /// Its position in `keys`.
        index: usize,
        /// Its `use`.
        usage: String,
        /// What is wrong.
        reason: String,
    },
    /// No key at all: a peer cannot be trusted with nothing.
    #[error("it holds no x509-svid or jwt-svid key")]
    Empty,
    /// An authority names another trust domain.
    #[error("keys[{index}] is an authority of trust domain {found}, not {expected}")]
    WrongTrustDomain {
        /// Its position in `keys`.
        index: usize,
        /// The trust domain its SPIFFE ID names.
        found: String,
        /// The trust domain it was fetched for.
        expected: String,
    },
    /// It would lock meshca out: no authority of it verifies the
    /// certificate its own `https_spiffe` endpoint served.
    #[error("it holds no authority of the certificate its own endpoint serves ({0}); trusting it would break the link at the next fetch")]
    LocksOut(String),
    /// Older than the bundle held.
    #[error("spiffe_sequence {got} is lower than {held}, that of the bundle held")]
    SequenceBackwards {
        /// The sequence of the bundle held.
        held: u64,
        /// The sequence of the bundle refused.
        got: u64,
    },
}

/// A validated bundle of a peer trust domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerBundle {
    /// The document, re-encoded: what meshca serves and hands on.
    pub document: Value,
    /// The `x509-svid` authorities.
    pub x509_authorities: Vec<CertificateDer<'static>>,
    /// The `jwt-svid` keys.
    pub jwt_keys: Vec<Jwk>,
    /// `spiffe_sequence`, when given.
    pub sequence: Option<u64>,
    /// `spiffe_refresh_hint`, when given.
    pub refresh_hint: Option<Duration>,
}

impl PeerBundle {
    /// Parse and check a bundle of `trust_domain`: a SPIFFE bundle (JSON),
    /// or PEM certificates (a bundle file written by hand, X.509 only).
    ///
    /// # Errors
    /// [`Refused`], naming the first problem.
    pub fn parse(trust_domain: &TrustDomain, bytes: &[u8]) -> Result<Self, Refused> {
        let text = std::str::from_utf8(bytes).map_err(|_| Refused::Parse("not UTF-8".into()))?;
        if text.trim_start().starts_with("-----BEGIN") {
            return Self::from_pem(trust_domain, text);
        }
        let document: Value =
            serde_json::from_str(text).map_err(|e| Refused::Parse(e.to_string()))?;
        Self::from_document(trust_domain, document)
    }

    fn from_pem(trust_domain: &TrustDomain, text: &str) -> Result<Self, Refused> {
        let certs =
            meshca_provider::pem::decode_certificates(text.as_bytes()).map_err(Refused::Parse)?;
        let document = super::document(&certs, &[], 0, Duration::ZERO);
        let keys = document["keys"].clone();
        Self::from_document(trust_domain, serde_json::json!({ "keys": keys }))
    }

    fn from_document(trust_domain: &TrustDomain, document: Value) -> Result<Self, Refused> {
        let keys = document
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| Refused::Parse("no \"keys\" array".into()))?;
        let mut x509_authorities = Vec::new();
        let mut jwt_keys = Vec::new();
        for (index, entry) in keys.iter().enumerate() {
            let usage = entry.get("use").and_then(Value::as_str).unwrap_or_default();
            let refused = |reason: String| Refused::Key {
                index,
                usage: usage.to_owned(),
                reason,
            };
            match usage {
                // "The use parameter MUST be set" (SPIFFE Trust Domain and
                // Bundle, section 4.2.2): a key of no stated use is a
                // broken bundle, not one to guess at.
                "" => {
                    return Err(refused(
                        "no \"use\": every key of a SPIFFE bundle states its use".into(),
                    ))
                }
                "x509-svid" => {
                    let der = x509_authority(entry).map_err(refused)?;
                    check_trust_domain(&der, trust_domain, index)?;
                    x509_authorities.push(der);
                }
                "jwt-svid" => jwt_keys.push(jwt_key(entry).map_err(refused)?),
                // The specification has clients ignore other uses.
                _ => {}
            }
        }
        if x509_authorities.is_empty() && jwt_keys.is_empty() {
            return Err(Refused::Empty);
        }
        let number = |key: &str| -> Result<Option<u64>, Refused> {
            match document.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| Refused::Parse(format!("{key} is not a non-negative integer"))),
            }
        };
        Ok(Self {
            sequence: number("spiffe_sequence")?,
            refresh_hint: number("spiffe_refresh_hint")?.map(Duration::from_secs),
            x509_authorities,
            jwt_keys,
            document,
        })
    }

    /// Refuse a bundle older than `held` (by sequence, when both have one).
    ///
    /// # Errors
    /// [`Refused::SequenceBackwards`].
    pub fn follows(&self, held: Option<&Self>) -> Result<(), Refused> {
        match (held.and_then(|h| h.sequence), self.sequence) {
            (Some(held), Some(got)) if got < held => Err(Refused::SequenceBackwards { held, got }),
            _ => Ok(()),
        }
    }

    /// The X.509 authorities as PEM, as `<td>.trust-bundle.pem` holds them.
    pub fn pem(&self) -> String {
        meshca_provider::pem::encode_certificates(&self.x509_authorities)
    }
}

/// The certificate of an `x509-svid` entry: exactly one in `x5c`, whose
/// key the entry's own parameters (when given) describe.
fn x509_authority(entry: &Value) -> Result<CertificateDer<'static>, String> {
    let x5c = entry.get("x5c").and_then(Value::as_array).ok_or("no x5c")?;
    let [only] = x5c.as_slice() else {
        return Err(format!(
            "x5c must hold exactly one certificate, not {}",
            x5c.len()
        ));
    };
    let der = only
        .as_str()
        .and_then(|b| STANDARD.decode(b).ok())
        .ok_or("x5c[0] is not base64")?;
    X509Certificate::from_der(&der).map_err(|e| format!("x5c[0] is not a certificate: {e}"))?;
    let described =
        Jwk::of_certificate(&der).ok_or("the certificate's key type is not P-256, P-384 or RSA")?;
    described
        .check_usable()
        .map_err(|e| format!("the certificate's key: {e}"))?;
    for (member, own) in [
        ("kty", Some(&described.kty)),
        ("crv", described.crv.as_ref()),
        ("x", described.x.as_ref()),
        ("y", described.y.as_ref()),
        ("n", described.n.as_ref()),
        ("e", described.e.as_ref()),
    ] {
        if let (Some(given), Some(own)) = (entry.get(member).and_then(Value::as_str), own) {
            if given != own {
                return Err(format!(
                    "its {member} does not match the key of its certificate"
                ));
            }
        }
    }
    Ok(CertificateDer::from(der))
}

/// A `jwt-svid` entry: a `kid` and a usable EC (P-256, P-384) or RSA key.
fn jwt_key(entry: &Value) -> Result<Jwk, String> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| e.to_string())?;
    if jwk.kid.is_empty() {
        return Err("no kid: a JWT-SVID names its key by kid".into());
    }
    jwk.check_usable()?;
    Ok(jwk)
}

/// An authority carrying a SPIFFE ID must carry one of `expected`.
fn check_trust_domain(der: &[u8], expected: &TrustDomain, index: usize) -> Result<(), Refused> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Ok(());
    };
    for uri in meshca_provider::uri_names(&cert) {
        let Some(rest) = uri.strip_prefix("spiffe://") else {
            continue;
        };
        let found = rest.split('/').next().unwrap_or_default();
        if found != expected.as_str() {
            return Err(Refused::WrongTrustDomain {
                index,
                found: found.to_owned(),
                expected: expected.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).expect("valid")
    }

    fn ca(uri: Option<&str>) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("as the test set it up");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("as the test set it up");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        if let Some(uri) = uri {
            params.subject_alt_names.push(rcgen::SanType::URI(
                uri.try_into().expect("as the test set it up"),
            ));
        }
        params
            .self_signed(&key)
            .expect("as the test set it up")
            .der()
            .clone()
    }

    fn document(anchor: &CertificateDer<'_>, sequence: u64) -> Vec<u8> {
        super::super::document(
            std::slice::from_ref(anchor),
            &[],
            sequence,
            Duration::from_secs(60),
        )
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_bundle_meshca_serves_is_accepted_with_its_sequence_and_hint() {
        let anchor = ca(Some("spiffe://b.test"));
        let b = PeerBundle::parse(&td("b.test"), &document(&anchor, 7)).expect("valid");
        assert_eq!(b.x509_authorities, vec![anchor]);
        assert_eq!(b.sequence, Some(7));
        assert_eq!(b.refresh_hint, Some(Duration::from_secs(60)));
        assert!(b.pem().starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn pem_reads_as_an_x509_only_bundle() {
        let anchor = ca(None);
        let pem = meshca_provider::pem::encode_certificates([&anchor]);
        let b = PeerBundle::parse(&td("b.test"), pem.as_bytes()).expect("valid");
        assert_eq!(b.x509_authorities, vec![anchor]);
        assert_eq!(b.sequence, None);
    }

    #[test]
    fn garbage_and_unusable_keys_are_refused_with_the_reason() {
        let b = td("b.test");
        assert!(matches!(
            PeerBundle::parse(&b, b"<html>"),
            Err(Refused::Parse(_))
        ));
        assert!(matches!(
            PeerBundle::parse(&b, b"{\"keys\": []}"),
            Err(Refused::Empty)
        ));
        let two = json!({"keys": [{"use": "x509-svid", "kty": "EC", "x5c": ["AAAA", "AAAA"]}]});
        let e = PeerBundle::parse(&b, two.to_string().as_bytes()).expect_err("refused");
        assert!(e.to_string().contains("exactly one certificate"), "{e}");
        let no_kid =
            json!({"keys": [{"use": "jwt-svid", "kty": "EC", "crv": "P-256", "x": "a", "y": "b"}]});
        let e = PeerBundle::parse(&b, no_kid.to_string().as_bytes()).expect_err("refused");
        assert!(e.to_string().contains("no kid"), "{e}");
        let mut with_bad_key: Value =
            serde_json::from_slice(&document(&ca(None), 1)).expect("json");
        let keys = with_bad_key["keys"].as_array_mut().expect("keys");
        keys.push(json!({"use": "jwt-svid", "kty": "EC", "crv": "P-256", "kid": "k", "x": "AAAA", "y": "AAAA"}));
        let e = PeerBundle::parse(&b, with_bad_key.to_string().as_bytes())
            .expect_err("the whole bundle is refused");
        assert!(
            matches!(&e, Refused::Key { index: 1, .. }) && e.to_string().contains("32 bytes"),
            "{e}"
        );
        let no_use =
            json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "x": "AAAA", "y": "AAAA"}]});
        let e = PeerBundle::parse(&b, no_use.to_string().as_bytes()).expect_err("refused");
        assert!(e.to_string().contains("states its use"), "{e}");
        let future_use: Value = {
            let mut doc: Value = serde_json::from_slice(&document(&ca(None), 1)).expect("json");
            doc["keys"]
                .as_array_mut()
                .expect("keys")
                .push(json!({"use": "wit-svid", "kty": "OKP"}));
            doc
        };
        let ignored = PeerBundle::parse(&b, future_use.to_string().as_bytes())
            .expect("a use meshca does not know is ignored, as the specification asks");
        assert_eq!(ignored.x509_authorities.len(), 1);
        let mut mismatched: Value = serde_json::from_slice(&document(&ca(None), 1)).expect("json");
        mismatched["keys"][0]["x"] = "bm90IHRoZSBrZXk".into();
        let e = PeerBundle::parse(&b, mismatched.to_string().as_bytes()).expect_err("refused");
        assert!(e.to_string().contains("does not match"), "{e}");
    }

    #[test]
    fn an_authority_of_another_trust_domain_is_refused() {
        let e = PeerBundle::parse(&td("b.test"), &document(&ca(Some("spiffe://c.test")), 1))
            .expect_err("refused");
        assert_eq!(
            e,
            Refused::WrongTrustDomain {
                index: 0,
                found: "c.test".into(),
                expected: "b.test".into()
            }
        );
    }

    #[test]
    fn the_sequence_never_goes_back() {
        let anchor = ca(None);
        let held = PeerBundle::parse(&td("b.test"), &document(&anchor, 10)).expect("valid");
        let older = PeerBundle::parse(&td("b.test"), &document(&anchor, 9)).expect("valid");
        let same = PeerBundle::parse(&td("b.test"), &document(&anchor, 10)).expect("valid");
        assert_eq!(
            older.follows(Some(&held)),
            Err(Refused::SequenceBackwards { held: 10, got: 9 })
        );
        assert_eq!(same.follows(Some(&held)), Ok(()));
        assert_eq!(older.follows(None), Ok(()));
    }
}
