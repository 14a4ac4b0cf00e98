//! The SPIFFE bundle endpoint: answers per second and CPU per answer of
//! `GET /` on `federation.bundle_endpoint.listen`, beside nginx serving
//! the very same bytes as a static file over TLS (what an `https_web`
//! endpoint often is), in the same run.
//!
//! - meshca: the real `meshca serve` (embedded default, JWT-SVIDs on, so
//!   the bundle holds an X.509 anchor and a JWT key), one worker thread on
//!   core 0, its bundle endpoint with profile `https_spiffe`.
//! - nginx: one process (`master_process off`) on core 0, TLS 1.3 with a
//!   P-256 certificate like meshca's, serving the bundle meshca answered.
//!
//! wrk on core 1 holds 8 keep-alive connections to each for the same
//! time. CPU comes from each server's /proc/<pid>/stat. Each answer is
//! rendered anew by meshca (the anchors and keys may change at any time);
//! nginx sends a file.
//!
//! Needs `wrk` and `nginx` (`apt-get install wrk nginx`).
//! Run: `cargo bench --bench federation` (optionally `-- --seconds N`).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use meshca_test_support::bench::{cpu_during, pin, require, wrk, Credential, Load, LOAD_CORE};
use meshca_test_support::process::{free_port, numeric_arg, pinned, wait_for_port, ServeProcess};

const BIN: &str = env!("CARGO_BIN_EXE_meshca");

/// nginx, stopped when dropped (also when the benchmark fails).
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nginx on core 0 serving `dir/bundle.json` at `/` over TLS on `port`.
fn nginx(dir: &Path, port: u16) -> Nginx {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    std::fs::write(dir.join("tls.crt"), cert.pem()).expect("write");
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).expect("write");
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_protocols TLSv1.3;\n\
             ssl_certificate {d}/tls.crt;\n    ssl_certificate_key {d}/tls.key;\n\
             root {d};\n    location = / {{ default_type application/json; try_files /bundle.json =404; }}\n  }}\n}}\n",
        d = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("conf");
    let binary: PathBuf = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| require("nginx", "nginx"));
    let child = pinned(0, &binary)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx");
    let nginx = Nginx(child);
    wait_for_port(port);
    nginx
}

fn main() {
    let seconds = numeric_arg("seconds", 10);
    let duration = Duration::from_secs(seconds as u64);
    pin("self", LOAD_CORE);
    let endpoint = free_port();
    let (meshca, _state, _api) = ServeProcess::with_config(
        BIN,
        &format!("jwt_svids: {{ enabled: true }}\nfederation: {{ bundle_endpoint: {{ listen: '127.0.0.1:{endpoint}' }} }}\n"),
    );
    wait_for_port(endpoint);
    let bundle = std::process::Command::new("curl")
        .args(["-sk", &format!("https://127.0.0.1:{endpoint}/")])
        .output()
        .expect("curl");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("bundle.json"), &bundle.stdout).expect("write");
    let nginx_port = free_port();
    let nginx = nginx(dir.path(), nginx_port);

    let load = |port: u16| Load {
        url: format!("https://127.0.0.1:{port}/"),
        bodies: PathBuf::new(),
        credential: Credential::None,
        connections: 8,
        duration,
        stop_after: None,
        statuses: false,
    };
    println!(
        "GET of a SPIFFE bundle ({} bytes): server on core 0, wrk on core 1, 8 keep-alive connections, {seconds} s each",
        bundle.stdout.len()
    );
    println!(
        "{:<34} {:>9} {:>8} {:>8} {:>14} {:>9}",
        "", "answers/s", "p50 ms", "p99 ms", "CPU ms/answer", "x nginx"
    );
    let mut results = Vec::new();
    for (name, port, pid) in [
        ("nginx, static file (peer)", nginx_port, nginx.0.id()),
        ("meshca bundle endpoint", endpoint, meshca.pid()),
    ] {
        wrk(&Load {
            duration: Duration::from_secs(2),
            ..load(port)
        });
        let (outcome, cpu) = cpu_during(&[pid], || wrk(&load(port)));
        outcome.assert_all_answered(name);
        results.push((name, cpu[0] / outcome.answers as f64, outcome));
    }
    let peer = results[0].1;
    for (name, cost, o) in &results {
        println!(
            "{:<34} {:>9.0} {:>8.2} {:>8.2} {:>14.4} {:>9.2}",
            name,
            o.rate(),
            o.p50_ms,
            o.p99_ms,
            cost * 1e3,
            cost / peer
        );
    }
}
