//! One reading of an Ingress, whichever API version wrote it.

use serde_json::Value;

/// A backend Service port: v1's `port.number` / `port.name`, v1beta1's
/// `servicePort` (number or name).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendPort {
    /// A port number.
    Number(u16),
    /// A named port.
    Name(String),
}

impl std::fmt::Display for BackendPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Name(n) => f.write_str(n),
        }
    }
}

/// A backend Service of an Ingress.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// The Service's name (in the Ingress's namespace: Ingress backends
    /// cannot name another namespace).
    pub service: String,
    /// The Service port.
    pub port: BackendPort,
}

/// An Ingress as meshca needs it.
#[derive(Clone, Debug)]
pub struct IngressModel {
    /// The object as read, for output.
    pub object: Value,
    /// Name.
    pub name: String,
    /// Namespace (`default` when the manifest names none).
    pub namespace: String,
    /// Every distinct backend, default backend included, in order.
    pub backends: Vec<Backend>,
}

/// Why a manifest is not an Ingress meshca can read.
#[derive(Debug, thiserror::Error)]
#[error("Ingress {name}: {message}")]
pub struct ModelError {
    /// The Ingress's name, or `?`.
    pub name: String,
    /// What is wrong.
    pub message: String,
}

/// As the API server's schema: metadata is an object, annotations a map
/// of strings (rendering writes into both).
fn check_metadata(object: &Value) -> Result<(), String> {
    match object.get("metadata") {
        None | Some(Value::Object(_)) => {}
        Some(_) => return Err("metadata must be a map".into()),
    }
    match object.pointer("/metadata/annotations") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(a)) if a.values().all(Value::is_string) => Ok(()),
        Some(_) => Err("metadata.annotations must be a map of strings".into()),
    }
}

/// Every backend an Ingress names: its default, then each rule's paths'.
fn raw_backends(object: &Value, v1: bool) -> Vec<&Value> {
    let default_key = if v1 {
        "/spec/defaultBackend"
    } else {
        "/spec/backend"
    };
    let paths = object
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|rule| rule.pointer("/http/paths").and_then(Value::as_array))
        .flatten()
        .filter_map(|path| path.get("backend"));
    object
        .pointer(default_key)
        .into_iter()
        .chain(paths)
        .collect()
}

impl IngressModel {
    /// Whether `object` is an Ingress at all.
    pub fn is_ingress(object: &Value) -> bool {
        object.get("kind").and_then(Value::as_str) == Some("Ingress")
    }

    /// Read an Ingress of any served version.
    ///
    /// # Errors
    /// [`ModelError`] for an unknown version or a backend without a
    /// Service.
    pub fn from_value(object: Value) -> Result<Self, ModelError> {
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let fail = |message: String| ModelError {
            name: name.clone(),
            message,
        };
        check_metadata(&object).map_err(fail)?;
        let api_version = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let v1 = match api_version {
            "networking.k8s.io/v1" => true,
            "networking.k8s.io/v1beta1" | "extensions/v1beta1" => false,
            other => return Err(fail(format!("unsupported apiVersion {other:?}"))),
        };
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned();
        let mut backends = Vec::new();
        for b in raw_backends(&object, v1) {
            let backend = if v1 {
                match backend_v1(b).map_err(fail)? {
                    Some(backend) => backend,
                    // A resource backend is not a mesh service.
                    None => continue,
                }
            } else {
                backend_v1beta1(b).map_err(fail)?
            };
            if !backends.contains(&backend) {
                backends.push(backend);
            }
        }
        Ok(Self {
            object,
            name,
            namespace,
            backends,
        })
    }
}

