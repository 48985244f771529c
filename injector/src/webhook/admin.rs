//! `/metrics`, `/healthz`, `/readyz` of the webhook, on `metrics_listen` (plain HTTP).

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use reprise_jobs::Acceptor;
use tokio_util::sync::CancellationToken;

use super::review::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

pub struct Metrics {
    registry: Registry,
    pub pods_injected: Counter,
    pub pods_skipped: Family<ReasonLabels, Counter>,
    pub pods_denied: Family<ReasonLabels, Counter>,
    pub bad_requests: Family<ReasonLabels, Counter>,
    pub request_duration: Histogram,
    pub namespace_lookup_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("reprise_injector");
        let pods_injected = Counter::default();
        let pods_skipped = Family::<ReasonLabels, Counter>::default();
        let pods_denied = Family::<ReasonLabels, Counter>::default();
        let bad_requests = Family::<ReasonLabels, Counter>::default();
        // The API server gives up after the webhook's timeoutSeconds (at most 3 s here).
        let request_duration = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 3.0,
        ]);
        registry.register(
            "pods_injected",
            "Pods the sidecar was added to",
            pods_injected.clone(),
        );
        registry.register(
            "pods_skipped",
            "Pods allowed without a patch, by reason",
            pods_skipped.clone(),
        );
        registry.register(
            "pods_denied",
            "Pods denied, by the invalid annotation",
            pods_denied.clone(),
        );
        registry.register(
            "bad_requests",
            "Requests answered 4xx without a review, by reason",
            bad_requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's headers to its response, for every POST /inject",
            request_duration.clone(),
        );
        let namespace_lookup_errors = Counter::default();
        registry.register(
            "namespace_lookup_errors",
            "Namespace reads that failed or timed out (the last value seen was used)",
            namespace_lookup_errors.clone(),
        );
        Metrics {
            namespace_lookup_errors,
            registry,
            pods_injected,
            pods_skipped,
            pods_denied,
            bad_requests,
            request_duration,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }

    pub fn count(&self, outcome: &Outcome) {
        let by = |reason: &str| ReasonLabels {
            reason: reason.to_owned(),
        };
        match outcome {
            Outcome::Injected => {
                self.pods_injected.inc();
            }
            Outcome::Skipped(reason) => {
                self.pods_skipped.get_or_create(&by(reason)).inc();
            }
            Outcome::NotAPod => {
                self.pods_skipped.get_or_create(&by("not_a_pod")).inc();
            }
            Outcome::Denied(annotation) => {
                self.pods_denied.get_or_create(&by(annotation)).inc();
            }
        }
    }

    pub fn bad_request(&self, reason: &str) {
        self.bad_requests
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

#[derive(Default)]
pub struct Health {
    pub draining: AtomicBool,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    // Out of file descriptors, accept fails until some are freed: back off, log sparingly.
    let mut acceptor = Acceptor::new(listener, "admin");
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = acceptor.accept() => accepted,
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        let service = service_fn(move |req: Request<Incoming>| {
            let (status, body) = match req.uri().path() {
                "/metrics" => (StatusCode::OK, metrics.encode()),
                "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
                "/readyz" if health.draining.load(Ordering::Relaxed) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: draining\n".to_owned(),
                ),
                "/readyz" => (StatusCode::OK, "ready\n".to_owned()),
                _ => (
                    StatusCode::NOT_FOUND,
                    "try /metrics, /healthz, /readyz\n".to_owned(),
                ),
            };
            let mut res = Response::new(Full::new(Bytes::from(body)));
            *res.status_mut() = status;
            async move { Ok::<_, Infallible>(res) }
        });
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
