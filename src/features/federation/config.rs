//! `federation:`: this trust domain's bundle endpoint and the trust
//! domains whose bundles meshca fetches.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use meshca_provider::{Identity, TrustDomain};
use serde::Deserialize;

use crate::validation::{is_dns_label, Errors};

/// The shortest refresh hint meshca publishes or follows: a bundle
/// endpoint is not meant to be polled faster.
pub const MIN_REFRESH: Duration = Duration::from_secs(30);
/// The longest: a peer's new root must not wait longer than this.
pub const MAX_REFRESH: Duration = Duration::from_secs(60 * 60);
/// The interval used for a bundle that gives no hint.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5 * 60);

/// Federation as configured and validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FederationConfig {
    /// This trust domain's bundle endpoint, when served.
    pub endpoint: Option<EndpointConfig>,
    /// The trust domains whose bundles meshca fetches.
    pub trust_domains: Vec<FederatedDomain>,
}

/// How a bundle endpoint proves who it is (SPIFFE Federation, section 5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointProfile {
    /// The endpoint serves an X509-SVID of its trust domain; the client
    /// checks it against the bundle it already holds.
    HttpsSpiffe,
    /// The endpoint serves a Web PKI certificate, from these files
    /// (reloaded when they change).
    HttpsWeb {
        /// PEM chain, leaf first.
        cert_file: PathBuf,
        /// PEM private key.
        key_file: PathBuf,
    },
}

/// `federation.bundle_endpoint`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// How it authenticates.
    pub profile: EndpointProfile,
    /// `spiffe_refresh_hint` of the bundle it serves.
    pub refresh_hint: Duration,
}

/// How meshca authenticates a peer's bundle endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerProfile {
    /// By the Web PKI: the system's roots (or `SSL_CERT_FILE`) and the
    /// URL's host name.
    HttpsWeb,
    /// By the peer's SPIFFE ID, on a chain to the peer's bundle as last
    /// held (first from `bundle_file`).
    HttpsSpiffe {
        /// The SPIFFE ID the endpoint's certificate must carry.
        endpoint_spiffe_id: String,
        /// The bundle held before the first fetch (SPIFFE JWKS or PEM).
        bundle_file: PathBuf,
    },
}

/// One entry of `federation.trust_domains`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederatedDomain {
    /// The peer trust domain.
    pub trust_domain: TrustDomain,
    /// Its bundle endpoint, `https://…`.
    pub url: String,
    /// How its endpoint is authenticated.
    pub profile: PeerProfile,
    /// The namespaces whose workloads receive this domain's bundle; empty
    /// for every workload.
    pub namespaces: Vec<String>,
}

impl FederatedDomain {
    /// Whether a workload of `identity` is handed this domain's bundle.
    pub fn visible_to(&self, identity: &Identity) -> bool {
        self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == identity.namespace())
    }
}

/// `federation:` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawFederation {
    bundle_endpoint: Option<RawEndpoint>,
    trust_domains: Vec<RawDomain>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEndpoint {
    listen: SocketAddr,
    profile: String,
    spiffe_id: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    refresh_hint: Duration,
}

impl Default for RawEndpoint {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            profile: "https_spiffe".into(),
            spiffe_id: None,
            cert_file: None,
            key_file: None,
            refresh_hint: DEFAULT_REFRESH,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    trust_domain: String,
    bundle_endpoint_url: String,
    profile: String,
    #[serde(default)]
    endpoint_spiffe_id: Option<String>,
    #[serde(default)]
    bundle_file: Option<PathBuf>,
    #[serde(default)]
    namespaces: Vec<String>,
}

/// What the federation section is checked against.
pub struct FederationContext<'a> {
    /// This mesh's trust domain, which is never federated with itself.
    pub trust_domain: Option<&'a TrustDomain>,
    /// The daemon's identity: the `https_spiffe` endpoint serves with its
    /// certificate.
    pub daemon_identity: Option<&'a Identity>,
}

impl RawFederation {
    /// Validate; every problem is added to `errors`.
    pub fn validate(
        &self,
        context: &FederationContext<'_>,
        errors: &mut Errors,
    ) -> FederationConfig {
        let endpoint = self
            .bundle_endpoint
            .as_ref()
            .and_then(|e| e.validate(context, errors));
        let mut trust_domains: Vec<FederatedDomain> = Vec::new();
        for (i, raw) in self.trust_domains.iter().enumerate() {
            let path = format!("federation.trust_domains[{i}]");
            let earlier = &self.trust_domains[..i];
            if earlier.iter().any(|e| e.trust_domain == raw.trust_domain) {
                errors.add(
                    &format!("{path}.trust_domain"),
                    format!("{} is listed twice", raw.trust_domain),
                );
            }
            trust_domains.extend(raw.validate(&path, context, errors));
        }
        FederationConfig {
            endpoint,
            trust_domains,
        }
    }
}

