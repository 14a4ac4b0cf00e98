//! What each ingress controller needs to reach a mesh backend over HTTPS
//! and verify its identity with the trust bundle. The CA material handed
//! to controllers is the bundle (or the ingress client Secret, which holds
//! the controller's own key): never a CA private key.

use std::collections::BTreeMap;
use std::str::FromStr;

use meshca_provider::{Identity, TrustDomain};
use serde_json::{json, Value};

use super::model::{Backend, IngressModel};

/// The annotation that names the backends' ServiceAccount when rendering
/// offline (the daemon reads it from the Service's pods instead).
pub const SERVICE_ACCOUNT_ANNOTATION: &str = "meshca.io/backend-service-account";

/// A supported ingress controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Controller {
    /// ingress-nginx.
    Nginx,
    /// Azure Application Gateway Ingress Controller.
    Agic,
    /// Gloo Edge.
    Gloo,
}

impl FromStr for Controller {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "nginx" => Ok(Self::Nginx),
            "agic" | "azure/application-gateway" => Ok(Self::Agic),
            "gloo" => Ok(Self::Gloo),
            other => Err(format!(
                "unknown controller {other:?}: expected nginx, agic or gloo"
            )),
        }
    }
}

/// Settings of a rendering.
#[derive(Clone, Debug)]
pub struct RenderOptions {
    /// The mesh's trust domain.
    pub trust_domain: TrustDomain,
    /// `namespace/name` of the Secret with `ca.crt` (the bundle).
    pub bundle_secret: (String, String),
    /// `namespace/name` of the ingress client certificate Secret
    /// (`tls.crt`, `tls.key`, `ca.crt`) when the controller must present
    /// one (mTLS to backends).
    pub client_secret: Option<(String, String)>,
    /// The bundle PEM, which AGIC must upload and Gloo copies.
    pub bundle_pem: Option<String>,
    /// Namespace of Gloo's Upstreams and Secrets.
    pub gloo_namespace: String,
    /// Name of the trusted root certificate uploaded to Application Gateway.
    pub agic_root_name: String,
}

impl RenderOptions {
    /// Defaults for `trust_domain`: bundle `osm-system/osm-ca-bundle`, Gloo
    /// in `gloo-system`, AGIC root named `meshca-root`.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            bundle_secret: ("osm-system".into(), "osm-ca-bundle".into()),
            client_secret: None,
            bundle_pem: None,
            gloo_namespace: "gloo-system".into(),
            agic_root_name: "meshca-root".into(),
        }
    }
}

/// The output: objects to apply (the annotated Ingress first) and notes
/// for the operator (commands to run, files to upload).
#[derive(Clone, Debug, Default)]
pub struct Rendered {
    /// Kubernetes objects.
    pub objects: Vec<Value>,
    /// Human instructions.
    pub notes: Vec<String>,
}

/// Why an Ingress cannot be rendered for a controller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// nginx and AGIC verify one name per Ingress.
    #[error("Ingress {ingress}: its backends have different identities ({first} and {second}); {controller} checks one name per Ingress, so split it into one Ingress per identity")]
    MixedIdentities {
        /// The Ingress.
        ingress: String,
        /// The controller.
        controller: &'static str,
        /// One identity.
        first: String,
        /// Another.
        second: String,
    },
    /// The bundle PEM is needed but was not given.
    #[error("{0} needs the trust bundle: pass --bundle FILE (e.g. ./meshca-data/bundle/ca.crt)")]
    BundleNeeded(&'static str),
    /// A backend's identity could not be formed.
    #[error("Ingress {ingress}: {message}")]
    Identity {
        /// The Ingress.
        ingress: String,
        /// What is wrong.
        message: String,
    },
    /// The Ingress has no Service backend.
    #[error("Ingress {0} has no Service backend")]
    NoBackends(String),
}

