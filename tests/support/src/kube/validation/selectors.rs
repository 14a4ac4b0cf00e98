//! The field selectors each resource supports (its field label
//! conversion): anything else is refused with 400, never answered with an
//! empty list.

use super::{Refusal, ResourceDef};

/// The fields of `def` a field selector may name besides `metadata.name`
/// (and `metadata.namespace` for namespaced resources).
fn selectable(def: &ResourceDef) -> &'static [&'static str] {
    match (def.group, def.plural) {
        ("certificates.k8s.io", "podcertificaterequests") => {
            &["spec.signerName", "spec.podName", "spec.nodeName"]
        }
        ("certificates.k8s.io", "clustertrustbundles") => &["spec.signerName"],
        ("", "secrets") => &["type"],
        ("", "namespaces") => &["status.phase"],
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ],
        ("", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        _ => &[],
    }
}

/// Whether `selector` names only fields `def` supports.
///
/// # Errors
/// 400 BadRequest naming the first unsupported field, or a term that does
/// not parse.
pub(crate) fn check_field_selector(def: &ResourceDef, selector: &str) -> Result<(), Refusal> {
    for term in selector.split(',').filter(|t| !t.is_empty()) {
        let field = term
            .split_once("!=")
            .or_else(|| term.split_once("=="))
            .or_else(|| term.split_once('='))
            .map(|(k, _)| k.trim())
            .ok_or_else(|| {
                Refusal::bad_request(format!(
                    "unable to parse requested field selector {selector:?}: invalid selector: '{term}'; can't understand '{term}'"
                ))
            })?;
        let ok = field == "metadata.name"
            || (field == "metadata.namespace" && def.namespaced)
            || selectable(def).contains(&field);
        if !ok {
            return Err(Refusal::bad_request(format!(
                "field label not supported: {field}"
            )));
        }
    }
    Ok(())
}
