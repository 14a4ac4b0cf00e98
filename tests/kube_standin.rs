//! The Kubernetes API stand-in itself (tests/support/src/kube/), checked
//! against the clients that depend on it: kube-rs (the same client meshca
//! uses) and kubectl. If these pass, a behaviour meshca relies on is the
//! apiserver's, not an accident of the stand-in.

use meshca_test_support as support;

use std::process::Command;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams, WatchEvent, WatchParams,
};
use kube::Api;
use serde_json::{json, Value};
use support::kube::{KubeStandIn, Options};

async fn client(kube: &KubeStandIn) -> kube::Client {
    kube.client().await
}

fn secret(name: &str, value: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "app": "demo" } },
        "stringData": {},
        "data": { "k": base64_encode(value) },
    }))
    .expect("secret")
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn api_error(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn create_get_list_replace_patch_and_delete_behave_like_the_apiserver() {
    let kube = KubeStandIn::start().await;
    let api: Api<Secret> = Api::namespaced(client(&kube).await, "osm-system");
    let created = api
        .create(&PostParams::default(), &secret("a", "1"))
        .await
        .expect("create");
    let uid = created.metadata.uid.clone().expect("uid");
    let rv1: u64 = created
        .metadata
        .resource_version
        .clone()
        .expect("rv")
        .parse()
        .expect("numeric");
    assert!(created.metadata.creation_timestamp.is_some());

    let (code, reason) = api_error(
        api.create(&PostParams::default(), &secret("a", "2"))
            .await
            .expect_err("dup"),
    );
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

    let listed = api
        .list(&ListParams::default().labels("app=demo"))
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 1);
    let list_rv: u64 = listed
        .metadata
        .resource_version
        .expect("list rv")
        .parse()
        .expect("n");
    assert!(list_rv >= rv1);
    assert!(api
        .list(&ListParams::default().labels("app=other"))
        .await
        .expect("list")
        .items
        .is_empty());
    assert_eq!(
        api.list(&ListParams::default().fields("metadata.name=a"))
            .await
            .expect("list")
            .items
            .len(),
        1
    );

    // Replace with the current RV works; with a stale one it conflicts.
    let mut fresh = api.get("a").await.expect("get");
    fresh
        .data
        .as_mut()
        .expect("data")
        .insert("k".into(), k8s_openapi::ByteString(b"2".to_vec()));
    let replaced = api
        .replace("a", &PostParams::default(), &fresh)
        .await
        .expect("replace");
    let rv2: u64 = replaced
        .metadata
        .resource_version
        .clone()
        .expect("rv")
        .parse()
        .expect("n");
    assert!(rv2 > rv1, "resourceVersion increases");
    assert_eq!(
        replaced.metadata.uid.as_deref(),
        Some(uid.as_str()),
        "uid is stable"
    );
    let (code, reason) = api_error(
        api.replace("a", &PostParams::default(), &fresh)
            .await
            .expect_err("stale"),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    // Merge, JSON and server-side-apply patches.
    let merged = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "tier": "x" } } })),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        merged.metadata.labels.as_ref().expect("labels")["tier"],
        "x"
    );
    assert_eq!(
        merged.metadata.labels.as_ref().expect("labels")["app"],
        "demo"
    );
    let applied = api
        .patch(
            "b",
            &PatchParams::apply("test").force(),
            &Patch::Apply(json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "b" }, "data": { "x": base64_encode("y") } })),
        )
        .await
        .expect("apply creates");
    assert_eq!(applied.metadata.name.as_deref(), Some("b"));
    let stale = json!({ "metadata": { "resourceVersion": "1" }, "data": {} });
    let (code, _) = api_error(
        api.patch("a", &PatchParams::default(), &Patch::Merge(stale))
            .await
            .expect_err("precondition"),
    );
    assert_eq!(code, 409);

    // Delete (kube-rs sends DeleteOptions in the body), then NotFound.
    api.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    let (code, reason) = api_error(api.get("a").await.expect_err("gone"));
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    let (code, reason) = api_error(
        api.delete("a", &DeleteParams::default())
            .await
            .expect_err("gone"),
    );
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
}

