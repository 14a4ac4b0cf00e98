//! The Helm chart in charts/meshca, rendered by the real `helm template`
//! (installed by `.ci/install-k8s-tools`) for every provider, then checked
//! three ways: every object deserialises into its Kubernetes API type
//! (k8s-openapi), the rendered meshca config is accepted by meshca itself,
//! and `kubectl apply --dry-run=client` accepts the manifests against the
//! Kubernetes API stand-in (with `--validate=false`: the stand-in serves no
//! OpenAPI schema, which is what kubectl's own field validation needs).

use meshca_test_support as support;

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

use support::chart::{render, render_text as helm_template};

fn typed<T: serde::de::DeserializeOwned>(doc: &Value) -> T {
    serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} does not match its API type: {e}", doc["kind"]))
}

/// RBAC objects that only optional features bring.
fn is_optional_rbac(doc: &Value) -> bool {
    doc["metadata"]["name"].as_str().is_some_and(|n| {
        n.ends_with("-ingress")
            || n.ends_with("-pod-certificates")
            || n.ends_with("-istio-ca")
            || n.ends_with("-istiod-certificate")
    })
}

fn check_objects(docs: &[Value]) -> meshca::Config {
    support::schemas::validate(docs)
        .unwrap_or_else(|report| panic!("the chart renders objects Kubernetes refuses:\n{report}"));
    let mut kinds: Vec<&str> = docs
        .iter()
        .filter(|d| !is_optional_rbac(d))
        .map(|d| d["kind"].as_str().expect("kind"))
        .collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    let mut config = None;
    for doc in docs {
        match doc["kind"].as_str().expect("kind") {
            "Deployment" => {
                let d: Deployment = typed(doc);
                let spec = d.spec;
                assert_eq!(spec.replicas, Some(2));
                let pod = spec.template.spec.expect("pod spec");
                assert_eq!(pod.service_account_name.as_deref(), Some("meshca"));
                assert_eq!(
                    pod.security_context.expect("psc").run_as_non_root,
                    Some(true)
                );
                let c = &pod.containers[0];
                let sc = c.security_context.as_ref().expect("security context");
                assert_eq!(sc.read_only_root_filesystem, Some(true));
                assert_eq!(sc.allow_privilege_escalation, Some(false));
                let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
                    p.as_ref()
                        .and_then(|p| p.http_get.as_ref())
                        .and_then(|h| h.path.clone())
                };
                assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/healthz"));
                assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/readyz"));
                let spread = pod.topology_spread_constraints.expect("spread");
                let keys: Vec<&str> = spread.iter().map(|t| t.topology_key.as_str()).collect();
                assert_eq!(
                    keys,
                    ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
                );
                let selector = spread[0].label_selector.clone().expect("selector");
                assert_eq!(
                    selector.match_labels, spec.selector.match_labels,
                    "spreads meshca's own pods"
                );
            }
            "PodDisruptionBudget" => {
                let pdb: PodDisruptionBudget = typed(doc);
                let spec = pdb.spec.expect("spec");
                assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
                assert!(
                    spec.min_available.is_none(),
                    "one replica never blocks a drain"
                );
            }
            "Service" => drop(typed::<Service>(doc)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(doc)),
            "ConfigMap" => {
                let cm: ConfigMap = typed(doc);
                let yaml = cm.data.expect("data")["meshca.yaml"].clone();
                config =
                    Some(meshca::Config::from_yaml(&yaml).unwrap_or_else(|e| {
                        panic!("meshca refuses the chart's config: {e}\n{yaml}")
                    }));
            }
            "Role" => {
                let r: Role = typed(doc);
                let resources: Vec<String> = r
                    .rules
                    .unwrap_or_default()
                    .iter()
                    .flat_map(|r| r.resources.clone().unwrap_or_default())
                    .collect();
                if is_optional_rbac(doc) {
                    assert_eq!(resources, ["secrets", "secrets"], "istiod's Secret only");
                    continue;
                }
                assert_eq!(
                    resources,
                    [
                        "secrets",
                        "configmaps",
                        "leases",
                        "certificaterequests",
                        "events"
                    ],
                    "namespaced access only to what meshca uses"
                );
            }
            "ClusterRole" if is_optional_rbac(doc) => {
                let r: ClusterRole = typed(doc);
                let rules = r.rules.unwrap_or_default();
                assert!(
                    rules.iter().all(|r| !r.verbs.contains(&"*".to_owned())),
                    "no wildcards"
                );
            }
            "ClusterRole" => {
                let r: ClusterRole = typed(doc);
                let rules = r.rules.unwrap_or_default();
                assert_eq!(rules.len(), 1);
                assert_eq!(
                    rules[0].resources.as_deref(),
                    Some(&["tokenreviews".to_owned()][..])
                );
                assert_eq!(rules[0].verbs, ["create"]);
            }
            "RoleBinding" => drop(typed::<RoleBinding>(doc)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(doc)),
            other => panic!("unexpected kind {other}"),
        }
    }
    config.expect("a ConfigMap with meshca.yaml")
}

