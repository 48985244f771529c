//! `/metrics`, `/healthz`, `/readyz` of the recoverer.

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
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use reprise_jobs::Acceptor;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

pub struct Metrics {
    registry: Registry,
    pub pods_dead: Family<ReasonLabels, Counter>,
    pub jobs_orphaned: Family<ReasonLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub reconcile_errors: Counter,
    pub kube_synced: Gauge,
    pub unknown_owners: Gauge,
    pub handoffs_offered_again: Family<ReasonLabels, Counter>,
    pub leases_on_hold: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("reprise_recoverer");
        let pods_dead = Family::<ReasonLabels, Counter>::default();
        let jobs_orphaned = Family::<ReasonLabels, Counter>::default();
        let reconcile_duration = Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]);
        let reconcile_errors = Counter::default();
        let kube_synced = Gauge::default();
        let unknown_owners = Gauge::default();
        let handoffs_offered_again = Family::<ReasonLabels, Counter>::default();
        let leases_on_hold = Gauge::default();
        registry.register(
            "pods_dead",
            "Pods (or sidecar containers) seen dead, by reason",
            pods_dead.clone(),
        );
        registry.register(
            "jobs_orphaned",
            "Running jobs of dead owners marked orphaned, by reason",
            jobs_orphaned.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile pass",
            reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile passes that failed (Redis unreachable)",
            reconcile_errors.clone(),
        );
        registry.register(
            "kube_synced",
            "1 once the pod reflector has its initial list",
            kube_synced.clone(),
        );
        registry.register(
            "unknown_owners",
            "Owners of running jobs the pod store does not hold (two passes in a row): their jobs are left to their leases",
            unknown_owners.clone(),
        );
        registry.register(
            "handoffs_offered_again",
            "Events published again for deliver jobs no pod took over within handoff_retry, labelled reason with the job's status (interrupted, orphaned)",
            handoffs_offered_again.clone(),
        );
        registry.register(
            "leases_on_hold",
            "1 while expired leases go unjudged: Redis answers again after it was unreachable or restarted, and owners get lease_grace to renew",
            leases_on_hold.clone(),
        );
        Metrics {
            registry,
            pods_dead,
            jobs_orphaned,
            reconcile_duration,
            reconcile_errors,
            kube_synced,
            unknown_owners,
            handoffs_offered_again,
            leases_on_hold,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[derive(Default)]
pub struct Health {
    /// Redis answered the last reconcile.
    pub redis_ok: AtomicBool,
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
                "/readyz" if !health.redis_ok.load(Ordering::Relaxed) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: redis unreachable\n".to_owned(),
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
