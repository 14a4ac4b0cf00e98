//! The name rules of `k8s.io/apimachinery/pkg/util/validation`, each
//! returning the API server's message when the value breaks it.

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;
const CONFIG_MAP_KEY_MAX: usize = 253;

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// `IsDNS1123Label`.
pub(crate) fn dns1123_label(s: &str) -> Result<(), String> {
    if s.len() > DNS1123_LABEL_MAX {
        return Err(format!(
            "must be no more than {DNS1123_LABEL_MAX} characters"
        ));
    }
    if !is_label(s) {
        return Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// `IsDNS1123Subdomain`.
pub(crate) fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    if !s.split('.').all(is_label) {
        return Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// `IsDNS1035Label` (Service names).
pub(crate) fn dns1035_label(s: &str) -> Result<(), String> {
    dns1123_label(s)?;
    if s.as_bytes()[0].is_ascii_digit() {
        return Err("a DNS-1035 label must start with an alphabetic character".into());
    }
    Ok(())
}

fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// `IsQualifiedName`: `[prefix/]name`, the prefix a DNS subdomain, the
/// name 63 characters of alphanumerics, '-', '_' and '.'.
pub(crate) fn qualified_name(s: &str) -> Result<(), String> {
    let name = match s.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() {
                return Err("prefix part must be non-empty".into());
            }
            dns1123_subdomain(prefix).map_err(|e| format!("prefix part {e}"))?;
            name
        }
        None => s,
    };
    if name.is_empty() {
        return Err("name part must be non-empty".into());
    }
    if name.len() > QUALIFIED_NAME_MAX {
        return Err(format!(
            "name part must be no more than {QUALIFIED_NAME_MAX} characters"
        ));
    }
    if name.contains('/') || !is_name_part(name) {
        return Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// `IsValidLabelValue`.
pub(crate) fn label_value(s: &str) -> Result<(), String> {
    if s.len() > LABEL_VALUE_MAX {
        return Err(format!("must be no more than {LABEL_VALUE_MAX} characters"));
    }
    if !s.is_empty() && !is_name_part(s) {
        return Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// `IsConfigMapKey` (ConfigMap and Secret data keys).
pub(crate) fn config_map_key(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > CONFIG_MAP_KEY_MAX {
        return Err(format!(
            "must be no more than {CONFIG_MAP_KEY_MAX} characters and not empty"
        ));
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return Err(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'".into(),
        );
    }
    if s == "." || s == ".." || s.starts_with("..") {
        return Err("must not be '.' or '..', or start with '..'".into());
    }
    Ok(())
}

/// `ValidatePathSegmentName` (RBAC objects and other names that need only
/// be usable in a URL path).
pub(crate) fn path_segment(s: &str) -> Result<(), String> {
    if s == "." || s == ".." {
        return Err(format!("may not be {s:?}"));
    }
    if s.contains('/') || s.contains('%') {
        return Err("may not contain '/' or '%'".into());
    }
    Ok(())
}

/// `ValidateSignerName`: `<domain>/<path>` with exactly one '/', the
/// domain at least two DNS labels, the path '.'-separated DNS subdomains.
pub(crate) fn signer_name(s: &str) -> Result<(), String> {
    let Some((domain, path)) = s.split_once('/').filter(|(_, p)| !p.contains('/')) else {
        return Err(
            "must be a fully qualified domain and path of the form 'example.com/signer-name'"
                .into(),
        );
    };
    let labels: Vec<&str> = domain.split('.').collect();
    if domain.len() > DNS1123_SUBDOMAIN_MAX || labels.iter().any(|l| dns1123_label(l).is_err()) {
        return Err(format!("validating domain {domain:?}: must be DNS labels"));
    }
    if labels.len() < 2 {
        return Err("should be a domain with at least two segments separated by dots".into());
    }
    if path
        .split('.')
        .any(|p| dns1123_subdomain(p).is_err() || p.is_empty())
    {
        return Err(format!("validating path {path:?}: must be DNS subdomains"));
    }
    if s.len() > 571 {
        return Err("must be no more than 571 characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_apimachinery() {
        assert!(dns1123_subdomain("osm-ca-bundle").is_ok());
        assert!(dns1123_subdomain("a.b-c.d").is_ok());
        assert!(dns1123_subdomain("Upper").is_err());
        assert!(dns1123_subdomain("a..b").is_err());
        assert!(dns1123_subdomain(&"a".repeat(254)).is_err());
        assert!(dns1035_label("9abc").is_err());
        assert!(qualified_name("app.kubernetes.io/managed-by").is_ok());
        assert!(qualified_name("meshca.io/identity").is_ok());
        assert!(qualified_name("/x").is_err());
        assert!(qualified_name("a/b/c").is_err());
        assert!(qualified_name(&"x".repeat(64)).is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("a b").is_err());
        assert!(config_map_key("ca.crt").is_ok());
        assert!(config_map_key("tls.key").is_ok());
        assert!(config_map_key("a/b").is_err());
        assert!(config_map_key("..a").is_err());
        assert!(signer_name("meshca.io/workload").is_ok());
        assert!(signer_name("meshca.io/a/b").is_err());
        assert!(signer_name("meshca/a").is_err());
        assert!(signer_name("meshca.io/a_b").is_err());
    }
}
