//! The limits of one listener, sized to the work it serves.

use std::time::Duration;

/// File descriptors kept for everything but client connections: state
/// files, the bundle, outgoing connections to Vault or the API server.
const RESERVED_FDS: u64 = 64;

/// What one listener holds at most, and for how long.
///
/// Every bound that keeps an unauthenticated client from holding memory
/// lives here, so that each frontend mounted on a listener inherits them:
/// connections, requests in flight across those connections, HTTP/2
/// streams and flow-control windows per connection, and deadlines for the
/// TLS handshake, the request head, the request body and idleness.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; beyond it, connections wait in the
    /// kernel's backlog.
    pub max_connections: usize,
    /// Requests in flight across all connections; one more is answered
    /// `503` (gRPC: `UNAVAILABLE`) at once, before anything is read.
    pub max_requests: usize,
    /// Time a client gets to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time a client gets to send a request's head (HTTP/1).
    pub header_timeout: Duration,
    /// Time a request's body gets to arrive in full, from its head.
    pub body_timeout: Duration,
    /// Time a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// HTTP/2 settings.
    pub http2: Http2Limits,
}

/// HTTP/2 settings: streams and windows small enough that a connection
/// holds little, large enough for a CSR or a bundle in one round trip.
#[derive(Clone, Copy, Debug)]
pub struct Http2Limits {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub max_concurrent_streams: u32,
    /// `SETTINGS_INITIAL_WINDOW_SIZE`: request bytes a stream may send
    /// before meshca reads them.
    pub stream_window: u32,
    /// Request bytes all streams of a connection may send before meshca
    /// reads them.
    pub connection_window: u32,
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`.
    pub max_header_list: u32,
    /// Response bytes buffered per stream for a client that does not read.
    pub max_send_buffer: usize,
    /// Streams a client may open and reset before meshca accepts them
    /// (rapid reset, CVE-2023-44487) before the connection is closed.
    pub max_pending_resets: usize,
}

impl Http2Limits {
    /// For request/response APIs whose messages are kilobytes: a CSR, a
    /// certificate chain, a bundle.
    pub const fn for_small_messages() -> Self {
        Self {
            max_concurrent_streams: 32,
            stream_window: 64 * 1024,
            connection_window: 256 * 1024,
            max_header_list: 16 * 1024,
            max_send_buffer: 64 * 1024,
            max_pending_resets: 20,
        }
    }
}

impl Limits {
    /// Limits for a listener granted `numerator / denominator` of the
    /// open-files limit left after [`RESERVED_FDS`], serving at most
    /// `max_requests` at once.
    pub fn with_share_of_open_files(numerator: u64, denominator: u64, max_requests: usize) -> Self {
        let soft = open_files_limit();
        let usable = soft.saturating_sub(RESERVED_FDS).max(16);
        let max = (usable * numerator / denominator).clamp(4, 65_536);
        Self {
            max_connections: usize::try_from(max).unwrap_or(4),
            max_requests,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            http2: Http2Limits::for_small_messages(),
        }
    }

    /// The signing API's, and every listener that serves workloads
    /// (Istio's certificate service, the bundle endpoint, OIDC): three
    /// quarters of the usable descriptors, 2048 requests at once (twice
    /// the issuer's default `api.max_in_flight`, as bundles and discovery
    /// are served beside certificates).
    pub fn api() -> Self {
        Self::with_share_of_open_files(3, 4, 2048)
    }

    /// The health and metrics port's: an eighth, so probes keep working
    /// while the API port is flooded.
    pub fn health() -> Self {
        Self {
            http2: Http2Limits {
                max_concurrent_streams: 8,
                ..Http2Limits::for_small_messages()
            },
            ..Self::with_share_of_open_files(1, 8, 64)
        }
    }
}

/// The soft open-files limit (1024 if unlimited or unknown).
fn open_files_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1024)
}
