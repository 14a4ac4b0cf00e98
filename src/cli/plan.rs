//! What `meshca config check` says a config will do: the provider, every
//! place the bundle goes, how callers authenticate, what listens where.

use meshca_tresor::RootSource;

use crate::cluster::Discovery;
use crate::config::Config;
use crate::provider::ProviderConfig;

/// One line per aspect, for people.
pub(super) fn plan(config: &Config) -> Vec<String> {
    let mut lines = vec![format!("provider:  {}", provider(config))];
    lines.push(format!("cluster:   {}", cluster(config)));
    let mut sinks = vec![format!("file {}", config.bundle.file.display())];
    if let Some(secret) = &config.bundle.secret {
        sinks.push(format!(
            "Secret {}/{} (ca.crt)",
            secret.namespace, secret.name
        ));
    }
    if config.pod_certificates.enabled {
        sinks.push(format!(
            "ClusterTrustBundle {}",
            config.pod_certificates.signer_name.trust_bundle_name()
        ));
    }
    if let (Some(istio), Some(_)) = (&config.istio_ca, &config.kubernetes) {
        let namespaces = istio
            .root_cert_namespaces
            .as_ref()
            .map_or("every namespace".to_owned(), |s| {
                format!("namespaces matching {s}")
            });
        sinks.push(format!(
            "ConfigMap istio-ca-root-cert (root-cert.pem) in {namespaces}"
        ));
    }
    lines.push(format!("bundle:    {}", sinks.join("; ")));
    let mut auth = vec![
        format!("bearer tokens from {}", config.auth.tokens_file.display()),
        "client certificates meshca issued (renewal)".to_owned(),
    ];
    if let Some(review) = &config.auth.kubernetes {
        auth.push(format!(
            "ServiceAccount tokens by TokenReview (audience {})",
            review.audience
        ));
    }
    lines.push(format!("auth:      {}", auth.join("; ")));
    lines.push(format!(
        "listeners: signing API https://{}; health and metrics http://{}",
        config.listen, config.metrics_listen
    ));
    if config.pod_certificates.enabled {
        lines.push(format!(
            "pod certificates: signer {}",
            config.pod_certificates.signer_name.as_str()
        ));
    }
    if let Some(jwt) = &config.jwt_svids {
        lines.push(jwt_svids(config, jwt));
    }
    lines.extend(federation(config));
    if let Some(istio) = &config.istio_ca {
        lines.push(istio_ca(config, istio));
    }
    if config.ingress.enabled {
        lines.push(format!(
            "ingress:   backend protocol {:?}",
            config.ingress.backend_protocol
        ));
    }
    lines
}

fn jwt_svids(config: &Config, jwt: &crate::jwt::JwtConfig) -> String {
    let file = config.state_dir.join("jwt-keys.json");
    let keys = match &config.kubernetes {
        Some(k) => format!(
            "the Secret {}/{} in a cluster, {} without one",
            k.namespace,
            crate::jwt::SECRET_NAME,
            file.display()
        ),
        None => file.display().to_string(),
    };
    let public = config
        .oidc_listen
        .map(|a| format!(", and on https://{a}"))
        .unwrap_or_default();
    format!(
        "jwt-svids: issuer {} ({}, tokens {} by default, at most {}; a new key every {}, published {} before it signs; keys in {keys}); discovery at {}/.well-known/openid-configuration on the signing API{public}",
        jwt.issuer.as_str(),
        jwt.key_type.alg(),
        humantime::format_duration(jwt.default_ttl),
        humantime::format_duration(jwt.max_ttl),
        humantime::format_duration(jwt.key_lifetime),
        humantime::format_duration(config.rotation.propagation_delay),
        jwt.issuer.as_str(),
    )
}

