//! The request path: every call from the app lands here and is either passed through untouched
//! or, for a configured server-streaming method, handed to the resumable stream machinery.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::{
    descriptors::ResumableMethod,
    grpc::{self, BoxError, ProxyBody, code, error_chain},
    metrics::CallLabels,
    stream::{self, StreamCtx},
    upstream::{InFlight, strip_hop_by_hop, upstream_uri},
};

/// The router: which paths are resumable, and the context their stream tasks share.
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

    /// Serves one call of the app: a configured resumable method goes to [`stream::handle`],
    /// everything else is passed through to the upstream unchanged (its body errors become
    /// `UNAVAILABLE` trailers, see [`ErrorAsTrailers`]).
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