/// The backends' identities as offline rendering sees them: the
/// ServiceAccount named by [`SERVICE_ACCOUNT_ANNOTATION`], else one named
/// like the Service (the common convention).
///
/// # Errors
/// [`RenderError::Identity`] for names that cannot be identities.
pub fn offline_identities(
    ingress: &IngressModel,
    trust_domain: &TrustDomain,
) -> Result<BTreeMap<Backend, Identity>, RenderError> {
    let annotated = ingress
        .object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(SERVICE_ACCOUNT_ANNOTATION))
        .and_then(Value::as_str);
    ingress
        .backends
        .iter()
        .map(|b| {
            let sa = annotated.unwrap_or(&b.service);
            Identity::new(trust_domain.clone(), &ingress.namespace, sa)
                .map(|id| (b.clone(), id))
                .map_err(|e| RenderError::Identity {
                    ingress: ingress.name.clone(),
                    message: e.to_string(),
                })
        })
        .collect()
}

fn single_identity<'a>(
    ingress: &IngressModel,
    identities: &'a BTreeMap<Backend, Identity>,
    controller: &'static str,
) -> Result<&'a Identity, RenderError> {
    let mut ids = ingress.backends.iter().filter_map(|b| identities.get(b));
    let first = ids
        .next()
        .ok_or_else(|| RenderError::NoBackends(ingress.name.clone()))?;
    if let Some(other) = ids.find(|i| *i != first) {
        return Err(RenderError::MixedIdentities {
            ingress: ingress.name.clone(),
            controller,
            first: first.dns_name(),
            second: other.dns_name(),
        });
    }
    Ok(first)
}

/// Hand the Ingress to another controller: the class annotation, and no
/// `ingressClassName` naming the previous one.
fn reclass(object: &Value, class: &str) -> Value {
    let mut out = annotate(object, &[("kubernetes.io/ingress.class", class.to_owned())]);
    if let Some(spec) = out.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("ingressClassName");
    }
    out
}

fn annotate(object: &Value, annotations: &[(&str, String)]) -> Value {
    let mut out = object.clone();
    if out.pointer("/metadata/annotations").is_none() {
        out["metadata"]["annotations"] = json!({});
    }
    for (k, v) in annotations {
        out["metadata"]["annotations"][*k] = json!(v);
    }
    out
}

