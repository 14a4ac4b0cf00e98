//! create, replace, patch (merge, JSON, server-side apply) and delete.

use super::*;

pub(crate) fn parse_body(body: &Bytes) -> Result<Value, String> {
    serde_json::from_slice(body)
        .or_else(|_| serde_yaml_ng::from_slice(body))
        .map_err(|e| format!("invalid body: {e}"))
}

pub(crate) fn bad_request(message: String) -> Response {
    status_error(400, "BadRequest", message, "", "")
}

pub(crate) fn create(inner: &Inner, target: &Target, body: &Bytes, manager: &str) -> Response {
    match parse_body(body) {
        Ok(object) => create_object(inner, target, object, Owner::Update(manager)),
        Err(m) => bad_request(m),
    }
}

pub(crate) fn create_object(
    inner: &Inner,
    target: &Target,
    mut object: Value,
    owner: Owner<'_>,
) -> Response {
    let named = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let prefix = object
        .pointer("/metadata/generateName")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut store = inner.store.lock().expect("lock");
    let name = match (named, prefix) {
        (Some(n), _) => n,
        // Like kube-apiserver since 1.32 (RetryGenerateName), a generated
        // name that is taken is generated again.
        (None, Some(prefix)) => loop {
            let candidate = format!("{prefix}{}", &uuid_like()[..5]);
            if !store.objects.contains_key(&key_of(target, &candidate)) {
                break candidate;
            }
        },
        (None, None) => {
            return status_error(
                422,
                "Invalid",
                "metadata.name: Required value".into(),
                target.def.kind,
                "",
            )
        }
    };
    object["metadata"]["name"] = json!(name);
    if let Some(ns) = &target.namespace {
        object["metadata"]["namespace"] = json!(ns);
    }
    if let Some(meta) = object["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
        meta.remove("uid");
    }
    let key = key_of(target, &name);
    if store.objects.contains_key(&key) {
        return status_error(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", target.def.plural),
            target.def.plural,
            &name,
        );
    }
    if let Some(ns) = &target.namespace {
        if !store
            .objects
            .contains_key(&("", "namespaces", String::new(), ns.clone()))
        {
            return status_error(
                404,
                "NotFound",
                format!("namespaces \"{ns}\" not found"),
                "namespaces",
                ns,
            );
        }
    }
    if let Err(r) = validation::admit(
        &target.def,
        validation::Write::Create,
        None,
        &mut object,
        inner.now(),
    ) {
        return refused(&r, target.def.plural, &name);
    }
    stamp(&mut object, &target.def, &target.version);
    match commit(
        inner,
        &mut store,
        &target.def,
        key,
        Some((object, owner)),
        "ADDED",
    ) {
        Some(o) => json_response(StatusCode::CREATED, &at_version(o, target)),
        None => status_error(500, "InternalError", "store failed".into(), "", ""),
    }
}

pub(crate) fn precondition_rv(object: &Value) -> Option<String> {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Store `new` for an existing object, honouring the status subresource.
pub(crate) fn update(
    inner: &Inner,
    store: &mut Store,
    target: &Target,
    name: &str,
    (mut new, owner): (Value, Owner<'_>),
    current: Value,
) -> Response {
    let key = key_of(target, name);
    let status_write = target.subresource.as_deref() == Some("status");
    if target.def.status {
        if status_write {
            let status = new.get("status").cloned().unwrap_or(Value::Null);
            new = current.clone();
            new["status"] = status;
        } else {
            match current.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        }
    }
    new["metadata"]["uid"] = current["metadata"]["uid"].clone();
    new["metadata"]["creationTimestamp"] = current["metadata"]["creationTimestamp"].clone();
    new["metadata"]["name"] = json!(name);
    if let Some(ns) = &target.namespace {
        new["metadata"]["namespace"] = json!(ns);
    }
    let write = if status_write {
        validation::Write::Status
    } else {
        validation::Write::Update
    };
    if let Err(r) = validation::admit(&target.def, write, Some(&current), &mut new, inner.now()) {
        return refused(&r, target.def.plural, name);
    }
    stamp(&mut new, &target.def, &target.version);
    match commit(
        inner,
        store,
        &target.def,
        key,
        Some((new, owner)),
        "MODIFIED",
    ) {
        Some(o) => json_response(StatusCode::OK, &at_version(o, target)),
        None => status_error(500, "InternalError", "store failed".into(), "", ""),
    }
}

pub(crate) fn conflict(target: &Target, name: &str) -> Response {
    status_error(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            target.def.plural
        ),
        target.def.plural,
        name,
    )
}

pub(crate) fn replace(inner: &Inner, target: &Target, body: &Bytes, manager: &str) -> Response {
    let name = target.name.clone().unwrap_or_default();
    let new = match parse_body(body) {
        Ok(o) => o,
        Err(m) => return bad_request(m),
    };
    if inner
        .forced_conflicts
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return conflict(target, &name);
    }
    let mut store = inner.store.lock().expect("lock");
    let Some(current) = store.objects.get(&key_of(target, &name)).cloned() else {
        return not_found(target, &name);
    };
    if let Some(rv) = precondition_rv(&new) {
        if Some(rv) != precondition_rv(&current) {
            return conflict(target, &name);
        }
    }
    update(
        inner,
        &mut store,
        target,
        &name,
        (new, Owner::Update(manager)),
        current,
    )
}

