//! JWT-SVIDs as a workload asks for them and a relying party checks
//! them: PyJWT, which meshca does not write.

use std::path::PathBuf;

use serde_json::Value;

use crate::TestDaemon;

/// `POST /v1/jwt-svids` as `token`'s holder: the status, headers and
/// body.
pub async fn mint(
    d: &TestDaemon,
    token: Option<&str>,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = d.client().await.post(d.url("/v1/jwt-svids")).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.expect("JSON body"))
}

/// The JWKS the signing API serves (`GET /keys`).
pub async fn jwks(d: &TestDaemon) -> Value {
    let resp = d.client().await.get(d.url("/keys")).send().await;
    resp.expect("JWKS").json().await.expect("JSON")
}

/// The repository's Python, with PyJWT installed.
pub fn python() -> PathBuf {
    let p = crate::repo_root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "PyJWT is missing: `.venv/bin/pip install --require-hashes -r tests/requirements-spiffe.txt` (.ci/run does this)"
    );
    p
}

/// PyJWT's verdict on `token` for `audience` against `jwks`: the subject,
/// or the name of the exception it raised.
pub fn pyjwt(jwks: &Value, token: &str, audience: &str, issuer: &str) -> String {
    let script = r#"
import json, sys, jwt
jwks, token, audience, issuer = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
try:
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWKSet.from_dict(jwks)[kid]
    claims = jwt.decode(token, key, algorithms=[key.algorithm_name], audience=audience, issuer=issuer,
                        options={"require": ["exp", "iat", "sub", "aud", "iss"]})
    print(claims["sub"])
except Exception as e:
    print(type(e).__name__)
"#;
    let out = std::process::Command::new(python())
        .args(["-c", script, &jwks.to_string(), token, audience, issuer])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}
