//! The real nginx (Debian's), run in the foreground with a test's own
//! configuration and prefix directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nginx, stopped when dropped.
pub struct Nginx(Child);

impl Drop for Nginx {
    /// SIGTERM (fast shutdown) lets the master stop its workers; SIGKILL
    /// would orphan them.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Nginx {
    /// Reload the configuration and the files it names (SIGHUP to the
    /// master), as an operator does after new certificates or CRLs; waits
    /// for the new workers.
    pub fn reload(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.0.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "nginx is gone");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn binary() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("nginx is not installed (.ci/run installs it with apt)");
}

/// Start nginx with `conf` (prefix `dir`) and wait until it listens on
/// `port`.
pub async fn start(dir: &Path, conf: &Path, port: u16) -> Nginx {
    let child = Command::new(binary())
        .args(["-p"])
        .arg(dir)
        .arg("-c")
        .arg(conf)
        .args(["-g", "daemon off;"])
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx starts");
    let nginx = Nginx(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "nginx did not listen: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nginx
}