/// The nginx annotations for backends of `identity`.
pub fn nginx_annotations(
    identity: &Identity,
    options: &RenderOptions,
) -> Vec<(&'static str, String)> {
    let (ns, name) = options
        .client_secret
        .as_ref()
        .unwrap_or(&options.bundle_secret);
    vec![
        (
            "nginx.ingress.kubernetes.io/backend-protocol",
            "HTTPS".into(),
        ),
        (
            "nginx.ingress.kubernetes.io/configuration-snippet",
            format!("proxy_ssl_name \"{}\";\n", identity.dns_name()),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-ssl-secret",
            format!("{ns}/{name}"),
        ),
        ("nginx.ingress.kubernetes.io/proxy-ssl-verify", "on".into()),
        // Chains may carry an intermediate (Tresor intermediate mode, Vault).
        (
            "nginx.ingress.kubernetes.io/proxy-ssl-verify-depth",
            "2".into(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-ssl-server-name",
            "on".into(),
        ),
    ]
}

/// The AGIC annotations for backends of `identity`.
pub fn agic_annotations(
    identity: &Identity,
    options: &RenderOptions,
) -> Vec<(&'static str, String)> {
    vec![
        (
            "appgw.ingress.kubernetes.io/backend-protocol",
            "https".into(),
        ),
        (
            "appgw.ingress.kubernetes.io/backend-hostname",
            identity.dns_name(),
        ),
        (
            "appgw.ingress.kubernetes.io/appgw-trusted-root-certificate",
            options.agic_root_name.clone(),
        ),
    ]
}

/// The annotations `controller` needs on an Ingress whose backends are
/// `identity`; Gloo needs Upstream objects instead, so none.
pub fn annotations_for(
    controller: Controller,
    identity: &Identity,
    options: &RenderOptions,
) -> Vec<(&'static str, String)> {
    match controller {
        Controller::Nginx => nginx_annotations(identity, options),
        Controller::Agic => agic_annotations(identity, options),
        Controller::Gloo => Vec::new(),
    }
}

/// Render `ingress` for `controller`, with `identities` for its backends.
///
/// # Errors
/// [`RenderError`].
pub fn render(
    controller: Controller,
    ingress: &IngressModel,
    identities: &BTreeMap<Backend, Identity>,
    options: &RenderOptions,
) -> Result<Rendered, RenderError> {
    let mut out = Rendered::default();
    match controller {
        Controller::Nginx => {
            let identity = single_identity(ingress, identities, "nginx")?;
            out.objects.push(annotate(
                &ingress.object,
                &nginx_annotations(identity, options),
            ));
            if options.client_secret.is_none() && options.bundle_secret.0 != ingress.namespace {
                out.notes.push(format!(
                    "ingress-nginx reads proxy-ssl-secret {}/{} across namespaces; no copy is needed.",
                    options.bundle_secret.0, options.bundle_secret.1
                ));
            }
        }
        Controller::Agic => {
            let identity = single_identity(ingress, identities, "agic")?;
            let pem = options
                .bundle_pem
                .as_ref()
                .ok_or(RenderError::BundleNeeded("agic"))?;
            out.objects.push(annotate(
                &reclass(&ingress.object, "azure/application-gateway"),
                &agic_annotations(identity, options),
            ));
            out.notes.push(format!(
                "Upload the trust bundle to Application Gateway as trusted root {name:?}:\n  \
                 az network application-gateway root-cert create --gateway-name <gateway> \
                 --resource-group <resource-group> --name {name} --cert-file osm-ca-bundle.pem",
                name = options.agic_root_name
            ));
            out.notes.push(format!(
                "osm-ca-bundle.pem (the trust bundle; no private key):\n{pem}"
            ));
        }
        Controller::Gloo => render_gloo(ingress, identities, options, &mut out)?,
    }
    Ok(out)
}

/// Gloo: the Ingress for Gloo's class, an Upstream per backend that
/// verifies its identity, and a copy of the bundle for them.
fn render_gloo(
    ingress: &IngressModel,
    identities: &BTreeMap<Backend, Identity>,
    options: &RenderOptions,
    out: &mut Rendered,
) -> Result<(), RenderError> {
    let pem = options
        .bundle_pem
        .as_ref()
        .ok_or(RenderError::BundleNeeded("gloo"))?;
    out.objects.push(reclass(&ingress.object, "gloo"));
    let secret_name = "meshca-ca-bundle";
    out.notes.push(
        "Gloo routes this Ingress's Services through the Upstreams below (named as Gloo's discovery names them), which verify the backend's identity with the bundle copy.".to_owned(),
    );
    for backend in &ingress.backends {
        let identity = identities
            .get(backend)
            .ok_or_else(|| RenderError::Identity {
                ingress: ingress.name.clone(),
                message: format!("no identity for backend {}", backend.service),
            })?;
        let upstream = gloo_upstream(ingress, backend, identity, options, out);
        out.objects.push(upstream);
    }
    out.objects.push(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name,
            "namespace": options.gloo_namespace,
            "labels": { "app.kubernetes.io/managed-by": "meshca" },
        },
        "type": "kubernetes.io/tls",
        "stringData": { "ca.crt": pem, "tls.crt": "", "tls.key": "" },
    }));
    Ok(())
}

