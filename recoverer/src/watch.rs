//! The pod watch: kube's `watcher` → `default_backoff` → `reflector`, one per watched namespace
//! (or one for the whole cluster), plus a tracker that turns watch events into [`PodSignal`]s.
//!
//! The store is the truth the reconciler reads once it has synced; signals are hints that make
//! recovery fast. A signal may be late or (across a recoverer restart) repeated, and progress
//! never depends on seeing one: a level-triggered reconcile finds the same dead owners.
//!
//! Each namespace gets its own watcher *and its own store*: a kube reflector store is replaced
//! wholesale on every re-list, so two watchers must never share one.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::pods::{
    ContainerKill, DEFAULT_LABEL_SELECTOR, DEFAULT_SIDECAR_CONTAINER, DeathReason, container_kills,
    pod_death,
};

/// What to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodWatchConfig {
    /// Namespaces to watch; empty means every namespace (one cluster-wide watch).
    pub namespaces: Vec<String>,
    /// Label selector; `None` (or an empty string) watches every pod.
    pub label_selector: Option<String>,
    /// Name of the sidecar container whose kills are reported.
    pub sidecar_container: String,
}

impl Default for PodWatchConfig {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            label_selector: Some(DEFAULT_LABEL_SELECTOR.to_owned()),
            sidecar_container: DEFAULT_SIDECAR_CONTAINER.to_owned(),
        }
    }
}

/// A hint that the jobs of a pod (or of one run of its sidecar) are dead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodSignal {
    /// The whole pod is dead: reported once per pod incarnation (uid), for the first reason
    /// seen. A pod that vanished while the watch was down is reported `Deleted` after the re-list.
    /// `uid` is the dead incarnation's (a pod recreated under the same name has another).
    Dead {
        namespace: String,
        pod: String,
        uid: Option<String>,
        reason: DeathReason,
    },
    /// The sidecar container was killed; reported once per kill (per `finished_at`).
    ContainerKilled {
        namespace: String,
        pod: String,
        uid: Option<String>,
        kill: ContainerKill,
    },
}

/// The receiving end of the signals. Unbounded on purpose: a full channel would either block
/// the watch (and with it the store) or drop a signal. Signals are deduplicated per pod and per
/// kill, so the backlog is bounded by the number of distinct deaths.
pub type PodSignals = mpsc::UnboundedReceiver<PodSignal>;

/// A running pod watch.
pub struct PodWatch {
    store: PodStore,
    signals: PodSignals,
}

impl PodWatch {
    /// Starts one watcher task per namespace (a single cluster-wide one for `namespaces: []`).
    /// Must be called inside a Tokio runtime. The tasks run until `shutdown` is cancelled; watch
    /// errors are logged, counted and retried with kube's default backoff, never fatal.
    pub fn spawn(client: Client, config: &PodWatchConfig, shutdown: CancellationToken) -> Self {
        let unique: BTreeSet<&str> = config
            .namespaces
            .iter()
            .map(|ns| ns.trim())
            .filter(|ns| !ns.is_empty())
            .collect();
        let namespaces: Vec<Option<String>> = if unique.is_empty() {
            vec![None]
        } else {
            unique.into_iter().map(|ns| Some(ns.to_owned())).collect()
        };
        let mut wc = watcher::Config::default();
        if let Some(selector) = config.label_selector.as_deref().filter(|s| !s.is_empty()) {
            wc = wc.labels(selector);
        }

        let (tx, signals) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let mut scopes = Vec::with_capacity(namespaces.len());
        for namespace in namespaces {
            let api: Api<Pod> = match &namespace {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            let (store, writer) = reflector::store();
            let events = watcher(api, wc.clone())
                .default_backoff()
                // Managed fields are most of a Pod's bytes and nothing here reads them.
                .modify(|pod: &mut Pod| pod.managed_fields_mut().clear())
                .reflect(writer);
            let tracker = Tracker::new(&config.sidecar_container);
            let span =
                tracing::info_span!("pod_watch", namespace = namespace.as_deref().unwrap_or("*"));
            let task = run(events, tracker, tx.clone(), stats.clone(), shutdown.clone());
            tokio::spawn(task.instrument(span));
            scopes.push(Scope { namespace, store });
        }
        let store = PodStore {
            inner: Arc::new(StoreInner { scopes, stats }),
        };
        Self { store, signals }
    }

    /// A handle on the pods seen so far (cheap to clone).
    pub fn store(&self) -> PodStore {
        self.store.clone()
    }

    /// The next signal; `None` once every watcher task has stopped.
    pub async fn recv(&mut self) -> Option<PodSignal> {
        self.signals.recv().await
    }

    /// Splits the watch into its store and its signal receiver.
    pub fn into_parts(self) -> (PodStore, PodSignals) {
        (self.store, self.signals)
    }
}

/// Drives one watcher: the reflector updates the store as events pass; the tracker turns them
/// into signals.
async fn run<S>(
    events: S,
    mut tracker: Tracker,
    tx: mpsc::UnboundedSender<PodSignal>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) where
    S: futures::Stream<Item = watcher::Result<watcher::Event<Pod>>> + Send,
{
    let mut events = std::pin::pin!(events);
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            event = events.next() => event,
        };
        match event {
            Some(Ok(event)) => {
                if matches!(event, watcher::Event::InitDone) {
                    stats.lists.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(pods = tracker.len(), "pod list synced");
                }
                for signal in tracker.observe(&event) {
                    log_signal(&signal);
                    if tx.send(signal).is_err() {
                        tracing::debug!("pod signal receiver dropped; the store is still kept");
                    }
                }
            }
            Some(Err(err)) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                match &err {
                    // The normal way a long watch ends: history compacted, re-list.
                    watcher::Error::WatchError(status) if status.code == 410 => {
                        tracing::info!(error = %err, "pod watch expired; re-listing")
                    }
                    _ => tracing::warn!(error = %err, "pod watch failed; retrying with backoff"),
                }
            }
            None => {
                // Cannot happen with the default backoff (it never gives up); say so if it does.
                tracing::error!("pod watch stream ended");
                break;
            }
        }
    }
}