#[tokio::test]
async fn watches_resume_from_a_resource_version_send_bookmarks_and_expire_with_410() {
    let kube = KubeStandIn::start().await;
    let api: Api<Secret> = Api::namespaced(client(&kube).await, "osm-system");
    let first = api
        .create(&PostParams::default(), &secret("w1", "1"))
        .await
        .expect("create");
    let rv = first.metadata.resource_version.clone().expect("rv");
    api.create(&PostParams::default(), &secret("w2", "2"))
        .await
        .expect("create");
    api.delete("w1", &DeleteParams::default())
        .await
        .expect("delete");

    // Resume after w1's creation: w2 added, w1 deleted, then a bookmark.
    let mut stream = api
        .watch(
            &WatchParams {
                bookmarks: true,
                ..WatchParams::default()
            }
            .timeout(5),
            &rv,
        )
        .await
        .expect("watch")
        .boxed();
    let mut seen = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(3), stream.try_next())
        .await
        .expect("event in time")
        .expect("ok")
    {
        match event {
            WatchEvent::Added(s) => seen.push(format!("ADDED {}", s.metadata.name.expect("name"))),
            WatchEvent::Deleted(s) => {
                seen.push(format!("DELETED {}", s.metadata.name.expect("name")))
            }
            WatchEvent::Bookmark(_) => {
                seen.push("BOOKMARK".into());
                break;
            }
            other => seen.push(format!("{other:?}")),
        }
    }
    assert_eq!(seen, ["ADDED w2", "DELETED w1", "BOOKMARK"]);

    // A live change reaches an open watch.
    let now = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut live = api
        .watch(
            &WatchParams {
                bookmarks: false,
                ..WatchParams::default()
            }
            .timeout(5),
            &now,
        )
        .await
        .expect("watch")
        .boxed();
    api.create(&PostParams::default(), &secret("w3", "3"))
        .await
        .expect("create");
    match tokio::time::timeout(Duration::from_secs(3), live.try_next())
        .await
        .expect("in time")
        .expect("ok")
    {
        Some(WatchEvent::Added(s)) => assert_eq!(s.metadata.name.as_deref(), Some("w3")),
        other => panic!("unexpected {other:?}"),
    }

    kube.compact();
    let mut gone = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .expect("watch")
        .boxed();
    match tokio::time::timeout(Duration::from_secs(3), gone.try_next())
        .await
        .expect("in time")
        .expect("ok")
    {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
}

#[tokio::test]
async fn a_status_subresource_is_separate_from_the_main_resource() {
    let kube = KubeStandIn::start().await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "CertificateRequest"),
        "certificaterequests",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client(&kube).await, "osm-system", &ar);
    let mut cr = DynamicObject::new("cr1", &ar);
    cr.data = json!({ "spec": { "request": "Zm9v" } });
    api.create(&PostParams::default(), &cr)
        .await
        .expect("create");

    // Writing status through the main resource is ignored...
    let mut with_status = api.get("cr1").await.expect("get");
    with_status.data["status"] = json!({ "certificate": "bad" });
    let after = api
        .replace("cr1", &PostParams::default(), &with_status)
        .await
        .expect("replace");
    assert!(after
        .data
        .get("status")
        .is_none_or(|s| s.get("certificate").is_none()));
    // ...and through /status only status changes.
    let patched = api
        .patch_status("cr1", &PatchParams::default(), &Patch::Merge(json!({ "spec": { "request": "changed" }, "status": { "conditions": [{ "type": "Ready", "status": "True" }] } })))
        .await
        .expect("status patch");
    assert_eq!(patched.data["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(
        patched.data["spec"]["request"], "Zm9v",
        "spec untouched by /status"
    );
}