impl RawEndpoint {
    fn validate(
        &self,
        context: &FederationContext<'_>,
        errors: &mut Errors,
    ) -> Option<EndpointConfig> {
        const PATH: &str = "federation.bundle_endpoint";
        let before = errors.len();
        if !(MIN_REFRESH..=MAX_REFRESH).contains(&self.refresh_hint) {
            errors.add(
                &format!("{PATH}.refresh_hint"),
                format!(
                    "must be between {} and {}",
                    humantime::format_duration(MIN_REFRESH),
                    humantime::format_duration(MAX_REFRESH)
                ),
            );
        }
        let profile = self.profile(PATH, context, errors)?;
        (errors.len() == before).then_some(EndpointConfig {
            listen: self.listen,
            profile,
            refresh_hint: self.refresh_hint,
        })
    }
}

impl RawEndpoint {
    /// The endpoint's profile and its settings.
    fn profile(
        &self,
        path: &str,
        context: &FederationContext<'_>,
        errors: &mut Errors,
    ) -> Option<EndpointProfile> {
        match self.profile.as_str() {
            "https_spiffe" => {
                for (key, set) in [
                    ("cert_file", self.cert_file.is_some()),
                    ("key_file", self.key_file.is_some()),
                ] {
                    if set {
                        errors.add(
                            &format!("{path}.{key}"),
                            "is for profile https_web; https_spiffe serves meshca's own SVID",
                        );
                    }
                }
                if let (Some(id), Some(daemon)) = (&self.spiffe_id, context.daemon_identity) {
                    if *id != daemon.spiffe_id() {
                        errors.add(
                            &format!("{path}.spiffe_id"),
                            format!(
                                "{id:?}: the endpoint serves with meshca's own certificate, whose SPIFFE ID is {} (daemon_identity); leave spiffe_id out or set it to that",
                                daemon.spiffe_id()
                            ),
                        );
                    }
                }
                Some(EndpointProfile::HttpsSpiffe)
            }
            "https_web" => {
                if self.spiffe_id.is_some() {
                    errors.add(&format!("{path}.spiffe_id"), "is for profile https_spiffe");
                }
                match (&self.cert_file, &self.key_file) {
                    (Some(cert_file), Some(key_file)) => Some(EndpointProfile::HttpsWeb {
                        cert_file: cert_file.clone(),
                        key_file: key_file.clone(),
                    }),
                    _ => {
                        errors.add(path, "profile https_web needs cert_file and key_file");
                        None
                    }
                }
            }
            other => {
                errors.add(
                    &format!("{path}.profile"),
                    format!("{other:?} is neither https_spiffe nor https_web"),
                );
                None
            }
        }
    }
}

impl RawDomain {
    fn validate(
        &self,
        path: &str,
        context: &FederationContext<'_>,
        errors: &mut Errors,
    ) -> Option<FederatedDomain> {
        let before = errors.len();
        let trust_domain = TrustDomain::new(&self.trust_domain)
            .map_err(|e| errors.add(&format!("{path}.trust_domain"), e))
            .ok();
        if trust_domain.is_some() && trust_domain.as_ref() == context.trust_domain {
            errors.add(
                &format!("{path}.trust_domain"),
                "is this mesh's own trust domain; federation is with other trust domains",
            );
        }
        if let Err(e) = endpoint_url(&self.bundle_endpoint_url) {
            errors.add(&format!("{path}.bundle_endpoint_url"), e);
        }
        for (i, ns) in self.namespaces.iter().enumerate() {
            if !is_dns_label(ns) {
                errors.add(
                    &format!("{path}.namespaces[{i}]"),
                    format!("{ns:?} is not a namespace name"),
                );
            }
        }
        let profile = self.profile(path, errors);
        if errors.len() != before {
            return None;
        }
        Some(FederatedDomain {
            trust_domain: trust_domain?,
            url: self.bundle_endpoint_url.clone(),
            profile: profile?,
            namespaces: self.namespaces.clone(),
        })
    }

    /// The peer's profile and its settings.
    fn profile(&self, path: &str, errors: &mut Errors) -> Option<PeerProfile> {
        match (
            self.profile.as_str(),
            &self.endpoint_spiffe_id,
            &self.bundle_file,
        ) {
            ("https_web", None, None) => Some(PeerProfile::HttpsWeb),
            ("https_web", _, _) => {
                errors.add(
                    path,
                    "endpoint_spiffe_id and bundle_file are for profile https_spiffe",
                );
                None
            }
            ("https_spiffe", Some(id), Some(file)) => match spiffe_id_of(id) {
                Ok(()) => Some(PeerProfile::HttpsSpiffe {
                    endpoint_spiffe_id: id.clone(),
                    bundle_file: file.clone(),
                }),
                Err(e) => {
                    errors.add(&format!("{path}.endpoint_spiffe_id"), e);
                    None
                }
            },
            ("https_spiffe", _, _) => {
                errors.add(
                        path,
                        "profile https_spiffe needs endpoint_spiffe_id and bundle_file (the bundle that authenticates the endpoint's first answer)",
                    );
                None
            }
            (other, _, _) => {
                errors.add(
                    &format!("{path}.profile"),
                    format!("{other:?} is neither https_spiffe nor https_web"),
                );
                None
            }
        }
    }
}