fn log_signal(signal: &PodSignal) {
    match signal {
        PodSignal::Dead {
            namespace,
            pod,
            uid,
            reason,
        } => {
            tracing::info!(
                pod.namespace = %namespace,
                pod.name = %pod,
                pod.uid = uid.as_deref().unwrap_or(""),
                reason = %reason,
                "pod dead"
            )
        }
        PodSignal::ContainerKilled {
            namespace,
            pod,
            kill,
            ..
        } => tracing::info!(
            pod.namespace = %namespace,
            pod.name = %pod,
            reason = %kill.reason,
            restart_count = kill.restart_count,
            finished_at = ?kill.finished_at.as_ref().map(|t| t.0),
            "sidecar container killed"
        ),
    }
}

#[derive(Default)]
struct Stats {
    errors: AtomicU64,
    lists: AtomicU64,
}

/// A read handle on the watched pods, across every watched namespace.
#[derive(Clone)]
pub struct PodStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    scopes: Vec<Scope>,
    stats: Arc<Stats>,
}

struct Scope {
    /// `None`: the cluster-wide watch.
    namespace: Option<String>,
    store: Store<Pod>,
}

/// Every watcher task stopped before its first list completed.
#[derive(Debug, thiserror::Error)]
#[error("the pod watch stopped before its first list completed")]
pub struct WatchStopped;

impl PodStore {
    /// True once every watcher has completed its first list. Stays true across re-lists (the
    /// store keeps its last contents until the new list is in).
    pub fn is_ready(&self) -> bool {
        self.inner
            .scopes
            .iter()
            .all(|s| matches!(s.store.wait_until_ready().now_or_never(), Some(Ok(()))))
    }

    /// Waits until [`Self::is_ready`]. Bound it with a timeout: an API server that refuses the
    /// list (RBAC) keeps it waiting while the watcher retries.
    pub async fn wait_until_ready(&self) -> Result<(), WatchStopped> {
        for scope in &self.inner.scopes {
            scope
                .store
                .wait_until_ready()
                .await
                .map_err(|_| WatchStopped)?;
        }
        Ok(())
    }

    /// The pod `namespace/name`, if it is watched and exists.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        let key = ObjectRef::new(name).within(namespace);
        self.inner
            .scopes
            .iter()
            .filter(|s| s.namespace.as_deref().is_none_or(|ns| ns == namespace))
            .find_map(|s| s.store.get(&key))
    }

    /// Every watched pod called `name`, in any watched namespace (a pod name is unique only
    /// within a namespace, and older sidecars record no namespace).
    pub fn find_by_name(&self, name: &str) -> Vec<Arc<Pod>> {
        self.inner
            .scopes
            .iter()
            .flat_map(|s| {
                s.store
                    .state_filter(|p| p.metadata.name.as_deref() == Some(name))
            })
            .collect()
    }

    /// Whether a pod called `name` exists in any watched namespace.
    pub fn has_pod_named(&self, name: &str) -> bool {
        self.inner.scopes.iter().any(|s| {
            s.store
                .find(|p| p.metadata.name.as_deref() == Some(name))
                .is_some()
        })
    }

    /// Every watched pod.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.inner
            .scopes
            .iter()
            .flat_map(|s| s.store.state())
            .collect()
    }

    /// Watch errors so far (410 Gone included), for a metric.
    pub fn watch_errors(&self) -> u64 {
        self.inner.stats.errors.load(Ordering::Relaxed)
    }

    /// Completed lists so far (the first one and every re-list), for a metric.
    pub fn lists(&self) -> u64 {
        self.inner.stats.lists.load(Ordering::Relaxed)
    }
}

