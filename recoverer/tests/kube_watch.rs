//! The pod watch with the real kube client against an in-process API server that speaks the
//! real list/watch protocol: one test per way a pod dies, one per protocol event a long-running
//! watch meets (bookmarks, 410 Gone, a dropped connection), plus selection and readiness.
//!
//! Absence of a signal is never proven by waiting: a later change that does signal (a
//! "sentinel") must arrive first, and one watch delivers events in order.

use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::Pod;
use reprise_kube_fake::{FakeApiServer, pods::*};
use reprise_recoverer::{
    pods::DeathReason,
    watch::{PodSignal, PodWatch, PodWatchConfig},
};
use tokio_util::sync::CancellationToken;

const NS: &str = "apps";
const WAIT: Duration = Duration::from_secs(20);

struct Harness {
    server: FakeApiServer,
    watch: PodWatch,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .try_init();
}

/// A server holding `pods`, and a synced watch on it.
async fn start_with(pods: Vec<Pod>, config: PodWatchConfig) -> Harness {
    init_tracing();
    let server = FakeApiServer::start().await;
    for pod in pods {
        server.add(pod);
    }
    let shutdown = CancellationToken::new();
    let watch = PodWatch::spawn(server.client(), &config, shutdown.clone());
    let store = watch.store();
    tokio::time::timeout(WAIT, store.wait_until_ready())
        .await
        .expect("store synced in time")
        .expect("watch running");
    // Wait for the watch request too, so tests that cut it cut a real one.
    server
        .wait_for("the first watch", WAIT, |s| s.watches >= 1)
        .await;
    Harness {
        server,
        watch,
        shutdown,
    }
}

async fn start(pods: Vec<Pod>) -> Harness {
    start_with(pods, PodWatchConfig::default()).await
}

impl Harness {
    /// The next signal, with its uid checked (every pod the API server serves has one) and
    /// then cleared, so tests compare the rest.
    async fn next(&mut self) -> PodSignal {
        match self.next_with_uid().await {
            PodSignal::Dead {
                namespace,
                pod,
                uid,
                reason,
            } => {
                assert!(uid.is_some(), "{namespace}/{pod}: no uid");
                dead(&namespace, &pod, reason)
            }
            PodSignal::ContainerKilled {
                namespace,
                pod,
                uid,
                kill,
            } => {
                assert!(uid.is_some(), "{namespace}/{pod}: no uid");
                PodSignal::ContainerKilled {
                    namespace,
                    pod,
                    uid: None,
                    kill,
                }
            }
        }
    }

    async fn next_with_uid(&mut self) -> PodSignal {
        match tokio::time::timeout(WAIT, self.watch.recv()).await {
            Ok(Some(signal)) => signal,
            Ok(None) => panic!("signal channel closed"),
            Err(_) => panic!(
                "no pod signal within {WAIT:?}; server stats: {:?}",
                self.server.stats()
            ),
        }
    }

    /// Deletes the sentinel pod and asserts its signal is the next one: nothing was signalled
    /// for whatever happened before.
    async fn expect_nothing_before_sentinel(&mut self, namespace: &str) {
        self.server.delete(namespace, "sentinel");
        assert_eq!(
            self.next().await,
            dead(namespace, "sentinel", DeathReason::Deleted)
        );
    }
}

fn dead(namespace: &str, pod: &str, reason: DeathReason) -> PodSignal {
    PodSignal::Dead {
        namespace: namespace.into(),
        pod: pod.into(),
        uid: None,
        reason,
    }
}

fn sentinel() -> Pod {
    injected_pod(NS, "sentinel")
}

#[tokio::test]
async fn oom_killed_sidecar_is_a_container_kill() {
    let mut h = start(vec![injected_pod(NS, "web-1")]).await;
    let oom = terminated(137, "OOMKilled", None, "2026-11-24T10:05:10Z");
    h.server
        .update(NS, "web-1", |p| *p = sidecar_restarted(p.clone(), oom));

    let PodSignal::ContainerKilled {
        namespace,
        pod,
        kill,
        ..
    } = h.next().await
    else {
        panic!("expected a container kill");
    };
    assert_eq!((namespace.as_str(), pod.as_str()), (NS, "web-1"));
    assert_eq!(kill.reason, DeathReason::OomKilled);
    assert_eq!(kill.finished_at, Some(time("2026-11-24T10:05:10Z")));
    assert_eq!(kill.restart_count, 1);
    assert!(
        h.watch.store().get(NS, "web-1").is_some(),
        "the pod itself lives on"
    );
}

