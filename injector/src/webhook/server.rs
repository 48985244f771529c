//! `POST /inject` over HTTPS. A request flows: TLS handshake (certificate from the reloading
//! resolver) → HTTP/1.1 or h2 → the body, bounded → one review decided → the review back.
//! Anything that is not a review is answered 4xx on its own connection; the server keeps serving.

use std::{
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use reprise_injector::Settings;
use reprise_jobs::Acceptor;
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use super::{
    admin::Metrics,
    namespaces::Namespaces,
    review::{Outcome, decide, namespace_needed, parse, to_wire},
};

/// The API server's own limit on a request body (3 MiB); a larger AdmissionReview cannot come
/// from it.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// A client that opens a connection and never finishes its handshake holds a slot only this long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Webhook {
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    /// `None`: no Kubernetes API (`kube: false`), namespace annotations are not applied.
    pub namespaces: Option<Namespaces>,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: TlsAcceptor,
    webhook: Arc<Webhook>,
    shutdown: CancellationToken,
    connections: TaskTracker,
) {
    let mut acceptor = Acceptor::new(listener, "webhook");
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = acceptor.accept() => accepted,
        };
        let (tls, webhook, shutdown) = (tls.clone(), webhook.clone(), shutdown.clone());
        let span = tracing::debug_span!("connection", peer = %peer);
        connections.spawn(
            async move {
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "tls handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("tls handshake timed out");
                        return;
                    }
                };
                let service = service_fn(move |req| {
                    let webhook = webhook.clone();
                    async move { Ok::<_, Infallible>(handle(&webhook, req).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "connection ended");
                        }
                    }
                    _ = shutdown.cancelled() => {
                        // Finish the requests in flight, take no more on this connection.
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            }
            .instrument(span),
        );
    }
}

async fn handle(webhook: &Webhook, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/inject" {
        return plain(StatusCode::NOT_FOUND, "the webhook serves POST /inject\n");
    }
    if req.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "POST /inject\n");
    }
    let started = Instant::now();
    let response = inject(webhook, req).await;
    webhook
        .metrics
        .request_duration
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn inject(webhook: &Webhook, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return too_large(webhook);
    }
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return too_large(webhook),
        Err(e) => {
            webhook.metrics.bad_request("body");
            return plain(StatusCode::BAD_REQUEST, &format!("reading the body: {e}\n"));
        }
    };
    let decided = match parse(&body) {
        Ok(request) => {
            let inherited = match (namespace_needed(&request), &webhook.namespaces) {
                (Some(name), Some(namespaces)) => {
                    let (annotations, source) = namespaces.annotations(name).await;
                    if source == super::namespaces::Source::Stale {
                        webhook.metrics.namespace_lookup_errors.inc();
                    }
                    annotations
                }
                _ => None,
            };
            decide(&request, inherited.as_ref(), &webhook.settings)
        }
        Err(e) => Err(e),
    };
    match decided {
        Ok((answer, outcome)) => {
            let uid = answer
                .response
                .as_ref()
                .map(|r| r.uid.clone())
                .unwrap_or_default();
            match &outcome {
                Outcome::Denied(annotation) => {
                    tracing::info!(uid = %uid, annotation = %annotation, "pod denied")
                }
                Outcome::Injected => tracing::debug!(uid = %uid, "pod injected"),
                other => tracing::debug!(uid = %uid, outcome = ?other, "pod allowed untouched"),
            }
            webhook.metrics.count(&outcome);
            match to_wire(&answer) {
                Ok(json) => {
                    let mut res = Response::new(Full::new(Bytes::from(json)));
                    res.headers_mut().insert(
                        header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    res
                }
                Err(e) => plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("encoding the review: {e}\n"),
                ),
            }
        }
        Err(e) => {
            webhook.metrics.bad_request("not_a_review");
            tracing::warn!(error = %e, "bad request");
            plain(StatusCode::BAD_REQUEST, &format!("{e}\n"))
        }
    }
}

#[cold]
fn too_large(webhook: &Webhook) -> Response<Full<Bytes>> {
    webhook.metrics.bad_request("too_large");
    plain(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the body exceeds {MAX_BODY_BYTES} bytes\n"),
    )
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(text.to_owned())));
    *res.status_mut() = status;
    res
}