#[test]
fn the_default_chart_renders_valid_objects_and_a_tresor_config_meshca_accepts() {
    let config = check_objects(&render(&[]));
    assert_eq!(config.provider.kind().as_str(), "tresor");
    let k = config.kubernetes.expect("in-cluster config");
    assert_eq!(
        (k.namespace.as_str(), k.root_secret.as_str()),
        ("osm-system", "meshca-tresor-root")
    );
    let secret = config.bundle.secret.expect("bundle Secret");
    assert_eq!(
        (secret.namespace.as_str(), secret.name.as_str()),
        ("osm-system", "osm-ca-bundle")
    );
    assert_eq!(
        config.auth.kubernetes.expect("TokenReview").audience,
        "meshca"
    );
}

#[test]
fn the_chart_renders_every_vault_auth_method() {
    for values in [
        vec!["provider.kind=vault"],
        vec![
            "provider.kind=vault",
            "vault.auth.method=approle",
            "vault.auth.approle.roleId=abc",
            "vault.auth.approle.secretIdSecretName=meshca-vault",
        ],
        vec![
            "provider.kind=vault",
            "vault.auth.method=token",
            "vault.auth.token.secretName=meshca-vault",
            "vault.caSecretName=vault-ca",
        ],
    ] {
        let config = check_objects(&render(&values));
        assert_eq!(config.provider.kind().as_str(), "vault", "{values:?}");
    }
}

#[test]
fn the_chart_renders_jwt_svids_off_by_default_and_as_asked() {
    let jwt_svids = |c: &meshca::Config| {
        c.feature::<meshca::JwtSvidsFeature>()
            .and_then(|f| f.config.clone())
    };
    assert!(jwt_svids(&check_objects(&render(&[]))).is_none());
    let config = check_objects(&render(&[
        "jwtSvids.enabled=true",
        "jwtSvids.issuer=https://meshca.a.example",
        "jwtSvids.keyType=ec-p384",
        "jwtSvids.maxTtl=30m",
    ]));
    let jwt = jwt_svids(&config).expect("JWT-SVIDs on");
    assert_eq!(jwt.issuer.as_str(), "https://meshca.a.example");
    assert_eq!(jwt.key_type.alg(), "ES384");
    assert_eq!(jwt.max_ttl, std::time::Duration::from_secs(30 * 60));
}

/// The Service's port `name`: its number and target port.
fn service_port<'a>(docs: &'a [Value], name: &str) -> (Option<u64>, Option<&'a str>) {
    let service = docs
        .iter()
        .find(|d| d["kind"] == "Service")
        .expect("a Service");
    let port = service["spec"]["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no Service port {name}"));
    (port["port"].as_u64(), port["targetPort"].as_str())
}

