use std::fmt;

use thiserror::Error;

/// The SPIFFE trust domain every identity of one mesh lives in.
///
/// It is both the suffix of the DNS name (`SA.NS.<td>`) and the authority of
/// the SPIFFE ID (`spiffe://<td>/…`), so it must be a valid DNS name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parse a trust domain, refusing anything that is not a lower-case DNS name.
    pub fn new(value: &str) -> Result<Self, IdentityError> {
        if !is_dns_subdomain(value) {
            return Err(IdentityError::TrustDomain(value.to_owned()));
        }
        Ok(Self(value.to_owned()))
    }

    /// The trust domain as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A workload identity: a Kubernetes ServiceAccount in a namespace, within a
/// trust domain.
///
/// An `Identity` is only ever built from an authenticated credential (a
/// token's binding or a certificate meshca issued), never from what a CSR asks
/// for; the CSR is checked against it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: TrustDomain,
    namespace: String,
    service_account: String,
}

/// Why a name could not be turned into an [`Identity`].
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityError {
    /// The trust domain is not a lower-case DNS name.
    #[error("invalid trust domain {0:?}: expected a lower-case DNS name such as cluster.local")]
    TrustDomain(String),
    /// The namespace is not a Kubernetes namespace name (an RFC 1123 label).
    #[error(
        "invalid namespace {0:?}: expected a lower-case RFC 1123 label of at most 63 characters"
    )]
    Namespace(String),
    /// The service account is not a Kubernetes ServiceAccount name.
    #[error("invalid service account {0:?}: expected a lower-case RFC 1123 label of at most 63 characters")]
    ServiceAccount(String),
    /// The text is not a SPIFFE ID of the form `spiffe://TD/ns/NS/sa/SA`.
    #[error("invalid SPIFFE ID {0:?}: expected spiffe://<trust domain>/ns/<namespace>/sa/<service account>")]
    SpiffeId(String),
}

impl Identity {
    /// Build the identity of ServiceAccount `service_account` in `namespace`.
    ///
    /// Both must be RFC 1123 labels: dots would make `SA.NS.TD` ambiguous.
    pub fn new(
        trust_domain: TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        if !is_dns_label(namespace) {
            return Err(IdentityError::Namespace(namespace.to_owned()));
        }
        if !is_dns_label(service_account) {
            return Err(IdentityError::ServiceAccount(service_account.to_owned()));
        }
        Ok(Self {
            trust_domain,
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// Parse `spiffe://TD/ns/NS/sa/SA`, as found in the URI SAN of a
    /// certificate meshca issued.
    pub fn from_spiffe_id(uri: &str) -> Result<Self, IdentityError> {
        let bad = || IdentityError::SpiffeId(uri.to_owned());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(bad)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        Self::new(TrustDomain::new(td)?, ns, sa)
    }

    /// The trust domain this identity belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes ServiceAccount name.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// `SA.NS.TD`: the DNS SAN and subject CN, the name peers such as nginx
    /// check with `proxy_ssl_name`.
    pub fn dns_name(&self) -> String {
        format!(
            "{}.{}.{}",
            self.service_account, self.namespace, self.trust_domain
        )
    }

    /// `spiffe://TD/ns/NS/sa/SA`: the URI SAN.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}",
            self.service_account, self.namespace, self.trust_domain
        )
    }
}

fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Every URI SAN of `cert`, in order: an X509-SVID carries exactly one,
/// its SPIFFE ID.
pub fn uri_names<'a>(cert: &'a x509_parser::certificate::X509Certificate<'a>) -> Vec<&'a str> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("cluster.local").expect("valid trust domain")
    }

    #[test]
    fn names_follow_the_mesh_convention() {
        let id = Identity::new(td(), "bookstore", "bookstore-v1").expect("valid");
        assert_eq!(id.dns_name(), "bookstore-v1.bookstore.cluster.local");
        assert_eq!(
            id.spiffe_id(),
            "spiffe://cluster.local/ns/bookstore/sa/bookstore-v1"
        );
        assert_eq!(Identity::from_spiffe_id(&id.spiffe_id()), Ok(id));
    }

    #[test]
    fn malformed_names_are_refused() {
        assert!(Identity::new(td(), "Book", "a").is_err());
        assert!(Identity::new(td(), "a.b", "a").is_err());
        assert!(Identity::new(td(), "ns", "").is_err());
        assert!(Identity::new(td(), "ns", "-sa").is_err());
        assert!(TrustDomain::new("Cluster.local").is_err());
        assert!(TrustDomain::new("cluster..local").is_err());
        for bad in [
            "spiffe://cluster.local/ns/a/sa/b/c",
            "spiffe://cluster.local/ns/a",
            "https://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/sa/a/ns/b",
        ] {
            assert!(Identity::from_spiffe_id(bad).is_err(), "{bad}");
        }
    }
}
