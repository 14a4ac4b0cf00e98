//! kube-apiserver's admission rules for the objects meshca reads and
//! writes: defaulting, validation of the API types (`pkg/apis/*/validation`
//! in kubernetes/kubernetes), and the field selectors each resource
//! supports. A write the real server refuses is refused here with the same
//! status (422 `Invalid`, 400 `BadRequest`) and a message in the same form,
//! so that a test cannot pass on behaviour a real cluster would refuse.
//!
//! What is enforced is listed in `docs/ARCHITECTURE.md` (Tests); each rule
//! has a negative test in `tests/kube_standin.rs`.

mod certificates;
mod core;
mod events;
mod meta;
mod names;
mod selectors;

use serde_json::{json, Value};

use super::ResourceDef;

pub(crate) use selectors::check_field_selector;

/// One field the API server found invalid, as it reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FieldError {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueTooLong`,
    /// `FieldValueForbidden`, `FieldValueNotSupported`, `FieldValueDuplicate`.
    pub(crate) reason: &'static str,
    /// The field's path, e.g. `status.notAfter`.
    pub(crate) field: String,
    /// What is wrong, as the API server says it (`Invalid value: ...: must
    /// be ...`).
    pub(crate) detail: String,
}

impl FieldError {
    pub(crate) fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            detail: format!("Invalid value: {}", detail.into()),
        }
    }

    pub(crate) fn required(field: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueRequired",
            field: field.into(),
            detail: "Required value".into(),
        }
    }

    pub(crate) fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self {
            reason: "FieldValueTooLong",
            field: field.into(),
            detail: format!("Too long: may not be more than {max} bytes"),
        }
    }

    pub(crate) fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueForbidden",
            field: field.into(),
            detail: format!("Forbidden: {}", detail.into()),
        }
    }

    pub(crate) fn immutable(field: impl Into<String>) -> Self {
        Self::invalid(field, "field is immutable")
    }

    pub(crate) fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        Self {
            reason: "FieldValueNotSupported",
            field: field.into(),
            detail: format!(
                "Unsupported value: {value:?}: supported values: {}",
                supported
                    .iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The errors found in one write; empty means admitted.
pub(crate) type Errors = Vec<FieldError>;

/// A refused write, rendered as the API server's `Status`.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    pub(crate) causes: Errors,
}

impl Refusal {
    /// 422 Invalid, as `apierrors.NewInvalid` words it:
    /// `Kind.group "name" is invalid: [field: detail, ...]`.
    pub(crate) fn invalid(def: &ResourceDef, name: &str, errors: Errors) -> Self {
        let qualified = if def.group.is_empty() {
            def.kind.to_owned()
        } else {
            format!("{}.{}", def.kind, def.group)
        };
        let each: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.detail))
            .collect();
        let list = if each.len() == 1 {
            each[0].clone()
        } else {
            format!("[{}]", each.join(", "))
        };
        Self {
            code: 422,
            reason: "Invalid",
            message: format!("{qualified} {name:?} is invalid: {list}"),
            causes: errors,
        }
    }

    /// 400 BadRequest.
    pub(crate) fn bad_request(message: String) -> Self {
        Self {
            code: 400,
            reason: "BadRequest",
            message,
            causes: Vec::new(),
        }
    }

    /// The `details.causes` of the Status body.
    pub(crate) fn causes_json(&self) -> Value {
        json!(self
            .causes
            .iter()
            .map(|c| json!({ "reason": c.reason, "message": c.detail, "field": c.field }))
            .collect::<Vec<_>>())
    }
}

/// How a write reaches an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Write {
    /// POST, or an apply that creates.
    Create,
    /// PUT or PATCH of the object itself (its status is kept as stored).
    Update,
    /// PUT or PATCH of the `status` subresource (its spec is kept as
    /// stored).
    Status,
}

/// Default and validate `new` (created, or replacing `old`) as
/// kube-apiserver would for `def`, or refuse it.
/// `now` is the API server's clock (a stand-in may run it off true).
pub(crate) fn admit(
    def: &ResourceDef,
    write: Write,
    old: Option<&Value>,
    new: &mut Value,
    now: time::OffsetDateTime,
) -> Result<(), Refusal> {
    let name = new
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut errors = meta::validate(def, old, new);
    match (def.group, def.plural) {
        ("certificates.k8s.io", "podcertificaterequests") => {
            errors.extend(certificates::pod_certificate_request(write, old, new, now));
        }
        ("certificates.k8s.io", "clustertrustbundles") => {
            errors.extend(certificates::cluster_trust_bundle(old, new));
        }
        ("", "secrets") => errors.extend(core::secret(old, new)?),
        ("", "configmaps") => errors.extend(core::config_map(old, new)?),
        ("coordination.k8s.io", "leases") => errors.extend(core::lease(new)),
        ("events.k8s.io", "events") => errors.extend(events::event(old, new)),
        _ => {}
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Refusal::invalid(def, &name, errors))
    }
}

/// A JSON string field, or "" when absent.
pub(crate) fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}