#[tokio::test]
async fn token_reviews_and_leases_work() {
    let kube = KubeStandIn::start().await;
    let c = client(&kube).await;
    let reviews: Api<TokenReview> = Api::all(c.clone());
    let token = kube.service_account_token_for("bookstore", "bookstore", &["meshca"]);
    let review = |token: String, aud: &str| TokenReview {
        spec: TokenReviewSpec {
            token,
            audiences: Some(vec![aud.to_owned()]),
        },
        ..TokenReview::default()
    };
    let ok = reviews
        .create(&PostParams::default(), &review(token.clone(), "meshca"))
        .await
        .expect("review");
    let status = ok.status.expect("status");
    assert_eq!(status.authenticated, Some(true));
    assert_eq!(
        status.user.expect("user").username.as_deref(),
        Some("system:serviceaccount:bookstore:bookstore")
    );
    let wrong = reviews
        .create(&PostParams::default(), &review(token, "vault"))
        .await
        .expect("review");
    assert_ne!(wrong.status.expect("status").authenticated, Some(true));
    let bad = reviews
        .create(&PostParams::default(), &review("nope".into(), "meshca"))
        .await
        .expect("review");
    assert_ne!(bad.status.expect("status").authenticated, Some(true));

    let leases: Api<Lease> = Api::namespaced(c, "osm-system");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": { "name": "l" }, "spec": { "holderIdentity": "a", "leaseDurationSeconds": 15 },
    }))
    .expect("lease");
    let created = leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("create lease");
    let mut taken = created.clone();
    taken.spec.as_mut().expect("spec").holder_identity = Some("b".into());
    leases
        .replace("l", &PostParams::default(), &taken)
        .await
        .expect("take over");
    let (code, _) = api_error(
        leases
            .replace("l", &PostParams::default(), &created)
            .await
            .expect_err("stale"),
    );
    assert_eq!(code, 409, "a stale holder cannot overwrite");
}

/// kube-apiserver's ServiceAccount token authenticator, for tokens the
/// kubelet projects into a pod: an accepted token's `user.extra` names the
/// pod, its UID and its node (`ServiceAccountTokenPodNodeInfo`, on since
/// Kubernetes 1.30); an expired token, a token whose pod was deleted, and
/// a token whose pod name now belongs to another pod (another UID) are
/// refused.
#[tokio::test]
async fn bound_tokens_name_their_pod_and_node_and_die_with_the_pod() {
    let kube = KubeStandIn::start().await;
    kube.create_namespace("web");
    kube.put_pod("web", "web-1", "web", Some("node-1"));
    let reviews: Api<TokenReview> = Api::all(client(&kube).await);
    let review = |token: &str| {
        let reviews = reviews.clone();
        let body = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec!["istio-ca".to_owned()]),
            },
            ..TokenReview::default()
        };
        async move {
            reviews
                .create(&PostParams::default(), &body)
                .await
                .expect("review")
                .status
                .expect("status")
        }
    };
    let live = kube.bound_token("web", "web-1", &["istio-ca"], 600);
    let status = review(&live).await;
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    let user = status.user.expect("user");
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:web:web")
    );
    let extra = user.extra.expect("extra");
    let one = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
    assert_eq!(
        one("authentication.kubernetes.io/pod-name").as_deref(),
        Some("web-1")
    );
    assert_eq!(
        one("authentication.kubernetes.io/node-name").as_deref(),
        Some("node-1")
    );
    let uid = kube.get("", "pods", "web", "web-1").expect("pod")["metadata"]["uid"].clone();
    assert_eq!(
        one("authentication.kubernetes.io/pod-uid").map(Value::from),
        Some(uid)
    );

    let expired = kube.bound_token("web", "web-1", &["istio-ca"], -1);
    let status = review(&expired).await;
    assert_ne!(status.authenticated, Some(true));
    assert!(status.error.unwrap_or_default().contains("expired"));

    assert!(kube.delete("", "pods", "web", "web-1"));
    let status = review(&live).await;
    assert_ne!(status.authenticated, Some(true), "the pod is gone");
    kube.put_pod("web", "web-1", "web", Some("node-1"));
    let status = review(&live).await;
    assert_ne!(
        status.authenticated,
        Some(true),
        "another pod of the same name"
    );
    assert!(status.error.unwrap_or_default().contains("does not match"));
}

