//! `jwt_svids:` and `oidc:`: JWT-SVIDs and their OIDC discovery.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::jose::{KeyType, MAX_LIFETIME, MIN_TTL};
use crate::validation::Errors;

/// JWT-SVIDs as configured and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtConfig {
    /// The `iss` claim, and the discovery document's `issuer`: the HTTPS
    /// URL relying parties fetch `/.well-known/openid-configuration` under.
    pub issuer: Issuer,
    /// The algorithm of the keys meshca makes.
    pub key_type: KeyType,
    /// A token's lifetime when the caller names none.
    pub default_ttl: Duration,
    /// The longest lifetime a token is given.
    pub max_ttl: Duration,
    /// How long a key signs before the next one takes over.
    pub key_lifetime: Duration,
}

/// An issuer URL: `https://host[:port][/path]`, no query, no fragment, no
/// trailing `/` (relying parties compare `iss` byte for byte with it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issuer(String);

impl Issuer {
    /// The URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where the JWKS is served, under the issuer.
    pub fn jwks_uri(&self) -> String {
        format!("{}/keys", self.0)
    }

    /// The issuer URL's path (empty for `https://host`): discovery and the
    /// JWKS are routed under it.
    pub fn path(&self) -> &str {
        let rest = self.0.strip_prefix("https://").unwrap_or(&self.0);
        rest.find('/').map_or("", |i| &rest[i..])
    }

    fn parse(value: &str) -> Result<Self, String> {
        let uri: http::Uri = value
            .parse()
            .map_err(|e| format!("{value:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!(
                "{value:?} must be an https:// URL (OIDC discovery requires one)"
            ));
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("{value:?} names no host"));
        }
        if uri.query().is_some() || value.contains('#') {
            return Err(format!("{value:?} must have no query or fragment"));
        }
        if value.ends_with('/') {
            return Err(format!(
                "{value:?} must not end with '/': relying parties compare the issuer byte for byte"
            ));
        }
        Ok(Self(value.to_owned()))
    }
}

/// `jwt_svids:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawJwtSvids {
    enabled: bool,
    issuer: String,
    key_type: String,
    #[serde(with = "humantime_serde")]
    default_ttl: Duration,
    #[serde(with = "humantime_serde")]
    max_ttl: Duration,
    #[serde(with = "humantime_serde")]
    key_lifetime: Duration,
}

impl Default for RawJwtSvids {
    fn default() -> Self {
        Self {
            enabled: false,
            issuer: "https://meshca.example.com".into(),
            key_type: "ecdsa-p256".into(),
            default_ttl: Duration::from_secs(5 * 60),
            max_ttl: Duration::from_secs(60 * 60),
            key_lifetime: Duration::from_secs(24 * 60 * 60),
        }
    }
}

impl RawJwtSvids {
    /// `jwt_svids.enabled`.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// `None` when disabled or invalid (each problem added to `errors`).
    pub fn validate(&self, errors: &mut Errors) -> Option<JwtConfig> {
        if !self.enabled {
            return None;
        }
        let before = errors.len();
        let issuer = Issuer::parse(&self.issuer)
            .map_err(|e| errors.add("jwt_svids.issuer", e))
            .ok();
        let key_type = KeyType::parse(&self.key_type)
            .map_err(|e| errors.add("jwt_svids.key_type", e))
            .ok();
        if self.default_ttl < MIN_TTL {
            errors.add(
                "jwt_svids.default_ttl",
                format!("must be at least {}s", MIN_TTL.as_secs()),
            );
        }
        if self.default_ttl > self.max_ttl {
            errors.add(
                "jwt_svids.default_ttl",
                format!(
                    "{} exceeds jwt_svids.max_ttl {}",
                    humantime::format_duration(self.default_ttl),
                    humantime::format_duration(self.max_ttl)
                ),
            );
        }
        if self.max_ttl > MAX_LIFETIME {
            errors.add(
                "jwt_svids.max_ttl",
                format!(
                    "must be at most {}: validators refuse a token that lives longer",
                    humantime::format_duration(MAX_LIFETIME)
                ),
            );
        }
        if self.key_lifetime <= self.max_ttl {
            errors.add(
                "jwt_svids.key_lifetime",
                format!(
                    "must exceed jwt_svids.max_ttl ({}): a key outlives the tokens it signs",
                    humantime::format_duration(self.max_ttl)
                ),
            );
        }
        if errors.len() != before {
            return None;
        }
        Some(JwtConfig {
            issuer: issuer?,
            key_type: key_type?,
            default_ttl: self.default_ttl,
            max_ttl: self.max_ttl,
            key_lifetime: self.key_lifetime,
        })
    }
}

/// `oidc:` as written: an optional plain listener of its own for the
/// discovery document and the JWKS (relying parties outside the mesh).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawOidc {
    /// Address of the public HTTPS listener, if any.
    pub listen: Option<SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issuer_is_an_https_url_compared_byte_for_byte() {
        assert!(Issuer::parse("https://meshca.example.com").is_ok());
        assert!(Issuer::parse("https://127.0.0.1:8443/td").is_ok());
        for bad in [
            "http://meshca.example.com",
            "meshca.example.com",
            "https://meshca.example.com/",
            "https://meshca.example.com/?a=b",
            "https://meshca.example.com#x",
            "https:///path",
        ] {
            assert!(Issuer::parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            Issuer::parse("https://a.example:8443/td")
                .expect("valid")
                .path(),
            "/td"
        );
        assert_eq!(
            Issuer::parse("https://a.example").expect("valid").path(),
            ""
        );
        assert_eq!(
            Issuer::parse("https://a.example/td")
                .expect("as the test set it up")
                .jwks_uri(),
            "https://a.example/td/keys"
        );
    }

    #[test]
    fn lifetimes_that_cannot_work_are_refused() {
        let raw = RawJwtSvids {
            enabled: true,
            default_ttl: Duration::from_secs(7200),
            key_lifetime: Duration::from_secs(1800),
            ..RawJwtSvids::default()
        };
        let mut errors = Errors::default();
        assert!(raw.validate(&mut errors).is_none());
        let said = errors.into_vec().join("\n");
        assert!(said.contains("jwt_svids.default_ttl"), "{said}");
        assert!(said.contains("jwt_svids.key_lifetime"), "{said}");
    }
}
