//! Connects the Kubernetes pod watch to the reconciler: its store becomes a [`PodView`] and its
//! signals become [`Signal`]s. Without Kubernetes the recoverer runs on leases alone.

use std::sync::Arc;

use reprise_jobs::config_file;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    admin::Metrics,
    config::Config,
    reconcile::{PodView, SeenPod, Signal},
    watch::{PodSignal, PodStore, PodWatch, PodWatchConfig},
};

struct KubeView {
    store: PodStore,
    /// `namespaces: [...], label_selector: ...`, for messages.
    scope: String,
}

impl PodView for KubeView {
    fn synced(&self) -> bool {
        self.store.is_ready()
    }

    fn scope(&self) -> String {
        self.scope.clone()
    }

    fn pods_named(&self, name: &str) -> Vec<SeenPod> {
        self.store
            .find_by_name(name)
            .iter()
            .map(|p| SeenPod {
                namespace: p.metadata.namespace.clone().unwrap_or_default(),
                uid: p.metadata.uid.clone(),
            })
            .collect()
    }
}

/// Starts the pod watch when `kube` says so (or, for `auto`, when Kubernetes is configured).
/// `Err` only when `kube: true` and no client can be built.
pub async fn start(
    config: &Config,
    signals: mpsc::UnboundedSender<Signal>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<Option<Arc<dyn PodView>>, String> {
    if !config.kube.unwrap_or_else(config_file::kube_configured) {
        return Ok(None);
    }
    // kube's TLS is rustls with ring; install it as the process default once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) if config.kube == Some(true) => {
            return Err(format!(
                "key `kube`: true, but no Kubernetes client could be built (KUBECONFIG or in-cluster): {e}"
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "kubernetes not reachable; running on leases alone");
            return Ok(None);
        }
    };
    Ok(Some(watch(client, config, signals, metrics, shutdown)))
}

/// Watches the pods `config` selects through `client`: the store becomes the view, the watch's
/// signals are sent to `signals`. Must be called inside a Tokio runtime.
pub fn watch(
    client: kube::Client,
    config: &Config,
    signals: mpsc::UnboundedSender<Signal>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Arc<dyn PodView> {
    let watch = PodWatch::spawn(
        client,
        &PodWatchConfig {
            namespaces: config.namespaces.clone(),
            label_selector: Some(config.label_selector.clone()),
            sidecar_container: config.sidecar_container.clone(),
        },
        shutdown,
    );
    let (store, mut pod_signals) = watch.into_parts();
    let ready = store.clone();
    tokio::spawn(async move {
        // Polled rather than awaited: the reconciler checks readiness with a poll of its own at
        // any moment, and a waiter that loses that race is never woken again.
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
        while !ready.is_ready() {
            tick.tick().await;
        }
        metrics.kube_synced.set(1);
        tracing::info!("pod store synced");
    });
    tokio::spawn(async move {
        while let Some(s) = pod_signals.recv().await {
            let signal = match s {
                PodSignal::Dead {
                    namespace,
                    pod,
                    uid,
                    reason,
                } => Signal::PodDead {
                    namespace,
                    pod,
                    uid,
                    reason: reason.as_str(),
                },
                PodSignal::ContainerKilled {
                    namespace,
                    pod,
                    uid,
                    kill,
                } => Signal::SidecarKilled {
                    namespace,
                    pod,
                    uid,
                    reason: kill.reason.as_str(),
                    finished_at_ms: kill
                        .finished_at
                        .and_then(|t| u64::try_from(t.0.as_millisecond()).ok()),
                },
            };
            if signals.send(signal).is_err() {
                return;
            }
        }
    });
    let namespaces = match config.namespaces.as_slice() {
        [] => "[] (all)".to_owned(),
        some => format!("[{}]", some.join(", ")),
    };
    let scope = format!(
        "namespaces: {namespaces}, label_selector: {}",
        config.label_selector
    );
    Arc::new(KubeView { store, scope })
}
