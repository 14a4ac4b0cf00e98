//! What the key-custody tests of every custodian share: signing as a
//! workload, checking chains with Debian's `openssl verify`, searching the
//! state for private keys, and renewing through a move into custody.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::TestDaemon;

/// Sign a fresh CSR for shop/web; the status, headers and body.
pub async fn sign(d: &TestDaemon) -> (u16, reqwest::header::HeaderMap, Value) {
    let (token, client) = (d.token("shop", "web"), d.client().await);
    let csr = crate::csr(&crate::key());
    d.post(&client, Some(&token), &json!({ "csr": csr })).await
}

/// Whether Debian's `openssl verify` accepts `chain` (leaf first) for a
/// client against the anchors in `bundle`, working in `dir`.
pub fn openssl_verifies(dir: &Path, chain: &str, bundle: &Path) -> bool {
    let certs = crate::certs(chain);
    let pem = |c: &rustls_pki_types::CertificateDer<'_>| {
        let mut out = String::new();
        meshca_provider::pem::encode_block("CERTIFICATE", c, &mut out);
        out
    };
    let leaf = dir.join("leaf.pem");
    std::fs::write(&leaf, pem(&certs[0])).expect("leaf");
    let mut verify = Command::new("openssl");
    verify
        .args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(bundle);
    if certs.len() > 1 {
        let untrusted = dir.join("untrusted.pem");
        std::fs::write(&untrusted, certs[1..].iter().map(pem).collect::<String>()).expect("chain");
        verify.arg("-untrusted").arg(&untrusted);
    }
    verify.arg(&leaf).status().expect("openssl").success()
}

/// Every file under `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Every file under `dir` that holds a PEM private key.
pub fn private_keys_under(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            std::fs::read(p).is_ok_and(|b| String::from_utf8_lossy(&b).contains("PRIVATE KEY"))
        })
        .collect()
}

/// Renew as a workload, every 100 ms, until the rollout that started
/// after generation `before` signs: each chain must verify against the
/// bundle published when it was handed out. The number of renewals.
pub async fn renew_through_rollout(d: &TestDaemon, before: Option<u64>) -> usize {
    let work = tempfile::tempdir().expect("tempdir");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut renewals = 0;
    loop {
        let (status, _, body) = sign(d).await;
        assert_eq!(status, 200, "{body}");
        let chain = body["certificate_chain"].as_str().expect("chain");
        let published = work.path().join("published.pem");
        std::fs::copy(d.bundle_path(), &published).expect("bundle copy");
        assert!(
            openssl_verifies(work.path(), chain, &published),
            "renewal {renewals}: a chain the bundle does not trust"
        );
        renewals += 1;
        let r = d.rotation().await;
        let signing = ["reissue", "retire", "steady"].contains(&r["stage"].as_str().unwrap_or(""));
        if signing && r["generation"].as_u64() > before {
            return renewals;
        }
        assert!(Instant::now() < deadline, "no rollout: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
