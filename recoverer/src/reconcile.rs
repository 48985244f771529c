//! Reassigning the jobs of dead owners: level-triggered, idempotent, fenced.
//!
//! Every `reconcile_interval` the whole state is checked again (expired leases; running jobs
//! whose owner pod is gone from the synced pod store), so progress never depends on seeing every
//! Kubernetes event. Pod signals only make it fast. Every change is one fenced Lua script that
//! applies only to a job still `running` under the dead owner, so two recoverers at once (or a
//! signal racing a reconcile) cannot orphan a job twice or publish its event twice.

use std::{sync::Arc, time::Instant};

use reprise_jobs::{
    Event, EventKind, JobStore as _, OrphanIf, Owner, Publisher, RedisStore, StoreError,
};

use crate::admin::{Metrics, ReasonLabels};

/// What the pod watch tells the reconciler. `uid` is that of the pod the signal is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// The whole pod is dead or gone: every job it owns is dead.
    PodDead {
        namespace: String,
        pod: String,
        uid: Option<String>,
        reason: &'static str,
    },
    /// The sidecar container was killed (OOM, SIGKILL) at `finished_at_ms` (epoch ms); a
    /// restarted container is a new instance, whose jobs are alive.
    SidecarKilled {
        namespace: String,
        pod: String,
        uid: Option<String>,
        reason: &'static str,
        finished_at_ms: Option<u64>,
    },
}

/// A pod of the store, as far as job ownership goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenPod {
    pub namespace: String,
    pub uid: Option<String>,
}

/// The reconciler's view of the pods: `None` while not synced (no Kubernetes, or the initial
/// list is not in yet); then which pods of a name exist.
pub trait PodView: Send + Sync {
    fn synced(&self) -> bool;
    /// Every watched pod called `name`, whatever its namespace.
    fn pods_named(&self, name: &str) -> Vec<SeenPod>;
}

/// Whether `owner` may be running in `pod` (a pod of the owner's pod name): by uid when both
/// know it, else by namespace when both know it; an owner that recorded neither may be in any
/// pod of its name. The orphan script applies the same rule.
fn may_run_in(owner: &Owner, pod: &SeenPod) -> bool {
    let seen = Owner::new(owner.pod.clone(), "")
        .in_namespace(pod.namespace.clone())
        .with_uid(pod.uid.clone().unwrap_or_default());
    owner.same_pod(&seen)
}

pub struct Reconciler {
    pub redis: RedisStore,
    pub publisher: Option<Publisher>,
    pub pods: Option<Arc<dyn PodView>>,
    pub metrics: Arc<Metrics>,
}

/// How long a `pod.killed` report is remembered, so it is published once per pod.
const POD_REPORT_TTL: std::time::Duration = std::time::Duration::from_secs(600);