/// The Upstream that verifies `backend`'s identity, named as Gloo's
/// discovery names a Service's upstream, so Ingress routes to this Service
/// use it; what cannot be rendered is a note in `out`.
fn gloo_upstream(
    ingress: &IngressModel,
    backend: &Backend,
    identity: &Identity,
    options: &RenderOptions,
    out: &mut Rendered,
) -> Value {
    let secret_name = "meshca-ca-bundle";
    let mut kube = json!({ "serviceName": backend.service, "serviceNamespace": ingress.namespace });
    match &backend.port {
        super::BackendPort::Number(n) => kube["servicePort"] = json!(n),
        super::BackendPort::Name(n) => {
            out.notes.push(format!(
                "Upstream for {}: set spec.kube.servicePort to the number of port {n:?}.",
                backend.service
            ));
        }
    }
    let ssl = json!({
        "sni": identity.dns_name(),
        "secretRef": { "name": secret_name, "namespace": options.gloo_namespace },
        "verifySubjectAltName": [identity.dns_name()],
    });
    if let Some((ns, name)) = &options.client_secret {
        out.notes.push(format!(
            "For mTLS to backends, copy {ns}/{name} (tls.crt, tls.key, ca.crt) to {}/{secret_name}.",
            options.gloo_namespace
        ));
    }
    json!({
        "apiVersion": "gloo.solo.io/v1",
        "kind": "Upstream",
        "metadata": {
            "name": format!("{}-{}-{}", ingress.namespace, backend.service, backend.port),
            "namespace": options.gloo_namespace,
            "labels": { "app.kubernetes.io/managed-by": "meshca" },
        },
        "spec": { "kube": kube, "sslConfig": ssl },
    })
}

/// Quote a scalar that YAML 1.1 (what kubectl and Kubernetes read) would
/// take for a boolean, e.g. nginx's `proxy-ssl-verify: on`; the emitter
/// writes YAML 1.2, where these are plain strings.
fn quote_yaml11_booleans(line: &str) -> String {
    const BOOLISH: [&str; 22] = [
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
    ];
    let split = line
        .rfind(": ")
        .map(|i| (i + 2, &line[i + 2..]))
        .or_else(|| {
            let t = line.trim_start();
            t.strip_prefix("- ").map(|v| (line.len() - v.len(), v))
        });
    match split {
        Some((at, value)) if BOOLISH.contains(&value) => format!("{}'{value}'", &line[..at]),
        _ => line.to_owned(),
    }
}

/// Render every Ingress of a multi-document manifest; other documents pass
/// through unchanged. Returns YAML (documents separated by `---`) followed
/// by the notes as comments.
///
/// # Errors
/// The first Ingress that cannot be read or rendered, or malformed YAML.
pub fn render_manifest(
    controller: Controller,
    manifest: &str,
    options: &RenderOptions,
) -> Result<String, String> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    let mut notes = Vec::new();
    let mut ingresses = 0;
    for doc in serde_yaml_ng::Deserializer::from_str(manifest) {
        let value = Value::deserialize(doc).map_err(|e| format!("invalid YAML: {e}"))?;
        if value.is_null() {
            continue;
        }
        if !IngressModel::is_ingress(&value) {
            docs.push(value);
            continue;
        }
        ingresses += 1;
        let model = IngressModel::from_value(value).map_err(|e| e.to_string())?;
        let ids = offline_identities(&model, &options.trust_domain).map_err(|e| e.to_string())?;
        let rendered = render(controller, &model, &ids, options).map_err(|e| e.to_string())?;
        docs.extend(rendered.objects);
        notes.extend(rendered.notes);
    }
    if ingresses == 0 {
        return Err("the manifest holds no Ingress".into());
    }
    let mut out = String::new();
    for doc in docs {
        out.push_str("---\n");
        let yaml = serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string())?;
        for line in yaml.lines() {
            out.push_str(&quote_yaml11_booleans(line));
            out.push('\n');
        }
    }
    for note in notes {
        out.push('\n');
        for line in note.lines() {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::quote_yaml11_booleans as q;

    #[test]
    fn yaml11_booleans_are_quoted_and_nothing_else() {
        assert_eq!(
            q("    nginx.ingress.kubernetes.io/proxy-ssl-verify: on"),
            "    nginx.ingress.kubernetes.io/proxy-ssl-verify: 'on'"
        );
        assert_eq!(q("  - off"), "  - 'off'");
        assert_eq!(q("  name: httpbin"), "  name: httpbin");
        assert_eq!(q("  online: one"), "  online: one");
    }
}