#[test]
fn the_chart_renders_federation_off_by_default_and_as_asked() {
    let plain = check_objects(&render(&[]));
    assert!(plain.feature::<meshca::FederationFeature>().is_none());
    let docs = render(&[
        "federation.bundleEndpoint.enabled=true",
        "federation.bundleEndpoint.refreshHint=2m",
        "federation.trustDomains[0].trust_domain=b.example",
        "federation.trustDomains[0].bundle_endpoint_url=https://meshca.b.example:8443",
        "federation.trustDomains[0].profile=https_web",
        "federation.trustDomains[0].namespaces[0]=payments",
    ]);
    let config = check_objects(&docs);
    let federation = &config
        .feature::<meshca::FederationFeature>()
        .expect("federation on")
        .config;
    let endpoint = federation.endpoint.as_ref().expect("an endpoint");
    assert_eq!(endpoint.listen.port(), 8443);
    assert_eq!(endpoint.refresh_hint, std::time::Duration::from_secs(120));
    let peer = &federation.trust_domains[0];
    assert_eq!(
        (peer.trust_domain.as_str(), peer.namespaces.as_slice()),
        ("b.example", &["payments".to_owned()][..])
    );
    assert_eq!(
        service_port(&docs, "bundle-endpoint"),
        (Some(8443), Some("bundle-endpoint"))
    );
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let ports = &deployment["spec"]["template"]["spec"]["containers"][0]["ports"];
    assert!(
        ports.as_array().is_some_and(|p| p
            .iter()
            .any(|p| p["name"] == "bundle-endpoint" && p["containerPort"] == 8443)),
        "{ports}"
    );
}

