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
        let child = pinned(0, binary)
            .current_dir(dir)
            .args(["--worker-threads", "1", "serve", "-c", config])
            .stderr(Stdio::null())
            .spawn()
            .expect("meshca serve");
        let process = Self(child);
        wait_for_port(port);
        process
    }

    /// The daemon's utime + stime so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.0.id())
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

/// Block until something accepts on a loopback `port`.
pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `program` to run on `core` only, when `taskset` exists (otherwise
/// anywhere): benchmarks give the server one core and the load the other.
pub fn pinned(core: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
    if Command::new("taskset").arg("-V").output().is_ok() {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(core.to_string()).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A bearer token for `bench/bench`, made by `binary token create` in the
/// directory [`ServeProcess::with_config`] returned, as an admin makes one.
pub fn bench_token(binary: &str, dir: &Path) -> String {
    let out = Command::new(binary)
        .current_dir(dir)
        .args(["token", "create", "-c", "bench.yaml"])
        .args(["--namespace", "bench", "--service-account", "bench"])
        .output()
        .expect("meshca token create");
    assert!(out.status.success(), "meshca token create failed");
    String::from_utf8(out.stdout)
        .expect("token")
        .trim()
        .to_owned()
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

/// A loopback port nobody listens on now, for a test that must know it
/// before the listener binds (or bind it again after a restart). Taken
/// below Linux's ephemeral range (32768 and up): a port the kernel gives
/// for `:0` elsewhere in the suite can then never be this one, while a
/// test restarts the listener holding it. Ports handed out are `STRIDE`
/// apart, since some servers also take the next port (OpenBao's cluster
/// listener).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    const STRIDE: u32 = 4;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Test binaries run side by side: each starts at its own place.
    let seed = std::process::id().wrapping_mul(2_654_435_761) % COUNT;
    for _ in 0..COUNT / STRIDE {
        let step = NEXT.fetch_add(STRIDE, Ordering::Relaxed);
        let port = FIRST + (seed - seed % STRIDE + step) % COUNT;
        let port = u16::try_from(port).expect("below 65536");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below the ephemeral range");
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

/// `meshca serve` as a pod runs it (`POD_NAME` `meshca-0` in
/// `osm-system`), on the Kubernetes stand-in, signing with a Tresor root
/// `a` made by openssl; [`PodRootRotation::rotate`] rewrites its config to
/// root `b`, which starts a staged signer rollout (Events on the pod).
/// Killed on drop.
pub struct PodRootRotation {
    config: RootConfig,
    child: Child,
}

/// The config of a [`PodRootRotation`], naming one of its two roots.
struct RootConfig {
    dir: tempfile::TempDir,
    roots: [(std::path::PathBuf, std::path::PathBuf); 2],
    kubeconfig: std::path::PathBuf,
    ports: (u16, u16),
}

impl RootConfig {
    fn write(&self, root: usize) {
        let (cert, key) = &self.roots[root];
        let (api, metrics) = self.ports;
        std::fs::write(
            self.dir.path().join("meshca.yaml"),
            format!(
                "listen: 127.0.0.1:{api}\nmetrics_listen: 127.0.0.1:{metrics}\nkubernetes: {{ kubeconfig: {}, lease_duration: 3s }}\n\
                 certificates: {{ default_ttl: 2s, min_ttl: 1s, max_ttl: 2s }}\nrotation: {{ propagation_delay: 1s }}\n\
                 provider:\n  kind: tresor\n  tresor:\n    root_cert_file: {}\n    root_key_file: {}\n",
                self.kubeconfig.display(),
                cert.display(),
                key.display()
            ),
        )
        .expect("config");
    }
}

impl PodRootRotation {
    /// Start `binary` (the meshca executable) on root `a` against the
    /// cluster of `kubeconfig`.
    pub fn start(binary: &str, kubeconfig: std::path::PathBuf) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let roots = [
            crate::openssl_root(dir.path(), "a"),
            crate::openssl_root(dir.path(), "b"),
        ];
        let config = RootConfig {
            dir,
            roots,
            kubeconfig,
            ports: (free_port(), free_port()),
        };
        config.write(0);
        let child = Command::new(binary)
            .current_dir(config.dir.path())
            .env("POD_NAME", "meshca-0")
            .env("POD_NAMESPACE", "osm-system")
            .env("HOME", config.dir.path())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .args(["serve", "-c", "meshca.yaml"])
            .stderr(Stdio::null())
            .spawn()
            .expect("meshca serve");
        Self { config, child }
    }

    /// Move the signer to root `b`.
    pub fn rotate(&self) {
        self.config.write(1);
    }
}

impl Drop for PodRootRotation {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