impl Reconciler {
    /// One full pass. Returns the number of jobs orphaned.
    pub async fn reconcile(&self) -> Result<usize, StoreError> {
        let started = Instant::now();
        let result = self.pass().await;
        self.metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.metrics.reconcile_errors.inc();
        }
        result
    }

    async fn pass(&self) -> Result<usize, StoreError> {
        let mut orphaned = 0;
        for id in self.redis.expired_leases(10_000).await? {
            if self
                .orphan(
                    &id,
                    &OrphanIf::LeaseExpired,
                    "lease_expired",
                    "lease expired: its owner stopped renewing",
                )
                .await?
            {
                orphaned += 1;
            }
        }
        let Some(view) = self.pods.as_ref().filter(|v| v.synced()) else {
            return Ok(orphaned);
        };
        for id in self.redis.running_jobs().await? {
            let Some(job) = self.redis.get(&id).await? else {
                continue;
            };
            let owner = &job.owner;
            if view
                .pods_named(&owner.pod)
                .iter()
                .any(|p| may_run_in(owner, p))
            {
                continue;
            }
            let cond = OrphanIf::OwnedBy {
                pod: owner.pod.clone(),
                namespace: owner.namespace.clone().unwrap_or_default(),
                uid: owner.uid.clone(),
                spare: None,
                include_unknown_namespace: true,
            };
            let why = format!("owner pod {} no longer exists", owner.pod_ref());
            if self.orphan(&id, &cond, "pod_absent", &why).await? {
                orphaned += 1;
            }
        }
        Ok(orphaned)
    }

    /// Acts on one signal from the pod watch.
    pub async fn on_signal(&self, signal: &Signal) -> Result<usize, StoreError> {
        let (namespace, pod, uid, reason, spare) = match signal {
            Signal::PodDead {
                namespace,
                pod,
                uid,
                reason,
            } => (namespace, pod, uid, *reason, None),
            Signal::SidecarKilled {
                namespace,
                pod,
                uid,
                reason,
                finished_at_ms,
            } => {
                // A sidecar that registered after the kill is the restarted container: its
                // jobs are alive. Every other instance of this pod is dead.
                let registered = self.redis.sidecar_of(namespace, pod).await?;
                let spare = match (registered, finished_at_ms) {
                    (Some(s), Some(at)) if s.started_at_ms > *at => Some(s.instance),
                    _ => None,
                };
                (namespace, pod, uid, *reason, spare)
            }
        };
        self.metrics
            .pods_dead
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
        // A job that recorded no namespace (an older sidecar) may belong to a namesake in
        // another namespace; while one is live there, its lease decides.
        let include_unknown_namespace = !self.namesake_elsewhere(namespace, pod);
        let cond = OrphanIf::OwnedBy {
            pod: pod.clone(),
            namespace: namespace.clone(),
            uid: uid.clone(),
            spare,
            include_unknown_namespace,
        };
        let why = format!("pod {namespace}/{pod}: {reason}");
        let mut orphaned = 0;
        for id in self.redis.pod_jobs(pod).await? {
            if self.orphan(&id, &cond, reason, &why).await? {
                orphaned += 1;
            }
        }
        tracing::info!(%namespace, %pod, reason, orphaned, "owner seen dead");
        if matches!(signal, Signal::PodDead { .. })
            && let Some(publisher) = &self.publisher
            && self
                .redis
                .first_to_report_pod(namespace, pod, POD_REPORT_TTL)
                .await?
            && let Err(e) = publisher.publish(&Event::pod_killed(pod, namespace)).await
        {
            tracing::warn!(%pod, error = %e, "pod.killed not published");
        }
        Ok(orphaned)
    }

    /// Whether a pod called `pod` is watched in a namespace other than `namespace`, or the
    /// store cannot tell yet.
    fn namesake_elsewhere(&self, namespace: &str, pod: &str) -> bool {
        match self.pods.as_ref().filter(|v| v.synced()) {
            Some(view) => view
                .pods_named(pod)
                .iter()
                .any(|p| p.namespace != namespace),
            None => true,
        }
    }

    /// Orphans one job if `cond` still holds; publishes `job.orphaned.{service}` when this call
    /// did it (so at most once per job and fence, whatever the number of recoverers).
    async fn orphan(
        &self,
        id: &str,
        cond: &OrphanIf,
        label: &str,
        why: &str,
    ) -> Result<bool, StoreError> {
        let Some(fence) = self.redis.orphan(id, cond, why).await? else {
            return Ok(false);
        };
        self.metrics
            .jobs_orphaned
            .get_or_create(&ReasonLabels {
                reason: label.to_owned(),
            })
            .inc();
        let record = self.redis.get(id).await?;
        tracing::info!(
            job.id = %id,
            fence,
            owner.pod = record.as_ref().map(|r| r.owner.pod_ref()).unwrap_or_default(),
            offset = record.as_ref().and_then(|r| r.offset.as_deref()).unwrap_or(""),
            reason = why,
            "job orphaned"
        );
        if let (Some(publisher), Some(record)) = (&self.publisher, record) {
            let event = Event::from_record(EventKind::JobOrphaned, &record).with_reason(why);
            if let Err(e) = publisher.publish(&event).await {
                tracing::warn!(job.id = %id, error = %e, "job.orphaned neither published nor queued; sidecars find the job on request");
            }
        }
        Ok(true)
    }
}
