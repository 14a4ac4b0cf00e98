//! A TCP proxy that can hold HTTP requests: put in front of a plaintext
//! HTTP server (OpenBao in dev mode), it forwards bytes both ways and,
//! while armed, delays every request whose request line contains a
//! pattern, as a slow or overloaded server would.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy; stops with the test's runtime.
pub struct HoldingProxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    hold: Arc<Mutex<Option<(String, Duration)>>>,
    held: Arc<std::sync::atomic::AtomicUsize>,
}

impl HoldingProxy {
    /// Proxy to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> Self {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("a plaintext upstream")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let hold = Arc::new(Mutex::new(None));
        let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (h, n) = (hold.clone(), held.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, h.clone(), n.clone()));
            }
        });
        Self { url, hold, held }
    }

    /// Hold each request whose request line contains `pattern` for `delay`
    /// before forwarding it, until [`HoldingProxy::release`].
    pub fn hold(&self, pattern: &str, delay: Duration) {
        *self.hold.lock().expect("lock") = Some((pattern.to_owned(), delay));
    }

    /// Forward everything at once again (requests already held stay held).
    pub fn release(&self) {
        *self.hold.lock().expect("lock") = None;
    }

    /// How many requests have been held so far.
    pub fn held(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    hold: Arc<Mutex<Option<(String, Duration)>>>,
    held: Arc<std::sync::atomic::AtomicUsize>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // A request line starts a read on a keep-alive connection:
            // clients write a request's head in one go.
            let delay = {
                let head = String::from_utf8_lossy(&buf[..n.min(512)]);
                let line = head.lines().next().unwrap_or_default().to_owned();
                hold.lock()
                    .expect("lock")
                    .as_ref()
                    .filter(|(p, _)| line.contains(p.as_str()))
                    .map(|(_, d)| *d)
            };
            if let Some(d) = delay {
                held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(d).await;
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let downstream = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    };
    tokio::join!(upstream, downstream);
}
