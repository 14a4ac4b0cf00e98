//! The `kubernetes.io/tls` Secrets (`tls.crt`, `tls.key`, `ca.crt`) meshca
//! keeps for an identity whose key it makes: an ingress controller's HTTPS
//! backends and its client certificate, istiod's serving certificate.
//! meshca owns them by server-side apply (field manager `meshca`, forced,
//! so an edit by hand is taken back), labels them for cleanup, and records
//! when each is due.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::Api;
use meshca_provider::{Identity, ServerName};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::bundle::BundleReceiver;
use crate::cluster::{KubeError, Refusal, FIELD_MANAGER, MANAGED_BY};
use crate::crypto::names::KeyAlgorithmName;
use crate::issuer::{self, Frontend, Issuer, Verdict};

/// Label naming what an ingress Secret is for; selects meshca's own.
pub const PURPOSE: &str = "meshca.io/purpose";
const RENEW_AFTER: &str = "meshca.io/renew-after";
const IDENTITY: &str = "meshca.io/identity";
/// The signer generation that issued a Secret's certificate: a switch of
/// signer re-issues every Secret at once.
const GENERATION: &str = "meshca.io/generation";
/// The server names a Secret's certificate carries besides its identity's.
const SERVER_NAMES: &str = "meshca.io/server-names";

/// A Secret's `(namespace, name)`.
pub type SecretKey = (String, String);

/// What one Secret should hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// The identity its certificate carries.
    pub identity: Identity,
    /// `ingress-backend` or `ingress-client`.
    pub purpose: &'static str,
    /// The lifetime to ask for; the default lifetime when `None`.
    pub ttl: Option<Duration>,
    /// Which way it is asked for (`ingress`, `istio`).
    pub frontend: Frontend,
    /// The names its server is dialled by (istiod's), besides the
    /// identity's; none for a workload.
    pub server_names: Vec<ServerName>,
}

impl Wanted {
    /// An ingress Secret for `identity`.
    pub fn ingress(identity: Identity, purpose: &'static str, ttl: Option<Duration>) -> Self {
        Self {
            identity,
            purpose,
            ttl,
            frontend: Frontend::Ingress,
            server_names: Vec::new(),
        }
    }

    /// A server's Secret (istiod's), asked for through `frontend`: its
    /// certificate also names `server_names`; the default lifetime.
    pub fn server(
        identity: Identity,
        purpose: &'static str,
        frontend: Frontend,
        server_names: Vec<ServerName>,
    ) -> Self {
        Self {
            identity,
            purpose,
            ttl: None,
            frontend,
            server_names,
        }
    }

