//! The object store: resourceVersions, field owners, and the change
//! history that watches resume from.

use super::*;

/// One stored change, for watches.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub(crate) rv: u64,
    pub(crate) kind: &'static str,
    pub(crate) group: &'static str,
    pub(crate) plural: &'static str,
    pub(crate) namespace: String,
    pub(crate) object: Value,
}

pub(crate) type Key = (&'static str, &'static str, String, String);

#[derive(Default)]
pub(crate) struct Store {
    pub(crate) rv: u64,
    pub(crate) objects: BTreeMap<Key, Value>,
    /// Field managers of each object.
    pub(crate) owners: BTreeMap<Key, apply::Owners>,
    pub(crate) history: VecDeque<Event>,
    /// Events at or below this resourceVersion are gone.
    pub(crate) compacted: u64,
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("valid")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

/// Fill kind, apiVersion, uid and creationTimestamp as the apiserver does.
pub(crate) fn stamp(object: &mut Value, def: &ResourceDef, version: &str) {
    object["kind"] = json!(def.kind);
    object["apiVersion"] = json!(def.api_version(version));
    if object.get("metadata").is_none() {
        object["metadata"] = json!({});
    }
    let meta = &mut object["metadata"];
    if meta.get("uid").is_none() {
        meta["uid"] = json!(uuid_like());
    }
    if meta.get("creationTimestamp").is_none() {
        meta["creationTimestamp"] = json!(now_rfc3339());
    }
}

pub(crate) fn uuid_like() -> String {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("random");
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Whether `new` would store nothing `current` does not hold already
/// (the resourceVersion aside).
fn unchanged(current: &Value, new: &Value) -> bool {
    let mut a = current.clone();
    let mut b = new.clone();
    for v in [&mut a, &mut b] {
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
    }
    a == b
}

/// Who a write is by, for field ownership.
pub(crate) enum Owner<'a> {
    /// An update (create, replace, merge or JSON patch) by this manager.
    Update(&'a str),
    /// An apply, whose ownership [`apply::apply`] worked out.
    Applied(apply::Owners),
}

/// Store (or remove) an object under a new resourceVersion and tell
/// watchers. Returns what was stored (or removed).
pub(crate) fn commit(
    inner: &Inner,
    store: &mut Store,
    def: &ResourceDef,
    key: Key,
    object: Option<(Value, Owner<'_>)>,
    kind: &'static str,
) -> Option<Value> {
    // Like kube-apiserver, a write that changes nothing stores nothing: no
    // new resourceVersion, no watch event (field ownership still moves).
    if let (Some((new, owner)), Some(current)) = (&object, store.objects.get(&key)) {
        if unchanged(current, new) {
            let current = current.clone();
            if let Owner::Applied(owners) = owner {
                store.owners.insert(key, owners.clone());
            }
            return Some(current);
        }
    }
    store.rv += 1;
    let rv = store.rv;
    let namespace = key.2.clone();
    let object = match object {
        Some((mut o, owner)) => {
            o["metadata"]["resourceVersion"] = json!(rv.to_string());
            match owner {
                Owner::Update(manager) => {
                    let before = store.objects.get(&key).cloned();
                    let owners = store.owners.entry(key.clone()).or_default();
                    apply::record_update(owners, manager, before.as_ref(), &o);
                }
                Owner::Applied(owners) => {
                    store.owners.insert(key.clone(), owners);
                }
            }
            store.objects.insert(key, o.clone());
            o
        }
        None => {
            store.owners.remove(&key);
            let mut o = store.objects.remove(&key)?;
            o["metadata"]["resourceVersion"] = json!(rv.to_string());
            o
        }
    };
    let event = Event {
        rv,
        kind,
        group: def.group,
        plural: def.plural,
        namespace,
        object: object.clone(),
    };
    store.history.push_back(event.clone());
    while store.history.len() > inner.options.history {
        if let Some(e) = store.history.pop_front() {
            store.compacted = e.rv;
        }
    }
    let _ = inner.events.send(event);
    Some(object)
}
