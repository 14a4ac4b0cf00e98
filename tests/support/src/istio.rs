//! Istio's certificate clients: tests/istio/ca_client.py, a gRPC client that
//! grpcio-tools generates from proto/istio/ca.proto, calling as istio-agent
//! and ztunnel do (see that file for the calls and results).

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

/// The name the clients dial meshca by (in `serving_dns_names`).
pub const SERVER_NAME: &str = "meshca.osm-system.svc";

/// Run `calls` against the service on `127.0.0.1:port`, dialled as
/// [`SERVER_NAME`], trusting `root_pem`; one result per call.
pub async fn create_certificates(port: u16, root_pem: &str, calls: &Value) -> Vec<Value> {
    create_certificates_as(port, SERVER_NAME, root_pem, calls).await
}

/// As [`create_certificates`], dialling the service as `server_name`.
pub async fn create_certificates_as(
    port: u16,
    server_name: &str,
    root_pem: &str,
    calls: &Value,
) -> Vec<Value> {
    let root = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(root.path(), root_pem).expect("root file");
    let repo = crate::repo_root();
    let mut child = Command::new(repo.join(".venv/bin/python"))
        .arg(repo.join("tests/istio/ca_client.py"))
        .arg(format!("127.0.0.1:{port}"))
        .arg(server_name)
        .arg(root.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the Python client runs (.ci/run installs grpcio-tools)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(calls.to_string().as_bytes())
        .expect("calls written");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("client output");
    assert!(
        out.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON results")
}

/// A successful result's chain without its last element (the anchors):
/// the leaf and intermediates, PEM, to verify against a bundle.
pub fn leaf_and_intermediates(result: &Value) -> String {
    let chain = result["chain"].as_array().expect("a chain");
    chain[..chain.len() - 1]
        .iter()
        .filter_map(Value::as_str)
        .collect()
}
