//! `pod_certificates:`: meshca as a signer of Kubernetes pod certificates.

use serde::Deserialize;

use crate::validation::{is_dns_label_of, Errors};

/// The signer name kubelet asks for (`spec.signerName`) when a pod mounts a
/// `podCertificate` projected volume, and the name its ClusterTrustBundle
/// is linked to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignerName(String);

impl SignerName {
    /// `meshca.io/workload`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The ClusterTrustBundle's name: the API server requires a bundle
    /// linked to a signer to be named `<signer, '/' as ':'>:<suffix>`.
    pub fn trust_bundle_name(&self) -> String {
        format!("{}:trust-bundle", self.0.replace('/', ":"))
    }

    /// A name as kube-apiserver requires it (its `ValidateSignerName`):
    /// `<domain>/<path>` with exactly one `/`; the domain at least two
    /// DNS labels (outside `kubernetes.io`, which the project reserves),
    /// the path dot-separated lower-case DNS names; 571 characters at most.
    /// A name it refuses would match no request.
    pub(super) fn parse(value: &str) -> Result<Self, String> {
        let example = "e.g. meshca.io/workload";
        let Some((domain, path)) = value.split_once('/').filter(|(_, p)| !p.contains('/')) else {
            return Err(format!(
                "{value:?} must be <domain>/<name> with one '/', {example}"
            ));
        };
        let labels: Vec<&str> = domain.split('.').collect();
        if domain.len() > 253 || labels.len() < 2 || !labels.iter().all(|l| is_dns_label_of(l, 63))
        {
            return Err(format!(
                "{domain:?} is not a domain of two or more lower-case DNS labels, {example}"
            ));
        }
        if domain == "kubernetes.io" || domain.ends_with(".kubernetes.io") {
            return Err("signer names under kubernetes.io are reserved for Kubernetes".into());
        }
        if !path.split('.').all(|p| is_dns_label_of(p, 253)) {
            return Err(format!(
                "{path:?} must be lower-case letters, digits, '-' and '.', {example}"
            ));
        }
        if value.len() > 571 {
            return Err(format!("{value:?} is longer than 571 characters"));
        }
        Ok(Self(value.to_owned()))
    }
}

/// Whether and as what meshca signs PodCertificateRequests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCertificatesConfig {
    /// Sign PCRs and publish the ClusterTrustBundle (needs a cluster).
    pub enabled: bool,
    /// The signer name answered.
    pub signer_name: SignerName,
}

/// `pod_certificates:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPodCertificates {
    enabled: bool,
    signer_name: String,
}

impl Default for RawPodCertificates {
    fn default() -> Self {
        Self {
            enabled: false,
            signer_name: "meshca.io/workload".into(),
        }
    }
}

/// The API server refuses pod certificates shorter than an hour.
pub const MIN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);

impl RawPodCertificates {
    /// The settings, with problems in `errors`. Pod certificates need a
    /// `cluster`, and a `max_ttl` (`certificates.max_ttl`) that allows the
    /// hour they last at least.
    pub fn validate(
        &self,
        max_ttl: std::time::Duration,
        cluster: bool,
        errors: &mut Errors,
    ) -> PodCertificatesConfig {
        let signer_name = SignerName::parse(&self.signer_name).unwrap_or_else(|why| {
            errors.add("pod_certificates.signer_name", why);
            SignerName(self.signer_name.clone())
        });
        if self.enabled && !cluster {
            errors.add(
                "pod_certificates.enabled",
                "pod certificates come from the Kubernetes API: enable kubernetes",
            );
        }
        if self.enabled && max_ttl < MIN_LIFETIME {
            errors.add(
                "pod_certificates.enabled",
                "pod certificates last at least 1h (the API server refuses shorter ones), but certificates.max_ttl is shorter",
            );
        }
        PodCertificatesConfig {
            enabled: self.enabled,
            signer_name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signer_names_follow_kubernetes_rules() {
        for good in ["meshca.io/workload", "example.com/mesh.ca", "a.b/x-y.z"] {
            assert!(SignerName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "workload",
            "meshca/workload",
            "meshca.io/",
            "kubernetes.io/kube-apiserver-client-pod",
            "x.kubernetes.io/a",
            "meshca.io//a",
            "Meshca.IO/a",
            "meshca.io/a b",
            "example.com/mesh/ca",
            "a.b/x_y.z",
            "meshca.io/-a",
            "meshca.io/a..b",
        ] {
            assert!(SignerName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_trust_bundle_is_named_after_the_signer() {
        let name = SignerName::parse("meshca.io/workload").expect("valid");
        assert_eq!(name.trust_bundle_name(), "meshca.io:workload:trust-bundle");
    }

    #[test]
    fn a_max_ttl_under_an_hour_is_refused_when_enabled() {
        let raw = RawPodCertificates {
            enabled: true,
            ..RawPodCertificates::default()
        };
        let mut errors = Errors::default();
        raw.validate(std::time::Duration::from_secs(1800), true, &mut errors);
        assert_eq!(errors.len(), 1);
        let mut errors = Errors::default();
        raw.validate(MIN_LIFETIME, true, &mut errors);
        assert!(errors.is_empty());
        raw.validate(MIN_LIFETIME, false, &mut errors);
        assert_eq!(errors.len(), 1, "no cluster");
        let mut errors = Errors::default();
        RawPodCertificates::default().validate(MIN_LIFETIME, false, &mut errors);
        assert!(errors.is_empty());
    }
}
