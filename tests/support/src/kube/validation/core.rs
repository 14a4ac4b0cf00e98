//! Secrets, ConfigMaps and Leases (`pkg/apis/core/validation`,
//! `pkg/apis/coordination/validation`).

use base64::Engine;
use serde_json::{json, Map, Value};

use super::names;
use super::{Errors, FieldError, Refusal};

/// `MaxSecretSize`, which also bounds a ConfigMap's data.
const DATA_MAX: usize = 1024 * 1024;

/// Defaulting and validation of a Secret: `stringData` merged into `data`
/// (as the API server converts it), `type` defaulted to `Opaque`, keys,
/// size, the keys each type requires, and `type` immutable.
///
/// # Errors
/// 400 when a `data` value is not base64 (the body does not decode).
pub(crate) fn secret(old: Option<&Value>, new: &mut Value) -> Result<Errors, Refusal> {
    merge_string_data(new);
    if super::text(new, "/type").is_empty() {
        new["type"] = json!("Opaque");
    }
    let data = decoded(new.get("data"), "data")?;
    let mut errors = Errors::new();
    errors.extend(keys("data", data.iter().map(|(k, _)| k.as_str())));
    if data.iter().map(|(_, v)| v.len()).sum::<usize>() > DATA_MAX {
        errors.push(FieldError::too_long("data", DATA_MAX));
    }
    let has = |k: &str| data.iter().any(|(key, _)| key == k);
    let required: &[&str] = match super::text(new, "/type") {
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        "kubernetes.io/basic-auth" => &[],
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        _ => &[],
    };
    for key in required.iter().filter(|k| !has(k)) {
        errors.push(FieldError::required(format!("data[{key}]")));
    }
    if let Some(old) = old {
        if super::text(old, "/type") != super::text(new, "/type") {
            errors.push(FieldError::immutable("type"));
        }
        errors.extend(immutable_data(old, new, &["data"]));
    }
    Ok(errors)
}

/// A ConfigMap: keys of `data` and `binaryData`, none in both, 1 MiB of
/// values in all, and nothing changed once `immutable`.
///
/// # Errors
/// 400 when a `binaryData` value is not base64.
pub(crate) fn config_map(old: Option<&Value>, new: &Value) -> Result<Errors, Refusal> {
    let data: Vec<(String, usize)> = new
        .get("data")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().map_or(0, str::len)))
                .collect()
        })
        .unwrap_or_default();
    let binary = decoded(new.get("binaryData"), "binaryData")?;
    let mut errors = Errors::new();
    errors.extend(keys("data", data.iter().map(|(k, _)| k.as_str())));
    errors.extend(keys("binaryData", binary.iter().map(|(k, _)| k.as_str())));
    for (key, _) in binary
        .iter()
        .filter(|(k, _)| data.iter().any(|(d, _)| d == k))
    {
        errors.push(FieldError::invalid(
            format!("binaryData[{key}]"),
            format!("{key:?}: duplicate of key present in data"),
        ));
    }
    let size: usize = data.iter().map(|(_, n)| n).sum::<usize>()
        + binary.iter().map(|(_, v)| v.len()).sum::<usize>();
    if size > DATA_MAX {
        errors.push(FieldError::too_long("", DATA_MAX));
    }
    if let Some(old) = old {
        errors.extend(immutable_data(old, new, &["data", "binaryData"]));
    }
    Ok(errors)
}

/// A Lease's spec: positive durations, no negative transition count.
pub(crate) fn lease(new: &Value) -> Errors {
    let mut errors = Errors::new();
    if let Some(d) = new
        .pointer("/spec/leaseDurationSeconds")
        .and_then(Value::as_i64)
    {
        if d <= 0 {
            errors.push(FieldError::invalid(
                "spec.leaseDurationSeconds",
                format!("{d}: must be greater than 0"),
            ));
        }
    }
    if let Some(t) = new
        .pointer("/spec/leaseTransitions")
        .and_then(Value::as_i64)
    {
        if t < 0 {
            errors.push(FieldError::invalid(
                "spec.leaseTransitions",
                format!("{t}: must be greater than or equal to 0"),
            ));
        }
    }
    errors
}

/// `stringData` is write-only: the API server merges it into `data`.
fn merge_string_data(secret: &mut Value) {
    let Some(Value::Object(strings)) = secret.as_object_mut().and_then(|o| o.remove("stringData"))
    else {
        return;
    };
    if !secret.get("data").is_some_and(Value::is_object) {
        secret["data"] = Value::Object(Map::new());
    }
    for (key, value) in strings {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(value.as_str().unwrap_or_default());
        secret["data"][key] = json!(encoded);
    }
}

/// The entries of a base64 map, decoded.
fn decoded(map: Option<&Value>, field: &str) -> Result<Vec<(String, Vec<u8>)>, Refusal> {
    let Some(map) = map.and_then(Value::as_object) else {
        return Ok(Vec::new());
    };
    map.iter()
        .map(|(k, v)| {
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .map(|bytes| (k.clone(), bytes))
                .map_err(|e| {
                    Refusal::bad_request(format!("{field}[{k}]: illegal base64 data: {e}"))
                })
        })
        .collect()
}

fn keys<'a>(field: &str, keys: impl Iterator<Item = &'a str>) -> Errors {
    keys.filter_map(|k| {
        names::config_map_key(k)
            .err()
            .map(|e| FieldError::invalid(format!("{field}[{k}]"), format!("{k:?}: {e}")))
    })
    .collect()
}

/// Once `immutable: true`, the data fields may not change and the flag may
/// not be cleared.
fn immutable_data(old: &Value, new: &Value, fields: &[&str]) -> Errors {
    if old.get("immutable") != Some(&Value::Bool(true)) {
        return Errors::new();
    }
    let mut errors: Errors = fields
        .iter()
        .filter(|f| old.get(**f) != new.get(**f))
        .map(|f| FieldError::forbidden(*f, "field is immutable when `immutable` is set"))
        .collect();
    if new.get("immutable") != Some(&Value::Bool(true)) {
        errors.push(FieldError::forbidden(
            "immutable",
            "field is immutable when `immutable` is set",
        ));
    }
    errors
}