#[test]
fn the_chart_renders_istios_certificate_service_with_its_port_and_rbac() {
    let plain = render(&[]);
    assert!(check_objects(&plain)
        .feature::<meshca::IstioCaFeature>()
        .is_none());
    assert!(
        !plain.iter().any(|d| d["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.ends_with("-istio-ca"))),
        "no Istio RBAC unless enabled"
    );
    let docs = render(&[
        "istioCa.enabled=true",
        "istioCa.clusterId=east",
        "istioCa.rootCertNamespaces.matchLabels.istio-injection=enabled",
        "istioCa.istiodCertificate.enabled=true",
    ]);
    let config = check_objects(&docs);
    let istio = &config
        .feature::<meshca::IstioCaFeature>()
        .expect("enabled")
        .config;
    assert_eq!(istio.listen.port(), 15012);
    assert_eq!(istio.cluster_id, "east");
    assert_eq!(
        istio
            .root_cert_namespaces
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("istio-injection=enabled")
    );
    assert!(
        istio
            .serving_dns_names
            .iter()
            .any(|n| n.to_string() == "meshca.osm-system.svc"),
        "the serving certificate names the Service Istio dials"
    );
    assert_eq!(
        service_port(&docs, "grpc-istio-ca"),
        (Some(15012), Some("istio-ca"))
    );
    let role = docs
        .iter()
        .find(|d| {
            d["kind"] == "ClusterRole" && d["metadata"]["name"] == "meshca-osm-system-istio-ca"
        })
        .expect("the Istio CA ClusterRole");
    let rules = role["rules"].as_array().expect("rules");
    assert!(
        rules.iter().any(|r| r["resources"] == json!(["configmaps"])
            && r["resourceNames"] == json!(["istio-ca-root-cert"])),
        "ConfigMaps of that one name: {rules:?}"
    );
    let istiod = istio.istiod_certificate.as_ref().expect("istiod's Secret");
    assert_eq!(
        (istiod.namespace.as_str(), istiod.secret_name.as_str()),
        ("istio-system", "istiod-tls")
    );
    let role = docs
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == "istio-system")
        .expect("a Role in istiod's namespace");
    assert_eq!(role["rules"][0]["resourceNames"], json!(["istiod-tls"]));
}

#[test]
fn the_chart_renders_a_cert_manager_config_meshca_accepts() {
    let config = check_objects(&render(&[
        "provider.kind=cert-manager",
        "certManager.issuerName=my-ca",
        "certManager.issuerKind=ClusterIssuer",
    ]));
    let meshca::ProviderConfig::CertManager(c) = config.provider else {
        panic!("cert-manager");
    };
    assert_eq!(
        (
            c.issuer_name.as_str(),
            c.issuer_kind.as_str(),
            c.issuer_group.as_str()
        ),
        ("my-ca", "ClusterIssuer", "cert-manager.io")
    );
}

#[test]
fn with_ingress_enabled_the_chart_grants_what_the_reconciler_needs_and_configures_it() {
    let docs = render(&[
        "ingress.enabled=true",
        "ingress.backendProtocol=https",
        "ingress.clientCertificate.san=ingress-nginx.ingress-nginx.cluster.local",
        "ingress.clientCertificate.secretNamespace=ingress-nginx",
        "ingress.clientCertificate.secretName=osm-nginx-client-cert",
    ]);
    let config = check_objects(&docs);
    let ingress = &config
        .feature::<meshca::IngressFeature>()
        .expect("ingress on")
        .config;
    assert_eq!(ingress.backend_protocol, meshca::BackendProtocol::Https);
    let client = ingress
        .client_certificate
        .as_ref()
        .expect("client certificate");
    assert_eq!(
        client.identity.dns_name(),
        "ingress-nginx.ingress-nginx.cluster.local"
    );
    let ingress_role = docs
        .iter()
        .find(|d| {
            d["kind"] == "ClusterRole"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-ingress"))
        })
        .expect("ingress ClusterRole");
    let text = ingress_role.to_string();
    assert!(text.contains("ingresses") && text.contains("secrets") && text.contains("events"));
    assert!(
        render(&[]).iter().all(|d| !d["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.ends_with("-ingress"))),
        "not granted unless enabled"
    );
}

#[test]
fn with_pod_certificates_enabled_the_chart_grants_the_signer_and_configures_it() {
    let docs = render(&[
        "podCertificates.enabled=true",
        "podCertificates.signerName=example.com/mesh",
        "ingress.enabled=true",
    ]);
    let config = check_objects(&docs);
    let pod_certificates = &config
        .feature::<meshca::PodCertificatesFeature>()
        .expect("pod certificates on")
        .config;
    assert_eq!(pod_certificates.signer_name.as_str(), "example.com/mesh");
    let role = docs
        .iter()
        .find(|d| {
            d["kind"] == "ClusterRole"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-pod-certificates"))
        })
        .expect("pod-certificates ClusterRole");
    let rules = role["rules"].as_array().expect("rules");
    let grants = |resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r["resources"]
                .as_array()
                .is_some_and(|rs| rs.iter().any(|x| x == resource))
                && r["verbs"]
                    .as_array()
                    .is_some_and(|vs| vs.iter().any(|x| x == verb))
        })
    };
    assert!(grants("podcertificaterequests", "watch"));
    assert!(grants("podcertificaterequests/status", "update"));
    assert!(grants("clustertrustbundles", "patch"));
    assert!(grants("signers", "sign") && grants("signers", "attest"));
    let signers = rules
        .iter()
        .find(|r| r["resources"][0] == "signers")
        .expect("signers rule");
    assert_eq!(
        signers["resourceNames"],
        serde_json::json!(["example.com/mesh"])
    );
    for kind in ["tresor", "vault", "cert-manager"] {
        let docs = render(&[
            &format!("provider.kind={kind}"),
            "podCertificates.enabled=true",
            "ingress.enabled=true",
        ]);
        check_objects(&docs);
    }
}

