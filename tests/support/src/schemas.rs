//! Kubernetes 1.37's OpenAPI schemas, through `kubernetes-validate` (PyPI,
//! pinned by hash in `tests/requirements-kubernetes.txt`, installed into
//! `./.venv` by `.ci/run`): what a real API server's schema would say of
//! an object, independently of meshca's types and of the stand-in.

use std::process::Command;

use serde_json::Value;

/// The Kubernetes version whose schemas objects are held to.
pub const KUBERNETES_VERSION: &str = "1.37.0";

/// Groups whose kinds are custom resources: kubernetes-validate has no
/// schema for them (cert-manager's, the Prometheus Operator's).
const CUSTOM_GROUPS: [&str; 2] = ["cert-manager.io/", "monitoring.coreos.com/"];

/// Check `objects` with `kubernetes-validate --strict` (unknown fields are
/// errors) against Kubernetes 1.37; custom resources are left out.
///
/// # Errors
/// The tool's report of every object that does not validate.
pub fn validate(objects: &[Value]) -> Result<(), String> {
    let docs: Vec<&Value> = objects
        .iter()
        .filter(|o| {
            let api_version = o["apiVersion"].as_str().unwrap_or_default();
            !CUSTOM_GROUPS.iter().any(|g| api_version.starts_with(g))
        })
        .collect();
    if docs.is_empty() {
        return Ok(());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("objects.yaml");
    // JSON documents in a YAML stream: every string stays a string (plain
    // YAML would turn timestamps into dates the schema then refuses).
    let stream: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    std::fs::write(&file, stream.join("\n---\n")).map_err(|e| e.to_string())?;
    let tool = crate::repo_root().join(".venv/bin/kubernetes-validate");
    let out = Command::new(&tool)
        .args(["--strict", "--quiet", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} does not run ({e}): run `bash .ci/run`, or `.venv/bin/pip install --require-hashes -r tests/requirements-kubernetes.txt`",
                tool.display()
            )
        });
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_and_wrong_types_fail_and_custom_resources_are_left_out() {
        let secret = json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "x", "creationTimestamp": "2026-01-01T00:00:00Z" }, "data": {} });
        assert_eq!(validate(std::slice::from_ref(&secret)), Ok(()));
        let mut extra = secret.clone();
        extra["bogus"] = json!(1);
        let report = validate(&[extra]).expect_err("strict");
        assert!(report.contains("bogus"), "{report}");
        let mut wrong = secret;
        wrong["data"] = json!("not a map");
        assert!(validate(&[wrong]).is_err());
        let cr = json!({ "apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest", "metadata": { "name": "x" }, "bogus": 1 });
        assert_eq!(validate(&[cr]), Ok(()));
    }
}
