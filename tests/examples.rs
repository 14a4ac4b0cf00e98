//! Every example config in examples/ loads and validates, and the embedded
//! default is the documented one.

use std::path::Path;

#[test]
fn every_example_config_is_valid() {
    let mut seen = 0;
    for dir in [
        "examples/tresor",
        "examples/vault",
        "examples/cert-manager",
        "examples/pod-certificates",
        "examples/federation",
        "examples/istio",
        "examples/hsm",
    ] {
        for entry in
            std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)).expect("examples")
        {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "yaml")
                && path.file_name().is_some_and(|n| {
                    n.to_string_lossy().starts_with("meshca") || dir == "examples/tresor"
                })
            {
                load_example(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
    }
    assert!(seen >= 10, "examples found: {seen}");
}

/// The host service of `examples/hsm` is a unit systemd takes: its
/// commands (here pointing at this build) and settings are checked by
/// `systemd-analyze verify`.
#[test]
fn the_host_service_unit_verifies() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("examples/hsm/meshca.service")).expect("unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/meshca serve -c /etc/meshca/meshca.yaml"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meshca.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/meshca", env!("CARGO_BIN_EXE_meshca")),
    )
    .expect("unit");
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd, which .ci/run installs)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn the_generated_root_example_matches_the_embedded_default() {
    let example = meshca::Config::load(Some(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tresor/generated-root.yaml"),
    ))
    .expect("example");
    let mut default = meshca::Config::load(None).expect("default");
    default.source = example.source.clone();
    default.source_text = example.source_text.clone();
    assert_eq!(format!("{example:?}"), format!("{default:?}"));
}

/// Load an example as its comments say to use it: an example that names
/// root files (`./ca.crt`, `./ca.key`) gets them, made with the openssl
/// commands it shows, since the files are read and checked at load.
fn load_example(path: &Path) -> Result<meshca::Config, meshca::ConfigError> {
    let text = std::fs::read_to_string(path).expect("example");
    if !text.contains("./ca.crt") {
        return meshca::Config::load(Some(path));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    meshca_test_support::openssl_root(dir.path(), "ca");
    let here = dir.path().display().to_string();
    let copy = dir.path().join("example.yaml");
    std::fs::write(&copy, text.replace("./ca.", &format!("{here}/ca."))).expect("copy");
    meshca::Config::load(Some(&copy))
}

/// The istiod values point Istio at the address and name meshca's example
/// serves Istio's certificate service on, with istiod's own CA off.
#[test]
fn the_istiod_values_point_istio_at_the_example_meshca() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/istio");
    let config = load_example(&dir.join("meshca.yaml")).expect("meshca.yaml");
    let istio = &config
        .feature::<meshca::IstioCaFeature>()
        .expect("istio_ca enabled")
        .config;
    for values in ["istiod-sidecar-values.yaml", "istiod-ambient-values.yaml"] {
        let text = std::fs::read_to_string(dir.join(values)).expect("values");
        let values: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("YAML");
        let address = values["global"]["caAddress"]
            .as_str()
            .expect("global.caAddress");
        let (host, port) = address.rsplit_once(':').expect("host:port");
        assert!(
            istio
                .serving_dns_names
                .iter()
                .any(|n| n.to_string() == host),
            "{host} is not a serving name"
        );
        assert_eq!(port.parse::<u16>().ok(), Some(istio.listen.port()));
        assert_eq!(
            values["pilot"]["env"]["ENABLE_CA_SERVER"].as_str(),
            Some("false"),
            "istiod's own CA is off"
        );
        assert_eq!(
            values["meshConfig"]["trustDomain"].as_str(),
            Some(config.trust_domain.as_str())
        );
    }
}
