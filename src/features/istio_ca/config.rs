//! `istio_ca:`: Istio's certificate service, served beside the signing API.

use std::net::SocketAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::Selector;
use meshca_provider::ServerName;
use serde::Deserialize;

use crate::validation::{is_dns_label, is_dns_name, Errors};

/// Istio's certificate service as configured and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IstioCaConfig {
    /// Where it listens (Istio's `CA_ADDR` port is 15012).
    pub listen: SocketAddr,
    /// The cluster a caller's `clusterid` metadata must name.
    pub cluster_id: String,
    /// The audiences a caller's ServiceAccount token may be for.
    pub token_audiences: Vec<String>,
    /// The node agents (`namespace`, `service account`) that may ask for a
    /// certificate on behalf of a pod on their own node: ztunnel.
    pub trusted_node_accounts: Vec<(String, String)>,
    /// Names Istio's clients dial meshca by; the serving certificate
    /// carries them.
    pub serving_dns_names: Vec<ServerName>,
    /// The namespaces that get the ConfigMap `istio-ca-root-cert`; `None`
    /// for every namespace.
    pub root_cert_namespaces: Option<Selector>,
    /// The Secret istiod serves xDS with, kept under the mesh root.
    pub istiod_certificate: Option<IstiodCertificate>,
}

/// `istio_ca.istiod_certificate`: the certificate istiod serves xDS (and
/// its webhooks) with, in a `kubernetes.io/tls` Secret (`tls.crt`,
/// `tls.key`, `ca.crt`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IstiodCertificate {
    /// The Secret's namespace (istiod's).
    pub namespace: String,
    /// The Secret's name.
    pub secret_name: String,
    /// istiod's ServiceAccount: the identity its certificate carries.
    pub service_account: String,
    /// The names sidecars and ztunnel dial istiod by.
    pub dns_names: Vec<ServerName>,
}

/// `istio_ca:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawIstioCa {
    enabled: bool,
    listen: SocketAddr,
    cluster_id: String,
    token_audiences: Vec<String>,
    trusted_node_accounts: Vec<String>,
    serving_dns_names: Vec<String>,
    root_cert_namespaces: LabelSelector,
    istiod_certificate: Option<RawIstiodCertificate>,
}

impl Default for RawIstioCa {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([0, 0, 0, 0], 15012)),
            cluster_id: "Kubernetes".into(),
            token_audiences: vec!["istio-ca".into()],
            trusted_node_accounts: vec!["istio-system/ztunnel".into()],
            serving_dns_names: vec!["meshca.osm-system.svc".into()],
            root_cert_namespaces: LabelSelector::default(),
            istiod_certificate: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawIstiodCertificate {
    namespace: String,
    secret_name: String,
    service_account: String,
    dns_names: Vec<String>,
}

impl Default for RawIstiodCertificate {
    fn default() -> Self {
        Self {
            namespace: "istio-system".into(),
            secret_name: "istiod-tls".into(),
            service_account: "istiod".into(),
            dns_names: vec!["istiod.istio-system.svc".into()],
        }
    }
}

impl RawIstiodCertificate {
    fn validate(&self, errors: &mut Errors) -> IstiodCertificate {
        let key = "istio_ca.istiod_certificate";
        if !is_dns_label(&self.namespace) {
            errors.add(&format!("{key}.namespace"), "must be a namespace name");
        }
        if !is_dns_name(&self.secret_name) {
            errors.add(&format!("{key}.secret_name"), "must be a Secret name");
        }
        if !is_dns_name(&self.service_account) {
            errors.add(
                &format!("{key}.service_account"),
                "must be a ServiceAccount name",
            );
        }
        if self.dns_names.is_empty() {
            errors.add(
                &format!("{key}.dns_names"),
                "name the host sidecars dial istiod by (istiod.istio-system.svc)",
            );
        }
        IstiodCertificate {
            namespace: self.namespace.clone(),
            secret_name: self.secret_name.clone(),
            service_account: self.service_account.clone(),
            dns_names: crate::validation::server_names(
                &format!("{key}.dns_names"),
                &self.dns_names,
                errors,
            ),
        }
    }
}

