//! The certificate istiod serves xDS (and its webhooks) with, when meshca
//! is Istio's CA and istiod's own CA is off: a `kubernetes.io/tls` Secret
//! (`tls.crt`, `tls.key`, `ca.crt`) for istiod's identity and the names
//! sidecars dial it by, kept as meshca keeps an ingress backend's: written
//! by server-side apply, renewed at its renewal time, rewritten when the
//! bundle or the signer changes or someone edits or deletes it. Only the
//! leader writes.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use meshca_provider::{Identity, TrustDomain};
use time::OffsetDateTime;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::IstiodCertificate;
use crate::bundle::BundleReceiver;
use crate::ingress::secrets::{self, SecretError, SecretKey, Wanted};
use crate::issuer::{Frontend, Issuer, Outcome};

/// How often the Secret is checked even when nothing woke the keeper: a
/// signer switch changes what it must hold.
const RECHECK: Duration = Duration::from_secs(30);
/// The wait after a failed write.
const RETRY: Duration = Duration::from_secs(5);

/// Keep istiod's Secret until `shutdown`.
pub async fn keep(
    client: kube::Client,
    config: IstiodCertificate,
    trust_domain: TrustDomain,
    issuer: Issuer,
    mut bundle: BundleReceiver,
    mut leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let identity = match Identity::new(trust_domain, &config.namespace, &config.service_account) {
        Ok(identity) => identity,
        Err(e) => {
            tracing::error!(error = %e, "istiod's identity is not valid; its Secret is not kept");
            return;
        }
    };
    let wanted = Wanted {
        server_names: config.dns_names.clone(),
        frontend: Frontend::Istio,
        ..Wanted::ingress(identity, "istiod", None)
    };
    let key: SecretKey = (config.namespace.clone(), config.secret_name.clone());
    let changed = Arc::new(Notify::new());
    let api = Api::<Secret>::namespaced(client.clone(), &config.namespace);
    tokio::spawn(crate::bundle::watch::follow_object(
        api.clone(),
        &config.secret_name,
        leader.clone(),
        changed.clone(),
        shutdown.clone(),
    ));
    loop {
        let leading = *leader.borrow();
        // A refusal only a change can lift waits for one (the bundle, that
        // is the signer, the Secret, leadership), never a timer.
        let wait = match leading {
            true => ensure(&client, &api, &issuer, &bundle, &key, &wanted).await,
            false => Some(RECHECK),
        };
        let timer = async {
            match wait {
                Some(wait) => tokio::time::sleep(wait.min(RECHECK)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = timer => {}
            () = changed.notified() => {}
            r = bundle.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
        }
    }
}

/// Write the Secret unless what it holds is fresh; how long until it is
/// due (or until the next try, after a failure that may pass), or `None`
/// after a refusal that repeating cannot lift.
async fn ensure(
    client: &kube::Client,
    api: &Api<Secret>,
    issuer: &Issuer,
    bundle: &BundleReceiver,
    key: &SecretKey,
    wanted: &Wanted,
) -> Option<Duration> {
    let current = match api.get_opt(&key.1).await {
        Ok(current) => current,
        Err(e) => {
            tracing::warn!(error = %e, secret = %format!("{}/{}", key.0, key.1), "failed to read istiod's Secret");
            return Some(RETRY);
        }
    };
    let bundle_pem = bundle.borrow().pem().to_owned();
    let generation = issuer.signer().generation();
    let now = OffsetDateTime::now_utc();
    if let Some(left) = secrets::fresh_for(current.as_ref(), wanted, &bundle_pem, generation, now) {
        return Some(left);
    }
    match secrets::write(client, issuer, key, wanted, &bundle_pem).await {
        Ok(left) => Some(left),
        Err(SecretError::NotIssued {
            outcome: Outcome::Retry(retry),
            ..
        }) => Some(retry.after),
        Err(e @ SecretError::NotIssued { .. }) => {
            tracing::error!(error = %crate::error_chain(&e), "istiod's certificate was refused; waiting for a change of signer, bundle or Secret");
            None
        }
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "failed to write istiod's Secret");
            Some(RETRY)
        }
    }
}