/// A bundle endpoint URL: `https://` with a host.
fn endpoint_url(value: &str) -> Result<(), String> {
    let uri: http::Uri = value
        .parse()
        .map_err(|e| format!("{value:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!(
            "{value:?}: a bundle endpoint is served over https://"
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{value:?} names no host"));
    }
    Ok(())
}

/// The endpoint's SPIFFE ID: `spiffe://TD/path`. The SPIFFE Federation
/// specification lets it live in another trust domain; meshca checks it
/// against the chain only, so any valid ID is accepted.
fn spiffe_id_of(id: &str) -> Result<(), String> {
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or_else(|| format!("{id:?} is not a spiffe:// ID"))?;
    let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
    TrustDomain::new(td).map_err(|e| e.to_string())?;
    if path.is_empty() || path.split('/').any(str::is_empty) || id.contains(['?', '#']) {
        return Err(format!(
            "{id:?}: a workload's SPIFFE ID has a path of non-empty segments and no query"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<FederationConfig, Vec<String>> {
        let raw: RawFederation = serde_yaml_ng::from_str(yaml).expect("the test's YAML parses");
        let td = TrustDomain::new("a.test").expect("valid");
        let daemon = Identity::new(td.clone(), "osm-system", "meshca").expect("valid");
        let mut errors = Errors::default();
        let config = raw.validate(
            &FederationContext {
                trust_domain: Some(&td),
                daemon_identity: Some(&daemon),
            },
            &mut errors,
        );
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors.into_vec())
        }
    }

    #[test]
    fn both_profiles_of_a_peer_are_accepted() {
        let c = check(
            "trust_domains:\n- {trust_domain: b.test, bundle_endpoint_url: 'https://b:8443', profile: https_spiffe, endpoint_spiffe_id: 'spiffe://b.test/ns/osm-system/sa/meshca', bundle_file: /b.json, namespaces: [web]}\n- {trust_domain: c.test, bundle_endpoint_url: 'https://c.example/bundle', profile: https_web}\n",
        )
        .expect("valid");
        assert_eq!(c.trust_domains.len(), 2);
        assert_eq!(c.trust_domains[1].profile, PeerProfile::HttpsWeb);
        let web =
            Identity::new(TrustDomain::new("a.test").expect("valid"), "web", "x").expect("valid");
        let other =
            Identity::new(TrustDomain::new("a.test").expect("valid"), "db", "x").expect("valid");
        assert!(c.trust_domains[0].visible_to(&web));
        assert!(!c.trust_domains[0].visible_to(&other));
        assert!(c.trust_domains[1].visible_to(&other));
    }

    #[test]
    fn every_mistake_is_named_with_its_key() {
        let errors = check(
            "bundle_endpoint: {profile: https_web, refresh_hint: 5s}\ntrust_domains:\n- {trust_domain: a.test, bundle_endpoint_url: 'http://b', profile: https_spiffe}\n- {trust_domain: c.test, bundle_endpoint_url: 'https://c', profile: https_web, namespaces: [Bad_NS]}\n- {trust_domain: c.test, bundle_endpoint_url: 'https://c', profile: https_web}\n- {trust_domain: d.test, bundle_endpoint_url: 'https://d', profile: https_spiffe, endpoint_spiffe_id: 'spiffe://d.test', bundle_file: /d}\n",
        )
        .expect_err("invalid");
        let all = errors.join("\n");
        for needle in [
            "federation.bundle_endpoint.refresh_hint:",
            "federation.bundle_endpoint: profile https_web needs cert_file",
            "federation.trust_domains[0].trust_domain: is this mesh's own",
            "federation.trust_domains[0].bundle_endpoint_url:",
            "federation.trust_domains[0]: profile https_spiffe needs",
            "federation.trust_domains[1].namespaces[0]:",
            "federation.trust_domains[2].trust_domain: c.test is listed twice",
            "federation.trust_domains[3].endpoint_spiffe_id:",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in\n{all}");
        }
    }

    #[test]
    fn the_spiffe_endpoint_serves_with_the_daemon_identity() {
        let errors =
            check("bundle_endpoint: {spiffe_id: 'spiffe://a.test/meshca'}\n").expect_err("invalid");
        assert!(
            errors[0].contains("spiffe://a.test/ns/osm-system/sa/meshca"),
            "{errors:?}"
        );
        let c = check("bundle_endpoint: {spiffe_id: 'spiffe://a.test/ns/osm-system/sa/meshca'}\n")
            .expect("valid");
        let endpoint = c.endpoint.expect("configured");
        assert_eq!(endpoint.profile, EndpointProfile::HttpsSpiffe);
        assert_eq!(endpoint.refresh_hint, DEFAULT_REFRESH);
    }
}
