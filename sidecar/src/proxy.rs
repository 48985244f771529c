//! The request path: every call from the app lands here and is either passed through untouched
//! or, for a configured server-streaming method, handed to the resumable stream machinery.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Uri, header};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use prometheus_client::metrics::counter::Counter;

use crate::{
    admin::{CallLabels, Metrics},
    config::MAX_METADATA_BYTES,
    descriptors::ResumableMethod,
    grpc::{self, BoxError, ProxyBody, code},
    stream::{self, StreamCtx},
};

pub type UpstreamClient = Client<CountingConnector, ProxyBody>;

/// The most upstream connections a sidecar may keep (`upstream_connections`).
pub const MAX_UPSTREAM_CONNECTIONS: usize = 64;
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

pub struct Proxy {
    methods: HashMap<String, Arc<ResumableMethod>>,
    ctx: Arc<StreamCtx>,
}

impl Proxy {
    pub fn new(methods: Vec<Arc<ResumableMethod>>, ctx: Arc<StreamCtx>) -> Self {
        Proxy {
            methods: methods.into_iter().map(|m| (m.path(), m)).collect(),
            ctx,
        }
    }

    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        if let Err(message) = self
            .ctx
            .upstream
            .check_metadata(req.headers(), "request metadata")
        {
            tracing::warn!(path = req.uri().path(), %message, "call rejected");
            return grpc::trailers_only(code::RESOURCE_EXHAUSTED, &message);
        }
        let path = req.uri().path().to_owned();
        let method = path.trim_start_matches('/').to_owned();
        match self.methods.get(&path) {
            Some(m) => {
                self.ctx
                    .metrics
                    .calls
                    .get_or_create(&CallLabels {
                        method,
                        kind: "resumable",
                    })
                    .inc();
                stream::handle(self.ctx.clone(), m.clone(), req).await
            }
            None => {
                self.ctx
                    .metrics
                    .calls
                    .get_or_create(&CallLabels {
                        method,
                        kind: "passthrough",
                    })
                    .inc();
                self.passthrough(req).await
            }
        }
    }

    /// Forwards the call as it is: headers, body frames and trailers in both directions, with
    /// HTTP/2 flow control end to end (bodies are polled only as fast as the peer reads).
    async fn passthrough(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let (mut parts, body) = req.into_parts();
        parts.uri = upstream_uri(
            self.ctx.upstream.uri(),
            parts.uri.path_and_query().map(|p| p.as_str()),
        );
        strip_hop_by_hop(&mut parts.headers);
        let req = Request::from_parts(parts, body.map_err(BoxError::from).boxed_unsync());
        let (client, in_flight) = self.ctx.upstream.pick();
        match client.request(req).await {
            // The call holds its place on the connection until its body is done.
            Ok(res) => match self
                .ctx
                .upstream
                .check_metadata(res.headers(), "upstream response metadata")
            {
                // Dropping the response resets this one stream; the connection goes on.
                Err(message) => {
                    tracing::warn!(%message, "upstream response refused");
                    grpc::trailers_only(code::RESOURCE_EXHAUSTED, &message)
                }
                Ok(()) => res.map(|b| ErrorAsTrailers::new(b, in_flight).boxed_unsync()),
            },
            Err(e) => grpc::trailers_only(
                code::UNAVAILABLE,
                &format!(
                    "reprise: upstream {}: {}",
                    self.ctx.upstream.uri(),
                    error_chain(&e)
                ),
            ),
        }
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

/// The full `source()` chain, so "connection refused" is not hidden behind "client error".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// A pass-through response body whose upstream breaks mid-stream: the app gets
/// `UNAVAILABLE` trailers instead of a reset or a hung stream.
pub struct ErrorAsTrailers<B> {
    inner: B,
    done: bool,
    /// The call's place on its upstream connection, given up when the body is dropped.
    _in_flight: InFlight,
}

impl<B> ErrorAsTrailers<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        ErrorAsTrailers {
            inner,
            done: false,
            _in_flight: in_flight,
        }
    }
}

impl<B> Body for ErrorAsTrailers<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                let message = format!("reprise: upstream stream broke: {}", error_chain(&e));
                tracing::warn!(error = %message, "pass-through call ended by an upstream error");
                Poll::Ready(Some(Ok(Frame::trailers(grpc::status_trailers(
                    code::UNAVAILABLE,
                    &message,
                )))))
            }
            other => other.map_err(BoxError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
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
