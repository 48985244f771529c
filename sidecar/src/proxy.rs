//! The request path: every call from the app lands here and is either passed through untouched
//! or, for a configured server-streaming method, handed to the resumable stream machinery.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
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

use crate::{
    admin::CallLabels,
    descriptors::ResumableMethod,
    grpc::{self, BoxError, ProxyBody, code},
    stream::{self, StreamCtx},
};

pub type UpstreamClient = Client<HttpConnector, ProxyBody>;

/// An HTTP/2-only (h2c, prior knowledge) client for the upstream, tuned for long streams.
pub fn upstream_client() -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .http2_only(true)
        // Detect a silently cut network (no RST, no FIN) on idle and busy connections alike.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .http2_keep_alive_timeout(Duration::from_secs(5))
        .http2_keep_alive_while_idle(true)
        // 256 KiB per stream keeps one fast stream busy; the connection's 512 KiB caps what all
        // streams together may have in flight from the upstream, unread. A stream task reads
        // only when its app has room (see `Task::attempt`), so a slow app stops the window,
        // and this is the bound on data waiting in the sidecar for many streams at once.
        .http2_initial_stream_window_size(256 * 1024)
        .http2_initial_connection_window_size(512 * 1024)
        // Large frames from the upstream mean fewer reads and fewer chunks per message.
        .http2_max_frame_size(64 * 1024)
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
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
            &self.ctx.upstream,
            parts.uri.path_and_query().map(|p| p.as_str()),
        );
        strip_hop_by_hop(&mut parts.headers);
        let req = Request::from_parts(parts, body.map_err(BoxError::from).boxed_unsync());
        match self.ctx.client.request(req).await {
            Ok(res) => res.map(|b| ErrorAsTrailers::new(b).boxed_unsync()),
            Err(e) => grpc::trailers_only(
                code::UNAVAILABLE,
                &format!(
                    "reprise: upstream {}: {}",
                    self.ctx.upstream,
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
}

impl<B> ErrorAsTrailers<B> {
    pub fn new(inner: B) -> Self {
        ErrorAsTrailers { inner, done: false }
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
