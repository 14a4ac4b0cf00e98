//! Faults an unlucky operator meets: the published bundle file deleted,
//! edited or replaced by something meshca cannot overwrite.

use meshca_test_support as support;

use std::time::{Duration, Instant};

use support::TestDaemon;

async fn within<T>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn readyz(d: &TestDaemon) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(d.metrics_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_edited_or_blocked_bundle_file_is_restored_within_5s_and_readyz_says_so_meanwhile(
) {
    let d = TestDaemon::start("").await;
    let path = d.bundle_path();
    let bundle = std::fs::read_to_string(&path).expect("published");
    let restored = async || (std::fs::read_to_string(&path).ok()? == bundle).then_some(());

    std::fs::remove_file(&path).expect("delete");
    within(
        "the deleted file restored",
        Duration::from_secs(5),
        restored,
    )
    .await;
    std::fs::write(&path, "not a bundle\n").expect("edit");
    within("the edited file restored", Duration::from_secs(5), restored).await;

    // Something meshca cannot replace takes its place: not ready, and why.
    std::fs::remove_file(&path).expect("delete");
    std::fs::create_dir(&path).expect("a directory in its place");
    let why = within("/readyz failing", Duration::from_secs(5), async || {
        let (status, body) = readyz(&d).await;
        (status == 503).then_some(body)
    })
    .await;
    assert!(why.contains("trust bundle"), "{why}");
    std::fs::remove_dir(&path).expect("cleared");
    within("restored once possible", Duration::from_secs(35), restored).await;
    within("ready again", Duration::from_secs(5), async || {
        (readyz(&d).await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn staging_debris_of_a_killed_start_is_removed_at_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    // What a kill -9 in the first milliseconds leaves: a staged root with
    // its private key, and a half-written temporary file of a token store.
    let staged = dir.path().join(".tresor-AbC123");
    std::fs::create_dir(&staged).expect("staging");
    std::fs::write(staged.join("root.key"), "-----BEGIN PRIVATE KEY-----\n").expect("key");
    let tmp = dir.path().join(".tmpXyZ987");
    std::fs::write(&tmp, "tokens: [").expect("tmp");
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .and_then(|f| f.set_modified(old))
        .expect("age it");
    let fresh = dir.path().join(".tmpFresh1");
    std::fs::write(&fresh, "another process is writing this").expect("fresh");

    let d = TestDaemon::start_in(dir, "").await;
    let state = d.config.state_dir.clone();
    assert!(!staged.exists(), "the orphan CA key is gone");
    assert!(!tmp.exists(), "the stale temporary file is gone");
    assert!(
        fresh.exists(),
        "a write in progress elsewhere is left alone"
    );
    let names: Vec<String> = std::fs::read_dir(&state)
        .expect("state dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with(".tresor-")),
        "{names:?}"
    );
    assert!(state.join("tresor/root.key").exists());
}
