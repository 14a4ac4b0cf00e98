//! `TokenReview`: the tokens the stand-in issued, for the audiences
//! asked.

use super::*;

pub(crate) fn token_review(inner: &Inner, headers: &HeaderMap, body: &Bytes) -> Response {
    let caller = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let reviewers = inner.reviewers.lock().expect("lock").clone();
    if !reviewers.is_empty() && !reviewers.contains(&caller) {
        return status_error(
            403,
            "Forbidden",
            "tokenreviews.authentication.k8s.io is forbidden: the caller cannot create tokenreviews".into(),
            "tokenreviews",
            "",
        );
    }
    let review: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    inner.reviews.fetch_add(1, Ordering::SeqCst);
    let token = review
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let wanted: Vec<String> = review
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let token_audiences: Vec<String> = token
        .split('.')
        .nth(1)
        .and_then(|c| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
        })
        .and_then(|c| serde_json::from_slice::<Value>(&c).ok())
        .and_then(|c| c.get("aud").and_then(Value::as_array).cloned())
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    // As the apiserver: the token must be valid for one of the requested
    // audiences (tokens minted without audiences are valid for any).
    let audiences: Vec<String> = if token_audiences.is_empty() {
        wanted.clone()
    } else {
        wanted
            .iter()
            .filter(|a| token_audiences.contains(a))
            .cloned()
            .collect()
    };
    let account = inner.tokens.lock().expect("lock").get(token).cloned();
    let status = match account {
        Some(_) if !wanted.is_empty() && audiences.is_empty() => {
            json!({ "authenticated": false, "error": "[invalid bearer token, token audiences are invalid for the target audiences]" })
        }
        Some(sa) => match bound_state(inner, &sa) {
            Err(why) => {
                json!({ "authenticated": false, "error": format!("[invalid bearer token, {why}]") })
            }
            Ok(extra) => json!({
                "authenticated": true,
                "user": {
                    "username": format!("system:serviceaccount:{}:{}", sa.namespace, sa.name),
                    "uid": sa.uid,
                    "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", sa.namespace), "system:authenticated"],
                    "extra": extra,
                },
                "audiences": audiences,
            }),
        },
        None => json!({ "authenticated": false, "error": "invalid bearer token" }),
    };
    json_response(
        StatusCode::CREATED,
        &json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": { "creationTimestamp": null },
            "spec": review.get("spec").cloned().unwrap_or(json!({})),
            "status": status,
        }),
    )
}

/// The token of the kubeconfig the stand-in writes.
pub const ADMIN_TOKEN: &str = "stand-in-admin";

/// The user the kubeconfig's token authenticates, as kube-apiserver names
/// an administrator (kind's and kubeadm's `kubernetes-admin`).
pub const ADMIN_USER: &str = "kubernetes-admin";

/// `SelfSubjectReview` (authentication.k8s.io/v1, GA in 1.28): create
/// only, open to every authenticated user (the `system:basic-user`
/// ClusterRole), answering who the request's credential authenticates;
/// 401 for a token no authenticator accepts, 400 for a body of another
/// kind.
pub(crate) fn self_subject_review(
    inner: &Inner,
    method: &Method,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    if *method != Method::POST {
        return status_error(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported on selfsubjectreviews"),
            "selfsubjectreviews",
            "",
        );
    }
    // kubectl sends protobuf (the kind is in its TypeMeta, as text);
    // others JSON.
    let protobuf = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/vnd.kubernetes.protobuf"));
    let kind = match protobuf {
        true => body
            .windows(17)
            .any(|w| w == b"SelfSubjectReview")
            .then_some("SelfSubjectReview"),
        false => serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|r| r.get("kind").and_then(Value::as_str).map(str::to_owned))
            .filter(|k| k == "SelfSubjectReview")
            .map(|_| "SelfSubjectReview"),
    };
    if kind != Some("SelfSubjectReview") {
        return status_error(
            400,
            "BadRequest",
            "the body is not a SelfSubjectReview".into(),
            "selfsubjectreviews",
            "",
        );
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let user = if token == ADMIN_TOKEN {
        json!({ "username": ADMIN_USER, "groups": ["kubeadm:cluster-admins", "system:authenticated"] })
    } else {
        match inner.tokens.lock().expect("lock").get(token) {
            Some(sa) => json!({
                "username": format!("system:serviceaccount:{}:{}", sa.namespace, sa.name),
                "uid": sa.uid,
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", sa.namespace), "system:authenticated"],
            }),
            None => return status_error(401, "Unauthorized", "Unauthorized".into(), "", ""),
        }
    };
    json_response(
        StatusCode::CREATED,
        &json!({
            "kind": "SelfSubjectReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": { "creationTimestamp": null },
            "status": { "userInfo": user },
        }),
    )
}

/// As kube-apiserver's ServiceAccount token authenticator: an expired
/// token is refused, and a token bound to a pod is refused once that pod
/// is gone or another pod took its name. An accepted bound token's `extra`
/// names the pod, its UID and its node.
fn bound_state(inner: &Inner, sa: &ServiceAccount) -> Result<Value, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if sa.exp.is_some_and(|exp| exp <= now) {
        return Err("service account token has expired".into());
    }
    let Some((name, uid)) = &sa.pod else {
        return Ok(json!({}));
    };
    let key = ("", "pods", sa.namespace.clone(), name.clone());
    let pod = inner.store.lock().expect("lock").objects.get(&key).cloned();
    let Some(pod) = pod else {
        return Err(format!("pod \"{name}\" not found"));
    };
    let live_uid = pod
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if live_uid != uid {
        return Err(format!("pod UID ({live_uid}) does not match claim ({uid})"));
    }
    let mut extra = json!({
        "authentication.kubernetes.io/pod-name": [name],
        "authentication.kubernetes.io/pod-uid": [uid],
    });
    if let Some(node) = pod.pointer("/spec/nodeName").and_then(Value::as_str) {
        extra["authentication.kubernetes.io/node-name"] = json!([node]);
    }
    Ok(extra)
}
