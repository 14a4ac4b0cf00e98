//! The Tresor root in the cluster: its own `kubernetes.io/tls` Secret,
//! never the bundle Secret.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use std::sync::Arc;
use std::time::Duration;

use meshca_provider::crypto::custody::CustodyKey;
use meshca_tresor::CaCertificate;

use super::BuildError;
use crate::bundle::SecretRef;
use crate::cluster::{is_reason, KubeError, MANAGED_BY};

/// Where OSM kept its root key, next to `ca.crt` in `osm-ca-bundle`.
const OSM_KEY: &str = "private.key";

fn data<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret.data.as_ref()?.get(key).map(|b| b.0.as_slice())
}

fn load(secret: &Secret, what: &str) -> Result<CaCertificate, KubeError> {
    let (Some(cert), Some(key)) = (data(secret, "tls.crt"), data(secret, "tls.key")) else {
        return Err(KubeError::Invalid(format!(
            "{what} lacks tls.crt or tls.key"
        )));
    };
    CaCertificate::from_pem(cert, &zeroize::Zeroizing::new(key.to_vec()))
        .map_err(|e| KubeError::Invalid(format!("{what}: {e}")))
}

/// How the root was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Read from the root Secret.
    Loaded,
    /// Generated here and stored.
    Created,
    /// Imported from an OSM-style bundle Secret.
    Migrated,
}

/// Load the root from `root` (in `namespace`), or create it.
///
/// If the root Secret does not exist and the bundle Secret carries OSM's
/// `ca.crt` + `private.key`, that CA is imported once. Otherwise `generate`
/// makes a new one. Creation goes through the API server's atomic create:
/// when several replicas race, the loser loads the winner's root. Once the
/// root is in its own Secret, an OSM `private.key` matching it is removed
/// from the bundle Secret.
///
/// # Errors
/// API failures, or a stored root that cannot be used.
pub async fn load_or_create(
    client: kube::Client,
    namespace: &str,
    root: &str,
    bundle: Option<&SecretRef>,
    generate: impl FnOnce() -> Result<CaCertificate, meshca_tresor::TresorError>,
) -> Result<(CaCertificate, Origin), KubeError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let what = format!("secret {namespace}/{root}");
    let bundle_api = bundle.map(|b| (Api::<Secret>::namespaced(client, &b.namespace), b));
    let stored = api
        .get_opt(root)
        .await
        .map_err(KubeError::api(format!("read {what}")))?;
    let (ca, origin) = match stored {
        Some(s) => (load(&s, &what)?, Origin::Loaded),
        None => {
            let (ca, origin) = match &bundle_api {
                Some((bapi, b)) => match osm_root(bapi, b).await? {
                    Some(ca) => (ca, Origin::Migrated),
                    None => (generated(generate)?, Origin::Created),
                },
                None => (generated(generate)?, Origin::Created),
            };
            create(&api, root, namespace, ca, origin).await?
        }
    };
    if let Some((bapi, b)) = &bundle_api {
        remove_osm_key(bapi, b, &ca).await?;
    }
    Ok((ca, origin))
}

/// A new root from `generate`.
fn generated(
    generate: impl FnOnce() -> Result<CaCertificate, meshca_tresor::TresorError>,
) -> Result<CaCertificate, KubeError> {
    generate().map_err(|e| KubeError::Invalid(e.to_string()))
}

/// OSM's root, when the bundle Secret carries its `ca.crt` and
/// `private.key`.
async fn osm_root(api: &Api<Secret>, b: &SecretRef) -> Result<Option<CaCertificate>, KubeError> {
    let Some(s) = api
        .get_opt(&b.name)
        .await
        .map_err(KubeError::api("read the bundle Secret"))?
    else {
        return Ok(None);
    };
    let (Some(cert), Some(key)) = (data(&s, "ca.crt"), data(&s, OSM_KEY)) else {
        return Ok(None);
    };
    CaCertificate::from_pem(cert, &zeroize::Zeroizing::new(key.to_vec()))
        .map(Some)
        .map_err(|e| KubeError::Invalid(format!("the OSM root in {}/{}: {e}", b.namespace, b.name)))
}

