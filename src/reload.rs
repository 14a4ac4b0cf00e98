//! Configuration reload: the config file is watched (and SIGHUP re-reads
//! it); a valid new configuration is published to the components whose
//! settings may change at run time, an invalid one is logged and the one in
//! force stays.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};

/// How often the file's content is compared with the one last read.
const POLL: Duration = Duration::from_secs(1);

/// Publish `initial`, then every valid change of `path`, until `shutdown`.
pub fn watch_config(
    path: PathBuf,
    initial: Config,
    shutdown: CancellationToken,
) -> (
    watch::Receiver<Arc<Config>>,
    impl Future<Output = ()> + Send + 'static,
) {
    // The content, not the modification time: two writes within one clock
    // tick share an mtime, and a config file is small enough to re-read;
    // read, and parsed, on the blocking pool.
    let read = |p: &PathBuf| {
        let p = p.clone();
        async move {
            crate::store::fs::read_optional_off_runtime(p)
                .await
                .ok()
                .flatten()
        }
    };
    // The text the configuration in force was parsed from: an edit made
    // since (while the daemon started) counts as one.
    let mut last: Option<Vec<u8>> = initial.source_text.as_ref().map(|t| t.as_bytes().to_vec());
    let (tx, rx) = watch::channel(Arc::new(initial));
    let task = async move {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            let forced = tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(POLL) => false,
                () = hangup => true,
            };
            let now = read(&path).await;
            if !forced && now == last {
                continue;
            }
            last = now;
            let reading = path.clone();
            let loaded = tokio::task::spawn_blocking(move || Config::load(Some(&reading)))
                .await
                .unwrap_or_else(|e| {
                    Err(ConfigError::Read {
                        path: path.clone(),
                        source: std::io::Error::other(e.to_string()),
                    })
                });
            match loaded {
                Ok(config) => {
                    tracing::info!(path = %path.display(), "configuration reloaded");
                    tx.send_replace(Arc::new(config));
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "ignoring an invalid configuration; the previous one stays in force");
                }
            }
        }
    };
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &std::path::Path, trust_domain: &str) {
        std::fs::write(path, format!("trust_domain: {trust_domain}\n")).expect("write");
    }

    #[tokio::test]
    async fn an_edit_made_while_the_daemon_started_is_applied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meshca.yaml");
        write(&path, "a.example");
        let initial = Config::load(Some(&path)).expect("config");
        // Edited after the load, before the watch begins.
        write(&path, "b.example");
        let shutdown = CancellationToken::new();
        let (mut rx, task) = watch_config(path.clone(), initial, shutdown.clone());
        let task = tokio::spawn(task);
        tokio::time::timeout(POLL * 5, rx.changed())
            .await
            .expect("the edit is seen")
            .expect("a reload");
        assert_eq!(rx.borrow().trust_domain.as_str(), "b.example");
        // And nothing more while the file stays as it is.
        tokio::time::sleep(POLL * 2).await;
        assert!(!rx.has_changed().expect("open"));
        shutdown.cancel();
        task.await.expect("task");
    }
}
