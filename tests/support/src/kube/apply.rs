//! Server-side apply as the API server does it, as far as meshca depends on
//! it: every write records which field manager owns which fields; an apply
//! (`application/apply-patch+yaml`) needs a `fieldManager`, conflicts with
//! fields another manager owns at a different value unless `force=true`
//! (which takes them over), and removes fields its manager owned before but
//! no longer lists. Other writes (create, replace, merge and JSON patches)
//! take the fields they change without conflict, as updates do.
//!
//! Fields are tracked as leaf paths (JSON pointers); lists are atomic, as
//! for lists without a merge key.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// Which manager owns which leaf paths of one object.
pub type Owners = BTreeMap<String, BTreeSet<String>>;

/// Fields the server sets, or that name the object: nobody owns them.
const UNOWNED: [&str; 10] = [
    "/apiVersion",
    "/kind",
    "/status",
    "/metadata/name",
    "/metadata/namespace",
    "/metadata/resourceVersion",
    "/metadata/uid",
    "/metadata/creationTimestamp",
    "/metadata/generation",
    "/metadata/managedFields",
];

/// The owned leaf paths of `doc`, with their values.
pub fn leaves(doc: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    walk(doc, String::new(), &mut out);
    out
}

fn walk(v: &Value, path: String, out: &mut BTreeMap<String, Value>) {
    if UNOWNED.contains(&path.as_str()) {
        return;
    }
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                let key = k.replace('~', "~0").replace('/', "~1");
                walk(child, format!("{path}/{key}"), out);
            }
        }
        Value::Object(_) => {}
        other => {
            if !path.is_empty() {
                out.insert(path, other.clone());
            }
        }
    }
}

/// Record an update by `manager` from `before` to `after`: it takes every
/// leaf it changed (all of them on create); fields that are gone are owned
/// by nobody.
pub fn record_update(owners: &mut Owners, manager: &str, before: Option<&Value>, after: &Value) {
    let old = before.map(leaves).unwrap_or_default();
    let new = leaves(after);
    let changed: BTreeSet<String> = new
        .iter()
        .filter(|(p, v)| old.get(*p) != Some(*v))
        .map(|(p, _)| p.clone())
        .collect();
    for (m, fields) in owners.iter_mut() {
        fields.retain(|p| new.contains_key(p) && (m == manager || !changed.contains(p)));
    }
    owners
        .entry(manager.to_owned())
        .or_default()
        .extend(changed);
    owners.retain(|_, f| !f.is_empty());
}

/// A field another manager owns at another value.
#[derive(Debug)]
pub struct Conflict {
    /// The field.
    pub path: String,
    /// Its owner.
    pub manager: String,
}

/// Apply `config` for `manager` onto `current` (absent: a create). Returns
/// the new object, or the conflicts that refuse it.
pub fn apply(
    current: Option<&Value>,
    owners: &mut Owners,
    manager: &str,
    force: bool,
    config: &Value,
) -> Result<Value, Vec<Conflict>> {
    let applied = leaves(config);
    let existing = current.map(leaves).unwrap_or_default();
    let mut conflicts = Vec::new();
    for (path, value) in &applied {
        for (other, fields) in owners.iter() {
            if other != manager
                && fields.contains(path)
                && existing.get(path).is_some_and(|v| v != value)
            {
                conflicts.push(Conflict {
                    path: path.clone(),
                    manager: other.clone(),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    let mut doc = current
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    // Fields this manager set before and no longer lists go, unless
    // another manager owns them too.
    let before = owners.get(manager).cloned().unwrap_or_default();
    for path in before.iter().filter(|p| !applied.contains_key(*p)) {
        let shared = owners.iter().any(|(m, f)| m != manager && f.contains(path));
        if !shared {
            remove(&mut doc, path);
        }
    }
    merge(&mut doc, config);
    for (m, fields) in owners.iter_mut() {
        if m != manager {
            // Forced: the applier takes the conflicting fields over.
            fields.retain(|p| !applied.contains_key(p));
        }
    }
    owners.insert(manager.to_owned(), applied.into_keys().collect());
    owners.retain(|_, f| !f.is_empty());
    Ok(doc)
}

fn merge(doc: &mut Value, config: &Value) {
    match (doc, config) {
        (Value::Object(d), Value::Object(c)) => {
            for (k, v) in c {
                merge(d.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (d, c) => *d = c.clone(),
    }
}

fn remove(doc: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let key = last.replace("~1", "/").replace("~0", "~");
    if let Some(Value::Object(map)) = doc.pointer_mut(parent) {
        map.remove(&key);
    }
}
