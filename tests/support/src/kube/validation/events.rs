//! `events.k8s.io/v1` Events (`pkg/apis/core/validation/events.go`): the
//! strict rules that apply to Events written through that API, with the
//! API server's field paths (those of the internal type: `message` for
//! `note`, `involvedObject` for `regarding`).

use serde_json::Value;

use super::names;
use super::{text, Errors, FieldError};

const REPORTING_INSTANCE_MAX: usize = 128;
const ACTION_MAX: usize = 128;
const REASON_MAX: usize = 128;
const NOTE_MAX: usize = 1024;

/// The fields an update may not change, as (v1 field, reported path).
const IMMUTABLE: [(&str, &str); 13] = [
    ("regarding", "involvedObject"),
    ("reason", "reason"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("type", "type"),
    ("eventTime", "eventTime"),
    ("action", "action"),
    ("related", "related"),
    ("reportingController", "reportingController"),
    ("reportingInstance", "reportingInstance"),
];

/// Errors in an Event created, or updated from `old`.
pub(crate) fn event(old: Option<&Value>, new: &Value) -> Errors {
    let mut errors = required_fields(new);
    match old {
        None => errors.extend(created(new)),
        Some(old) => {
            if old.get("series") != new.get("series") {
                errors.extend(series(new));
            }
            for (field, path) in IMMUTABLE {
                if old.get(field) != new.get(field) {
                    errors.push(FieldError::immutable(path));
                }
            }
        }
    }
    errors
}

/// `legacyValidateEvent` for an Event with an eventTime.
fn required_fields(e: &Value) -> Errors {
    let mut errors = Errors::new();
    let namespace = text(e, "/metadata/namespace");
    if text(e, "/regarding/namespace").is_empty()
        && namespace != "default"
        && namespace != "kube-system"
    {
        errors.push(FieldError::invalid(
            "involvedObject.namespace",
            "\"\": does not match event.namespace",
        ));
    }
    let controller = text(e, "/reportingController");
    if controller.is_empty() {
        errors.push(FieldError::required("reportingController"));
    } else if let Err(m) = names::qualified_name(controller) {
        errors.push(FieldError::invalid(
            "reportingController",
            format!("{controller:?}: {m}"),
        ));
    }
    for (field, max) in [
        ("reportingInstance", REPORTING_INSTANCE_MAX),
        ("action", ACTION_MAX),
        ("reason", REASON_MAX),
    ] {
        let value = text(e, &format!("/{field}"));
        if value.is_empty() {
            errors.push(FieldError::required(field));
        } else if value.len() > max {
            errors.push(FieldError::invalid(
                field,
                format!("\"\": can have at most {max} characters"),
            ));
        }
    }
    if text(e, "/note").len() > NOTE_MAX {
        errors.push(FieldError::invalid(
            "message",
            format!("\"\": can have at most {NOTE_MAX} characters"),
        ));
    }
    errors
}

/// The rules of a create through `events.k8s.io/v1`.
fn created(e: &Value) -> Errors {
    let mut errors = series(e);
    if text(e, "/eventTime").is_empty() {
        errors.push(FieldError::required("eventTime"));
    }
    let kind = text(e, "/type");
    if kind != "Normal" && kind != "Warning" {
        errors.push(FieldError::invalid(
            "type",
            format!("\"\": has invalid value: {kind}"),
        ));
    }
    for (field, path) in [
        ("deprecatedFirstTimestamp", "firstTimestamp"),
        ("deprecatedLastTimestamp", "lastTimestamp"),
        ("deprecatedCount", "count"),
        ("deprecatedSource", "source"),
    ] {
        let set = e.get(field).is_some_and(|v| match v {
            Value::Null => false,
            Value::Number(n) => n.as_i64() != Some(0),
            Value::Object(m) => !m.is_empty(),
            _ => true,
        });
        if set {
            errors.push(FieldError::invalid(path, "\"\": needs to be unset"));
        }
    }
    errors
}

fn series(e: &Value) -> Errors {
    let mut errors = Errors::new();
    let Some(series) = e.get("series").filter(|s| !s.is_null()) else {
        return errors;
    };
    if series.get("count").and_then(Value::as_i64).unwrap_or(0) < 2 {
        errors.push(FieldError::invalid(
            "series.count",
            "\"\": should be at least 2",
        ));
    }
    if text(series, "/lastObservedTime").is_empty() {
        errors.push(FieldError::required("series.lastObservedTime"));
    }
    errors
}