#[test]
fn the_service_monitor_and_alerts_render_when_asked_for() {
    assert!(
        render(&[])
            .iter()
            .all(|d| d["apiVersion"] != "monitoring.coreos.com/v1"),
        "off by default: the CRDs may be missing"
    );
    let docs = render(&[
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=prom",
        "metrics.prometheusRule.enabled=true",
    ]);
    let monitor = docs
        .iter()
        .find(|d| d["kind"] == "ServiceMonitor")
        .expect("ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    let service = docs
        .iter()
        .find(|d| d["kind"] == "Service")
        .expect("Service");
    assert!(
        service["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["name"] == "metrics"),
        "the port the monitor scrapes exists"
    );
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector")
    {
        assert_eq!(
            &service["metadata"]["labels"][key], value,
            "it selects the Service"
        );
    }
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("PrometheusRule");
    let alerts: Vec<&Value> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .collect();
    let exprs: Vec<&str> = alerts
        .iter()
        .map(|a| a["expr"].as_str().expect("expr"))
        .collect();
    for metric in [
        "meshca_time_to_outage_seconds",
        "meshca_bundle_sink_up",
        r#"result="provider_unavailable""#,
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "{metric} in {exprs:?}"
        );
    }
    assert!(alerts
        .iter()
        .all(|a| a["alert"].is_string() && a["labels"]["severity"].is_string()));
    assert!(exprs.iter().any(|e| e.contains("< 1209600")), "{exprs:?}");
}

#[test]
fn the_chart_names_its_settings_from_values() {
    let rendered = helm_template(&[
        "caBundleSecretName=mesh-roots",
        "trustDomain=mesh.example",
        "certManager.issuerName=my-ca",
        "certManager.issuerKind=ClusterIssuer",
        "provider.kind=cert-manager",
    ]);
    assert!(rendered.contains("name: mesh-roots"));
    assert!(rendered.contains("trust_domain: mesh.example"));
    assert!(
        rendered.contains("issuer_name: my-ca") && rendered.contains("issuer_kind: ClusterIssuer")
    );
    let bad = Command::new(support::tool("helm"))
        .args(["template", "meshca"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/meshca"))
        .args(["--set", "provider.kind=bogus"])
        .output()
        .expect("helm");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("provider.kind must be"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_accepts_the_rendered_manifests_in_a_client_dry_run() {
    let kube = support::kube::KubeStandIn::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("meshca.yaml");
    std::fs::write(&file, helm_template(&[])).expect("write");
    let kubeconfig = kube.kubeconfig();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(support::tool("kubectl"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["apply", "--dry-run=client", "--validate=false", "-f"])
            .arg(&file)
            .output()
            .expect("kubectl")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for object in [
        "deployment.apps/meshca",
        "service/meshca",
        "role.rbac.authorization.k8s.io/meshca",
        "configmap/meshca",
    ] {
        assert!(stdout.contains(object), "{object} missing from:\n{stdout}");
    }
}

#[test]
fn the_chart_renders_post_quantum_roots_and_the_serving_key_algorithm_as_asked() {
    let plain = check_objects(&render(&[]));
    assert!(matches!(
        &plain.provider,
        meshca::ProviderConfig::Tresor(t, None) if t.post_quantum.is_none()
    ));
    assert_eq!(
        plain.api.serving_key_algorithm,
        meshca::KeyAlgorithmName::EcdsaP256
    );
    let config = check_objects(&render(&[
        "tresor.postQuantum.enabled=true",
        "tresor.postQuantum.keyAlgorithm=ml-dsa-87",
        "api.servingKeyAlgorithm=ml-dsa-87",
    ]));
    let meshca::ProviderConfig::Tresor(tresor, None) = &config.provider else {
        panic!("tresor");
    };
    assert!(
        format!("{:?}", tresor.post_quantum).contains("MlDsa87"),
        "{:?}",
        tresor.post_quantum
    );
    assert_eq!(
        config.api.serving_key_algorithm,
        meshca::KeyAlgorithmName::MlDsa87
    );
    let vault = check_objects(&render(&[
        "provider.kind=vault",
        "vault.auth.method=token",
        "vault.auth.token.secretName=meshca-vault",
        "vault.postQuantumRole=meshca-ml-dsa",
    ]));
    let meshca::ProviderConfig::Vault(v) = &vault.provider else {
        panic!("vault");
    };
    assert_eq!(v.post_quantum_role.as_deref(), Some("meshca-ml-dsa"));
}

#[test]
fn the_chart_renders_the_revocation_settings() {
    let revocation = |config: &meshca::Config| {
        config
            .feature::<meshca::RevocationFeature>()
            .expect("always on")
            .config
            .clone()
    };
    let plain = revocation(&check_objects(&render(&[])));
    assert_eq!(plain.crl_next_update, std::time::Duration::from_secs(600));
    assert_eq!(plain.crl_url, None);
    assert!(plain.admins.is_empty(), "no one revokes through the API");
    let set = revocation(&check_objects(&render(&[
        "revocation.crlNextUpdate=1h",
        "revocation.crlUrl=http://crl.example/meshca.crl",
        "revocation.admins={ops/revoker,security/incident-bot}",
    ])));
    assert_eq!(set.admins, ["ops/revoker", "security/incident-bot"]);
    assert_eq!(set.crl_next_update, std::time::Duration::from_secs(3600));
    assert_eq!(
        set.crl_url.as_deref(),
        Some("http://crl.example/meshca.crl")
    );
}

#[test]
fn the_chart_renders_transit_key_custody_with_its_credentials_mounted() {
    let docs = render(&[
        "keyCustody.kind=transit",
        "keyCustody.signLeaves=true",
        "keyCustody.transit.address=https://openbao.openbao:8200",
        "keyCustody.transit.caSecretName=openbao-ca",
        "keyCustody.transit.auth.method=approle",
        "keyCustody.transit.auth.approle.roleId=meshca",
        "keyCustody.transit.auth.approle.secretIdSecretName=meshca-transit",
    ]);
    let config = check_objects(&docs);
    let meshca::ProviderConfig::Tresor(tresor, Some(custody)) = &config.provider else {
        panic!("tresor in custody: {:?}", config.provider);
    };
    assert!(custody.sign_leaves);
    assert!(
        format!("{:?}", tresor.root).contains("InCustody"),
        "{:?}",
        tresor.root
    );
    let pod = pod_spec(&docs);
    let secrets = pod_secrets(&pod);
    assert_eq!(secrets, ["openbao-ca", "meshca-transit"]);
    let mounts: Vec<_> = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert!(mounts.contains(&"/etc/meshca/transit-auth"), "{mounts:?}");
    assert!(mounts.contains(&"/etc/meshca/transit-ca"), "{mounts:?}");

    // The intermediate mode needs the intermediate's validity: helm
    // renders, and meshca names what is missing.
    let text = support::chart::render_text(&[
        "keyCustody.kind=transit",
        "keyCustody.transit.address=https://openbao.openbao:8200",
    ]);
    let config_text = text
        .split("\n---")
        .find(|d| d.contains("kind: ConfigMap"))
        .expect("configmap");
    let cm: Value = serde_yaml_ng::from_str(config_text).expect("yaml");
    let yaml = cm["data"]["meshca.yaml"].as_str().expect("meshca.yaml");
    let err = meshca::Config::from_yaml(yaml).expect_err("refused");
    assert!(
        err.to_string()
            .contains("provider.tresor.intermediate: required"),
        "{err}"
    );
}

#[test]
fn the_chart_renders_pkcs11_key_custody_with_its_pin_from_a_secret() {
    let docs = render(&[
        "keyCustody.kind=pkcs11",
        "keyCustody.signLeaves=true",
        "keyCustody.pkcs11.tokenLabel=mesh ca",
        "keyCustody.pkcs11.pinSecretName=meshca-hsm-pin",
    ]);
    let config = check_objects(&docs);
    let meshca::ProviderConfig::Tresor(_, Some(custody)) = &config.provider else {
        panic!("tresor in custody: {:?}", config.provider);
    };
    let text = format!("{:?}", custody.backend);
    assert!(text.contains("token_label: \"mesh ca\""), "{text}");
    assert!(text.contains("/etc/meshca/pkcs11-pin/pin"), "{text}");
    let pod = pod_spec(&docs);
    let secrets = pod_secrets(&pod);
    assert_eq!(secrets, ["meshca-hsm-pin"]);
    let out = std::process::Command::new(support::tool("helm"))
        .args(["template", "meshca"])
        .arg(support::repo_root().join("charts/meshca"))
        .args(["--set", "keyCustody.kind=pkcs11"])
        .output()
        .expect("helm");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("keyCustody.pkcs11.pinSecretName is required"),
        "{stderr}"
    );
}

/// The Deployment's pod spec.
fn pod_spec(docs: &[Value]) -> k8s_openapi::api::core::v1::PodSpec {
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("deployment");
    let d: Deployment = typed(deployment);
    d.spec.template.spec.expect("pod spec")
}

/// The Secrets the pod mounts.
fn pod_secrets(pod: &k8s_openapi::api::core::v1::PodSpec) -> Vec<String> {
    pod.volumes
        .iter()
        .flatten()
        .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
        .collect()
}