#[tokio::test]
async fn discovery_serves_the_configured_ingress_versions_only() {
    let v1beta1_only = KubeStandIn::start_with(Options {
        ingress_versions: vec!["v1beta1"],
        ..Options::default()
    })
    .await;
    let c = client(&v1beta1_only).await;
    let groups = c.list_api_groups().await.expect("groups");
    let networking = groups
        .groups
        .iter()
        .find(|g| g.name == "networking.k8s.io")
        .expect("networking");
    let versions: Vec<&str> = networking
        .versions
        .iter()
        .map(|v| v.version.as_str())
        .collect();
    assert_eq!(versions, ["v1beta1"]);
    assert!(c
        .list_api_group_resources("networking.k8s.io/v1")
        .await
        .is_err());

    let none = KubeStandIn::start_with(Options {
        ingress_versions: vec![],
        ..Options::default()
    })
    .await;
    let groups = client(&none).await.list_api_groups().await.expect("groups");
    assert!(groups.groups.iter().all(|g| g.name != "networking.k8s.io"));
    let version = client(&none)
        .await
        .apiserver_version()
        .await
        .expect("version");
    assert_eq!(version.major, "1");
}

#[tokio::test]
async fn server_side_apply_tracks_field_managers_conflicts_and_removals() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let kube = KubeStandIn::start().await;
    kube.create_namespace("demo");
    let api: Api<ConfigMap> = Api::namespaced(client(&kube).await, "demo");
    let cm = |data: serde_json::Value| json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "c" }, "data": data });
    let ours = PatchParams::apply("meshca");
    let forced = PatchParams::apply("meshca").force();

    // An apply creates, and a later apply without a field drops it.
    api.patch("c", &ours, &Patch::Apply(cm(json!({ "a": "1", "b": "2" }))))
        .await
        .expect("apply creates");
    api.patch("c", &ours, &Patch::Apply(cm(json!({ "a": "1" }))))
        .await
        .expect("apply");
    let data = api.get("c").await.expect("get").data.expect("data");
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["a"],
        "b was meshca's and is no longer listed"
    );

    // A user's edit of an owned field conflicts with an unforced apply...
    api.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({ "data": { "a": "edited", "user": "x" } })),
    )
    .await
    .expect("a user's merge patch");
    let kube::Error::Api(refused) = api
        .patch("c", &ours, &Patch::Apply(cm(json!({ "a": "1" }))))
        .await
        .expect_err("conflict")
    else {
        panic!("not an API error");
    };
    let message = refused.message;
    assert_eq!(
        (refused.code, refused.reason.as_str()),
        (409, "Conflict"),
        "{message}"
    );
    assert!(message.contains("/data/a"), "{message}");
    // ...and a forced one takes it back, leaving the user's own field.
    api.patch("c", &forced, &Patch::Apply(cm(json!({ "a": "1" }))))
        .await
        .expect("forced apply");
    let data = api.get("c").await.expect("get").data.expect("data");
    assert_eq!((data["a"].as_str(), data["user"].as_str()), ("1", "x"));

    // Another manager's apply removes nothing meshca owns.
    api.patch(
        "c",
        &PatchParams::apply("someone-else"),
        &Patch::Apply(cm(json!({}))),
    )
    .await
    .expect("apply by another manager");
    let data = api.get("c").await.expect("get").data.expect("data");
    assert_eq!(data["a"], "1", "owned by meshca, not by someone-else");

    // An apply must name its field manager.
    let raw = reqwest_apply_without_manager(&kube).await;
    assert_eq!(raw, 400);
}

/// An apply patch sent without `fieldManager`, which kube-rs will not send.
/// A plain HTTPS client trusting the stand-in, for requests no typed
/// client makes.
fn http_client(kube: &KubeStandIn) -> reqwest::Client {
    support::install_crypto_provider();
    let ca = reqwest::Certificate::from_pem(kube.ca_pem().as_bytes()).expect("ca");
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("client")
}

async fn reqwest_apply_without_manager(kube: &KubeStandIn) -> u16 {
    http_client(kube)
        .patch(format!(
            "{}/api/v1/namespaces/demo/configmaps/c",
            kube.url()
        ))
        .header("content-type", "application/apply-patch+yaml")
        .body(r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}"#)
        .send()
        .await
        .expect("sent")
        .status()
        .as_u16()
}