/// Store `ca` in the root Secret by the API server's atomic create; when
/// another replica created it first, theirs is loaded instead.
async fn create(
    api: &Api<Secret>,
    root: &str,
    namespace: &str,
    ca: CaCertificate,
    origin: Origin,
) -> Result<(CaCertificate, Origin), KubeError> {
    let what = format!("secret {namespace}/{root}");
    let key_pem = ca
        .key_pem()
        .map_err(|e| KubeError::Invalid(format!("the new root's key for {what}: {e}")))?;
    let secret = root_secret(
        (namespace, root),
        "kubernetes.io/tls",
        [
            ("tls.crt", ca.cert_pem().into_bytes()),
            ("tls.key", key_pem.as_bytes().to_vec()),
        ],
    );
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok((ca, origin)),
        Err(e) if is_reason(&e, 409) => {
            let s = api
                .get(root)
                .await
                .map_err(KubeError::api(format!("read {what}")))?;
            Ok((load(&s, &what)?, Origin::Loaded))
        }
        Err(e) => Err(KubeError::api(format!("create {what}"))(e)),
    }
}

/// Remove OSM's `private.key` from the bundle Secret if it is this root's
/// key: the root key must not stay where workloads read the bundle.
async fn remove_osm_key(
    api: &Api<Secret>,
    bundle: &SecretRef,
    ca: &CaCertificate,
) -> Result<(), KubeError> {
    let Some(s) = api
        .get_opt(&bundle.name)
        .await
        .map_err(KubeError::api("read the bundle Secret"))?
    else {
        return Ok(());
    };
    let (Some(cert), Some(key)) = (data(&s, "ca.crt"), data(&s, OSM_KEY)) else {
        return Ok(());
    };
    let theirs = CaCertificate::from_pem(cert, &zeroize::Zeroizing::new(key.to_vec()));
    if !theirs.is_ok_and(|t| t.der() == ca.der()) {
        return Ok(());
    }
    // Replace with the resourceVersion just read: a concurrent writer
    // makes this fail with 409, and the next start tries again.
    let mut updated = s.clone();
    if let Some(d) = updated.data.as_mut() {
        d.remove(OSM_KEY);
    }
    api.replace(&bundle.name, &PostParams::default(), &updated)
        .await
        .map_err(KubeError::api("remove private.key from the bundle Secret"))?;
    tracing::info!(secret = %format!("{}/{}", bundle.namespace, bundle.name), "removed the imported root's private.key from the bundle Secret");
    Ok(())
}

/// The root whose key is in custody, its certificate kept as `ca.crt` in
/// the Opaque Secret `name` (no key: the custodian keeps it): loaded, or
/// made by the custodian and stored by the API server's atomic create;
/// when several replicas race, the loser loads the winner's root (signed
/// by the same key).
///
/// # Errors
/// API failures; a stored certificate that is not this key's; the
/// custodian's refusal to sign.
pub async fn load_or_create_in_custody(
    client: kube::Client,
    namespace: &str,
    name: &str,
    key: Arc<dyn CustodyKey>,
    validity: Duration,
    common_name: &str,
) -> Result<CaCertificate, BuildError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let what = format!("secret {namespace}/{name}");
    let from_secret = |s: &Secret, key: Arc<dyn CustodyKey>| {
        let cert = data(s, CUSTODY_CERT)
            .ok_or_else(|| KubeError::Invalid(format!("{what} lacks {CUSTODY_CERT}")))?;
        CaCertificate::from_custody(cert, key)
            .map_err(|e| KubeError::Invalid(format!("{what}: {e}")))
    };
    if let Some(s) = api
        .get_opt(name)
        .await
        .map_err(KubeError::api(format!("read {what}")))?
    {
        return Ok(from_secret(&s, key)?);
    }
    let root = CaCertificate::generate_root_in(key.clone(), validity, common_name).await?;
    let secret = root_secret(
        (namespace, name),
        "Opaque",
        [(CUSTODY_CERT, root.cert_pem().into_bytes())],
    );
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(root),
        Err(e) if is_reason(&e, 409) => {
            let s = api
                .get(name)
                .await
                .map_err(KubeError::api(format!("read {what}")))?;
            Ok(from_secret(&s, key)?)
        }
        Err(e) => Err(KubeError::api(format!("create {what}"))(e).into()),
    }
}

/// The key of a root-in-custody Secret that holds its certificate.
const CUSTODY_CERT: &str = "ca.crt";

/// A root Secret meshca manages, of `type_`, holding `data`.
fn root_secret<const N: usize>(
    (namespace, name): (&str, &str),
    type_: &str,
    data: [(&str, Vec<u8>); N],
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY.0.to_owned(),
                MANAGED_BY.1.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some(type_.to_owned()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v)))
                .collect(),
        ),
        ..Secret::default()
    }
}
