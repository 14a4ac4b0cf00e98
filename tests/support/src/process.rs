//! The daemon as a separate process, for benchmarks that measure its own
//! CPU time apart from the load generator's.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `meshca serve -c CONFIG` in `dir`, with one worker thread pinned to
/// core 0 when `taskset` exists (so figures read "CPU on one core"); killed
/// on drop.
pub struct ServeProcess(Child);

impl ServeProcess {
    /// Start `binary` in a fresh directory with `bench.yaml`: free
    /// loopback ports for both listeners, then `extra`. Returns the
    /// directory (the daemon's state lives there) and the API port.
    pub fn with_config(binary: &str, extra: &str) -> (Self, tempfile::TempDir, u16) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (api, metrics) = (free_port(), free_port());
        std::fs::write(
            dir.path().join("bench.yaml"),
            format!("listen: 127.0.0.1:{api}\nmetrics_listen: 127.0.0.1:{metrics}\n{extra}"),
        )
        .expect("config");
        let process = Self::start(binary, dir.path(), "bench.yaml", api);
        (process, dir, api)
    }

    /// Start `binary` and wait until `port` accepts.
    pub fn start(binary: &str, dir: &Path, config: &str, port: u16) -> Self {
        let mut cmd = if Command::new("taskset").arg("-V").output().is_ok() {
            let mut c = Command::new("taskset");
            c.args(["-c", "0", binary]);
            c
        } else {
            Command::new(binary)
        };
        let child = cmd
            .current_dir(dir)
            .args(["--worker-threads", "1", "serve", "-c", config])
            .stderr(Stdio::null())
            .spawn()
            .expect("meshca serve");
        let process = Self(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        process
    }

    /// The daemon's utime + stime so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.0.id())
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The number after `--NAME` on the command line, or `default`.
pub fn numeric_arg(name: &str, default: usize) -> usize {
    let flag = format!("--{name}");
    std::env::args()
        .skip_while(|a| *a != flag)
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// utime + stime of `pid` (`"self"` for this process), in seconds.
pub fn cpu_seconds(pid: impl std::fmt::Display) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // utime and stime are the 14th and 15th fields, counted after the
    // parenthesised command name (which may hold spaces).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}
