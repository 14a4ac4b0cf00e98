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

use crate::config::Config;
use crate::supervisor::Spawner;

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
    let (tx, rx) = watch::channel(Arc::new(initial));
    // The content, not the modification time: two writes within one clock
    // tick share an mtime, and a config file is small enough to re-read.
    let read = |p: &PathBuf| std::fs::read(p).ok();
    // Taken now, not when the task first runs: an edit in between counts.
    let mut last: Option<Vec<u8>> = read(&path);
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
            let now = read(&path);
            if !forced && now == last {
                continue;
            }
            last = now;
            match Config::load(Some(&path)) {
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

/// Follow the configuration in force through `view`, so that a component
/// sees only its own settings and wakes only when they change.
pub fn project<T>(
    source: &watch::Receiver<Arc<Config>>,
    view: impl Fn(&Config) -> T + Send + 'static,
    spawner: &Spawner,
) -> watch::Receiver<T>
where
    T: PartialEq + Send + Sync + 'static,
{
    let mut source = source.clone();
    let (tx, rx) = watch::channel(view(&source.borrow_and_update()));
    spawner.spawn_child("config-projection", |stop| async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = source.changed() => if changed.is_err() {
                    // No more changes: the settings in force stay.
                    stop.cancelled().await;
                    return;
                },
            }
            let next = view(&source.borrow_and_update());
            tx.send_if_modified(|now| {
                let changed = *now != next;
                if changed {
                    *now = next;
                }
                changed
            });
        }
    });
    rx
}
