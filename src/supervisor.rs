//! One supervised set of background tasks.
//!
//! Every long-running job of the daemon (bundle publisher, provider token
//! renewal, reconcilers, servers) runs here under a name and a
//! cancellation token derived from the daemon's. A task that ends while its
//! token is still live ended unexpectedly: it is logged with its name and
//! reported to `/readyz` through [`Supervisor::failures`]. Tasks can be
//! added while the daemon runs (a provider rolled in by a rollout), through
//! a cloned [`Spawner`].

use std::future::Future;
use std::pin::Pin;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

type Job = (
    &'static str,
    CancellationToken,
    Pin<Box<dyn Future<Output = ()> + Send>>,
);

/// Adds tasks to the supervised set; cheap to clone.
#[derive(Clone, Debug)]
pub struct Spawner {
    jobs: mpsc::UnboundedSender<Job>,
    root: CancellationToken,
}

impl Spawner {
    /// Run `task` under `name` until it ends or the daemon stops. `token`
    /// is the one the task stops on: its ending after `token` was
    /// cancelled is expected, before that it is a failure.
    pub fn spawn(
        &self,
        name: &'static str,
        token: CancellationToken,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        if self.jobs.send((name, token, Box::pin(task))).is_err() {
            tracing::debug!(task = name, "not started: the daemon is stopping");
        }
    }

    /// Run the task `make(token)` returns under `name`, where `token` is a
    /// fresh child of the daemon's token that the task stops on.
    pub fn spawn_child<F>(&self, name: &'static str, make: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_with(name, |token| ((), make(token)));
    }

    /// As [`Spawner::spawn_child`], for a component whose constructor
    /// returns its handle together with its task: spawns the task and
    /// returns the handle.
    pub fn spawn_with<H, F>(
        &self,
        name: &'static str,
        make: impl FnOnce(CancellationToken) -> (H, F),
    ) -> H
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.child_token();
        let (handle, task) = make(token.clone());
        self.spawn(name, token, task);
        handle
    }

    /// A token cancelled when the daemon stops, or earlier by its holder
    /// (to stop one component, e.g. a retired provider).
    pub fn child_token(&self) -> CancellationToken {
        self.root.child_token()
    }
}

/// The supervised set; [`Supervisor::run`] drives it.
#[derive(Debug)]
pub struct Supervisor {
    jobs: mpsc::UnboundedReceiver<Job>,
    spawner: Spawner,
    failures: watch::Sender<Vec<&'static str>>,
}

impl Supervisor {
    /// A set whose tasks stop when `root` is cancelled.
    pub fn new(root: CancellationToken) -> Self {
        let (tx, jobs) = mpsc::unbounded_channel();
        Self {
            jobs,
            spawner: Spawner { jobs: tx, root },
            failures: watch::channel(Vec::new()).0,
        }
    }

    /// The handle that adds tasks.
    pub fn spawner(&self) -> Spawner {
        self.spawner.clone()
    }

    /// Names of tasks that ended unexpectedly (empty while all is well).
    pub fn failures(&self) -> watch::Receiver<Vec<&'static str>> {
        self.failures.subscribe()
    }

    /// Run every task until the root token is cancelled and all of them
    /// have ended.
    pub async fn run(self) {
        let Self {
            mut jobs,
            spawner,
            failures,
        } = self;
        // Only this task's clone may keep the channel open after shutdown.
        let root = spawner.root.clone();
        drop(spawner);
        let mut set = JoinSet::new();
        loop {
            tokio::select! {
                job = jobs.recv() => match job {
                    Some((name, token, task)) => {
                        set.spawn(async move {
                            task.await;
                            (name, token)
                        });
                    }
                    None => break,
                },
                Some(done) = set.join_next(), if !set.is_empty() => {
                    note_end(done, &root, &failures);
                }
                () = root.cancelled() => break,
            }
        }
        jobs.close();
        while let Some(done) = set.join_next().await {
            note_end(done, &root, &failures);
        }
    }
}

fn note_end(
    done: Result<(&'static str, CancellationToken), tokio::task::JoinError>,
    root: &CancellationToken,
    failures: &watch::Sender<Vec<&'static str>>,
) {
    match done {
        Ok((_, token)) if token.is_cancelled() || root.is_cancelled() => {}
        Ok((name, _)) => {
            tracing::error!(task = name, "a background task ended unexpectedly");
            failures.send_modify(|f| f.push(name));
        }
        Err(e) => {
            tracing::error!(error = %e, "a background task panicked");
            failures.send_modify(|f| f.push("(panicked)"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_task_that_ends_on_its_own_is_reported_by_name_and_a_cancelled_one_is_not() {
        let root = CancellationToken::new();
        let supervisor = Supervisor::new(root.clone());
        let spawner = supervisor.spawner();
        let mut failures = supervisor.failures();
        let run = tokio::spawn(supervisor.run());

        let retired = spawner.child_token();
        let t = retired.clone();
        spawner.spawn(
            "retired",
            retired.clone(),
            async move { t.cancelled().await },
        );
        retired.cancel();
        spawner.spawn("crashing", spawner.child_token(), async {});

        tokio::time::timeout(Duration::from_secs(5), failures.wait_for(|f| !f.is_empty()))
            .await
            .expect("the failure is reported")
            .expect("supervisor alive");
        assert_eq!(*failures.borrow(), vec!["crashing"]);

        let r = root.clone();
        spawner.spawn(
            "server",
            root.child_token(),
            async move { r.cancelled().await },
        );
        root.cancel();
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the set drains on shutdown")
            .expect("no panic");
        assert_eq!(
            *failures.borrow(),
            vec!["crashing"],
            "shutdown is no failure"
        );
    }
}
