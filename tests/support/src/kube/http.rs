//! Routing of API paths to handlers, discovery, and the API server's
//! error format.

use super::*;

pub(crate) fn status_error(
    code: u16,
    reason: &str,
    message: String,
    kind: &str,
    name: &str,
) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason,
        "details": { "name": name, "kind": kind }, "code": code,
    });
    (
        StatusCode::from_u16(code).expect("status"),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A write or read refused as the API server refuses it.
pub(crate) fn refused(r: &validation::Refusal, kind: &str, name: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": r.message, "reason": r.reason,
        "details": { "name": name, "kind": kind, "causes": r.causes_json() }, "code": r.code,
    });
    (
        StatusCode::from_u16(r.code).expect("status"),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub(crate) fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

/// A parsed resource path.
pub(crate) struct Target {
    pub(crate) def: ResourceDef,
    pub(crate) version: String,
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) subresource: Option<String>,
}

pub(crate) fn parse_path(inner: &Inner, path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, r, rest @ ..] if !r.is_empty() => (Some((*ns).to_owned()), {
            let mut v = vec![*r];
            v.extend_from_slice(rest);
            v
        }),
        r => (None, r.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [p] => (*p, None, None),
        [p, n] => (*p, Some((*n).to_owned()), None),
        [p, n, s] => (*p, Some((*n).to_owned()), Some((*s).to_owned())),
        _ => return None,
    };
    // `/api/v1/namespaces/NAME` addresses a namespace itself.
    let (plural, name, namespace) = if namespace.is_some() && plural.is_empty() {
        ("namespaces", namespace, None)
    } else {
        (plural, name, namespace)
    };
    let def = inner
        .resources
        .iter()
        .find(|d| d.group == group && d.plural == plural && d.versions.contains(&version))?
        .clone();
    Some(Target {
        def,
        version: version.to_owned(),
        namespace,
        name,
        subresource: sub,
    })
}

pub(crate) fn selector_matches(
    object: &Value,
    label_selector: Option<&str>,
    field_selector: Option<&str>,
) -> bool {
    let labels = object
        .pointer("/metadata/labels")
        .and_then(Value::as_object);
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    for term in label_selector
        .unwrap_or("")
        .split(',')
        .filter(|t| !t.is_empty())
    {
        let ok = if let Some((k, v)) = term.split_once("!=") {
            label(k.trim()) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            label(k.trim()) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            label(k.trim()).is_none()
        } else {
            label(term.trim()).is_some()
        };
        if !ok {
            return false;
        }
    }
    for term in field_selector
        .unwrap_or("")
        .split(',')
        .filter(|t| !t.is_empty())
    {
        let (k, v, negate) = match term.split_once("!=") {
            Some((k, v)) => (k, v, true),
            None => match term.split_once("==").or_else(|| term.split_once('=')) {
                Some((k, v)) => (k, v, false),
                None => return false,
            },
        };
        let pointer = format!("/{}", k.trim().replace('.', "/"));
        let actual = object
            .pointer(&pointer)
            .and_then(Value::as_str)
            .unwrap_or("");
        if (actual == v.trim()) == negate {
            return false;
        }
    }
    true
}

/// Every request: recorded as an audit log would, answered, and, when it
/// is meshca's write and succeeded, the object it stored kept for the
/// schema check.
pub(crate) async fn dispatch(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    inner
        .requests
        .lock()
        .expect("lock")
        .push(format!("{method} {}", uri.path()));
    let user_agent = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let target = parse_path(&inner, uri.path());
    let mut audited: Vec<AuditEntry> = Vec::new();
    if let Some(entry) = audit::entry(&method, target.as_ref(), &query, &user_agent) {
        audited = audit::implied_checks(&inner, &entry, &headers, &body);
        audited.insert(0, entry);
    }
    let is_write = matches!(method, Method::POST | Method::PUT | Method::PATCH);
    let meshca = audit::is_meshca(&user_agent);
    let fault = meshca.then(|| inner.faults.decide(is_write)).flatten();
    let response = match fault {
        Some(Fault::Refuse(code, reason, retry_after)) => {
            refused_by_fault(code, reason, retry_after)
        }
        Some(Fault::Slow(d)) => {
            tokio::time::sleep(d).await;
            serve(&inner, &method, &uri, &headers, &body, &query, meshca).await
        }
        Some(Fault::LoseAnswer) | None => {
            serve(&inner, &method, &uri, &headers, &body, &query, meshca).await
        }
    };
    let lost = fault == Some(Fault::LoseAnswer);
    let code = if lost { 0 } else { response.status().as_u16() };
    inner
        .audit
        .lock()
        .expect("lock")
        .extend(audited.into_iter().map(|e| AuditEntry { code, ..e }));
    if !(is_write && meshca && response.status().is_success()) {
        return if lost { lose(response) } else { response };
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    if let Ok(object) = serde_json::from_slice::<Value>(&bytes) {
        if object.get("metadata").is_some() {
            inner
                .written
                .lock()
                .expect("lock")
                .push((std::time::Instant::now(), object));
        }
    }
    let response = Response::from_parts(parts, Body::from(bytes));
    if lost {
        lose(response)
    } else {
        response
    }
}

/// An answer whose body breaks off: the client sees the connection fail
/// after the server did the work.
fn lose(response: Response) -> Response {
    let (parts, _) = response.into_parts();
    let broken = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "answer lost",
        ))
    });
    Response::from_parts(parts, Body::from_stream(broken))
}

