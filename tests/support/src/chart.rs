//! The Helm chart as the real `helm template` renders it, and the RBAC
//! rules it grants meshca's ServiceAccount, evaluated as kube-apiserver's
//! RBAC authorizer does, for the audit of what meshca asks for.

use std::process::Command;

use serde_json::Value;

use crate::kube::AuditEntry;

/// The namespace the chart is rendered into (the release namespace).
pub const NAMESPACE: &str = "osm-system";

/// `helm template meshca charts/meshca --namespace osm-system --set ...`,
/// as JSON documents.
pub fn render(values: &[&str]) -> Vec<Value> {
    render_text(values)
        .split("\n---")
        .filter_map(|d| serde_yaml_ng::from_str::<Value>(d).ok())
        .filter(Value::is_object)
        .collect()
}

/// What `helm template` prints for `values`.
pub fn render_text(values: &[&str]) -> String {
    let chart = crate::repo_root().join("charts/meshca");
    let mut cmd = Command::new(crate::tool("helm"));
    cmd.args(["template", "meshca"])
        .arg(&chart)
        .args(["--namespace", NAMESPACE]);
    for v in values {
        cmd.args(["--set", v]);
    }
    let out = cmd
        .output()
        .expect("helm runs (.ci/install-k8s-tools installs it)");
    assert!(
        out.status.success(),
        "helm template {values:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// One rule, where it applies and which object grants it.
#[derive(Clone, Debug)]
struct Grant {
    /// `None`: cluster-wide (a ClusterRoleBinding).
    namespace: Option<String>,
    rule: Value,
    /// `Role/meshca` and the like.
    source: String,
}

/// What the chart's RBAC lets meshca's ServiceAccount do.
#[derive(Clone, Debug)]
pub struct Grants(Vec<Grant>);

fn strings<'a>(rule: &'a Value, field: &str) -> Vec<&'a str> {
    rule[field]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn name_of(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

impl Grants {
    /// The rules bound to ServiceAccount `meshca` in [`NAMESPACE`] by the
    /// rendered `docs`.
    pub fn of(docs: &[Value]) -> Self {
        let binds_meshca = |b: &Value| {
            b["subjects"].as_array().is_some_and(|s| {
                s.iter().any(|s| {
                    s["kind"] == "ServiceAccount"
                        && s["name"] == "meshca"
                        && s["namespace"] == NAMESPACE
                })
            })
        };
        let role = |kind: &str, name: &str| {
            docs.iter()
                .find(|d| d["kind"] == kind && name_of(d) == name)
                .unwrap_or_else(|| {
                    panic!("the chart binds {kind} {name}, which it does not render")
                })
        };
        let mut grants = Vec::new();
        for binding in docs.iter().filter(|d| binds_meshca(d)) {
            let kind = binding["roleRef"]["kind"].as_str().unwrap_or_default();
            let name = binding["roleRef"]["name"].as_str().unwrap_or_default();
            let namespace = match binding["kind"].as_str() {
                Some("RoleBinding") => Some(
                    binding["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or(NAMESPACE)
                        .to_owned(),
                ),
                _ => None,
            };
            for rule in role(kind, name)["rules"].as_array().into_iter().flatten() {
                grants.push(Grant {
                    namespace: namespace.clone(),
                    rule: rule.clone(),
                    source: format!("{kind}/{name}"),
                });
            }
        }
        Self(grants)
    }

    /// Whether one of the rules allows `entry`, as the RBAC authorizer
    /// decides (a request on a subresource needs `resource/subresource`;
    /// `resourceNames` cannot restrict create, and restricts list and watch
    /// only through a field selector on `metadata.name`).
    pub fn allows(&self, entry: &AuditEntry) -> bool {
        self.0.iter().any(|g| grant_allows(g, entry))
    }

    /// Each `source: group resource verb` the rules grant that no entry of
    /// `used` needed.
    pub fn unused(&self, used: &[AuditEntry]) -> Vec<String> {
        let mut out = Vec::new();
        for g in &self.0 {
            for group in strings(&g.rule, "apiGroups") {
                for resource in strings(&g.rule, "resources") {
                    for verb in strings(&g.rule, "verbs") {
                        let needed = used.iter().any(|e| {
                            e.group == group
                                && full_resource(e) == resource
                                && e.verb == verb
                                && grant_allows(g, e)
                        });
                        if !needed {
                            out.push(format!("{}: {group:?} {resource} {verb}", g.source));
                        }
                    }
                }
            }
        }
        out
    }
}

fn full_resource(e: &AuditEntry) -> String {
    match &e.subresource {
        Some(sub) => format!("{}/{sub}", e.resource),
        None => e.resource.clone(),
    }
}

fn grant_allows(g: &Grant, e: &AuditEntry) -> bool {
    let in_scope = match (&g.namespace, &e.namespace) {
        (None, _) => true,
        (Some(ns), Some(at)) => ns == at,
        (Some(_), None) => false,
    };
    let names = strings(&g.rule, "resourceNames");
    let named = names.is_empty()
        || (e.verb != "create" && e.name.as_deref().is_some_and(|n| names.contains(&n)));
    in_scope
        && named
        && strings(&g.rule, "apiGroups")
            .iter()
            .any(|x| *x == "*" || *x == e.group)
        && strings(&g.rule, "resources")
            .iter()
            .any(|x| *x == "*" || *x == full_resource(e))
        && strings(&g.rule, "verbs")
            .iter()
            .any(|x| *x == "*" || *x == e.verb)
}
