//! JOSE as meshca needs it for JWT-SVIDs: JWKs and RFC 7638 key IDs
//! (`key`), the keys tokens are signed with, meshca's own or held in
//! custody (`signer`), compact JWS tokens signed and validated per RFC 7515 and 7519
//! (`token`), and what a JWT-SVID may be asked for (`svid`). A small
//! module rather than a JOSE crate: three algorithms (ES256, ES384,
//! RS256), signed and verified by `crate::crypto::signing`.

mod key;
mod signer;
mod svid;
mod token;

pub use key::{Jwk, KeyError, KeyType, PrivateKey};
pub use signer::SigningKey;
pub use svid::{check_audience, AudienceError, JwtSvid, MintError, MIN_TTL};
pub use token::{sign, validate, Claims, MAX_LIFETIME};