/// The API server's refusal under load: a Status, with `Retry-After` (and
/// `details.retryAfterSeconds`) for 429 as API Priority and Fairness sends
/// them.
fn refused_by_fault(code: u16, reason: &str, retry_after: Option<u32>) -> Response {
    let mut details = json!({});
    if let Some(r) = retry_after {
        details["retryAfterSeconds"] = json!(r);
    }
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{reason} (injected)"), "reason": reason, "details": details, "code": code,
    });
    let mut response = (
        StatusCode::from_u16(code).expect("status"),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(r) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", r.to_string().parse().expect("header"));
    }
    response
}

async fn serve(
    inner: &Arc<Inner>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    query: &HashMap<String, String>,
    faulty: bool,
) -> Response {
    let forbidden = inner
        .forbidden
        .lock()
        .expect("lock")
        .iter()
        .any(|(m, suffix)| *m == method.as_str() && uri.path().ends_with(suffix.as_str()));
    if forbidden {
        return status_error(
            403,
            "Forbidden",
            format!(
                "{method} {} is forbidden: the caller lacks the permission",
                uri.path()
            ),
            "",
            "",
        );
    }
    if inner.unavailable.load(Ordering::SeqCst) {
        return status_error(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request".into(),
            "",
            "",
        );
    }
    let path = uri.path();
    match (method.clone(), path) {
        (Method::GET, "/version") => {
            return json_response(
                StatusCode::OK,
                &json!({
                    "major": "1", "minor": "37", "gitVersion": "v1.37.0-meshca-stand-in",
                    "platform": "linux/amd64", "goVersion": "go1.24", "compiler": "gc",
                    "gitCommit": "0000000", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                }),
            )
        }
        (Method::GET, "/api") => {
            return json_response(
                StatusCode::OK,
                &json!({
                    "kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1" }],
                }),
            )
        }
        (Method::GET, "/apis") => return json_response(StatusCode::OK, &api_group_list(inner)),
        _ => {}
    }
    if *method == Method::GET {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match parts.as_slice() {
            ["api", v] => return resource_list(inner, "", v),
            ["apis", g, v] => return resource_list(inner, g, v),
            _ => {}
        }
    }
    let Some(target) = parse_path(inner, path) else {
        return status_error(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({method} {path})"),
            "",
            "",
        );
    };
    if target.def.plural == "tokenreviews" {
        return token_review(inner, headers, body);
    }
    if target.def.plural == "selfsubjectreviews" {
        return self_subject_review(inner, method, headers, body);
    }
    match *method {
        Method::GET if target.name.is_some() => get(inner, &target),
        Method::GET if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            watch(inner, &target, query, faulty)
        }
        Method::GET => list(inner, &target, query),
        Method::POST => create(inner, &target, body, manager(query)),
        Method::PUT => replace(inner, &target, body, manager(query)),
        Method::PATCH => patch(inner, &target, headers, body, query),
        Method::DELETE => delete(inner, &target, body),
        _ => status_error(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported"),
            "",
            "",
        ),
    }
}

/// The field manager a write names; kube-rs names none for plain writes.
pub(crate) fn manager(query: &HashMap<String, String>) -> &str {
    query.get("fieldManager").map_or("unknown", String::as_str)
}

pub(crate) fn api_group_list(inner: &Inner) -> Value {
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for d in inner.resources.iter().filter(|d| !d.group.is_empty()) {
        let e = groups.entry(d.group).or_default();
        for v in &d.versions {
            if !e.contains(v) {
                e.push(v);
            }
        }
    }
    json!({
        "kind": "APIGroupList", "apiVersion": "v1",
        "groups": groups.iter().map(|(g, vs)| json!({
            "name": g,
            "versions": vs.iter().map(|v| json!({ "groupVersion": format!("{g}/{v}"), "version": v })).collect::<Vec<_>>(),
            "preferredVersion": { "groupVersion": format!("{g}/{}", vs[0]), "version": vs[0] },
        })).collect::<Vec<_>>(),
    })
}

pub(crate) fn resource_list(inner: &Inner, group: &str, version: &str) -> Response {
    let defs: Vec<&ResourceDef> = inner
        .resources
        .iter()
        .filter(|d| d.group == group && d.versions.contains(&version))
        .collect();
    if defs.is_empty() {
        return status_error(
            404,
            "NotFound",
            format!("no API group version {group}/{version}"),
            "",
            "",
        );
    }
    let mut resources = Vec::new();
    for d in defs {
        let verbs: Vec<&str> = if d.plural == "tokenreviews" {
            vec!["create"]
        } else {
            vec![
                "create", "delete", "get", "list", "patch", "update", "watch",
            ]
        };
        resources.push(json!({
            "name": d.plural, "singularName": d.kind.to_lowercase(), "namespaced": d.namespaced,
            "kind": d.kind, "verbs": verbs,
        }));
        if d.status {
            resources.push(json!({
                "name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced,
                "kind": d.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources,
        }),
    )
}

pub(crate) fn key_of(target: &Target, name: &str) -> Key {
    (
        target.def.group,
        target.def.plural,
        target.namespace.clone().unwrap_or_default(),
        name.to_owned(),
    )
}

/// The object as served at the requested version.
pub(crate) fn at_version(mut object: Value, target: &Target) -> Value {
    object["apiVersion"] = json!(target.def.api_version(&target.version));
    object
}

pub(crate) fn not_found(target: &Target, name: &str) -> Response {
    status_error(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", target.def.plural),
        target.def.plural,
        name,
    )
}
