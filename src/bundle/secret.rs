use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::{BundleError, BundleSink, SecretRef, TrustBundle};
use crate::cluster::{is_reason, MANAGED_BY};

/// The data key that holds the bundle.
const KEY: &str = "ca.crt";
/// Attempts of read-modify-write before giving up to the publisher's retry.
const ATTEMPTS: usize = 5;

/// The bundle as `ca.crt` in a Secret (`osm-system/osm-ca-bundle` by
/// default). Only `ca.crt` is meshca's: other data keys are left alone.
/// Writes use the object's resourceVersion and are retried on conflict.
/// Only the leader writes; other replicas report the sink as holding the
/// bundle.
pub struct SecretSink {
    api: Api<Secret>,
    secret: SecretRef,
    name: String,
    leader: watch::Receiver<bool>,
}

impl std::fmt::Debug for SecretSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSink")
            .field("secret", &self.secret)
            .finish()
    }
}

impl SecretSink {
    /// A sink for `secret`, writing while `leader` is true.
    pub fn new(client: kube::Client, secret: SecretRef, leader: watch::Receiver<bool>) -> Self {
        Self {
            api: Api::namespaced(client, &secret.namespace),
            name: format!("secret {}/{}", secret.namespace, secret.name),
            secret,
            leader,
        }
    }

    /// A task that wakes `resync` whenever the Secret changes or
    /// disappears, so an edit or a deletion is repaired within seconds,
    /// and whenever leadership changes.
    pub fn watch_changes(
        &self,
        resync: Arc<Notify>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        super::watch::follow_object(
            self.api.clone(),
            &self.secret.name,
            self.leader.clone(),
            resync,
            shutdown,
        )
    }

    fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    fn fail(&self, message: String) -> BundleError {
        BundleError::Sink {
            sink: self.name.clone(),
            message,
            refusal: None,
        }
    }
}

fn holds_pem(secret: &Secret, pem: &str) -> bool {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(KEY))
        .is_some_and(|v| v.0 == pem.as_bytes())
}

#[async_trait]
impl BundleSink for SecretSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, bundle: &TrustBundle) -> Result<(), BundleError> {
        // A follower writes nothing, but holds the bundle only once the
        // leader has published it: a signer change waits for that.
        if !self.is_leader() {
            return match self.holds(bundle).await? {
                true => Ok(()),
                false => Err(BundleError::awaiting_leader(&self.name)),
            };
        }
        let pem = bundle.pem();
        for _ in 0..ATTEMPTS {
            let current = self
                .api
                .get_opt(&self.secret.name)
                .await
                .map_err(|e| BundleError::kube(&self.name, &e))?;
            let result = match current {
                Some(s) if holds_pem(&s, pem) => return Ok(()),
                Some(mut s) => {
                    s.data
                        .get_or_insert_with(BTreeMap::new)
                        .insert(KEY.to_owned(), ByteString(pem.as_bytes().to_vec()));
                    self.api
                        .replace(&self.secret.name, &PostParams::default(), &s)
                        .await
                        .map(drop)
                }
                None => {
                    let s = Secret {
                        metadata: ObjectMeta {
                            name: Some(self.secret.name.clone()),
                            namespace: Some(self.secret.namespace.clone()),
                            labels: Some(BTreeMap::from([(
                                MANAGED_BY.0.to_owned(),
                                MANAGED_BY.1.to_owned(),
                            )])),
                            ..ObjectMeta::default()
                        },
                        type_: Some("Opaque".to_owned()),
                        data: Some(BTreeMap::from([(
                            KEY.to_owned(),
                            ByteString(pem.as_bytes().to_vec()),
                        )])),
                        ..Secret::default()
                    };
                    self.api.create(&PostParams::default(), &s).await.map(drop)
                }
            };
            match result {
                Ok(()) => return Ok(()),
                // Someone wrote in between: read again and retry.
                Err(e) if is_reason(&e, 409) => {
                    tracing::debug!(secret = %self.name, "conflict writing the bundle Secret; retrying");
                }
                Err(e) => return Err(BundleError::kube(&self.name, &e)),
            }
        }
        Err(self.fail(format!("still conflicting after {ATTEMPTS} attempts")))
    }

    async fn holds(&self, bundle: &TrustBundle) -> Result<bool, BundleError> {
        let current = self
            .api
            .get_opt(&self.secret.name)
            .await
            .map_err(|e| BundleError::kube(&self.name, &e))?;
        Ok(current.is_some_and(|s| holds_pem(&s, bundle.pem())))
    }
}
