//! Reassigning the jobs of dead owners: level-triggered, idempotent, fenced.
//!
//! Two kinds of evidence orphan a job. A lease that expired (checked every
//! `reconcile_interval`, so progress never depends on seeing a Kubernetes event: a recoverer
//! that was down catches up on its first pass) and a pod signal (the pod, or its sidecar
//! container, was seen dead), which only makes it fast. Absence from the pod store is not
//! evidence: a pod the watch does not select (label, namespace, a `pod_name` that is not the
//! pod's) streams and renews its leases all the same, so such owners are left to their leases
//! and reported ([`crate::unseen`]). Every change is one fenced Lua script that applies only to
//! a job still `running` under the dead owner, so two recoverers at once (or a signal racing a
//! reconcile) cannot orphan a job twice or publish its event twice.
//!
//! Each pass also offers again the `deliver` jobs that waited too long for a pod of their
//! service ([`Reconciler::offer_again`]): an event can be lost (a broker restart, a consumer
//! that died with it), and Redis, not the broker, says what waits.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError, atomic::Ordering},
    time::{Duration, Instant},
};

use reprise_jobs::{
    Event, EventKind, JobStatus, JobStore as _, OrphanIf, Owner, Publisher, RedisStore, StoreError,
};

use crate::{
    admin::{Health, Metrics, ReasonLabels},
    unseen::{REPORT_EVERY, UnseenOwners},
};

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
    /// What is watched, for operators: the namespaces and the label selector.
    fn scope(&self) -> String;
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
    redis: RedisStore,
    publisher: Option<Publisher>,
    pods: Option<Arc<dyn PodView>>,
    metrics: Arc<Metrics>,
    unseen: Mutex<UnseenOwners>,
    handoff_retry: Duration,
    lease_grace: Duration,
    redis_seen: Mutex<RedisSeen>,
}

/// What the passes saw of Redis, for [`Reconciler::leases_on_hold`].
#[derive(Default)]
struct RedisSeen {
    /// A pass has read Redis before: a recoverer that just started has not, and cannot tell
    /// whether Redis was away or restarted just before it (finding 19).
    answered_before: bool,
    /// The server's `run_id` at the last pass that read it.
    run_id: Option<String>,
    /// A pass failed since (Redis unreachable or erring).
    failed: bool,
    /// Leases are not judged before this.
    hold_until: Option<Instant>,
}

/// How long a `pod.killed` report is remembered, so it is published once per pod.
const POD_REPORT_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// `handoff_retry` when the config names none.
pub const DEFAULT_HANDOFF_RETRY: Duration = Duration::from_secs(10);
/// `lease_grace` when the config names none: the sidecars' default `lease_ttl`.
pub const DEFAULT_LEASE_GRACE: Duration = Duration::from_secs(10);
/// At most this many jobs are offered again per pass (the most overdue first).
const OFFERS_PER_PASS: usize = 1000;
/// A job offered again waits twice as long each time, up to this many times `handoff_retry`.
const OFFER_BACKOFF_MAX_FACTOR: u32 = 32;

