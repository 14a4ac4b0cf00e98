//! `ValidateObjectMeta`: the name rule of each resource, labels and
//! annotations.

use serde_json::Value;

use super::names;
use super::{Errors, FieldError, ResourceDef};

/// `TotalAnnotationSizeLimitB`.
const ANNOTATIONS_MAX: usize = 256 * 1024;

/// The name rule kube-apiserver applies to `def`'s objects.
fn name_rule(def: &ResourceDef, name: &str) -> Result<(), String> {
    match (def.group, def.plural) {
        ("", "namespaces") => names::dns1123_label(name),
        ("", "services") => names::dns1035_label(name),
        ("rbac.authorization.k8s.io", _) => names::path_segment(name),
        // Its own rule, which depends on the signer (see `certificates`).
        ("certificates.k8s.io", "clustertrustbundles") => Ok(()),
        _ => names::dns1123_subdomain(name),
    }
}

/// Errors in `new`'s metadata.
pub(crate) fn validate(def: &ResourceDef, _old: Option<&Value>, new: &Value) -> Errors {
    let mut errors = Errors::new();
    let name = super::text(new, "/metadata/name");
    if name.is_empty() {
        errors.push(FieldError::required("metadata.name"));
    } else if let Err(e) = name_rule(def, name) {
        errors.push(FieldError::invalid(
            "metadata.name",
            format!("{name:?}: {e}"),
        ));
    }
    errors.extend(labels(new.pointer("/metadata/labels")));
    errors.extend(annotations(
        "metadata.annotations",
        new.pointer("/metadata/annotations"),
    ));
    errors
}

fn labels(labels: Option<&Value>) -> Errors {
    let mut errors = Errors::new();
    let Some(map) = labels.and_then(Value::as_object) else {
        return errors;
    };
    for (key, value) in map {
        if let Err(e) = names::qualified_name(key) {
            errors.push(FieldError::invalid(
                "metadata.labels",
                format!("{key:?}: {e}"),
            ));
        }
        let value = value.as_str().unwrap_or_default();
        if let Err(e) = names::label_value(value) {
            errors.push(FieldError::invalid(
                format!("metadata.labels[{key}]"),
                format!("{value:?}: {e}"),
            ));
        }
    }
    errors
}

/// `ValidateAnnotations`: qualified (lower-cased) keys, 256 KiB in all.
pub(crate) fn annotations(field: &str, annotations: Option<&Value>) -> Errors {
    let mut errors = Errors::new();
    let Some(map) = annotations.and_then(Value::as_object) else {
        return errors;
    };
    let mut size = 0;
    for (key, value) in map {
        if let Err(e) = names::qualified_name(&key.to_lowercase()) {
            errors.push(FieldError::invalid(field, format!("{key:?}: {e}")));
        }
        size += key.len() + value.as_str().map_or(0, str::len);
    }
    if size > ANNOTATIONS_MAX {
        errors.push(FieldError::too_long(field, ANNOTATIONS_MAX));
    }
    errors
}