impl RawIstioCa {
    /// The configuration, or `None` when disabled; problems go to
    /// `errors`, each with its key.
    pub fn validate(&self, errors: &mut Errors) -> Option<IstioCaConfig> {
        if !self.enabled {
            return None;
        }
        if self.cluster_id.trim().is_empty() {
            errors.add(
                "istio_ca.cluster_id",
                "must not be empty (Istio's default is Kubernetes)",
            );
        }
        if self.token_audiences.is_empty() || self.token_audiences.iter().any(|a| a.is_empty()) {
            errors.add(
                "istio_ca.token_audiences",
                "name at least one audience, none empty (istio-agent's default is istio-ca)",
            );
        }
        let trusted_node_accounts = self
            .trusted_node_accounts
            .iter()
            .enumerate()
            .filter_map(|(i, account)| {
                let parsed = account
                    .split_once('/')
                    .filter(|(ns, sa)| is_dns_label(ns) && is_dns_name(sa));
                if parsed.is_none() {
                    errors.add(
                        &format!("istio_ca.trusted_node_accounts[{i}]"),
                        format!("{account:?} is not NAMESPACE/SERVICE_ACCOUNT"),
                    );
                }
                parsed.map(|(ns, sa)| (ns.to_owned(), sa.to_owned()))
            })
            .collect();
        let serving_dns_names = crate::validation::server_names(
            "istio_ca.serving_dns_names",
            &self.serving_dns_names,
            errors,
        );
        let root_cert_namespaces = root_cert_namespaces(&self.root_cert_namespaces, errors);
        let istiod_certificate = self
            .istiod_certificate
            .as_ref()
            .map(|raw| raw.validate(errors));
        Some(IstioCaConfig {
            listen: self.listen,
            cluster_id: self.cluster_id.clone(),
            token_audiences: self.token_audiences.clone(),
            trusted_node_accounts,
            serving_dns_names,
            root_cert_namespaces,
            istiod_certificate,
        })
    }
}

/// The label selector as a list/watch selector; `None` selects every
/// namespace.
fn root_cert_namespaces(selector: &LabelSelector, errors: &mut Errors) -> Option<Selector> {
    match Selector::try_from(selector.clone()) {
        Ok(s) if s.selects_all() => None,
        Ok(s) => Some(s),
        Err(e) => {
            errors.add("istio_ca.root_cert_namespaces", e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(yaml: &str) -> Result<Option<IstioCaConfig>, Vec<String>> {
        let raw: RawIstioCa = serde_yaml_ng::from_str(yaml).expect("yaml");
        let mut errors = Errors::default();
        let config = raw.validate(&mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors.into_vec())
        }
    }

    #[test]
    fn the_defaults_are_istios() {
        let config = validate("enabled: true").expect("valid").expect("enabled");
        assert_eq!(config.listen.port(), 15012);
        assert_eq!(config.cluster_id, "Kubernetes");
        assert_eq!(config.token_audiences, ["istio-ca"]);
        assert_eq!(
            config.trusted_node_accounts,
            [("istio-system".to_owned(), "ztunnel".to_owned())]
        );
        assert_eq!(config.root_cert_namespaces, None);
        assert_eq!(config.istiod_certificate, None);
        let istiod = validate("enabled: true\nistiod_certificate: {}")
            .expect("valid")
            .expect("enabled")
            .istiod_certificate
            .expect("istiod's certificate");
        assert_eq!(
            (
                istiod.namespace.as_str(),
                istiod.secret_name.as_str(),
                istiod.service_account.as_str()
            ),
            ("istio-system", "istiod-tls", "istiod")
        );
        assert_eq!(validate("{}"), Ok(None));
    }

    #[test]
    fn a_selector_limits_the_root_cert_namespaces() {
        let config = validate(
            "enabled: true\nroot_cert_namespaces: { matchLabels: { istio-injection: enabled }, matchExpressions: [{ key: mesh, operator: NotIn, values: [off] }] }",
        )
        .expect("valid")
        .expect("enabled");
        let selector = config.root_cert_namespaces.expect("a selector").to_string();
        assert!(selector.contains("istio-injection=enabled"), "{selector}");
        assert!(selector.contains("mesh notin (off)"), "{selector}");
    }

    #[test]
    fn every_mistake_is_named_with_its_key() {
        let errors = validate(
            "enabled: true\ncluster_id: ''\ntoken_audiences: []\ntrusted_node_accounts: [ztunnel, 'istio-system/ZT']\nserving_dns_names: ['Not A Name']\nroot_cert_namespaces: { matchExpressions: [{ key: a, operator: In }] }\nistiod_certificate: { namespace: 'Istio', dns_names: [] }",
        )
        .expect_err("invalid");
        for key in [
            "istio_ca.cluster_id",
            "istio_ca.token_audiences",
            "istio_ca.trusted_node_accounts[0]",
            "istio_ca.trusted_node_accounts[1]",
            "istio_ca.serving_dns_names[0]",
            "istio_ca.root_cert_namespaces",
            "istio_ca.istiod_certificate.namespace",
            "istio_ca.istiod_certificate.dns_names",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(key)),
                "{key} not named in {errors:#?}"
            );
        }
    }
}
