//! The upstream: a few HTTP/2 connections to the service, each call on the one with the fewest
//! calls in flight, and what a request needs to go there (its URI, no hop-by-hop headers).

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, Uri, header};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use prometheus_client::metrics::counter::Counter;

use crate::{
    config::{MAX_METADATA_BYTES, MAX_UPSTREAM_CONNECTIONS},
    grpc::{self, ProxyBody},
    metrics::Metrics,
};

pub type UpstreamClient = Client<CountingConnector, ProxyBody>;

/// The flow-control window the upstream connections share: the bound on data that all streams
/// together may have in flight from the upstream, unread. 1.5 MiB keeps the upstream writing
/// while the sidecar's one thread is busy elsewhere; 512 KiB left 100 streams 5–9 % behind
/// nginx, 2 MiB went over 16 MiB at the peak (docs/benchmarks.md, "The data path in the body").
const SHARED_CONNECTION_WINDOW: u32 = 1536 * 1024;
/// One stream's window, at most: it keeps one fast stream busy.
const MAX_STREAM_WINDOW: u32 = 256 * 1024;
/// HTTP/2's smallest window (RFC 9113 §6.9.2); per-connection windows are never cut below it.
const MIN_WINDOW: u32 = 65_535;

/// The flow-control windows of one of `connections` upstream connections: (stream, connection).
/// The shared window is split between them, so that memory stays bounded however many there
/// are.
pub fn upstream_windows(connections: usize) -> (u32, u32) {
    let n = u32::try_from(connections.max(1)).unwrap_or(u32::MAX);
    let connection = (SHARED_CONNECTION_WINDOW / n).max(MIN_WINDOW);
    (connection.min(MAX_STREAM_WINDOW), connection)
}

/// An HTTP/2-only (h2c, prior knowledge) client for the upstream, tuned for long streams; one
/// of `connections`.
fn upstream_client(connections: usize, connects: Counter) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let (stream_window, connection_window) = upstream_windows(connections);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .http2_only(true)
        // Detect a silently cut network (no RST, no FIN) on idle and busy connections alike.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .http2_keep_alive_timeout(Duration::from_secs(5))
        .http2_keep_alive_while_idle(true)
        // A resumable call's body reads the upstream only when its app has room (`pipe.rs`),
        // so a slow app stops its stream's window, and the connections' windows are the bound
        // on data waiting in the sidecar for many streams at once.
        .http2_initial_stream_window_size(stream_window)
        .http2_initial_connection_window_size(connection_window)
        // Large frames from the upstream mean fewer reads and fewer chunks per message.
        .http2_max_frame_size(64 * 1024)
        // h2 refuses a larger header block on its stream, and one over four times this on the
        // whole connection (GOAWAY, "header_list_way_too_large"), every call on it with it. So
        // the connection takes the most any gRPC library sends by default, and the calls are
        // held to `max_metadata_bytes` one by one (`Upstream::check_metadata`).
        .http2_max_header_list_size(MAX_METADATA_BYTES as u32)
        .pool_idle_timeout(Duration::from_secs(90))
        .build(CountingConnector {
            inner: connector,
            connects,
        })
}

/// The upstream connections (`upstream_connections`). hyper's client keeps one HTTP/2
/// connection per upstream and multiplexes every call on it; with one connection, the
/// upstream server reads and writes all of this pod's streams on one connection, which
/// servers handle on one thread (hyper's, grpc-go's and nginx's HTTP/2 connections are each
/// driven by one task). Several connections let the upstream spread them over its cores.
/// Each call takes the connection with the fewest calls in flight, so streams that outlive
/// others do not pile up on one connection.
pub struct Upstream {
    lanes: Vec<Lane>,
    uri: Uri,
    /// `max_metadata_bytes`.
    max_metadata: usize,
}

struct Lane {
    client: UpstreamClient,
    in_flight: Arc<AtomicUsize>,
}

/// A call's place on one upstream connection; the connection counts the call until it drops.
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstream {
    pub fn new(uri: Uri, connections: usize, max_metadata: usize, metrics: &Metrics) -> Self {
        let connections = connections.clamp(1, MAX_UPSTREAM_CONNECTIONS);
        Upstream {
            lanes: (0..connections)
                .map(|_| Lane {
                    client: upstream_client(connections, metrics.upstream_connects.clone()),
                    in_flight: Arc::default(),
                })
                .collect(),
            uri,
            max_metadata,
        }
    }

    /// `Err` with the status message when a call's `headers` exceed `max_metadata_bytes`.
    pub fn check_metadata(&self, headers: &HeaderMap, what: &str) -> Result<(), String> {
        grpc::check_metadata(headers, self.max_metadata, what)
    }

    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The client of the connection with the fewest calls in flight (the first of those),
    /// and the call's place on it. Connections open when first picked.
    pub fn pick(&self) -> (&UpstreamClient, InFlight) {
        let lane = self
            .lanes
            .iter()
            .min_by_key(|l| l.in_flight.load(Ordering::Relaxed))
            .unwrap_or(&self.lanes[0]);
        lane.in_flight.fetch_add(1, Ordering::Relaxed);
        (&lane.client, InFlight(lane.in_flight.clone()))
    }
}

/// hyper's connector, counting the TCP connections it opens (`reprise_upstream_connects`).
#[derive(Clone)]
pub struct CountingConnector {
    inner: HttpConnector,
    connects: Counter,
}

impl tower::Service<Uri> for CountingConnector {
    type Response = <HttpConnector as tower::Service<Uri>>::Response;
    type Error = <HttpConnector as tower::Service<Uri>>::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let connects = self.connects.clone();
        Box::pin(async move {
            let conn = connecting.await?;
            connects.inc();
            Ok(conn)
        })
    }
}

/// `upstream` with the app's path and query.
pub fn upstream_uri(upstream: &Uri, path_and_query: Option<&str>) -> Uri {
    let mut parts = upstream.clone().into_parts();
    parts.path_and_query = path_and_query.and_then(|p| p.parse().ok());
    Uri::from_parts(parts).unwrap_or_else(|_| upstream.clone())
}

/// Connection-specific headers must not cross a proxy (RFC 9113 §8.2.2); `te: trailers` may.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for h in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::HOST,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(h);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_split_the_shared_window() {
        const KIB: u32 = 1024;
        assert_eq!(upstream_windows(1), (256 * KIB, 1536 * KIB));
        assert_eq!(upstream_windows(2), (256 * KIB, 768 * KIB));
        assert_eq!(upstream_windows(8), (192 * KIB, 192 * KIB));
        // Never below HTTP/2's initial window.
        assert_eq!(upstream_windows(64), (65_535, 65_535));
    }
}
