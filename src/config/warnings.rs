//! Settings that are valid but will not do what they seem to: a cluster
//! setting without a cluster, a provider section for another provider
//! (features warn of their own sections as they read them). `meshca config
//! check` prints them and `serve` logs them.
//!
//! Only keys written in the file count; defaults never warn.

use std::collections::BTreeSet;

use serde_yaml_ng::Value;

use super::Config;

/// Every key path written in `text` (`bundle.kubernetes_secret.name`),
/// each prefix included (`bundle`, `bundle.kubernetes_secret`).
pub(super) fn written_keys(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    if let Ok(value) = serde_yaml_ng::from_str::<Value>(text) {
        collect(&value, "", &mut keys);
    }
    keys
}

fn collect(value: &Value, prefix: &str, keys: &mut BTreeSet<String>) {
    let Value::Mapping(map) = value else { return };
    for (key, child) in map {
        let Some(key) = key.as_str() else { continue };
        let path = if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        };
        collect(child, &path, keys);
        keys.insert(path);
    }
}

/// The warnings for `config`, loaded from a file in which `written` keys
/// were written.
pub(super) fn warnings(config: &Config, written: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut unused = |key: &str, because: &str| {
        if written.contains(key) {
            out.push(format!("{key} has no effect: {because}"));
        }
    };
    if config.kubernetes.is_none() {
        for key in [
            "bundle.kubernetes_secret",
            "auth.kubernetes",
            "kubernetes.kubeconfig",
            "kubernetes.namespace",
            "kubernetes.root_secret",
            "kubernetes.lease_name",
            "kubernetes.lease_duration",
        ] {
            unused(
                key,
                "kubernetes.enabled is false, so meshca uses no cluster",
            );
        }
    }
    let kind = config.provider.kind();
    for other in meshca_provider::ProviderKind::ALL {
        if other != kind {
            unused(
                crate::provider::section(other),
                &format!("provider.kind is {kind}"),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warnings_of(text: &str) -> Vec<String> {
        let config = Config::from_yaml(text).expect("valid");
        config.warnings
    }

    #[test]
    fn written_keys_include_every_prefix() {
        let keys = written_keys("bundle:\n  kubernetes_secret: { name: x }\n");
        assert!(keys.contains("bundle"));
        assert!(keys.contains("bundle.kubernetes_secret"));
        assert!(keys.contains("bundle.kubernetes_secret.name"));
    }

    #[test]
    fn a_cluster_setting_without_a_cluster_warns_and_a_default_does_not() {
        assert!(warnings_of("kubernetes: { enabled: false }\n").is_empty());
        let w = warnings_of(
            "kubernetes: { enabled: false }\nbundle: { kubernetes_secret: { name: ca } }\n",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("bundle.kubernetes_secret has no effect"),
            "{w:?}"
        );
    }

    #[test]
    fn settings_of_features_that_are_off_warn() {
        let w = warnings_of(
            "ingress: { backend_protocol: https }\nprovider:\n  kind: tresor\n  vault: { address: https://v:8200, auth: { token_env: T } }\n",
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w.iter().any(|w| w.starts_with("ingress.backend_protocol")));
        assert!(w
            .iter()
            .any(|w| w.starts_with("provider.vault has no effect: provider.kind is tresor")));
    }

    #[test]
    fn the_embedded_default_has_no_warnings() {
        assert!(Config::load(None).expect("default").warnings.is_empty());
    }
}
