//! get, list and watch (with resume, bookmarks and 410 Gone).

use super::*;

pub(crate) fn get(inner: &Inner, target: &Target) -> Response {
    let name = target.name.as_deref().unwrap_or_default();
    let store = inner.store.lock().expect("lock");
    match store.objects.get(&key_of(target, name)) {
        Some(o) => json_response(StatusCode::OK, &at_version(o.clone(), target)),
        None => not_found(target, name),
    }
}

/// The stored objects a list or an initial watch of `target` returns.
pub(crate) fn listed<'a>(
    store: &'a Store,
    target: &'a Target,
    query: &'a HashMap<String, String>,
) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
    store.objects.iter().filter(move |((g, p, ns, _), o)| {
        *g == target.def.group
            && *p == target.def.plural
            && target.namespace.as_ref().is_none_or(|t| t == ns)
            && selector_matches(
                o,
                query.get("labelSelector").map(String::as_str),
                query.get("fieldSelector").map(String::as_str),
            )
    })
}

/// 400 when the request's field selector names a field the resource
/// cannot be selected by.
fn unsupported_selector(target: &Target, query: &HashMap<String, String>) -> Option<Response> {
    let selector = query.get("fieldSelector")?;
    validation::check_field_selector(&target.def, selector)
        .err()
        .map(|r| refused(&r, target.def.plural, ""))
}

pub(crate) fn list(inner: &Inner, target: &Target, query: &HashMap<String, String>) -> Response {
    if let Some(refusal) = unsupported_selector(target, query) {
        return refusal;
    }
    let store = inner.store.lock().expect("lock");
    let items: Vec<Value> = listed(&store, target, query)
        .map(|(_, o)| at_version(o.clone(), target))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", target.def.kind),
            "apiVersion": target.def.api_version(&target.version),
            "metadata": { "resourceVersion": store.rv.to_string() },
            "items": items,
        }),
    )
}

/// A watch; `faulty` when the plan of faults applies to its client
/// (410 Gone on resume, a stream cut early).
pub(crate) fn watch(
    inner: &Arc<Inner>,
    target: &Target,
    query: &HashMap<String, String>,
    faulty: bool,
) -> Response {
    if let Some(refusal) = unsupported_selector(target, query) {
        return refusal;
    }
    let label = query.get("labelSelector").cloned();
    let field = query.get("fieldSelector").cloned();
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    let from: Option<u64> = query
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0);
    let matches = {
        let target_ns = target.namespace.clone();
        let (group, plural) = (target.def.group, target.def.plural);
        move |e: &Event| {
            e.group == group
                && e.plural == plural
                && target_ns.as_ref().is_none_or(|ns| *ns == e.namespace)
                && selector_matches(&e.object, label.as_deref(), field.as_deref())
        }
    };
    let api_version = target.def.api_version(&target.version);
    let kind = target.def.kind;
    let mut live = inner.events.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    let line = |v: Value| Ok(Bytes::from(format!("{v}\n")));

    // Replay under the lock, so nothing between replay and live is missed.
    let (replay, mut last_rv, gone) = {
        let store = inner.store.lock().expect("lock");
        match from {
            Some(rv) if rv < store.compacted => (Vec::new(), rv, true),
            Some(rv) if faulty && inner.faults.gone_on_resume() => (Vec::new(), rv, true),
            Some(rv) => (
                store
                    .history
                    .iter()
                    .filter(|e| e.rv > rv && matches(e))
                    .cloned()
                    .collect::<Vec<_>>(),
                store.rv,
                false,
            ),
            None => {
                let synthetic = listed(&store, target, query)
                    .map(|((g, p, ns, _), o)| Event {
                        rv: 0,
                        kind: "ADDED",
                        group: g,
                        plural: p,
                        namespace: ns.clone(),
                        object: o.clone(),
                    })
                    .collect();
                (synthetic, store.rv, false)
            }
        }
    };
    let every = inner.options.bookmark_every;
    let cut = faulty.then(|| inner.faults.cut_after()).flatten();
    let av = api_version.clone();
    tokio::spawn(async move {
        if gone {
            let _ = tx
                .send(line(json!({ "type": "ERROR", "object": {
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "too old resource version", "reason": "Expired", "code": 410,
                }})))
                .await;
            return;
        }
        for e in replay {
            let mut o = e.object;
            o["apiVersion"] = json!(av);
            if tx
                .send(line(json!({ "type": e.kind, "object": o })))
                .await
                .is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let cut_at = cut.map(|c| tokio::time::Instant::now() + c);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                () = tokio::time::sleep_until(cut_at.unwrap_or(deadline)), if cut_at.is_some() => {
                    let _ = tx.send(Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "watch cut"))).await;
                    return;
                }
                _ = tick.tick(), if bookmarks => {
                    let b = json!({ "type": "BOOKMARK", "object": {
                        "kind": kind, "apiVersion": av, "metadata": { "resourceVersion": last_rv.to_string() },
                    }});
                    if tx.send(line(b)).await.is_err() { return; }
                }
                e = live.recv() => match e {
                    Ok(e) if e.rv > last_rv => {
                        last_rv = e.rv;
                        if matches(&e) {
                            let mut o = e.object;
                            o["apiVersion"] = json!(av);
                            if tx.send(line(json!({ "type": e.kind, "object": o }))).await.is_err() { return; }
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream = tokio_stream_from(rx);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("response")
}

pub(crate) fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
