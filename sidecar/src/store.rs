//! The sidecar's view of the job store: Redis when configured and reachable, the in-process store
//! otherwise. A Redis outage never stops a stream: new jobs go to memory (resumable within this
//! process), the sidecar reports not-ready, and a probe flips back once Redis answers again.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use reprise_jobs::{
    Checkpoint, Claim, Finish, JobRecord, JobStore, MemoryStore, NewJob, Owner, RedisStore,
    Restore, StoreError, Write,
};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Health, Metrics, OpLabels};

/// Where one job's state lives; fixed at claim time for the life of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Redis,
    Memory,
}

/// How many job ids [`Store`] remembers as left in Redis.
const KNOWN_IN_REDIS: usize = 4096;
/// How often a sidecar that finds Redis gone looks whether it is back.
const OUTAGE_PROBE: Duration = Duration::from_millis(250);

/// How long after Redis took a write it is on disk with `appendfsync everysec`: Redis fsyncs
/// every second and, while an fsync lags, holds writes back for up to two more; with margin.
const DURABLE_AFTER: Duration = Duration::from_secs(5);

/// How many final states [`Store`] keeps until Redis has them on disk; past it the oldest goes
/// (counted in `reprise_store_unconfirmed_final_states_dropped_total`).
const UNCONFIRMED_MAX: usize = 65_536;

/// A final state Redis took less than [`DURABLE_AFTER`] before this process last saw the same
/// Redis server answer: a `redis-server` restarted in between (SIGKILL, OOM, a node lost) from
/// its AOF or snapshot, or a failover to a replica that was behind, may have lost it, and then
/// holds the job `running` under an owner that let it go. Its lease lapses, the recoverer
/// orphans it, and an `on_request` job whose app got its whole stream waits forever for a call
/// that never comes (docs/reliability.md, finding 18). So each is written again when the
/// server's `run_id` changes.
struct Unconfirmed {
    at: Instant,
    finish: Finish,
    job: Option<NewJob>,
}

/// A bounded set of job ids, oldest out first.
#[derive(Default)]
struct Known {
    order: std::collections::VecDeque<String>,
    ids: std::collections::HashSet<String>,
}

impl Known {
    fn insert(&mut self, id: &str) {
        if self.ids.insert(id.to_owned()) {
            self.order.push_back(id.to_owned());
            if self.order.len() > KNOWN_IN_REDIS
                && let Some(old) = self.order.pop_front()
            {
                self.ids.remove(&old);
            }
        }
    }
}

