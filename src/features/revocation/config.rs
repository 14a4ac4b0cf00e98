//! `revocation:`: how often the CRLs are made again, and where relying
//! parties fetch them.

use std::time::Duration;

use serde::Deserialize;

use crate::validation::Errors;

/// The shortest `crl_next_update`: data planes fetch the lists about as
/// often as that, and each list is made again at half of it.
const MIN_NEXT_UPDATE: Duration = Duration::from_secs(60);
/// The longest: a verifier keeps a list until its `nextUpdate`, so a
/// revocation missed by one fetch must not wait longer than this.
const MAX_NEXT_UPDATE: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// `revocation:` as validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationConfig {
    /// How long after `thisUpdate` a list's `nextUpdate` is.
    pub crl_next_update: Duration,
    /// The CRL Distribution Points URL written into leaves, if any.
    pub crl_url: Option<String>,
    /// The identities (`namespace/service-account`) that may revoke
    /// through `POST /v1/revocations`; none by default.
    pub admins: Vec<String>,
}

/// `revocation:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRevocation {
    #[serde(with = "humantime_serde")]
    crl_next_update: Duration,
    crl_url: Option<String>,
    admins: Vec<String>,
}

impl Default for RawRevocation {
    fn default() -> Self {
        Self {
            crl_next_update: Duration::from_secs(10 * 60),
            crl_url: None,
            admins: Vec::new(),
        }
    }
}

/// `crl_url` checked: an absolute `http` or `https` URL with a host and
/// nothing a CRL fetcher would not send (credentials, a fragment).
fn crl_url(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "{text:?} must be an http:// or https:// URL with a host (most CRL fetchers, OpenSSL's among them, speak plain HTTP)"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{text:?} must carry no credentials and no fragment: it is written into every leaf"
        ));
    }
    Ok(url.to_string())
}

impl RawRevocation {
    /// The section, or its problems in `errors`.
    pub fn validate(&self, errors: &mut Errors) -> Option<RevocationConfig> {
        let next = self.crl_next_update;
        let mut valid = true;
        if !(MIN_NEXT_UPDATE..=MAX_NEXT_UPDATE).contains(&next) {
            errors.add(
                "revocation.crl_next_update",
                format!(
                    "{} is outside 1m..7d: verifiers keep a list until its nextUpdate",
                    humantime::format_duration(next)
                ),
            );
            valid = false;
        }
        let url = self.crl_url.as_deref().map(crl_url).transpose();
        let url = url.unwrap_or_else(|e| {
            errors.add("revocation.crl_url", e);
            valid = false;
            None
        });
        for (i, admin) in self.admins.iter().enumerate() {
            if let Err(e) = super::revoking::parse_identity(admin) {
                errors.add(&format!("revocation.admins[{i}]"), e);
                valid = false;
            }
        }
        valid.then(|| RevocationConfig {
            crl_next_update: next,
            crl_url: url,
            admins: self.admins.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crl_url_is_an_http_url_a_fetcher_can_use() {
        assert_eq!(
            crl_url("http://crl.example/meshca/ca.crl").as_deref(),
            Ok("http://crl.example/meshca/ca.crl")
        );
        assert!(crl_url("https://crl.example/ca.crl").is_ok());
        for bad in [
            "crl.example/ca.crl",
            "ldap://crl.example/cn=ca",
            "file:///etc/ca.crl",
            "http://user:pw@crl.example/ca.crl",
            "http://crl.example/ca.crl#x",
        ] {
            assert!(crl_url(bad).is_err(), "{bad}");
        }
    }
}
