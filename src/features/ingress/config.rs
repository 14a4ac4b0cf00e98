//! `ingress:`: how ingress controllers reach mesh backends.

use std::time::Duration;

use meshca_provider::{Identity, TrustDomain};
use serde::Deserialize;

use super::Controller;
use crate::bundle::RawSecretRef;
use crate::issuer::Lifetimes;
use crate::validation::Errors;

/// How ingress controllers reach mesh backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressConfig {
    /// Whether meshca acts on Ingress objects (needs a cluster).
    pub enabled: bool,
    /// HTTP (default) or HTTPS from the controller to backends; HTTPS
    /// turns HTTP off for ingress backends. Changes apply without restart.
    pub backend_protocol: BackendProtocol,
    /// Namespaces whose Ingresses meshca handles, besides those labelled
    /// `openservicemesh.io/monitored-by`.
    pub monitored_namespaces: Vec<String>,
    /// The controller's own certificate (mTLS to backends), if any.
    pub client_certificate: Option<IngressClientCertificate>,
    /// Annotate Ingresses for [`IngressConfig::controller`] instead of
    /// leaving it to `meshca ingress render`.
    pub manage_annotations: bool,
    /// The controller whose annotations are managed (nginx or AGIC).
    pub controller: Controller,
    /// `namespace/name` of the bundle Secret controllers read.
    pub bundle_secret: (String, String),
}

/// HTTP or HTTPS to ingress backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendProtocol {
    /// Plain HTTP (the default, as OSM's).
    #[default]
    Http,
    /// HTTPS, verified against the mesh CA.
    Https,
}

/// The ingress controller's client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressClientCertificate {
    /// The identity in it (e.g. `ingress-nginx.ingress-nginx.cluster.local`).
    pub identity: Identity,
    /// Its lifetime.
    pub validity: Duration,
    /// `namespace/name` of the Secret it is kept in.
    pub secret: (String, String),
}

/// `ingress:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawIngress {
    enabled: bool,
    backend_protocol: BackendProtocol,
    monitored_namespaces: Vec<String>,
    client_certificate: Option<RawIngressClient>,
    manage_annotations: bool,
    controller: String,
}

impl Default for RawIngress {
    fn default() -> Self {
        Self {
            enabled: false,
            backend_protocol: BackendProtocol::Http,
            monitored_namespaces: Vec::new(),
            client_certificate: None,
            manage_annotations: false,
            controller: "nginx".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIngressClient {
    /// `SA.NS.TD` form, e.g. ingress-nginx.ingress-nginx.cluster.local.
    san: String,
    #[serde(
        default = "RawIngressClient::default_validity",
        with = "humantime_serde"
    )]
    validity: Duration,
    secret: RawSecretRef,
}

impl RawIngressClient {
    fn default_validity() -> Duration {
        Duration::from_secs(24 * 3600)
    }
}

/// What the ingress settings are checked against.
pub struct IngressContext<'a> {
    /// The trust domain as written.
    pub trust_domain: &'a str,
    /// The certificate lifetimes.
    pub lifetimes: &'a Lifetimes,
    /// Whether a cluster may be used at all.
    pub cluster: bool,
    /// The bundle Secret, `(namespace, name)`.
    pub bundle_secret: (&'a str, &'a str),
}

impl RawIngress {
    /// The ingress settings, with problems in `errors`.
    pub fn validate(&self, cx: &IngressContext<'_>, errors: &mut Errors) -> IngressConfig {
        if self.enabled && !cx.cluster {
            errors.add(
                "ingress.enabled",
                "needs a cluster, which kubernetes.enabled: false turns off",
            );
        }
        let controller = match self.controller.parse::<Controller>() {
            Ok(Controller::Gloo) => {
                errors.add(
                    "ingress.controller",
                    "gloo needs Upstream objects, not annotations: use `meshca ingress render --controller gloo`",
                );
                Controller::Nginx
            }
            Ok(c) => c,
            Err(e) => {
                errors.add("ingress.controller", e);
                Controller::Nginx
            }
        };
        IngressConfig {
            enabled: self.enabled,
            backend_protocol: self.backend_protocol,
            monitored_namespaces: self.monitored_namespaces.clone(),
            client_certificate: self
                .client_certificate
                .as_ref()
                .and_then(|c| c.validate(cx, errors)),
            manage_annotations: self.manage_annotations,
            controller,
            bundle_secret: (cx.bundle_secret.0.to_owned(), cx.bundle_secret.1.to_owned()),
        }
    }
}

impl RawIngressClient {
    fn validate(
        &self,
        cx: &IngressContext<'_>,
        errors: &mut Errors,
    ) -> Option<IngressClientCertificate> {
        let td = cx.trust_domain;
        let identity = self
            .san
            .strip_suffix(&format!(".{td}"))
            .and_then(|rest| rest.split_once('.'))
            .and_then(|(sa, ns)| {
                TrustDomain::new(td)
                    .ok()
                    .and_then(|t| Identity::new(t, ns, sa).ok())
            });
        if identity.is_none() {
            errors.add(
                "ingress.client_certificate.san",
                format!("{:?} must be SA.NS.{td}", self.san),
            );
        }
        if self.validity > cx.lifetimes.max_ttl || self.validity < cx.lifetimes.min_ttl {
            errors.add(
                "ingress.client_certificate.validity",
                "must lie between certificates.min_ttl and certificates.max_ttl",
            );
        }
        let secret = self
            .secret
            .validate("ingress.client_certificate.secret", errors);
        Some(IngressClientCertificate {
            identity: identity?,
            validity: self.validity,
            secret: (secret.namespace, secret.name),
        })
    }
}