/// The job store as the sidecar uses it: every claim, checkpoint and final state goes to Redis
/// when it is connected and reachable, else to the in-process store (and the sidecar reports
/// not-ready until Redis answers again). A job claimed in memory moves to Redis once Redis
/// answers (`Checkpointer::adopt`); a job claimed in Redis stays there.
pub struct Store {
    /// `(url, key_prefix)` when Redis is configured.
    redis_config: Option<(String, String)>,
    /// This sidecar process, registered in Redis as its pod's current instance.
    owner: Option<Owner>,
    /// Set once the first connection succeeds; the connection manager reconnects after that.
    redis: OnceCell<RedisStore>,
    memory: Arc<MemoryStore>,
    /// Final states Redis did not take (it failed or timed out), by job id, with the job as
    /// claimed: written once it answers ([`Store::write_pending`], every checkpoint tick), and
    /// before anything else when a call claims the same job, which would otherwise find it
    /// still `running` under this sidecar and start it again from scratch.
    pending: Mutex<HashMap<String, (Finish, Option<NewJob>)>>,
    /// Jobs this process last left in Redis (at most [`KNOWN_IN_REDIS`], oldest forgotten
    /// first): while Redis counts as down, a claim of one of them still asks Redis, where the
    /// job waits to be resumed, rather than start it afresh in memory.
    in_redis: Mutex<Known>,
    /// Final states Redis took that it may not have on disk yet (see [`Unconfirmed`]), oldest
    /// first, and the `run_id` of the server that took them.
    unconfirmed: Mutex<std::collections::VecDeque<Unconfirmed>>,
    run_id: Mutex<Option<String>>,
    degraded: AtomicBool,
    /// Wakes [`Store::watch_redis`] when an operation finds Redis gone, so it probes at its
    /// outage pace from then on and not after the rest of a healthy pause.
    outage: tokio::sync::Notify,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl Store {
    /// Connects to Redis if configured; when it is unreachable the sidecar starts anyway,
    /// degraded (not ready, offsets in memory), and [`Store::watch_redis`] keeps trying.
    pub async fn new(
        redis_config: Option<(String, String)>,
        owner: Option<Owner>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let store = Store {
            redis_config,
            owner,
            redis: OnceCell::new(),
            memory: Arc::new(MemoryStore::new()),
            pending: Mutex::new(HashMap::new()),
            in_redis: Mutex::new(Known::default()),
            unconfirmed: Mutex::default(),
            run_id: Mutex::default(),
            degraded: AtomicBool::new(false),
            outage: tokio::sync::Notify::new(),
            health,
            metrics,
        };
        store.health.store_ok.store(true, Ordering::Relaxed);
        if store.redis_config.is_some() && !store.connect().await {
            store.metrics.store_degraded.set(1);
            store.health.store_ok.store(false, Ordering::Relaxed);
            store.degraded.store(true, Ordering::Relaxed);
        }
        store
    }

    async fn connect(&self) -> bool {
        let Some((url, prefix)) = &self.redis_config else {
            return false;
        };
        match RedisStore::connect(url, prefix).await {
            Ok(r) => {
                // The recoverer tells this process's jobs from a predecessor's by this.
                if let Some(owner) = &self.owner
                    && let Err(e) = r.register_sidecar(owner).await
                {
                    tracing::warn!(error = %e, "cannot register this sidecar instance in redis");
                }
                match r.run_id().await {
                    Ok(Some(id)) => {
                        *self.run_id.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
                    }
                    Ok(None) => tracing::warn!(
                        "redis refuses `INFO server` or gives no run_id (an ACL without +info?): a restart of redis that loses final job states is not noticed"
                    ),
                    Err(e) => tracing::warn!(error = %e, "cannot read redis's run_id"),
                }
                let _ = self.redis.set(r);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "job store: cannot reach redis; offsets kept in memory until it answers");
                self.metrics
                    .store_errors
                    .get_or_create(&OpLabels { op: "connect" })
                    .inc();
                false
            }
        }
    }

    fn get(&self, backend: Backend) -> &dyn JobStore {
        match (backend, self.redis.get()) {
            (Backend::Redis, Some(r)) => r,
            _ => self.memory.as_ref(),
        }
    }