    /// The `meshca.io/server-names` annotation: what the certificate was
    /// issued for besides the identity.
    fn names_annotation(&self) -> String {
        self.server_names
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// How long `current` may stay as it is, or `None` when it must be
/// written now: missing, another identity, another bundle, an earlier
/// signer, or due for renewal.
pub fn fresh_for(
    current: Option<&Secret>,
    wanted: &Wanted,
    bundle_pem: &str,
    generation: u64,
    now: OffsetDateTime,
) -> Option<Duration> {
    let current = current?;
    let annotations = current.metadata.annotations.as_ref()?;
    let same_identity = annotations.get(IDENTITY) == Some(&wanted.identity.dns_name())
        && annotations.get(SERVER_NAMES).map_or("", String::as_str) == wanted.names_annotation();
    let same_signer = annotations.get(GENERATION) == Some(&generation.to_string());
    let same_bundle = current
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .is_some_and(|b| b.0 == bundle_pem.as_bytes());
    let renew_after = annotations
        .get(RENEW_AFTER)
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())?;
    (same_identity && same_signer && same_bundle && renew_after > now)
        .then(|| (renew_after - now).try_into().unwrap_or(Duration::ZERO))
}

/// Why a Secret could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The issuer did not issue its certificate; the refusal says whether
    /// and when to try again.
    #[error("failed to issue a certificate for {identity} (Secret {secret})")]
    NotIssued {
        /// The identity.
        identity: Identity,
        /// `namespace/name`.
        secret: String,
        /// What the issuer decided.
        #[source]
        refusal: issuer::Refusal,
    },
    /// The API server refused or could not be reached.
    #[error(transparent)]
    Kube(#[from] KubeError),
}

impl SecretError {
    /// What the failure says about trying again: the API server's verdict,
    /// or the issuer's (a wait it asked for; a refusal or failure that
    /// repeating cannot fix).
    pub fn refusal(&self) -> Refusal {
        match self {
            Self::Kube(KubeError::Api { source, .. }) => Refusal::of(source),
            Self::NotIssued { refusal, .. } => match refusal.retry_after() {
                Some(after) => Refusal::Transient {
                    retry_after: Some(after),
                },
                None => Refusal::Final {
                    code: 0,
                    message: crate::report::error_chain(refusal),
                },
            },
            Self::Kube(_) => Refusal::Transient { retry_after: None },
        }
    }
}

/// Write `key` unless what it holds is fresh for `wanted` and the bundle
/// `bundle` holds now; returns when it is due.
///
/// # Errors
/// Reading the Secret, issuance or the apply failed.
pub async fn ensure(
    client: &kube::Client,
    issuer: &Issuer,
    bundle: &BundleReceiver,
    key: &SecretKey,
    wanted: &Wanted,
) -> Result<Duration, SecretError> {
    let (ns, name) = key;
    let current = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(KubeError::api(format!("read Secret {ns}/{name}")))?;
    let bundle_pem = bundle.borrow().pem().to_owned();
    let generation = issuer.signer().generation();
    let now = OffsetDateTime::now_utc();
    match fresh_for(current.as_ref(), wanted, &bundle_pem, generation, now) {
        Some(left) => Ok(left),
        None => write(client, issuer, key, wanted, &bundle_pem).await,
    }
}

/// Issue a certificate for `wanted` with a key made here, and apply the
/// Secret. Returns how long until it is due again.
///
/// # Errors
/// Issuance or the apply failed.
pub async fn write(
    client: &kube::Client,
    issuer: &Issuer,
    (ns, name): &SecretKey,
    wanted: &Wanted,
    bundle_pem: &str,
) -> Result<Duration, SecretError> {
    let lifetime = issuer.lifetimes().for_request(wanted.ttl);
    let own = issuer
        .issue_own(
            wanted.frontend,
            // Classical: the proxies that read these Secrets (nginx,
            // Envoy) do not verify ML-DSA chains yet.
            (&wanted.identity, KeyAlgorithmName::EcdsaP256),
            &wanted.server_names,
            lifetime,
        )
        .await
        .map_err(|refusal| SecretError::NotIssued {
            identity: wanted.identity.clone(),
            secret: format!("{ns}/{name}"),
            refusal,
        })?;
    let issued = &own.issued;
    let chain = own.chain_pem();
    let key_pem = own.key_pem();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.into(), MANAGED_BY.1.into()),
                (PURPOSE.into(), wanted.purpose.into()),
            ])),
            annotations: Some(BTreeMap::from([
                (IDENTITY.into(), wanted.identity.dns_name()),
                (SERVER_NAMES.into(), wanted.names_annotation()),
                (GENERATION.into(), issued.generation.to_string()),
                (
                    RENEW_AFTER.into(),
                    issued.renew_after.format(&Rfc3339).unwrap_or_default(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".into(), ByteString(chain.into_bytes())),
            ("tls.key".into(), ByteString(key_pem.as_bytes().to_vec())),
            ("ca.crt".into(), ByteString(bundle_pem.as_bytes().to_vec())),
        ])),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .map_err(KubeError::api(format!("apply Secret {ns}/{name}")))?;
    tracing::info!(secret = %format!("{ns}/{name}"), identity = %wanted.identity, purpose = wanted.purpose, "wrote a certificate Secret");
    let now = OffsetDateTime::now_utc();
    Ok((issued.renew_after - now)
        .try_into()
        .unwrap_or(Duration::ZERO))
}

/// Delete an ingress Secret no Ingress needs any more.
///
/// # Errors
/// The delete failed (a Secret already gone is no error).
pub async fn delete(client: &kube::Client, (ns, name): &SecretKey) -> Result<(), KubeError> {
    match Api::<Secret>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => {
            tracing::info!(secret = %format!("{ns}/{name}"), "deleted an ingress Secret no Ingress needs");
            Ok(())
        }
        Err(e) if crate::cluster::is_reason(&e, 404) => Ok(()),
        Err(e) => Err(KubeError::api(format!("delete Secret {ns}/{name}"))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshca_provider::TrustDomain;

    fn wanted() -> Wanted {
        Wanted::ingress(
            Identity::new(
                TrustDomain::new("cluster.local").expect("td"),
                "httpbin",
                "httpbin-sa",
            )
            .expect("identity"),
            "ingress-backend",
            None,
        )
    }

    fn secret(identity: &str, generation: u64, bundle: &str, renew_after: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([
                    (IDENTITY.into(), identity.into()),
                    (GENERATION.into(), generation.to_string()),
                    (RENEW_AFTER.into(), renew_after.into()),
                ])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                "ca.crt".into(),
                ByteString(bundle.as_bytes().to_vec()),
            )])),
            ..Secret::default()
        }
    }

    #[test]
    fn a_secret_is_kept_until_its_renewal_time_and_rewritten_when_anything_it_holds_is_stale() {
        let now = OffsetDateTime::parse("2027-01-01T00:00:00Z", &Rfc3339).expect("time");
        let id = "httpbin-sa.httpbin.cluster.local";
        let later = "2027-01-01T01:00:00Z";
        let good = secret(id, 3, "B", later);
        assert_eq!(
            fresh_for(Some(&good), &wanted(), "B", 3, now),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(fresh_for(None, &wanted(), "B", 3, now), None, "missing");
        let with_names = Wanted {
            server_names: vec![ServerName::parse("istiod.istio-system.svc")],
            ..wanted()
        };
        assert_eq!(
            fresh_for(Some(&good), &with_names, "B", 3, now),
            None,
            "other server names"
        );
        for (what, s, bundle, generation) in [
            (
                "another identity",
                secret("x.y.cluster.local", 3, "B", later),
                "B",
                3,
            ),
            ("an old bundle", secret(id, 3, "A", later), "B", 3),
            ("an earlier signer", secret(id, 2, "B", later), "B", 3),
            ("due", secret(id, 3, "B", "2026-12-31T23:00:00Z"), "B", 3),
            ("unreadable", secret(id, 3, "B", "soon"), "B", 3),
        ] {
            assert_eq!(
                fresh_for(Some(&s), &wanted(), bundle, generation, now),
                None,
                "{what}"
            );
        }
    }
}