fn provider(config: &Config) -> String {
    match &config.provider {
        ProviderConfig::Tresor(t) => match (&t.root, &config.kubernetes) {
            (RootSource::Files { cert, .. }, _) => {
                format!("tresor, root from {}", cert.display())
            }
            (RootSource::Generated { .. }, Some(k)) => format!(
                "tresor, root in the Secret {}/{} (generated when absent)",
                k.namespace, k.root_secret
            ),
            (RootSource::Generated { dir, .. }, None) => {
                format!("tresor, root in {} (generated when absent)", dir.display())
            }
        },
        ProviderConfig::Vault(v) => format!("vault {} ({}/sign/{})", v.address, v.mount, v.role),
        ProviderConfig::CertManager(c) => format!(
            "cert-manager {} {} (CertificateRequests in {})",
            c.issuer_kind, c.issuer_name, c.namespace
        ),
    }
}

fn cluster(config: &Config) -> String {
    match config.kubernetes.as_ref().map(|k| &k.discovery) {
        None => "none (kubernetes.enabled is false)".to_owned(),
        Some(Discovery::Kubeconfig(path)) => format!("kubeconfig {}", path.display()),
        Some(Discovery::Infer) => {
            "as kubectl finds it: KUBECONFIG, ~/.kube/config, then in-cluster".to_owned()
        }
        Some(Discovery::InPodOnly) => {
            "the in-cluster one when running in a pod, none otherwise".to_owned()
        }
    }
}

/// The bundle endpoint this mesh serves and the peers it fetches.
fn istio_ca(config: &Config, istio: &crate::istio_ca::IstioCaConfig) -> String {
    let callers = if config.kubernetes.is_some() {
        format!(
            "ServiceAccount tokens for {} by TokenReview, or client certificates meshca issued",
            istio.token_audiences.join(", ")
        )
    } else {
        "client certificates meshca issued only (no cluster to review tokens)".to_owned()
    };
    let agents: Vec<String> = istio
        .trusted_node_accounts
        .iter()
        .map(|(ns, sa)| format!("{ns}/{sa}"))
        .collect();
    let names: Vec<String> = istio
        .serving_dns_names
        .iter()
        .map(ToString::to_string)
        .collect();
    let istiod = istio
        .istiod_certificate
        .as_ref()
        .map_or(String::new(), |i| {
            format!(
                "; istiod's Secret {}/{} for {}/{}",
                i.namespace, i.secret_name, i.namespace, i.service_account
            )
        });
    format!(
        "istio ca:  gRPC IstioCertificateService on https://{} as {} for cluster {}; callers: {callers}; node agents {} may ask for pods on their node{istiod}",
        istio.listen,
        names.join(", "),
        istio.cluster_id,
        agents.join(", ")
    )
}

fn federation(config: &Config) -> Vec<String> {
    use crate::federation::{EndpointProfile, PeerProfile};
    let mut lines = Vec::new();
    if let Some(e) = &config.federation.endpoint {
        let profile = match &e.profile {
            EndpointProfile::HttpsSpiffe => format!(
                "https_spiffe, as {} (the serving certificate)",
                config.daemon_identity.spiffe_id()
            ),
            EndpointProfile::HttpsWeb { cert_file, .. } => {
                format!(
                    "https_web, certificate {} (reloaded on change)",
                    cert_file.display()
                )
            }
        };
        lines.push(format!(
            "federation: bundle endpoint https://{}/ ({profile}); refresh hint {}",
            e.listen,
            humantime::format_duration(e.refresh_hint)
        ));
    }
    for d in &config.federation.trust_domains {
        let auth = match &d.profile {
            PeerProfile::HttpsWeb => "https_web (system roots or SSL_CERT_FILE)".to_owned(),
            PeerProfile::HttpsSpiffe {
                endpoint_spiffe_id,
                bundle_file,
            } => format!(
                "https_spiffe as {endpoint_spiffe_id}, first bundle {}",
                bundle_file.display()
            ),
        };
        let who = if d.namespaces.is_empty() {
            "every workload".to_owned()
        } else {
            format!("namespaces {}", d.namespaces.join(", "))
        };
        lines.push(format!(
            "federation: trust {} from {} ({auth}), kept in {}; for {who}",
            d.trust_domain,
            d.url,
            config
                .state_dir
                .join("federation")
                .join(format!("{}.json", d.trust_domain))
                .display()
        ));
    }
    lines
}