fn kubectl(kube: &KubeStandIn, args: &[&str]) -> std::process::Output {
    Command::new(support::tool("kubectl"))
        .arg("--kubeconfig")
        .arg(kube.kubeconfig())
        .args(args)
        .output()
        .expect("kubectl runs (.ci/run installs it)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_can_create_get_patch_and_delete_through_the_stand_in() {
    let kube = KubeStandIn::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("s.yaml");
    std::fs::write(&manifest, "apiVersion: v1\nkind: Secret\nmetadata:\n  name: from-kubectl\n  namespace: osm-system\ndata:\n  ca.crt: aGVsbG8=\n").expect("write");
    let kube2 = std::sync::Arc::new(kube);
    let k = kube2.clone();
    let out = tokio::task::spawn_blocking(move || {
        let m = manifest.to_str().expect("utf8").to_owned();
        let create = kubectl(&k, &["create", "-f", &m, "--validate=false"]);
        let get = kubectl(
            &k,
            &[
                "get",
                "secret",
                "-n",
                "osm-system",
                "from-kubectl",
                "-o",
                "jsonpath={.data.ca\\.crt}",
            ],
        );
        let list = kubectl(&k, &["get", "secrets", "-n", "osm-system", "-o", "name"]);
        let patch = kubectl(
            &k,
            &[
                "patch",
                "secret",
                "-n",
                "osm-system",
                "from-kubectl",
                "--type=merge",
                "-p",
                r#"{"metadata":{"labels":{"by":"kubectl"}}}"#,
            ],
        );
        let delete = kubectl(
            &k,
            &["delete", "secret", "-n", "osm-system", "from-kubectl"],
        );
        let missing = kubectl(&k, &["get", "secret", "-n", "osm-system", "from-kubectl"]);
        (create, get, list, patch, delete, missing)
    })
    .await
    .expect("kubectl thread");
    let (create, get, list, patch, delete, missing) = out;
    for (what, o) in [
        ("create", &create),
        ("get", &get),
        ("list", &list),
        ("patch", &patch),
        ("delete", &delete),
    ] {
        assert!(
            o.status.success(),
            "kubectl {what}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_eq!(String::from_utf8_lossy(&get.stdout), "aGVsbG8=");
    assert!(String::from_utf8_lossy(&list.stdout).contains("secret/from-kubectl"));
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("NotFound"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

/// `SelfSubjectReview` as kube-apiserver answers it: kubectl's own client
/// (`kubectl auth whoami`) learns the kubeconfig's user, a ServiceAccount
/// token is its account, an unknown token is 401 and a body of another
/// kind 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_subject_reviews_name_the_credentials_user_and_refuse_an_unknown_token() {
    let kube = std::sync::Arc::new(KubeStandIn::start().await);
    let k = kube.clone();
    let out = tokio::task::spawn_blocking(move || kubectl(&k, &["auth", "whoami", "-o", "json"]))
        .await
        .expect("joined");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let review: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        review["status"]["userInfo"]["username"],
        support::kube::ADMIN_USER,
        "{review}"
    );

    let http = http_client(&kube);
    let ask = |token: String, body: &'static str| {
        http.post(format!(
            "{}/apis/authentication.k8s.io/v1/selfsubjectreviews",
            kube.url()
        ))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
    };
    let review = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
    let sa = kube.service_account_token_for("shop", "web", &["meshca"]);
    let answer = ask(sa.clone(), review).await.expect("sent");
    assert_eq!(answer.status().as_u16(), 201);
    let answer: Value = answer.json().await.expect("JSON");
    assert_eq!(
        answer["status"]["userInfo"]["username"],
        "system:serviceaccount:shop:web"
    );
    let unknown = ask("nope".into(), review).await.expect("sent");
    assert_eq!(unknown.status().as_u16(), 401);
    let other = ask(
        sa,
        r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview"}"#,
    )
    .await
    .expect("sent");
    assert_eq!(other.status().as_u16(), 400);
}
