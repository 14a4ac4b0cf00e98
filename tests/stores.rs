//! meshca's persisted state: a record that exists but cannot be used stops
//! the start, says where it is, and is left as it was (never a silent
//! fresh start); a write that fails is an error an operator sees.

use meshca_test_support as support;

use std::path::Path;
use std::time::Duration;

use support::{eventually, TestDaemon};

/// A store, the config that uses it and the garbage written where it is.
struct Case {
    what: &'static str,
    file: &'static str,
    config: &'static str,
    garbage: &'static str,
}

const CASES: &[Case] = &[
    Case {
        what: "the token store",
        file: "tokens.yaml",
        config: "",
        garbage: "tokens: [ {bad",
    },
    Case {
        what: "the deny-list",
        file: "denied.yaml",
        config: "",
        garbage: "denied: 7\n",
    },
    Case {
        what: "the rollout ledger",
        file: "rollout.json",
        config: "",
        garbage: "{\"stage\": \"ret",
    },
    Case {
        what: "the JWT signing keys",
        file: "jwt-keys.json",
        config: "jwt_svids: { enabled: true }\n",
        garbage: "{\"keys\": [ {\"kid\": 1",
    },
    Case {
        what: "a peer's kept bundle",
        file: "federation/b.test.json",
        config: "federation:\n  trust_domains:\n  - { trust_domain: b.test, bundle_endpoint_url: 'https://127.0.0.1:1/', profile: https_web }\n",
        garbage: "{\"truncated",
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_that_cannot_be_read_stops_the_start_and_is_kept() {
    support::install_crypto_provider();
    for case in CASES {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(case.file);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("dir");
        std::fs::write(&path, case.garbage).expect("write");
        let yaml = support::config_yaml(dir.path(), case.config);
        let config = meshca::Config::from_yaml(&yaml).expect("valid config");
        let bundle = config.bundle.file.clone();
        let Err(refused) = meshca::start(config).await else {
            panic!("{}: the start was not refused", case.what);
        };
        let said = support::error_chain(&refused);
        assert!(
            said.contains(&path.display().to_string()),
            "{}: the error does not say where: {said}",
            case.what
        );
        assert_eq!(
            std::fs::read_to_string(&path).expect("kept"),
            case.garbage,
            "{}: overwritten",
            case.what
        );
        assert!(
            !bundle.exists(),
            "{}: a bundle was published by a daemon that did not start",
            case.what
        );
    }
}

/// `/readyz`: status and body.
async fn readyz(d: &TestDaemon) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(d.metrics_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    let status = response.status().as_u16();
    (status, response.text().await.expect("text"))
}

/// A bundle file that cannot be written (its directory is a file) is said
/// on `/readyz` and in `meshca_bundle_sink_up`, and written once it can
/// be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_file_that_cannot_be_written_is_seen_until_it_can() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("published");
    std::fs::write(&blocker, "a file where a directory should be").expect("write");
    let file = blocker.join("ca.crt");
    let extra = format!(
        "bundle: {{ file: {}, refresh_interval: 1s }}\n",
        file.display()
    );
    let d = TestDaemon::start_in(dir, &extra).await;
    let (status, body) = readyz(&d).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("trust bundle") && body.contains("file"),
        "{body}"
    );
    assert!(
        d.metrics()
            .await
            .contains(r#"meshca_bundle_sink_up{sink="file"} 0"#),
        "the sink is not reported down"
    );
    std::fs::remove_file(&blocker).expect("unblock");
    std::fs::create_dir(&blocker).expect("the directory");
    eventually("the bundle written", Duration::from_secs(20), || {
        file.exists().then_some(())
    })
    .await;
    let ready = async {
        loop {
            if readyz(&d).await.0 == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), ready)
        .await
        .expect("ready once the bundle is written");
    assert!(is_pem(&file));
}

fn is_pem(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.starts_with("-----BEGIN CERTIFICATE-----"))
}