    /// Counts a failed Redis operation; the first of an outage turns the sidecar not-ready.
    pub(crate) fn failed(&self, op: &'static str, e: &StoreError) {
        self.metrics
            .store_errors
            .get_or_create(&OpLabels { op })
            .inc();
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::error!(error = %e, op, "job store: redis unreachable; keeping offsets in memory until it is back");
            self.metrics.store_degraded.set(1);
            self.health.store_ok.store(false, Ordering::Relaxed);
            self.outage.notify_one();
        }
    }

    /// The Redis store, once connected (the event outbox lives there too).
    pub fn redis(&self) -> Option<&RedisStore> {
        self.redis.get()
    }

    /// Reads a job from Redis (handoffs need the shared truth, never the in-process store).
    pub async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, String> {
        let redis = self.redis.get().ok_or("redis is not connected")?;
        redis.get(job_id).await.map_err(|e| {
            self.failed("get", &e);
            e.to_string()
        })
    }

    /// Claims a job only if it waits to be resumed (`interrupted`, `orphaned`, or `running` with
    /// a lapsed lease): a handoff must never restart a finished job from scratch.
    pub async fn take_over(&self, job: &NewJob) -> Result<(Backend, Option<Claim>), String> {
        let redis = self.redis.get().ok_or("redis is not connected")?;
        match redis.take_over(job).await {
            Ok(c) => Ok((Backend::Redis, c)),
            Err(e) => {
                self.failed("take_over", &e);
                Err(e.to_string())
            }
        }
    }

    /// Whether Redis is configured but not answering (the sidecar is degraded).
    pub fn redis_down(&self) -> bool {
        self.redis_config.is_some() && !self.redis_ready()
    }

    /// Waits until Redis counts as up again (polled every 100 ms), up to `limit`; whether it
    /// did. A store without Redis configured is never down.
    pub async fn redis_back_within(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.redis_down() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    }

    /// Whether Redis is connected and answered last time: jobs claimed in memory may move
    /// there.
    pub fn redis_ready(&self) -> bool {
        self.redis.get().is_some() && !self.degraded.load(Ordering::Relaxed)
    }

    /// Claims in Redis a job this sidecar runs in memory (see `Checkpointer::adopt`); None if
    /// Redis failed.
    pub async fn adopt(&self, job: &NewJob) -> Option<Claim> {
        let redis = self.redis.get()?;
        match redis.claim(job).await {
            Ok(c) => Some(c),
            Err(e) => {
                self.failed("adopt", &e);
                None
            }
        }
    }

    /// Claims in Redis: `None` if Redis is configured and did not take the claim (it is down,
    /// or failed now), for the caller to wait for it or go on in memory
    /// ([`Store::claim_in_memory`]); without Redis, in memory. A final state of the same job
    /// that Redis has not taken yet is written first, and kept again if Redis fails.
    pub async fn claim(&self, job: &NewJob) -> Option<(Backend, Claim)> {
        if self.redis_config.is_none() {
            return Some(self.claim_in_memory(job).await);
        }
        let pending = self.take_pending(&job.job_id);
        let known = pending.is_some()
            || self
                .in_redis
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .ids
                .contains(&job.job_id);
        if let Some(redis) = self.redis.get()
            && (known || !self.degraded.load(Ordering::Relaxed))
        {
            // A failed write keeps the state again.
            let written = match &pending {
                Some((f, claimed)) => self.finish(Backend::Redis, f, claimed.as_ref()).await,
                None => Some(Write::Ok),
            };
            if written.is_some() {
                match redis.claim(job).await {
                    Ok(c) => return Some((Backend::Redis, c)),
                    Err(e) => self.failed("claim", &e),
                }
            }
        } else if let Some((f, claimed)) = &pending {
            self.keep_pending(f, claimed.as_ref());
        }
        None
    }

    /// Claims in the in-process store, Redis being down. A final state of the same job kept
    /// for Redis tells it where the job stands (it stays kept for Redis), so the claim there
    /// resumes the job rather than starting it afresh.
    pub async fn claim_in_memory(&self, job: &NewJob) -> (Backend, Claim) {
        let kept = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&job.job_id)
            .map(|(f, _)| f.clone());
        if let Some(f) = kept {
            let restore = Restore {
                job: job.clone(),
                fence: f.fence,
                offset: f.offset.clone(),
                messages: f.messages,
                note: "final state redis had not taken yet".into(),
            };
            if self.memory.restore(&restore).await.is_ok() {
                let _ = self.memory.finish(&f).await;
            }
        }
        match self.memory.claim(job).await {
            Ok(c) => (Backend::Memory, c),
            // The in-process store cannot fail; treat it as a fresh run if it ever did.
            Err(e) => {
                tracing::error!(error = %e, "in-process job store failed");
                (Backend::Memory, Claim::Fresh { fence: 0 })
            }
        }
    }

    pub async fn checkpoint_many(
        &self,
        backend: Backend,
        cps: &[Checkpoint],
    ) -> Option<Vec<Write>> {
        match self.get(backend).checkpoint_many(cps).await {
            Ok(w) => Some(w),
            Err(e) => {
                self.failed("checkpoint", &e);
                None
            }
        }
    }

    pub async fn note_resume(&self, backend: Backend, job_id: &str, fence: u64, error: &str) {
        if let Err(e) = self.get(backend).note_resume(job_id, fence, error).await {
            self.failed("note_resume", &e);
        }
    }

    /// A call's final state ([`Store::finish`]), except that while Redis counts as down it is
    /// kept at once and written once Redis answers: the app's status waits for this write,
    /// and a write to a Redis that is gone waits for the client's reconnection attempts
    /// instead (the soak's finding 22: an app killed while it waited for the end of a stream
    /// it had read asked again, and got the whole job afresh).
    pub async fn finish_call(
        &self,
        backend: Backend,
        f: &Finish,
        job: Option<&NewJob>,
    ) -> Option<Write> {
        if backend == Backend::Redis && self.degraded.load(Ordering::Relaxed) {
            self.remember_in_redis(&f.job_id);
            self.keep_pending(f, job);
            return None;
        }
        self.finish(backend, f, job).await
    }

    fn remember_in_redis(&self, job_id: &str) {
        self.in_redis
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job_id);
    }

    /// Takes the job out of `running`. If the store had forgotten it, `job` (as claimed) is
    /// written back first, so the final state is recorded all the same.
    pub async fn finish(
        &self,
        backend: Backend,
        f: &Finish,
        job: Option<&NewJob>,
    ) -> Option<Write> {
        if backend == Backend::Redis {
            self.remember_in_redis(&f.job_id);
        }
        let written = match self.get(backend).finish(f).await {
            Ok(w) => w,
            Err(e) => {
                self.failed("finish", &e);
                if backend == Backend::Redis {
                    self.keep_pending(f, job);
                }
                return None;
            }
        };
        let Some(job) = job.filter(|_| written == Write::Forgotten) else {
            if written == Write::Ok && backend == Backend::Redis {
                self.unconfirmed_push(f, job);
            }
            return Some(written);
        };
        let restore = Restore {
            job: job.clone(),
            fence: f.fence,
            offset: f.offset.clone(),
            messages: f.messages,
            note: String::new(),
        };
        match self.restore(backend, restore).await? {
            Write::Ok => match self.get(backend).finish(f).await {
                Ok(w) => {
                    if w == Write::Ok && backend == Backend::Redis {
                        self.unconfirmed_push(f, Some(job));
                    }
                    Some(w)
                }
                Err(e) => {
                    self.failed("finish", &e);
                    None
                }
            },
            refused => Some(refused),
        }
    }

    fn unconfirmed_push(&self, f: &Finish, job: Option<&NewJob>) {
        let mut kept = self.unconfirmed.lock().unwrap_or_else(|e| e.into_inner());
        kept.push_back(Unconfirmed {
            at: Instant::now(),
            finish: f.clone(),
            job: job.cloned(),
        });
        if kept.len() > UNCONFIRMED_MAX {
            kept.pop_front();
            self.metrics.store_unconfirmed_dropped.inc();
        }
        self.metrics
            .store_unconfirmed_final_states
            .set(kept.len() as i64);
    }

    /// After a probe sent at `sent` found the server `run_id`: the same server as before has
    /// on disk what it took [`DURABLE_AFTER`] before; another one (restarted, or failed over
    /// to) gets every final state it may have lost written again. Writing one again is safe:
    /// the fence refuses it where the job has moved on (taken over, or finished already).
    /// A server that gives no `run_id` counts as the same one.
    async fn confirm_or_write_again(&self, run_id: Option<String>, sent: Instant) {
        let before = {
            let mut known = self.run_id.lock().unwrap_or_else(|e| e.into_inner());
            match &run_id {
                Some(id) => known.replace(id.clone()),
                None => known.clone(),
            }
        };
        let run_id = run_id.or_else(|| before.clone()).unwrap_or_default();
        let again: Vec<Unconfirmed> = {
            let mut kept = self.unconfirmed.lock().unwrap_or_else(|e| e.into_inner());
            if before.as_ref().is_none_or(|b| *b == run_id) {
                while kept.front().is_some_and(|u| u.at + DURABLE_AFTER <= sent) {
                    kept.pop_front();
                }
                self.metrics
                    .store_unconfirmed_final_states
                    .set(kept.len() as i64);
                return;
            }
            self.metrics.store_unconfirmed_final_states.set(0);
            kept.drain(..).collect()
        };
        tracing::warn!(
            redis.run_id.before = before.as_deref().unwrap_or_default(),
            redis.run_id = %run_id,
            final_states = again.len(),
            "redis restarted or failed over: writing again the final job states it may have lost"
        );
        for u in again {
            match self.finish(Backend::Redis, &u.finish, u.job.as_ref()).await {
                Some(Write::Ok) => {
                    self.metrics.store_final_states_rewritten.inc();
                    tracing::warn!(
                        job.id = %u.finish.job_id,
                        status = u.finish.status.as_str(),
                        "final job state written again: redis had lost it"
                    );
                }
                // Redis kept it, or the job has moved on under another owner since.
                Some(_) => {}
                // Kept as pending by `finish`, written once Redis answers.
                None => {}
            }
        }
    }

    /// Keeps a final state Redis did not take, for [`Store::write_pending`] (a later one of the
    /// same job replaces it).
    fn keep_pending(&self, f: &Finish, job: Option<&NewJob>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let new = pending
            .insert(f.job_id.clone(), (f.clone(), job.cloned()))
            .is_none();
        self.metrics
            .store_pending_final_states
            .set(pending.len() as i64);
        if new {
            tracing::warn!(job.id = %f.job_id, status = f.status.as_str(), "final job state not written: redis failed; kept, and written once it answers");
        }
    }

    fn take_pending(&self, job_id: &str) -> Option<(Finish, Option<NewJob>)> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let taken = pending.remove(job_id);
        self.metrics
            .store_pending_final_states
            .set(pending.len() as i64);
        taken
    }

    /// Writes the final states Redis did not take (see the `pending` field), now that it
    /// answers; those it fails again stay for the next call.
    /// Final states Redis has not taken yet.
    pub fn pending_len(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub async fn write_pending(&self) {
        let due: Vec<(Finish, Option<NewJob>)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            self.metrics.store_pending_final_states.set(0);
            pending.drain().map(|(_, p)| p).collect()
        };
        for (f, job) in due {
            if let Some(written) = self.finish(Backend::Redis, &f, job.as_ref()).await {
                tracing::info!(
                    job.id = %f.job_id,
                    status = f.status.as_str(),
                    refused = written != Write::Ok,
                    "final job state written now that redis answers"
                );
            }
        }
    }

    /// Writes back a job the store forgot (see [`Write::Forgotten`]): this sidecar runs it, so
    /// its state is the truth. Logged and counted (`reprise_store_restores_total`); the
    /// instance registration, lost with the rest, is written again too.
    pub async fn restore(&self, backend: Backend, mut r: Restore) -> Option<Write> {
        let why = "the job store had lost this job (Redis restarted empty, failed over to a \
                   replica that was behind, was flushed, or evicted it)";
        if r.note.is_empty() {
            r.note = format!("restored by its owner: {why}");
        }
        let written = match self.get(backend).restore(&r).await {
            Ok(w) => w,
            Err(e) => {
                self.failed("restore", &e);
                return None;
            }
        };
        if written == Write::Ok {
            self.metrics.store_restores.inc();
            tracing::warn!(
                job.id = %r.job.job_id,
                fence = r.fence,
                offset = r.offset.as_deref().unwrap_or(""),
                messages = r.messages,
                "{why}; wrote it back from this sidecar's state"
            );
            if let (Some(owner), Some(redis), Backend::Redis) =
                (&self.owner, self.redis.get(), backend)
                && let Err(e) = redis.register_sidecar(owner).await
            {
                tracing::warn!(error = %e, "cannot register this sidecar instance in redis again");
            }
        }
        Some(written)
    }

    /// Probes Redis every [`OUTAGE_PROBE`] while degraded (from the moment an operation finds
    /// it gone), every second while final states wait to be on disk (see [`Unconfirmed`]),
    /// every ten otherwise; flips readiness, and writes final states again when the server's
    /// `run_id` has changed. Calls that wait for Redis (`redis_back_within`) and the final
    /// states kept for it go on as soon as a probe finds it back (the soak's finding 21: a
    /// probe still on its healthy pause saw a restarted Redis 10 s late, and calls that had
    /// waited their `lease_ttl` for it started their jobs afresh in memory).
    pub async fn watch_redis(self: Arc<Self>, shutdown: CancellationToken) {
        if self.redis_config.is_none() {
            return;
        }
        loop {
            let unconfirmed = !self
                .unconfirmed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
            let pause = if self.degraded.load(Ordering::Relaxed) {
                OUTAGE_PROBE
            } else if unconfirmed {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(10)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
                _ = self.outage.notified() => {}
            }
            let Some(redis) = self.redis.get() else {
                if self.connect().await {
                    self.recovered();
                }
                continue;
            };
            let sent = Instant::now();
            match redis.run_id().await {
                Ok(id) => {
                    self.recovered();
                    self.confirm_or_write_again(id, sent).await;
                }
                Err(e) => self.failed("ping", &e),
            }
        }
    }

    fn recovered(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("job store: redis is reachable; new jobs are stored there");
            self.metrics.store_degraded.set(0);
            self.health.store_ok.store(true, Ordering::Relaxed);
        }
    }
}
