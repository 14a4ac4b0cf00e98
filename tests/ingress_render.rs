//! `meshca ingress render` for nginx, AGIC and Gloo, checked against the
//! manifests in examples/ingress (which are its output), on v1 and v1beta1
//! inputs, through the real binary.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_meshca");

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ingress")
}

fn render(controller: &str, input: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["ingress", "render", "--controller", controller, "-f"])
        .arg(input)
        .arg("--bundle")
        .arg(examples().join("example-bundle.pem"))
        .args(extra)
        .output()
        .expect("meshca runs")
}

fn annotations(yaml: &str) -> serde_json::Value {
    use serde::Deserialize;
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let v = serde_json::Value::deserialize(doc).expect("yaml");
        if v["kind"] == "Ingress" {
            return v["metadata"]["annotations"].clone();
        }
    }
    panic!("no Ingress in output");
}

#[test]
fn the_examples_are_exactly_what_render_prints() {
    for controller in ["nginx", "agic", "gloo"] {
        for name in ["httpbin", "bookstore-wildcard"] {
            let out = render(controller, &examples().join(format!("{name}.yaml")), &[]);
            assert!(
                out.status.success(),
                "{controller} {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let expected =
                std::fs::read_to_string(examples().join(controller).join(format!("{name}.yaml")))
                    .expect("golden");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                expected,
                "{controller}/{name}.yaml is out of date"
            );
        }
    }
}

#[test]
fn v1beta1_renders_the_same_annotations_as_v1() {
    for controller in ["nginx", "agic"] {
        let v1 = render(controller, &examples().join("httpbin.yaml"), &[]);
        let beta = render(controller, &examples().join("httpbin-v1beta1.yaml"), &[]);
        assert!(
            beta.status.success(),
            "{}",
            String::from_utf8_lossy(&beta.stderr)
        );
        let (a, b) = (
            annotations(&String::from_utf8_lossy(&v1.stdout)),
            annotations(&String::from_utf8_lossy(&beta.stdout)),
        );
        for (k, v) in a.as_object().expect("map") {
            if k != "kubernetes.io/ingress.class" {
                assert_eq!(b.get(k), Some(v), "{controller}: {k}");
            }
        }
    }
}

#[test]
fn nginx_gets_the_identity_to_check_and_the_bundle_secret() {
    let out = render(
        "nginx",
        &examples().join("bookstore-wildcard.yaml"),
        &["--trust-domain", "mesh.example"],
    );
    let a = annotations(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(a["nginx.ingress.kubernetes.io/backend-protocol"], "HTTPS");
    assert_eq!(
        a["nginx.ingress.kubernetes.io/configuration-snippet"],
        "proxy_ssl_name \"bookstore-v2.bookstore.mesh.example\";\n"
    );
    assert_eq!(
        a["nginx.ingress.kubernetes.io/proxy-ssl-secret"],
        "osm-system/osm-ca-bundle"
    );
    assert_eq!(a["nginx.ingress.kubernetes.io/proxy-ssl-verify"], "on");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("proxy-ssl-verify: 'on'"),
        "quoted for YAML 1.1 readers:\n{text}"
    );

    let mtls = render(
        "nginx",
        &examples().join("httpbin.yaml"),
        &["--client-secret", "ingress-nginx/ingress-client"],
    );
    let a = annotations(&String::from_utf8_lossy(&mtls.stdout));
    assert_eq!(
        a["nginx.ingress.kubernetes.io/proxy-ssl-secret"],
        "ingress-nginx/ingress-client"
    );
}

#[test]
fn no_private_key_is_ever_handed_to_a_controller() {
    for controller in ["nginx", "agic", "gloo"] {
        for name in ["httpbin", "bookstore-wildcard"] {
            let text =
                std::fs::read_to_string(examples().join(controller).join(format!("{name}.yaml")))
                    .expect("golden");
            assert!(!text.contains("PRIVATE KEY"), "{controller}/{name}");
        }
    }
}

#[test]
fn backends_of_different_identities_in_one_ingress_are_refused_for_nginx_and_agic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("mixed.yaml");
    std::fs::write(
        &file,
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: { name: mixed, namespace: shop }\nspec:\n  rules:\n  - http:\n      paths:\n      - { path: /a, pathType: Prefix, backend: { service: { name: a, port: { number: 80 } } } }\n      - { path: /b, pathType: Prefix, backend: { service: { name: b, port: { number: 80 } } } }\n",
    )
    .expect("write");
    for controller in ["nginx", "agic"] {
        let out = render(controller, &file, &[]);
        assert_eq!(out.status.code(), Some(64));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("split it"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let gloo = render("gloo", &file, &[]);
    assert!(gloo.status.success(), "Gloo verifies per upstream");
    let text = String::from_utf8_lossy(&gloo.stdout);
    assert!(
        text.contains("sni: a.shop.cluster.local") && text.contains("sni: b.shop.cluster.local")
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let none = dir.path().join("none.yaml");
    std::fs::write(
        &none,
        "apiVersion: v1\nkind: Service\nmetadata: { name: x }\n",
    )
    .expect("write");
    let out = render("nginx", &none, &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Ingress"));
    let out = Command::new(BIN)
        .args(["ingress", "render", "--controller", "traefik", "-f"])
        .arg(examples().join("httpbin.yaml"))
        .output()
        .expect("meshca");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected nginx, agic or gloo"));
    let out = Command::new(BIN)
        .args(["ingress", "render", "--controller", "agic", "-f"])
        .arg(examples().join("httpbin.yaml"))
        .output()
        .expect("meshca");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bundle"));
}

/// The crash the `ingress` fuzz target found: `meshca ingress render` on a
/// manifest whose annotations are a string is an error, not a panic.
#[test]
fn a_manifest_whose_annotations_are_a_string_is_an_error_for_every_controller() {
    let manifest = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: bookstore\n  namespace: bookstore\n  annotations:\n    meshca.io/backend-service-accounto b:okstore-v2\nspec:\n  defaultBackend:\n    service:\n      name: bookstore\n      port:\n        number: 14000\n";
    let td = meshca::TrustDomain::new("cluster.local").expect("td");
    let mut options = meshca::RenderOptions::new(td);
    options.bundle_pem =
        Some("-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n".into());
    for controller in [
        meshca::Controller::Nginx,
        meshca::Controller::Agic,
        meshca::Controller::Gloo,
    ] {
        let e = meshca::render_manifest(controller, manifest, &options).expect_err("refused");
        assert!(e.contains("annotations"), "{e}");
    }
}