/// What a script writes through `reprise-fake-apiserver` (its README's example), as the kubelet
/// does: a merge patch of the status with the whole `containerStatuses` list, the sidecar
/// terminated with `OOMKilled`, 137.
#[tokio::test]
async fn oom_killed_merge_patched_into_the_status_is_a_container_kill() {
    let mut h = start(vec![injected_pod(NS, "web-1")]).await;
    let api: kube::Api<Pod> = kube::Api::namespaced(h.server.client(), NS);
    let patch = serde_json::json!({ "status": { "containerStatuses": [
        { "name": APP, "image": "demo/users-client:1", "imageID": "", "ready": true,
          "restartCount": 0, "state": { "running": { "startedAt": "2026-11-24T10:00:03Z" } } },
        { "name": SIDECAR, "image": "reprise/sidecar:1", "imageID": "", "ready": false,
          "started": false, "restartCount": 0,
          "state": { "terminated": { "exitCode": 137, "reason": "OOMKilled",
              "startedAt": "2026-11-24T10:00:03Z", "finishedAt": "2026-11-24T10:05:10Z" } } }
    ] } });
    api.patch_status(
        "web-1",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .expect("status patched");

    let PodSignal::ContainerKilled { pod, kill, .. } = h.next().await else {
        panic!("expected a container kill");
    };
    assert_eq!(pod, "web-1");
    assert_eq!(kill.reason, DeathReason::OomKilled);
    assert_eq!(kill.finished_at, Some(time("2026-11-24T10:05:10Z")));
}

#[tokio::test]
async fn sigkill_after_the_grace_period_then_deletion() {
    let mut h = start(vec![injected_pod(NS, "web-1")]).await;
    // Graceful deletion starts: not death by itself (the sidecar gets SIGTERM and hands off).
    h.server
        .update(NS, "web-1", |p| *p = terminating(p.clone(), 30));
    // The grace period runs out: the kubelet SIGKILLs the container.
    let killed = terminated(137, "Error", None, "2026-11-24T10:07:41Z");
    h.server
        .update(NS, "web-1", |p| *p = sidecar_terminated(p.clone(), killed));

    let PodSignal::ContainerKilled { kill, .. } = h.next().await else {
        panic!("expected the SIGKILL first, nothing for the deletion timestamp");
    };
    assert_eq!(kill.reason, DeathReason::Sigkill);
    assert_eq!(kill.finished_at, Some(time("2026-11-24T10:07:41Z")));

    h.server.delete(NS, "web-1");
    assert_eq!(h.next().await, dead(NS, "web-1", DeathReason::Deleted));
}

#[tokio::test]
async fn deleted_pod_is_dead_and_leaves_the_store() {
    let mut h = start(vec![injected_pod(NS, "web-1")]).await;
    let uid = h
        .watch
        .store()
        .get(NS, "web-1")
        .and_then(|p| p.metadata.uid.clone());
    assert!(uid.is_some());
    h.server.delete(NS, "web-1");
    assert_eq!(
        h.next_with_uid().await,
        PodSignal::Dead {
            namespace: NS.into(),
            pod: "web-1".into(),
            uid,
            reason: DeathReason::Deleted
        },
        "the signal names the incarnation that died"
    );
    // The reflector applies an event before the signal is sent.
    assert!(h.watch.store().get(NS, "web-1").is_none());
    assert!(!h.watch.store().has_pod_named("web-1"));
}

#[tokio::test]
async fn evicted_pod_is_reported_once() {
    let mut h = start(vec![injected_pod(NS, "web-1"), sentinel()]).await;
    h.server.update(NS, "web-1", |p| *p = evicted(p.clone()));
    assert_eq!(h.next().await, dead(NS, "web-1", DeathReason::Evicted));
    // Its later deletion is the same death: no second signal.
    h.server.delete(NS, "web-1");
    h.expect_nothing_before_sentinel(NS).await;
}

#[tokio::test]
async fn node_lost_pod() {
    let mut h = start(vec![injected_pod(NS, "web-1")]).await;
    h.server.update(NS, "web-1", |p| *p = node_lost(p.clone()));
    assert_eq!(h.next().await, dead(NS, "web-1", DeathReason::NodeLost));
}

#[tokio::test]
async fn disruption_target_condition() {
    let mut h = start(vec![injected_pod(NS, "web-1")]).await;
    h.server.update(NS, "web-1", |p| {
        *p = disrupted(p.clone(), "PreemptionByScheduler")
    });
    assert_eq!(h.next().await, dead(NS, "web-1", DeathReason::Disruption));
}

#[tokio::test]
async fn clean_restart_is_not_a_kill() {
    let mut h = start(vec![injected_pod(NS, "web-1"), sentinel()]).await;
    let clean = terminated(0, "Completed", None, "2026-11-24T10:05:10Z");
    h.server
        .update(NS, "web-1", |p| *p = sidecar_restarted(p.clone(), clean));
    h.expect_nothing_before_sentinel(NS).await;

    let pod = h.watch.store().get(NS, "web-1").expect("still there");
    let restarts = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| {
            cs.iter()
                .find(|c| c.name == SIDECAR)
                .map(|c| c.restart_count)
        });
    assert_eq!(restarts, Some(Some(1)), "the store saw the restart");
}

