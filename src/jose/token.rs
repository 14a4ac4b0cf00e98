//! JWT-SVIDs in compact JWS form, per the SPIFFE JWT-SVID specification:
//! header `alg`, `kid`, `typ: JWT`; claims `sub` (a SPIFFE ID), `aud`,
//! `exp`, `iat`, `iss`.
//!
//! Validation follows RFC 7515 and RFC 7519 where they bind a recipient:
//! a header with `crit` is refused (meshca understands no extension), `nbf`
//! and `exp` are compared with the validator's clock as they are (no skew
//! is allowed either way: keep clocks synchronised), and a token may live
//! at most [`MAX_LIFETIME`] from its `iat`, the longest `jwt_svids.max_ttl`
//! any meshca issues.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::OffsetDateTime;

#[cfg(test)]
use super::key::PrivateKey;
use super::key::{Jwk, KeyError};
use super::signer::SigningKey;

/// The longest lifetime a valid token has: `exp` at most this long after
/// `iat` (or after now, without `iat`). `jwt_svids.max_ttl` cannot exceed
/// it.
pub const MAX_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    /// Extensions the recipient must understand (RFC 7515, section
    /// 4.1.11); never written by meshca.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crit: Option<serde_json::Value>,
}

/// A token's claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The SPIFFE ID.
    pub sub: String,
    /// The audience.
    #[serde(deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issued at, Unix seconds.
    #[serde(default)]
    pub iat: Option<i64>,
    /// Not before, Unix seconds; never written by meshca.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// The issuer URL.
    #[serde(default)]
    pub iss: Option<String>,
}

/// `aud` may be one string or an array (RFC 7519 §4.1.3).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Aud::deserialize(d)? {
        Aud::One(a) => vec![a],
        Aud::Many(a) => a,
    })
}

/// Sign `claims` with `key`.
///
/// # Errors
/// The crypto library failed to sign.
pub async fn sign(key: &SigningKey, claims: &Claims) -> Result<String, KeyError> {
    let header = Header {
        alg: key.key_type().alg().into(),
        kid: Some(key.kid().to_owned()),
        typ: Some("JWT".into()),
        crit: None,
    };
    let input = format!("{}.{}", part(&header), part(claims));
    let signature = key.sign(input.as_bytes()).await?;
    Ok(format!("{input}.{}", B64.encode(signature)))
}

/// One base64url JSON part; plain structs of strings and numbers always
/// serialise.
fn part<T: Serialize>(value: &T) -> String {
    B64.encode(serde_json::to_vec(value).unwrap_or_default())
}

/// Why a token is not a valid JWT-SVID for the audience asked.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Invalid {
    /// Not three base64url JSON parts.
    #[error("not a JWT in compact form: {0}")]
    Malformed(&'static str),
    /// `kid` names no key of the trust domain's bundle.
    #[error("no key {0:?} in the trust domain's JWT bundle")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("the signature does not verify")]
    Signature,
    /// The header names extensions in `crit`, which meshca does not
    /// understand.
    #[error("the header's crit names extensions this validator does not understand")]
    Critical,
    /// Past `exp`.
    #[error("expired at {0}")]
    Expired(i64),
    /// Before `nbf`.
    #[error("not valid before {0}")]
    NotYetValid(i64),
    /// `exp` is further than [`MAX_LIFETIME`] from `iat` (or from now).
    #[error("it lives until {exp}, more than {}s after {from}", MAX_LIFETIME.as_secs())]
    TooLong {
        /// Its `exp`.
        exp: i64,
        /// Its `iat`, or now.
        from: i64,
    },
    /// The audience asked is not in `aud`.
    #[error("audience {0:?} is not among the token's")]
    Audience(String),
    /// `sub` is not a SPIFFE ID.
    #[error("subject {0:?} is not a SPIFFE ID")]
    Subject(String),
}

/// The claims of `token` when it is signed by one of `keys`, unexpired at
/// `now` and meant for `audience`.
///
/// # Errors
/// [`Invalid`], saying which check failed.
pub fn validate(
    token: &str,
    keys: &[Jwk],
    audience: &str,
    now: OffsetDateTime,
) -> Result<Claims, Invalid> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Invalid::Malformed("not three parts"));
    };
    let decode = |part: &str| {
        B64.decode(part)
            .map_err(|_| Invalid::Malformed("not base64url"))
    };
    let parsed: Header = serde_json::from_slice(&decode(header)?)
        .map_err(|_| Invalid::Malformed("the header is not JSON"))?;
    if parsed.crit.is_some() {
        return Err(Invalid::Critical);
    }
    let kid = parsed.kid.unwrap_or_default();
    let key = keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or_else(|| Invalid::UnknownKey(kid.clone()))?;
    let input = &token[..header.len() + 1 + claims.len()];
    if !key.verifies(&parsed.alg, input.as_bytes(), &decode(signature)?) {
        return Err(Invalid::Signature);
    }
    let claims: Claims = serde_json::from_slice(&decode(claims)?)
        .map_err(|_| Invalid::Malformed("the claims are not a JWT-SVID's"))?;
    check_times(&claims, now.unix_timestamp())?;
    if !claims.aud.iter().any(|a| a == audience) {
        return Err(Invalid::Audience(audience.to_owned()));
    }
    if meshca_provider::Identity::from_spiffe_id(&claims.sub).is_err() {
        return Err(Invalid::Subject(claims.sub));
    }
    Ok(claims)
}

