//! JWT-SVIDs in compact JWS form, per the SPIFFE JWT-SVID specification:
//! header `alg`, `kid`, `typ: JWT`; claims `sub` (a SPIFFE ID), `aud`,
//! `exp`, `iat`, `iss`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::OffsetDateTime;

use super::key::{Jwk, KeyError, PrivateKey};

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
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
/// ring failed to sign.
pub fn sign(key: &PrivateKey, claims: &Claims) -> Result<String, KeyError> {
    let header = Header {
        alg: key.key_type().alg().into(),
        kid: Some(key.kid().to_owned()),
        typ: Some("JWT".into()),
    };
    let input = format!("{}.{}", part(&header), part(claims));
    let signature = key.sign(input.as_bytes())?;
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
    /// Past `exp`.
    #[error("expired at {0}")]
    Expired(i64),
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
    if claims.exp <= now.unix_timestamp() {
        return Err(Invalid::Expired(claims.exp));
    }
    if !claims.aud.iter().any(|a| a == audience) {
        return Err(Invalid::Audience(audience.to_owned()));
    }
    if meshca_provider::Identity::from_spiffe_id(&claims.sub).is_err() {
        return Err(Invalid::Subject(claims.sub));
    }
    Ok(claims)
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
            iss: Some("https://meshca.example.com".into()),
        }
    }

    #[test]
    fn a_signed_token_validates_and_every_tampering_is_named() {
        let key = PrivateKey::generate(KeyType::EcP256).expect("as the test set it up");
        let now = OffsetDateTime::now_utc();
        let exp = now.unix_timestamp() + 300;
        let token = sign(&key, &claims(exp)).expect("as the test set it up");
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