#[tokio::test]
async fn bookmarks_are_harmless() {
    let mut h = start(vec![injected_pod(NS, "web-1")]).await;
    for _ in 0..3 {
        h.server.bookmark();
    }
    h.server.update(NS, "web-1", |p| *p = node_lost(p.clone()));
    assert_eq!(h.next().await, dead(NS, "web-1", DeathReason::NodeLost));
    let stats = h.server.stats();
    assert_eq!(
        (stats.lists, stats.watches),
        (1, 1),
        "no re-list, no reconnect: {stats:?}"
    );
    assert!(
        stats
            .requests
            .iter()
            .any(|r| r.contains("allowWatchBookmarks=true")),
        "{stats:?}"
    );
}

#[tokio::test]
async fn gone_forces_a_relist_that_reports_pods_deleted_meanwhile() {
    let mut h = start(vec![injected_pod(NS, "web-1"), injected_pod(NS, "web-2")]).await;
    // One atomic step, as the client sees it: its watch breaks, web-2 is deleted and web-3
    // created while it is away, and the history it would resume from is compacted.
    h.server.batch(|c| {
        assert_eq!(c.drop_watches(), 1);
        c.delete(NS, "web-2");
        c.add(injected_pod(NS, "web-3"));
        c.expire_history();
    });
    assert_eq!(h.next().await, dead(NS, "web-2", DeathReason::Deleted));

    let stats = h.server.stats();
    assert!(stats.gone >= 1, "the resumed watch got 410 Gone: {stats:?}");
    assert!(stats.lists >= 2, "and the watcher re-listed: {stats:?}");
    let store = h.watch.store();
    assert!(store.get(NS, "web-2").is_none());
    assert!(
        store.get(NS, "web-3").is_some(),
        "the re-list brought the new pod"
    );
    assert!(store.watch_errors() >= 1);

    // And the watch goes on after the re-list.
    h.server.update(NS, "web-3", |p| *p = evicted(p.clone()));
    assert_eq!(h.next().await, dead(NS, "web-3", DeathReason::Evicted));
}

#[tokio::test]
async fn dropped_watch_resumes_without_losing_events() {
    let mut h = start(vec![injected_pod(NS, "web-1"), injected_pod(NS, "web-2")]).await;
    assert_eq!(h.server.drop_watches(), 1);
    // Whether or not the client has reconnected yet, it resumes from its resourceVersion.
    h.server.delete(NS, "web-1");
    assert_eq!(h.next().await, dead(NS, "web-1", DeathReason::Deleted));

    // A clean end (timeoutSeconds) is resumed the same way.
    h.server
        .wait_for("the second watch", WAIT, |s| s.watches >= 2)
        .await;
    assert_eq!(h.server.close_watches(), 1);
    h.server.update(NS, "web-2", |p| *p = node_lost(p.clone()));
    assert_eq!(h.next().await, dead(NS, "web-2", DeathReason::NodeLost));

    let stats = h.server.stats();
    assert_eq!(
        stats.lists, 1,
        "resumed from the resourceVersion, no re-list: {stats:?}"
    );
    assert!(stats.watches >= 3, "{stats:?}");
}