/// `exp` after `now`, `nbf` (if any) not after it, and a lifetime of at
/// most [`MAX_LIFETIME`].
fn check_times(claims: &Claims, now: i64) -> Result<(), Invalid> {
    if claims.exp <= now {
        return Err(Invalid::Expired(claims.exp));
    }
    if let Some(nbf) = claims.nbf.filter(|nbf| *nbf > now) {
        return Err(Invalid::NotYetValid(nbf));
    }
    let from = claims.iat.unwrap_or(now);
    let longest = i64::try_from(MAX_LIFETIME.as_secs()).unwrap_or(i64::MAX);
    if claims.exp.saturating_sub(from) > longest {
        return Err(Invalid::TooLong {
            exp: claims.exp,
            from,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::key::KeyType;
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "spiffe://cluster.local/ns/shop/sa/web".into(),
            aud: vec!["vault".into()],
            exp,
            iat: Some(exp - 300),
            nbf: None,
            iss: Some("https://meshca.example.com".into()),
        }
    }

    /// A token with `header` and `claims` as given, signed by `key`.
    fn signed_raw(
        key: &PrivateKey,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let signature = key.sign(input.as_bytes()).expect("as the test set it up");
        format!("{input}.{}", B64.encode(signature))
    }

    #[test]
    fn crit_a_future_nbf_and_an_overlong_life_are_refused() {
        let key = PrivateKey::generate(KeyType::EcP256).expect("as the test set it up");
        let keys = [key.public().clone()];
        let now = OffsetDateTime::now_utc();
        let t = now.unix_timestamp();
        let header = serde_json::json!({ "alg": "ES256", "kid": key.public().kid, "typ": "JWT" });
        let claims = |extra: serde_json::Value| {
            let mut c = serde_json::json!({
                "sub": "spiffe://cluster.local/ns/shop/sa/web",
                "aud": "vault",
                "exp": t + 300,
                "iat": t,
            });
            c.as_object_mut()
                .expect("an object")
                .extend(extra.as_object().expect("an object").clone());
            c
        };
        let plain = signed_raw(&key, &header, &claims(serde_json::json!({})));
        assert!(validate(&plain, &keys, "vault", now).is_ok());

        let mut critical = header.clone();
        critical["crit"] = serde_json::json!(["exp-ext"]);
        critical["exp-ext"] = serde_json::json!(true);
        let token = signed_raw(&key, &critical, &claims(serde_json::json!({})));
        assert_eq!(
            validate(&token, &keys, "vault", now),
            Err(Invalid::Critical)
        );

        let early = signed_raw(&key, &header, &claims(serde_json::json!({ "nbf": t + 60 })));
        assert_eq!(
            validate(&early, &keys, "vault", now),
            Err(Invalid::NotYetValid(t + 60))
        );
        let begun = signed_raw(&key, &header, &claims(serde_json::json!({ "nbf": t })));
        assert!(validate(&begun, &keys, "vault", now).is_ok());

        let forever = signed_raw(
            &key,
            &header,
            &claims(serde_json::json!({ "exp": 1_i64 << 62 })),
        );
        assert!(matches!(
            validate(&forever, &keys, "vault", now),
            Err(Invalid::TooLong { .. })
        ));
        let day = i64::try_from(MAX_LIFETIME.as_secs()).expect("fits");
        let longest = signed_raw(
            &key,
            &header,
            &claims(serde_json::json!({ "exp": t + day })),
        );
        assert!(validate(&longest, &keys, "vault", now).is_ok());
        let no_iat = signed_raw(
            &key,
            &header,
            &serde_json::json!({ "sub": "spiffe://cluster.local/ns/shop/sa/web", "aud": "vault", "exp": t + day + 60 }),
        );
        assert!(matches!(
            validate(&no_iat, &keys, "vault", now),
            Err(Invalid::TooLong { .. })
        ));
    }

    #[tokio::test]
    async fn a_signed_token_validates_and_every_tampering_is_named() {
        let key =
            SigningKey::Own(PrivateKey::generate(KeyType::EcP256).expect("as the test set it up"));
        let now = OffsetDateTime::now_utc();
        let exp = now.unix_timestamp() + 300;
        let token = sign(&key, &claims(exp))
            .await
            .expect("as the test set it up");
        let keys = [key.public().clone()];
        assert_eq!(validate(&token, &keys, "vault", now), Ok(claims(exp)));
        assert_eq!(
            validate(&token, &keys, "aws", now),
            Err(Invalid::Audience("aws".into()))
        );
        let later = now + time::Duration::seconds(301);
        assert_eq!(
            validate(&token, &keys, "vault", later),
            Err(Invalid::Expired(exp))
        );
        let other = PrivateKey::generate(KeyType::EcP256).expect("as the test set it up");
        assert!(matches!(
            validate(&token, &[other.public().clone()], "vault", now),
            Err(Invalid::UnknownKey(_))
        ));
        let (head, _) = token.rsplit_once('.').expect("as the test set it up");
        let forged = format!(
            "{head}.{}",
            B64.encode(other.sign(head.as_bytes()).expect("as the test set it up"))
        );
        assert_eq!(
            validate(&forged, &keys, "vault", now),
            Err(Invalid::Signature)
        );
        assert!(matches!(
            validate("a.b", &keys, "vault", now),
            Err(Invalid::Malformed(_))
        ));
    }
}
