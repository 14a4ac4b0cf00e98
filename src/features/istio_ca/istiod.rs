//! The certificate istiod serves xDS (and its webhooks) with, when meshca
//! is Istio's CA and istiod's own CA is off: a `kubernetes.io/tls` Secret
//! (`tls.crt`, `tls.key`, `ca.crt`) for istiod's identity and the names
//! sidecars dial it by, kept as meshca keeps an ingress backend's
//! ([`secrets::ensure`]): written by server-side apply, renewed at its
//! renewal time, rewritten when the bundle or the signer changes or someone
//! edits or deletes it. Only the leader writes.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use meshca_provider::{Identity, TrustDomain};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::IstiodCertificate;
use crate::bundle::BundleReceiver;
use crate::issuer::{Frontend, Issuer};
use crate::tls_secret::{self as secrets, SecretKey, Wanted};

/// How often the Secret is checked even when nothing woke the keeper: a
/// signer switch changes what it must hold.
const RECHECK: Duration = Duration::from_secs(30);

/// Keep istiod's Secret until `shutdown`; `changed` wakes the keeper
/// when the Secret changes ([`follow`]).
#[allow(clippy::too_many_arguments)]
pub async fn keep(
    client: kube::Client,
    config: IstiodCertificate,
    trust_domain: TrustDomain,
    issuer: Issuer,
    mut bundle: BundleReceiver,
    mut leader: watch::Receiver<bool>,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let identity = match Identity::new(trust_domain, &config.namespace, &config.service_account) {
        Ok(identity) => identity,
        Err(e) => {
            tracing::error!(error = %e, "istiod's identity is not valid; its Secret is not kept");
            return;
        }
    };
    let wanted = Wanted::server(
        identity,
        "istiod",
        Frontend::Istio,
        config.dns_names.clone(),
    );
    let key: SecretKey = (config.namespace.clone(), config.secret_name.clone());
    let mut failures = 0;
    loop {
        // A refusal repeating cannot fix waits for a change (the bundle,
        // that is the signer; the Secret; leadership), or the long final
        // retry that only notices an operator's fix.
        let wait = if *leader.borrow() {
            match secrets::ensure(&client, &issuer, &bundle, &key, &wanted).await {
                Ok(due) => {
                    failures = 0;
                    due.min(RECHECK)
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %crate::report::error_chain(&e), "failed to keep istiod's Secret");
                    e.refusal().retry_delay(failures)
                }
            }
        } else {
            RECHECK
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            () = changed.notified() => {}
            r = bundle.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
        }
    }
}

/// Notify `changed` whenever istiod's Secret changes, until `shutdown`.
pub fn follow(
    client: kube::Client,
    config: &IstiodCertificate,
    leader: watch::Receiver<bool>,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    crate::bundle::watch::follow_object(
        Api::<Secret>::namespaced(client, &config.namespace),
        &config.secret_name,
        leader,
        changed,
        shutdown,
    )
}
