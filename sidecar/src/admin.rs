//! The admin endpoints on `metrics_listen`: `/metrics` (Prometheus text), `/healthz` (alive),
//! `/readyz` (serving, store reachable, not draining).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_util::sync::CancellationToken;

use crate::listen::Listener;
use crate::metrics::{Health, Metrics};

/// Serves the admin endpoints until `shutdown` fires.
pub async fn serve(
    mut listener: Listener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        let service = service_fn(move |req: Request<Incoming>| {
            let res = respond(&req, &metrics, &health);
            async move { Ok::<_, std::convert::Infallible>(res) }
        });
        tokio::spawn(async move {
            if !accepted.spoke().await {
                return;
            }
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(accepted.stream), service)
                .await;
        });
    }
}

fn respond(req: &Request<Incoming>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    let (status, body, ctype) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/healthz" => (StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" => match health.ready() {
            Ok(()) => (StatusCode::OK, "ready\n".into(), "text/plain"),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
                "text/plain",
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz, /readyz\n".into(),
            "text/plain",
        ),
    };
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(ctype) {
        res.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    res
}