/// A `networking.k8s.io/v1` backend; `None` for a resource backend.
fn backend_v1(b: &Value) -> Result<Option<Backend>, String> {
    let Some(service) = b.get("service") else {
        return Ok(None);
    };
    let name = service
        .get("name")
        .and_then(Value::as_str)
        .ok_or("a backend service has no name")?;
    let port = match (
        service.pointer("/port/number").and_then(Value::as_u64),
        service.pointer("/port/name").and_then(Value::as_str),
    ) {
        (Some(n), _) => {
            BackendPort::Number(u16::try_from(n).map_err(|_| format!("port {n} out of range"))?)
        }
        (None, Some(n)) => BackendPort::Name(n.to_owned()),
        _ => return Err(format!("backend {name} has no port")),
    };
    Ok(Some(Backend {
        service: name.to_owned(),
        port,
    }))
}

/// A `v1beta1` backend (`serviceName`, `servicePort` number or name).
fn backend_v1beta1(b: &Value) -> Result<Backend, String> {
    let name = b
        .get("serviceName")
        .and_then(Value::as_str)
        .ok_or("a backend has no serviceName")?;
    let port = match b.get("servicePort") {
        Some(Value::Number(n)) => BackendPort::Number(
            n.as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| format!("port {n} out of range"))?,
        ),
        Some(Value::String(s)) => match s.parse::<u16>() {
            Ok(n) => BackendPort::Number(n),
            Err(_) => BackendPort::Name(s.clone()),
        },
        _ => return Err(format!("backend {name} has no servicePort")),
    };
    Ok(Backend {
        service: name.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Found by the `ingress` fuzz target: annotations written as a string
    /// made rendering panic.
    #[test]
    fn metadata_and_annotations_of_the_wrong_shape_are_refused_not_rendered() {
        let backend = json!({ "service": { "name": "s", "port": { "number": 80 } } });
        for metadata in [
            json!({ "name": "i", "annotations": "meshca.io/backend-service-accounto b:okstore-v2" }),
            json!({ "name": "i", "annotations": { "a": 1 } }),
            json!("i"),
        ] {
            let e = IngressModel::from_value(json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": metadata, "spec": { "defaultBackend": backend },
            }))
            .expect_err("refused");
            assert!(e.to_string().contains("metadata"), "{e}");
        }
    }

    #[test]
    fn v1_and_v1beta1_backends_read_the_same() {
        let v1 = IngressModel::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": { "name": "a", "namespace": "httpbin" },
            "spec": { "rules": [{ "http": { "paths": [
                { "path": "/", "pathType": "Prefix", "backend": { "service": { "name": "httpbin", "port": { "number": 14001 } } } },
                { "path": "/x", "pathType": "Prefix", "backend": { "service": { "name": "httpbin", "port": { "name": "http" } } } },
            ]}}]},
        }))
        .expect("v1");
        let beta = IngressModel::from_value(json!({
            "apiVersion": "networking.k8s.io/v1beta1", "kind": "Ingress",
            "metadata": { "name": "a", "namespace": "httpbin" },
            "spec": { "rules": [{ "http": { "paths": [
                { "path": "/", "backend": { "serviceName": "httpbin", "servicePort": 14001 } },
                { "path": "/x", "backend": { "serviceName": "httpbin", "servicePort": "http" } },
            ]}}]},
        }))
        .expect("v1beta1");
        assert_eq!(v1.backends, beta.backends);
        assert_eq!(
            v1.backends[0],
            Backend {
                service: "httpbin".into(),
                port: BackendPort::Number(14001)
            }
        );
        assert_eq!(v1.backends[1].port, BackendPort::Name("http".into()));
    }

    #[test]
    fn an_unknown_version_or_a_portless_backend_is_an_error() {
        assert!(IngressModel::from_value(
            json!({ "apiVersion": "v9", "kind": "Ingress", "metadata": { "name": "a" } })
        )
        .is_err());
        let e = IngressModel::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": { "name": "a" },
            "spec": { "defaultBackend": { "service": { "name": "s" } } },
        }))
        .expect_err("no port");
        assert!(e.to_string().contains("no port"));
    }
}
