//! Reassigning the jobs of dead owners: level-triggered, idempotent, fenced.
//!
//! Every `reconcile_interval` the whole state is checked again (expired leases; running jobs
//! whose owner pod is gone from the synced pod store), so progress never depends on seeing every
//! Kubernetes event. Pod signals only make it fast. Every change is one fenced Lua script that
//! applies only to a job still `running` under the dead owner, so two recoverers at once (or a
//! signal racing a reconcile) cannot orphan a job twice or publish its event twice.

use std::{sync::Arc, time::Instant};

use reprise_jobs::{Event, EventKind, JobStore as _, OrphanIf, Publisher, RedisStore, StoreError};

use crate::admin::{Metrics, ReasonLabels};

/// What the pod watch tells the reconciler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// The whole pod is dead or gone: every job it owns is dead.
    PodDead {
        namespace: String,
        pod: String,
        reason: &'static str,
    },
    /// The sidecar container was killed (OOM, SIGKILL) at `finished_at_ms` (epoch ms); a
    /// restarted container is a new instance, whose jobs are alive.
    SidecarKilled {
        namespace: String,
        pod: String,
        reason: &'static str,
        finished_at_ms: Option<u64>,
    },
}

/// The reconciler's view of the pods: `None` while not synced (no Kubernetes, or the initial
/// list is not in yet); then whether a pod of that name exists.
pub trait PodView: Send + Sync {
    fn synced(&self) -> bool;
    fn has_pod(&self, name: &str) -> bool;
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
            if view.has_pod(&job.owner.pod) {
                continue;
            }
            let cond = OrphanIf::OwnedBy {
                pod: job.owner.pod.clone(),
                spare: None,
            };
            let why = format!("owner pod {} no longer exists", job.owner.pod);
            if self.orphan(&id, &cond, "pod_absent", &why).await? {
                orphaned += 1;
            }
        }
        Ok(orphaned)
    }

    /// Acts on one signal from the pod watch.
    pub async fn on_signal(&self, signal: &Signal) -> Result<usize, StoreError> {
        let (namespace, pod, reason, spare) = match signal {
            Signal::PodDead {
                namespace,
                pod,
                reason,
            } => (namespace, pod, *reason, None),
            Signal::SidecarKilled {
                namespace,
                pod,
                reason,
                finished_at_ms,
            } => {
                // A sidecar that registered after the kill is the restarted container: its
                // jobs are alive. Every other instance of this pod is dead.
                let spare = match (self.redis.sidecar_of(pod).await?, finished_at_ms) {
                    (Some(s), Some(at)) if s.started_at_ms > *at => Some(s.instance),
                    _ => None,
                };
                (namespace, pod, *reason, spare)
            }
        };
        self.metrics
            .pods_dead
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
        let cond = OrphanIf::OwnedBy {
            pod: pod.clone(),
            spare,
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
            && self.redis.first_to_report_pod(pod, POD_REPORT_TTL).await?
            && let Err(e) = publisher.publish(&Event::pod_killed(pod, namespace)).await
        {
            tracing::warn!(%pod, error = %e, "pod.killed not published");
        }
        Ok(orphaned)
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
            owner.pod = record.as_ref().map(|r| r.owner.pod.as_str()).unwrap_or(""),
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