#[tokio::test]
async fn label_selector_keeps_uninjected_pods_out() {
    let mut h = start(vec![
        plain_pod(NS, "plain"),
        injected_pod(NS, "web-1"),
        sentinel(),
    ])
    .await;
    let store = h.watch.store();
    assert!(store.get(NS, "plain").is_none());
    assert!(store.get(NS, "web-1").is_some());

    h.server.update(NS, "plain", |p| *p = evicted(p.clone()));
    h.server.delete(NS, "plain");
    h.expect_nothing_before_sentinel(NS).await;

    let stats = h.server.stats();
    let selector = "labelSelector=reprise.dev%2Finjected%3Dtrue";
    assert!(
        stats.requests.iter().all(|r| r.contains(selector)),
        "every request selects: {stats:?}"
    );
}

#[tokio::test]
async fn store_is_ready_only_after_the_initial_list() {
    init_tracing();
    let server = FakeApiServer::start().await;
    server.add(injected_pod(NS, "web-1"));
    server.hold_lists();
    let shutdown = CancellationToken::new();
    let watch = PodWatch::spawn(
        server.client(),
        &PodWatchConfig::default(),
        shutdown.clone(),
    );
    let store = watch.store();

    server
        .wait_for("the initial list request", WAIT, |s| s.lists >= 1)
        .await;
    assert!(!store.is_ready());
    assert!(store.wait_until_ready().now_or_never().is_none());
    assert!(store.get(NS, "web-1").is_none());

    server.release_lists();
    tokio::time::timeout(WAIT, store.wait_until_ready())
        .await
        .expect("ready after the list")
        .expect("watch running");
    assert!(store.is_ready());
    assert!(store.get(NS, "web-1").is_some());
    assert_eq!(store.pods().len(), 1);
    shutdown.cancel();
}

#[tokio::test]
async fn several_namespaces_each_get_a_watch() {
    let config = PodWatchConfig {
        namespaces: vec![NS.into(), "billing".into()],
        ..PodWatchConfig::default()
    };
    let pods = vec![
        injected_pod(NS, "web-1"),
        injected_pod("billing", "invoices-1"),
        injected_pod("other", "web-1"),
        sentinel(),
    ];
    let mut h = start_with(pods, config).await;
    h.server
        .wait_for("both watches", WAIT, |s| s.watches >= 2)
        .await;

    let store = h.watch.store();
    assert!(store.get(NS, "web-1").is_some());
    assert!(store.get("billing", "invoices-1").is_some());
    assert!(
        store.get("other", "web-1").is_none(),
        "namespace not watched"
    );
    assert_eq!(store.find_by_name("web-1").len(), 1);

    h.server.delete("billing", "invoices-1");
    assert_eq!(
        h.next().await,
        dead("billing", "invoices-1", DeathReason::Deleted)
    );
    h.server.delete("other", "web-1");
    h.expect_nothing_before_sentinel(NS).await;

    let stats = h.server.stats();
    assert!(
        stats
            .requests
            .iter()
            .all(|r| r.starts_with("/api/v1/namespaces/apps/pods")
                || r.starts_with("/api/v1/namespaces/billing/pods")),
        "{stats:?}"
    );
}

#[tokio::test]
async fn paged_initial_list_is_read_to_the_end() {
    // kube lists 500 per page by default.
    let pods: Vec<Pod> = (0..1100)
        .map(|i| injected_pod(NS, &format!("web-{i:04}")))
        .collect();
    let h = start(pods).await;
    let store = h.watch.store();
    assert_eq!(store.pods().len(), 1100);
    assert!(store.get(NS, "web-1099").is_some());
    let stats = h.server.stats();
    assert_eq!(stats.lists, 3, "three pages: {stats:?}");
    assert!(
        stats.requests.iter().any(|r| r.contains("continue=")),
        "{stats:?}"
    );
}

#[tokio::test]
async fn kubeconfig_points_a_client_at_the_fake() {
    // What a child process (the recoverer binary) gets through KUBECONFIG.
    init_tracing();
    let server = FakeApiServer::start().await;
    server.add(injected_pod(NS, "web-1"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = server.write_kubeconfig(dir.path());
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig parses");
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .expect("kube config from the kubeconfig");
    assert_eq!(config.cluster_url.to_string(), format!("{}/", server.url()));
    let client = kube::Client::try_from(config).expect("client");

    let shutdown = CancellationToken::new();
    let watch = PodWatch::spawn(client, &PodWatchConfig::default(), shutdown.clone());
    let store = watch.store();
    tokio::time::timeout(WAIT, store.wait_until_ready())
        .await
        .expect("synced")
        .expect("running");
    assert!(store.get(NS, "web-1").is_some());
    shutdown.cancel();
}
