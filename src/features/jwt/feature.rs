//! JWT-SVIDs as a feature of the daemon: `jwt_svids:` and `oidc:`, the
//! keys' keeper, the issuer's token minter, the keys in the SPIFFE bundle,
//! `POST /v1/jwt-svids` and discovery on the signing API, and the public
//! `oidc.listen` listener.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;

use super::api::{self, JwtApi};
use meshca_provider::crypto::custody::CustodyError;
use tokio_util::sync::CancellationToken;

use super::{JwtConfig, JwtSvids, KeyCustody, KeyStore, RawJwtSvids, RawOidc, SECRET_NAME};
use crate::custody::CustodyConfig;
use crate::feature::{
    Common, Context, Core, Definition, Feature, FeatureError, Listener, ListenerTls, Plan, Plug,
    Sections, Syntax,
};
use crate::jose::SigningKey;
use crate::validation::Errors;

/// The feature's definition: its sections and how it reads them.
pub const FEATURE: Definition = Definition {
    sections: &["jwt_svids", "oidc"],
    configure,
    commands: &[super::cli::ROTATE_KEY],
};

/// JWT-SVIDs, as configured. Off, it still answers `POST /v1/jwt-svids`
/// with `not_enabled`, so a client can tell a feature turned off from a
/// path that does not exist.
#[derive(Debug)]
pub struct JwtSvidsFeature {
    /// `jwt_svids:`; `None` when off.
    pub config: Option<JwtConfig>,
    /// `oidc.listen`.
    pub oidc_listen: Option<SocketAddr>,
}

fn configure(
    sections: &Sections<'_>,
    common: &Common<'_>,
    errors: &mut Errors,
    _warnings: &mut Vec<String>,
) -> Result<Option<Arc<dyn Feature>>, Syntax> {
    let raw: RawJwtSvids = sections.get("jwt_svids")?;
    let oidc: RawOidc = sections.get("oidc")?;
    if oidc.listen.is_some() && !raw.enabled() {
        errors.add(
            "oidc.listen",
            "serves JWT-SVID discovery: needs jwt_svids.enabled: true",
        );
    }
    let config = raw.validate(errors);
    if let (Some(jwt), Some(custody)) = (&config, common.key_custody) {
        if SigningKey::custody_algorithm(jwt.key_type).is_none() {
            errors.add(
                "jwt_svids.key_type",
                format!(
                    "{}: key_custody.kind {} holds ECDSA keys only; use ecdsa-p256 or ecdsa-p384",
                    jwt.key_type.alg(),
                    custody.backend.name()
                ),
            );
        }
    }
    Ok(Some(Arc::new(JwtSvidsFeature {
        config,
        oidc_listen: oidc.listen,
    })))
}

/// The custodian JWT signing keys are made in, its credentials kept fresh
/// by the task `jwt-key-custody` while the feature runs.
async fn connect_custody(
    config: &CustodyConfig,
    core: &Core,
    plug: &mut Plug,
) -> Result<KeyCustody, CustodyError> {
    let stop = CancellationToken::new();
    let (custody, task) = KeyCustody::connect(config, &core.custody_metrics, stop.clone()).await?;
    if let Some(task) = task {
        plug.task("jwt-key-custody", move |token| async move {
            tokio::select! {
                () = task => {}
                () = token.cancelled() => {}
            }
            stop.cancel();
        });
    }
    Ok(custody)
}

#[async_trait::async_trait]
impl Feature for JwtSvidsFeature {
    fn name(&self) -> &'static str {
        "jwt-svids"
    }

    fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        self.oidc_listen
            .map(|a| ("oidc.listen", a))
            .into_iter()
            .collect()
    }

    fn plan(&self, common: &Common<'_>) -> Plan {
        let Some(jwt) = &self.config else {
            return Plan::default();
        };
        let file = common.state_dir.join("jwt-keys.json");
        let stored = match common.kubernetes {
            Some(k) => format!(
                "the Secret {}/{SECRET_NAME} in a cluster, {} without one",
                k.namespace,
                file.display()
            ),
            None => file.display().to_string(),
        };
        let keys = match common.key_custody {
            Some(c) => format!(
                "{} as {}-jwt-<n>, their names in {stored}",
                c.backend.describe(),
                c.key_prefix
            ),
            None => stored,
        };
        let public = self
            .oidc_listen
            .map(|a| format!(", and on https://{a}"))
            .unwrap_or_default();
        let line = format!(
            "jwt-svids: issuer {} ({}, tokens {} by default, at most {}; a new key every {}, published {} before it signs; keys in {keys}); discovery at {}/.well-known/openid-configuration on the signing API{public}",
            jwt.issuer.as_str(),
            jwt.key_type.alg(),
            humantime::format_duration(jwt.default_ttl),
            humantime::format_duration(jwt.max_ttl),
            humantime::format_duration(jwt.key_lifetime),
            humantime::format_duration(common.propagation_delay),
            jwt.issuer.as_str(),
        );
        Plan {
            sinks: Vec::new(),
            lines: vec![line],
        }
    }

    async fn prepare(&self, core: &Core, plug: &mut Plug) -> Result<(), FeatureError> {
        let Some(config) = &self.config else {
            return Ok(());
        };
        let store = KeyStore::new(
            core.cluster
                .as_ref()
                .map(|c| (c.client.clone(), c.config.namespace.as_str())),
            &core.state_dir,
        );
        let custody = match &core.key_custody {
            Some(c) => Some(
                connect_custody(c, core, plug)
                    .await
                    .map_err(|e| FeatureError::of(self.name())(Box::new(e)))?,
            ),
            None => None,
        };
        let (svids, keeper) = super::start(
            config.clone(),
            core.propagation_delay,
            store,
            custody,
            core.metrics.clone(),
        )
        .await
        .map_err(|e| FeatureError::of(self.name())(Box::new(e)))?;
        plug.task("jwt-keys", keeper);
        plug.tokens(Arc::new(svids.clone()));
        plug.jwt_keys(Arc::new(svids.clone()));
        plug.hold(svids);
        Ok(())
    }

    async fn start(&self, ctx: &Context<'_>, plug: &mut Plug) -> Result<(), FeatureError> {
        let state = Arc::new(JwtApi {
            issuer: ctx.issuer.clone(),
            auth: ctx.auth.clone(),
            max_body_bytes: ctx.max_body_bytes,
            svids: plug.take_held::<JwtSvids>(),
        });
        plug.route(api::signing_api_routes(state.clone()));
        if let Some(addr) = self.oidc_listen {
            plug.listener(Listener {
                name: "oidc-server",
                addr,
                tls: ListenerTls::Serving,
                router: api::oidc_routes(state),
            });
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