/// Turns the watcher's events into signals, remembering just enough per pod to report each death
/// and each container kill once, and to notice pods that vanished during a re-list.
struct Tracker {
    container: String,
    pods: HashMap<PodKey, Memo>,
    /// Pods listed so far in a re-list in progress (between `Init` and `InitDone`).
    relisted: Option<HashSet<PodKey>>,
}

/// (namespace, name)
type PodKey = (String, String);

#[derive(Default)]
struct Memo {
    uid: Option<String>,
    dead: bool,
    kills: BTreeSet<KillKey>,
}

/// The same kill shows up first in `state` and, after the restart, in `lastState` with the same
/// `finishedAt` and a higher restart count: the finish time identifies it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum KillKey {
    At(Time),
    Unknown(i32),
}

impl Tracker {
    fn new(container: &str) -> Self {
        Self {
            container: container.to_owned(),
            pods: HashMap::new(),
            relisted: None,
        }
    }

    fn len(&self) -> usize {
        self.pods.len()
    }

    fn observe(&mut self, event: &watcher::Event<Pod>) -> Vec<PodSignal> {
        let mut out = Vec::new();
        match event {
            watcher::Event::Init => self.relisted = Some(HashSet::new()),
            watcher::Event::InitApply(pod) => {
                if let Some(seen) = self.relisted.as_mut() {
                    seen.insert(key_of(pod));
                }
                self.apply(pod, &mut out);
            }
            watcher::Event::Apply(pod) => self.apply(pod, &mut out),
            watcher::Event::Delete(pod) => {
                let key = key_of(pod);
                let memo = self.pods.remove(&key);
                if !memo.as_ref().is_some_and(|m| m.dead) {
                    let uid = pod.metadata.uid.clone().or(memo.and_then(|m| m.uid));
                    out.push(dead(&key, uid, DeathReason::Deleted));
                }
            }
            watcher::Event::InitDone => {
                // Known before the re-list, absent from it: deleted while we were not watching.
                if let Some(seen) = self.relisted.take() {
                    let gone: Vec<PodKey> = self
                        .pods
                        .keys()
                        .filter(|k| !seen.contains(*k))
                        .cloned()
                        .collect();
                    for key in gone {
                        if let Some(memo) = self.pods.remove(&key).filter(|m| !m.dead) {
                            out.push(dead(&key, memo.uid, DeathReason::Deleted));
                        }
                    }
                }
            }
        }
        out
    }

    fn apply(&mut self, pod: &Pod, out: &mut Vec<PodSignal>) {
        let key = key_of(pod);
        let uid = pod.metadata.uid.clone();
        let memo = self.pods.entry(key.clone()).or_default();
        if memo.uid.is_some() && uid.is_some() && memo.uid != uid {
            // Same name, new object (a StatefulSet pod recreated while we were not watching):
            // the old incarnation was deleted.
            if !memo.dead {
                out.push(dead(&key, memo.uid.clone(), DeathReason::Deleted));
            }
            *memo = Memo::default();
        }
        memo.uid = uid;
        if !memo.dead
            && let Some(reason) = pod_death(pod)
        {
            memo.dead = true;
            out.push(dead(&key, memo.uid.clone(), reason));
        }
        for kill in container_kills(pod, &self.container) {
            let id = match &kill.finished_at {
                Some(at) => KillKey::At(at.clone()),
                None => KillKey::Unknown(kill.restart_count),
            };
            if memo.kills.insert(id) {
                out.push(PodSignal::ContainerKilled {
                    namespace: key.0.clone(),
                    pod: key.1.clone(),
                    uid: memo.uid.clone(),
                    kill,
                });
            }
        }
    }
}

fn key_of(pod: &Pod) -> PodKey {
    (pod.namespace().unwrap_or_default(), pod.name_any())
}

