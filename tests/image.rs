//! The container image `scripts/build-image` writes to
//! target/image/meshca.oci.tar (`.ci/run` builds it first). No container
//! engine runs here, so the image is unpacked as a runtime would (skopeo to
//! an OCI layout, umoci to a runtime bundle) and its entrypoint is run from
//! the image's own root filesystem, as the image's user, with util-linux
//! `unshare --root` (this needs root, as CI has). It must start the embedded
//! default and issue a certificate to a workload outside the image.

use meshca_test_support as support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const IMAGE: &str = "ghcr.io/meshca/meshca";

fn archive() -> PathBuf {
    let path = support::repo_root().join("target/image/meshca.oci.tar");
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-image first (.ci/run does)",
        path.display()
    );
    path
}

fn app_version() -> String {
    let chart = std::fs::read_to_string(support::repo_root().join("charts/meshca/Chart.yaml"))
        .expect("Chart.yaml");
    let chart: Value = serde_yaml_ng::from_str(&chart).expect("yaml");
    chart["appVersion"].as_str().expect("appVersion").to_owned()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// The image unpacked into a runtime bundle: `rootfs/` and `config.json`.
fn unpack(dir: &Path) -> PathBuf {
    let tag = app_version();
    let layout = dir.join("layout");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci-archive:{}:{IMAGE}:{tag}", archive().display()),
        &format!("oci:{}:{tag}", layout.display()),
    ]));
    let bundle = dir.join("bundle");
    run(Command::new("umoci").args([
        "unpack",
        "--image",
        &format!("{}:{tag}", layout.display()),
        bundle.to_str().expect("utf8"),
    ]));
    bundle
}

/// Every file (not directory) under `root`, relative.
fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).expect("under root");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_image_is_labelled_runs_as_a_numeric_user_and_holds_only_what_meshca_needs() {
    let inspect = run(Command::new("skopeo").args([
        "inspect",
        "--config",
        &format!("oci-archive:{}", archive().display()),
    ]));
    let config: Value = serde_json::from_str(&inspect).expect("json");
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532", "non-root, numeric");
    assert_eq!(c["Entrypoint"], json!(["/usr/local/bin/meshca"]));
    assert_eq!(c["Cmd"], json!(["serve"]));
    let labels = &c["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        app_version().as_str()
    );
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    assert!(labels["org.opencontainers.image.source"]
        .as_str()
        .is_some_and(|s| s.starts_with("https://")));
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .expect("revision");
    assert!(
        revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()),
        "{revision}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let rootfs = unpack(dir.path()).join("rootfs");
    assert_eq!(
        files(&rootfs),
        ["etc/ssl/certs/ca-certificates.crt", "usr/local/bin/meshca"],
        "no shell, no libc: the binary and the CA certificates only"
    );
    let ldd = Command::new("ldd")
        .arg(rootfs.join("usr/local/bin/meshca"))
        .output()
        .expect("ldd");
    assert!(
        !ldd.status.success() || String::from_utf8_lossy(&ldd.stdout).contains("statically linked"),
        "the binary is static: {}",
        String::from_utf8_lossy(&ldd.stdout)
    );
}

/// The image's process, killed on drop.
struct Contained(Child);

impl Drop for Contained {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run `args` in the bundle's root filesystem as its runtime config says:
/// its user, its working directory.
fn in_image(bundle: &Path, args: &[&str]) -> Command {
    let runtime: Value = serde_json::from_str(
        &std::fs::read_to_string(bundle.join("config.json")).expect("config.json"),
    )
    .expect("json");
    let process = &runtime["process"];
    let uid = process["user"]["uid"].as_u64().expect("uid");
    let gid = process["user"]["gid"].as_u64().expect("gid");
    assert_eq!((uid, gid), (65532, 65532));
    let mut cmd = Command::new("unshare");
    cmd.arg(format!("--root={}", bundle.join("rootfs").display()))
        .arg(format!("--wd={}", process["cwd"].as_str().expect("cwd")))
        .args(["--setuid", &uid.to_string(), "--setgid", &gid.to_string()])
        .arg(process["args"][0].as_str().expect("entrypoint"))
        .args(args);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_serves_the_embedded_default_to_a_workload_outside_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = unpack(dir.path());
    let _serve = Contained(
        in_image(&bundle, &["serve"])
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare runs (util-linux; needs root)"),
    );
    let state = bundle.join("rootfs/var/lib/meshca/meshca-data");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect("127.0.0.1:9443").is_err()
        || !state.join("bundle/ca.crt").exists()
    {
        assert!(
            Instant::now() < deadline,
            "meshca did not start from the image"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&state).expect("state"));
    assert_eq!(owner, 65532, "state written as the image's user");

    let token = run(&mut in_image(
        &bundle,
        &[
            "token",
            "create",
            "--namespace",
            "shop",
            "--service-account",
            "web",
        ],
    ));
    let bundle_pem = std::fs::read_to_string(state.join("bundle/ca.crt")).expect("bundle");
    let client = support::client(&bundle_pem, None);
    // The daemon follows the tokens file; give it a moment to see the new one.
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let response = client
            .post("https://127.0.0.1:9443/v1/certificates")
            .bearer_auth(token.trim())
            .json(&json!({ "csr": support::named_csr("shop", "web") }))
            .send()
            .await
            .expect("the API answers");
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        if status == 200 {
            break body;
        }
        assert!(Instant::now() < deadline, "{status}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(body["spiffe_id"], "spiffe://cluster.local/ns/shop/sa/web");
    support::verify(
        body["certificate_chain"].as_str().expect("chain"),
        &bundle_pem,
        webpki::KeyUsage::client_auth(),
    )
    .expect("the chain verifies against the image's bundle");
}