impl Reconciler {
    /// `pods` is `None` without Kubernetes (leases alone); `publisher` `None` without a broker.
    pub fn new(
        redis: RedisStore,
        publisher: Option<Publisher>,
        pods: Option<Arc<dyn PodView>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            redis,
            publisher,
            pods,
            metrics,
            unseen: Mutex::default(),
            handoff_retry: DEFAULT_HANDOFF_RETRY,
            lease_grace: DEFAULT_LEASE_GRACE,
            redis_seen: Mutex::default(),
        }
    }

    /// How long leases go unjudged once Redis answers again after a failed pass or a restart
    /// (the config's `lease_grace`).
    pub fn with_lease_grace(mut self, grace: Duration) -> Self {
        self.lease_grace = grace;
        self
    }

    /// Whether this pass leaves expired leases alone. A lease is evidence only while its owner
    /// could have renewed it: after Redis was unreachable (a failed pass) or restarted (another
    /// `run_id`, with leases as old as its last write to disk, already lapsed however alive
    /// their owners are), every owner gets `lease_grace` of Redis answering to renew before
    /// its lease is judged again. So does a recoverer's first pass: it has not seen how Redis
    /// was before it started (the soak restarted one while Redis was down, and its first pass
    /// orphaned a live owner's every job). Without it one Redis restart orphaned live streams
    /// by the dozen, and each takeover replayed what its app had (docs/reliability.md,
    /// finding 17).
    /// Pod signals are evidence of their own and are not held.
    async fn leases_on_hold(&self) -> Result<bool, StoreError> {
        let run_id = self.redis.run_id().await?;
        let now = Instant::now();
        let mut seen = self
            .redis_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A server that refuses `INFO` gives no run_id: only failed passes start a hold then.
        let restarted = matches!((&seen.run_id, &run_id), (Some(a), Some(b)) if a != b);
        let first = !seen.answered_before;
        if restarted || seen.failed || first {
            let grace = humantime::format_duration(self.lease_grace);
            if first {
                // Every start: not a fault.
                tracing::info!(
                    redis.run_id = run_id.as_deref().unwrap_or_default(),
                    %grace,
                    "first pass: expired leases are judged once their owners have had the grace to renew"
                );
            } else {
                tracing::warn!(
                    redis.run_id = run_id.as_deref().unwrap_or_default(),
                    why = if restarted { "restarted or failed over" } else { "unreachable" },
                    %grace,
                    "redis was unreachable or restarted: leases are judged again once its owners have had the grace to renew"
                );
            }
            seen.hold_until = Some(now + self.lease_grace);
        }
        seen.run_id = run_id;
        seen.failed = false;
        seen.answered_before = true;
        let hold = seen.hold_until.is_some_and(|t| now < t);
        if !hold {
            seen.hold_until = None;
        }
        self.metrics.leases_on_hold.set(i64::from(hold));
        Ok(hold)
    }

    /// How long a `deliver` job let go may wait for a pod before its event is published again
    /// (the config's `handoff_retry`).
    pub fn with_handoff_retry(mut self, after: Duration) -> Self {
        self.handoff_retry = after;
        self
    }

    /// One full pass. Returns the number of jobs orphaned.
    /// Runs until `stop` resolves: a full pass every `interval` (a missed tick is delayed, not
    /// bunched) and each pod signal as it arrives. One error policy for both, as controller-rs
    /// has one: a pass that fails is logged and retried at the next tick, and turns `/readyz`
    /// not-ready (Redis is the truth: without it nothing can be reassigned); a pass that
    /// succeeds turns it ready again.
    pub async fn run(
        &self,
        interval: Duration,
        mut signals: tokio::sync::mpsc::UnboundedReceiver<Signal>,
        health: &Health,
        stop: impl Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = std::pin::pin!(stop);
        loop {
            let result = tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => self.reconcile().await,
                Some(s) = signals.recv() => self.on_signal(&s).await,
            };
            if let Err(e) = &result {
                tracing::warn!(error = %e, "reconcile failed; retrying next interval");
            }
            health.redis_ok.store(result.is_ok(), Ordering::Relaxed);
        }
    }

    pub async fn reconcile(&self) -> Result<usize, StoreError> {
        let started = Instant::now();
        let result = self.pass().await;
        self.metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.metrics.reconcile_errors.inc();
            self.redis_seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .failed = true;
        }
        result
    }

    async fn pass(&self) -> Result<usize, StoreError> {
        let mut orphaned = 0;
        let expired = if self.leases_on_hold().await? {
            Vec::new()
        } else {
            self.redis.expired_leases(10_000).await?
        };
        for id in expired {
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
        self.report_unseen_owners().await?;
        self.offer_again().await?;
        Ok(orphaned)
    }

    /// Publishes again the event of every `deliver` job that has waited for a pod longer than
    /// its backoff (`{prefix}:handoffs`). Without a broker there is nobody to tell. A job no
    /// pod can take (its sinks all gone) costs one event per backoff, at most one per 32
    /// `handoff_retry`. A pod that finds it taken already acknowledges the event and moves on.
    async fn offer_again(&self) -> Result<(), StoreError> {
        let Some(publisher) = &self.publisher else {
            return Ok(());
        };
        let (first, max) = (
            self.handoff_retry,
            self.handoff_retry * OFFER_BACKOFF_MAX_FACTOR,
        );
        for due in self.redis.due_handoffs(OFFERS_PER_PASS, first, max).await? {
            let Some(record) = self.redis.get(&due.job_id).await? else {
                continue;
            };
            let kind = match due.status {
                JobStatus::Orphaned => EventKind::JobOrphaned,
                _ => EventKind::JobInterrupted,
            };
            let why = format!(
                "offered again ({}): no pod of {} took the job up",
                due.offers, record.service
            );
            tracing::warn!(
                job.id = %due.job_id,
                status = due.status.as_str(),
                offers = due.offers,
                offset = record.offset.as_deref().unwrap_or(""),
                "a deliver job waited for a pod too long; publishing its event again"
            );
            self.metrics
                .handoffs_offered_again
                .get_or_create(&ReasonLabels {
                    reason: due.status.as_str().to_owned(),
                })
                .inc();
            let event = Event::from_record(kind, &record).with_reason(&why);
            if let Err(e) = publisher.publish(&event).await {
                tracing::warn!(job.id = %due.job_id, error = %e, "event not published again; the next due time tries again");
            }
        }
        Ok(())
    }

    /// Finds the owners of running jobs that the synced pod store does not hold; their jobs
    /// are left to their leases, and the owners are counted and logged (see [`crate::unseen`]).
    async fn report_unseen_owners(&self) -> Result<(), StoreError> {
        let Some(view) = self.pods.as_ref().filter(|v| v.synced()) else {
            self.lock_unseen().clear();
            self.metrics.unknown_owners.set(0);
            return Ok(());
        };
        // owner (namespace/pod) → (its running jobs, one of them)
        let mut unseen: BTreeMap<String, (usize, String)> = BTreeMap::new();
        for id in self.redis.running_jobs().await? {
            let job = match self.redis.get(&id).await {
                Ok(Some(job)) if job.status == JobStatus::Running => job,
                Ok(_) => continue,
                Err(e) if e.is_unavailable() => return Err(e),
                // A hash someone else wrote: nothing to report about its owner.
                Err(e) => {
                    tracing::debug!(job.id = %id, error = %e, "unreadable job skipped");
                    continue;
                }
            };
            let owner = &job.owner;
            let seen = view
                .pods_named(&owner.pod)
                .iter()
                .any(|p| may_run_in(owner, p));
            if !seen {
                let entry = unseen.entry(owner.pod_ref()).or_insert((0, id));
                entry.0 += 1;
            }
        }
        let findings = self
            .lock_unseen()
            .pass(unseen.keys().cloned(), Instant::now());
        self.metrics
            .unknown_owners
            .set(i64::try_from(findings.confirmed.len()).unwrap_or(i64::MAX));
        for owner in findings.to_report {
            let Some((jobs, example)) = unseen.get(&owner) else {
                continue;
            };
            tracing::warn!(
                owner.pod = %owner,
                jobs,
                job.id = %example,
                watched = %view.scope(),
                "the owner of running jobs is not in the pod store; its jobs are left to their \
                 leases (a kill is noticed only once a lease expires). Check the pod's labels \
                 against label_selector, its namespace against namespaces, and that the \
                 sidecar's POD_NAME (pod_name) is the pod's name, not a hostname. Logged again \
                 in {} if it persists",
                humantime::format_duration(REPORT_EVERY)
            );
        }
        Ok(())
    }

    fn lock_unseen(&self) -> std::sync::MutexGuard<'_, UnseenOwners> {
        // The tracker is left consistent before anything can panic.
        self.unseen.lock().unwrap_or_else(PoisonError::into_inner)
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