fn dead(key: &PodKey, uid: Option<String>, reason: DeathReason) -> PodSignal {
    PodSignal::Dead {
        namespace: key.0.clone(),
        pod: key.1.clone(),
        uid,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
    };
    use kube::api::ObjectMeta;

    fn pod(name: &str, uid: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("apps".into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    fn with_phase(mut p: Pod, phase: &str, reason: Option<&str>) -> Pod {
        let status = p.status.get_or_insert_with(PodStatus::default);
        status.phase = Some(phase.into());
        status.reason = reason.map(Into::into);
        p
    }

    fn oom_restarted(mut p: Pod, restarts: i32, finished_at: &str) -> Pod {
        let terminated = ContainerStateTerminated {
            exit_code: 137,
            reason: Some("OOMKilled".into()),
            finished_at: Some(Time(finished_at.parse().expect("timestamp"))),
            ..ContainerStateTerminated::default()
        };
        let status = ContainerStatus {
            name: DEFAULT_SIDECAR_CONTAINER.into(),
            restart_count: restarts,
            last_state: Some(ContainerState {
                terminated: Some(terminated),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        };
        p.status
            .get_or_insert_with(PodStatus::default)
            .container_statuses = Some(vec![status]);
        p
    }

    fn dead_signal(name: &str, uid: &str, reason: DeathReason) -> PodSignal {
        PodSignal::Dead {
            namespace: "apps".into(),
            pod: name.into(),
            uid: Some(uid.into()),
            reason,
        }
    }

    fn tracker() -> Tracker {
        Tracker::new(DEFAULT_SIDECAR_CONTAINER)
    }

    fn list(t: &mut Tracker, pods: &[Pod]) -> Vec<PodSignal> {
        let mut out = t.observe(&watcher::Event::Init);
        for p in pods {
            out.extend(t.observe(&watcher::Event::InitApply(p.clone())));
        }
        out.extend(t.observe(&watcher::Event::InitDone));
        out
    }

    #[test]
    fn death_is_reported_once_per_pod() {
        let mut t = tracker();
        assert!(list(&mut t, &[pod("a", "1")]).is_empty());
        let failed = with_phase(pod("a", "1"), "Failed", Some("Evicted"));
        assert_eq!(
            t.observe(&watcher::Event::Apply(failed.clone())),
            [dead_signal("a", "1", DeathReason::Evicted)]
        );
        assert!(t.observe(&watcher::Event::Apply(failed.clone())).is_empty());
        assert!(
            t.observe(&watcher::Event::Delete(failed)).is_empty(),
            "already reported dead"
        );
    }

    #[test]
    fn delete_of_a_live_pod_is_reported() {
        let mut t = tracker();
        list(&mut t, &[pod("a", "1")]);
        assert_eq!(
            t.observe(&watcher::Event::Delete(pod("a", "1"))),
            [dead_signal("a", "1", DeathReason::Deleted)]
        );
    }

    #[test]
    fn relist_reports_pods_that_vanished_and_only_those() {
        let mut t = tracker();
        list(
            &mut t,
            &[
                pod("a", "1"),
                pod("b", "2"),
                with_phase(pod("c", "3"), "Failed", None),
            ],
        );
        // b vanished; c vanished too but was already reported dead.
        assert_eq!(
            list(&mut t, &[pod("a", "1")]),
            [dead_signal("b", "2", DeathReason::Deleted)]
        );
        assert!(list(&mut t, &[pod("a", "1")]).is_empty());
    }

    #[test]
    fn recreated_pod_with_new_uid_reports_the_old_one_deleted() {
        let mut t = tracker();
        list(&mut t, &[pod("web-0", "1")]);
        assert_eq!(
            list(&mut t, &[pod("web-0", "2")]),
            [dead_signal("web-0", "1", DeathReason::Deleted)],
            "the old incarnation's uid: jobs of the new one are not its"
        );
    }

    #[test]
    fn container_kill_reported_once_across_updates_and_relists() {
        let mut t = tracker();
        list(&mut t, &[pod("a", "1")]);
        let killed = oom_restarted(pod("a", "1"), 1, "2026-11-24T10:05:10Z");
        let signals = t.observe(&watcher::Event::Apply(killed.clone()));
        let oom = |k: &ContainerKill| k.reason == DeathReason::OomKilled;
        assert!(matches!(&signals[..], [PodSignal::ContainerKilled { kill, .. }] if oom(kill)));
        assert!(t.observe(&watcher::Event::Apply(killed.clone())).is_empty());
        assert!(list(&mut t, &[killed]).is_empty());
        // A second kill is a new signal.
        let again = oom_restarted(pod("a", "1"), 2, "2026-11-24T10:09:00Z");
        assert_eq!(t.observe(&watcher::Event::Apply(again)).len(), 1);
    }
}
