//! What `meshca config check` says a config will do: the provider, every
//! place the bundle goes, how callers authenticate, what listens where.

use meshca_tresor::{RootKeyAlgorithm, RootSource};

use crate::cluster::Discovery;
use crate::config::Config;
use crate::provider::ProviderConfig;

/// One line per aspect, for people: the core's, then each feature's.
pub(super) fn plan(config: &Config) -> Vec<String> {
    let common = config.common();
    let plans: Vec<_> = config.features.iter().map(|f| f.plan(&common)).collect();
    let mut lines = vec![format!("provider:  {}", provider(config))];
    lines.push(format!("cluster:   {}", cluster(config)));
    let mut sinks = vec![format!("file {}", config.bundle.file.display())];
    if let Some(secret) = &config.bundle.secret {
        sinks.push(format!(
            "Secret {}/{} (ca.crt)",
            secret.namespace, secret.name
        ));
    }
    sinks.extend(plans.iter().flat_map(|p| p.sinks.iter().cloned()));
    lines.push(format!("bundle:    {}", sinks.join("; ")));
    lines.push(format!("auth:      {}", auth(config).join("; ")));
    lines.push(format!(
        "listeners: signing API https://{}; health and metrics http://{}",
        config.listen, config.metrics_listen
    ));
    lines.extend(plans.into_iter().flat_map(|p| p.lines));
    lines
}

/// How callers of the signing API authenticate.
fn auth(config: &Config) -> Vec<String> {
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
    auth
}

fn provider(config: &Config) -> String {
    match &config.provider {
        ProviderConfig::Tresor(t, Some(custody)) => {
            let suffix = match &t.root {
                RootSource::InCustody { key_name, .. } => {
                    format!("-{}-{key_name}", custody.backend.name())
                }
                _ => String::new(),
            };
            let signs = match custody.sign_leaves {
                true => "the custody key signs every leaf",
                false => "the custody key signs an intermediate in memory, which signs leaves",
            };
            format!(
                "tresor, root {}; its key in {}; {signs}",
                tresor_root(&t.root, config, &suffix),
                custody.backend.describe()
            )
        }
        ProviderConfig::Tresor(t, None) => {
            let root = tresor_root(&t.root, config, "");
            match &t.post_quantum {
                Some(pq) => format!(
                    "tresor, root {root}; post-quantum root {} for ML-DSA keys",
                    tresor_root(pq, config, "-post-quantum")
                ),
                None => format!("tresor, root {root}"),
            }
        }
        ProviderConfig::Vault(v) => {
            let pq = v
                .post_quantum_role
                .as_ref()
                .map(|r| format!("; ML-DSA keys by {}/sign/{r}", v.mount))
                .unwrap_or_default();
            format!(
                "vault {} ({}/sign/{}{pq})",
                v.connection.address, v.mount, v.role
            )
        }
        ProviderConfig::CertManager(c) => format!(
            "cert-manager {} {} (CertificateRequests in {})",
            c.issuer_kind, c.issuer_name, c.namespace
        ),
    }
}

/// Where one of Tresor's roots comes from; `suffix` names its Secret.
fn tresor_root(source: &RootSource, config: &Config, suffix: &str) -> String {
    match (source, &config.kubernetes) {
        (RootSource::Files { cert, .. }, _) => format!("from {}", cert.display()),
        (RootSource::Generated { algorithm, .. }, Some(k)) => format!(
            "in the Secret {}/{}{suffix} ({}, generated when absent)",
            k.namespace,
            k.root_secret,
            algorithm_name(*algorithm)
        ),
        (RootSource::Generated { dir, algorithm, .. }, None) => format!(
            "in {} ({}, generated when absent)",
            dir.display(),
            algorithm_name(*algorithm)
        ),
        (
            RootSource::InCustody {
                key_name,
                algorithm,
                dir,
                ..
            },
            k,
        ) => {
            let certificate = match k {
                Some(k) => format!("the Secret {}/{}{suffix}", k.namespace, k.root_secret),
                None => dir.display().to_string(),
            };
            format!(
                "key {key_name} ({}, made when absent), certificate in {certificate}",
                algorithm.name()
            )
        }
    }
}

/// A root algorithm as the config names it.
fn algorithm_name(algorithm: RootKeyAlgorithm) -> &'static str {
    match algorithm {
        RootKeyAlgorithm::EcdsaP256 => "ecdsa-p256",
        RootKeyAlgorithm::EcdsaP384 => "ecdsa-p384",
        RootKeyAlgorithm::Ed25519 => "ed25519",
        RootKeyAlgorithm::MlDsa(level) => level.name(),
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