pub(crate) fn patch(
    inner: &Inner,
    target: &Target,
    headers: &HeaderMap,
    body: &Bytes,
    query: &HashMap<String, String>,
) -> Response {
    let name = target.name.clone().unwrap_or_default();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let mut store = inner.store.lock().expect("lock");
    let current = store.objects.get(&key_of(target, &name)).cloned();
    let patched = match (content_type.as_str(), current.clone()) {
        ("application/json-patch+json", Some(cur)) => {
            let ops: json_patch::Patch = match serde_json::from_slice(body) {
                Ok(p) => p,
                Err(e) => {
                    return status_error(
                        400,
                        "BadRequest",
                        format!("invalid JSON patch: {e}"),
                        "",
                        "",
                    )
                }
            };
            let mut doc = cur;
            if let Err(e) = json_patch::patch(&mut doc, &ops) {
                return status_error(
                    422,
                    "Invalid",
                    format!("the JSON patch could not be applied: {e}"),
                    target.def.kind,
                    &name,
                );
            }
            doc
        }
        ("application/merge-patch+json" | "application/strategic-merge-patch+json", Some(cur)) => {
            let p = match parse_body(body) {
                Ok(p) => p,
                Err(m) => return bad_request(m),
            };
            if let Some(rv) = precondition_rv(&p) {
                if Some(rv) != precondition_rv(&cur) {
                    return conflict(target, &name);
                }
            }
            let mut doc = cur;
            json_patch::merge(&mut doc, &p);
            doc
        }
        ("application/apply-patch+yaml" | "application/apply-patch+cbor", current) => {
            let p = match parse_body(body) {
                Ok(p) => p,
                Err(m) => return bad_request(m),
            };
            return server_side_apply(inner, store, target, &name, current, &p, query);
        }
        (_, None) => return not_found(target, &name),
        (other, _) => {
            return status_error(
                415,
                "UnsupportedMediaType",
                format!("unsupported patch type {other:?}"),
                "",
                "",
            )
        }
    };
    let cur = current.unwrap_or(Value::Null);
    update(
        inner,
        &mut store,
        target,
        &name,
        (patched, Owner::Update(manager(query))),
        cur,
    )
}

/// An apply patch: needs a field manager, refuses conflicts unless forced.
pub(crate) fn server_side_apply(
    inner: &Inner,
    mut store: std::sync::MutexGuard<'_, Store>,
    target: &Target,
    name: &str,
    current: Option<Value>,
    config: &Value,
    query: &HashMap<String, String>,
) -> Response {
    let Some(manager) = query.get("fieldManager") else {
        return bad_request(
            "PATCH request with apply content type must include fieldManager".into(),
        );
    };
    let force = query.get("force").is_some_and(|f| f == "true");
    let mut owners = store
        .owners
        .get(&key_of(target, name))
        .cloned()
        .unwrap_or_default();
    let doc = match apply::apply(current.as_ref(), &mut owners, manager, force, config) {
        Ok(doc) => doc,
        Err(conflicts) => {
            let list: Vec<String> = conflicts
                .iter()
                .map(|c| format!("conflict with {:?}: {}", c.manager, c.path))
                .collect();
            return status_error(
                409,
                "Conflict",
                format!(
                    "Apply failed with {} conflict(s): {}",
                    list.len(),
                    list.join("; ")
                ),
                target.def.plural,
                name,
            );
        }
    };
    match current {
        Some(cur) => update(
            inner,
            &mut store,
            target,
            name,
            (doc, Owner::Applied(owners)),
            cur,
        ),
        None => {
            drop(store);
            let mut doc = doc;
            doc["metadata"]["name"] = json!(name);
            create_object(inner, target, doc, Owner::Applied(owners))
        }
    }
}

pub(crate) fn delete(inner: &Inner, target: &Target, body: &Bytes) -> Response {
    let name = target.name.clone().unwrap_or_default();
    let options: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut store = inner.store.lock().expect("lock");
    let key = key_of(target, &name);
    let Some(current) = store.objects.get(&key).cloned() else {
        return not_found(target, &name);
    };
    if let Some(rv) = options
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
    {
        if Some(rv.to_owned()) != precondition_rv(&current) {
            return conflict(target, &name);
        }
    }
    if let Some(uid) = options
        .pointer("/preconditions/uid")
        .and_then(Value::as_str)
    {
        if current.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
            return conflict(target, &name);
        }
    }
    match commit(inner, &mut store, &target.def, key, None, "DELETED") {
        Some(o) => json_response(StatusCode::OK, &at_version(o, target)),
        None => not_found(target, &name),
    }
}
