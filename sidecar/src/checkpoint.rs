//! Batched offset checkpoints and lease renewal.
//!
//! A stream only records its latest offset in its slot (a short mutex, no I/O). One flusher
//! task writes every dirty slot per `checkpoint_interval` in one pipelined round trip per
//! backend, so a stream costs at most one Redis write per interval and never waits on Redis.
//! Idle streams are still written every third of `lease_ttl` to keep their lease.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use reprise_jobs::{Checkpoint, NewJob, Restore, Write};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    offset::Offset,
    store::{Backend, Store},
};

/// The checkpoint state of one running job.
pub struct Slot {
    pub job_id: String,
    /// The job as claimed, written back with the slot's state if the store forgets it.
    pub job: NewJob,
    pub fence: u64,
    pub backend: Backend,
    state: Mutex<SlotState>,
    /// Set when a write was refused: another owner holds the job now.
    lost: AtomicBool,
    /// Set when the stream ended: a refusal after that is the final state winning a race with
    /// this tick's snapshot, not another owner.
    closed: AtomicBool,
}

struct SlotState {
    offset: Option<Offset>,
    messages: u64,
    dirty: bool,
    last_write: Instant,
}

impl Slot {
    pub fn record(&self, offset: Option<&Offset>, messages: u64) {
        if let Ok(mut s) = self.state.lock() {
            s.offset = offset.cloned();
            s.messages = messages;
            s.dirty = true;
        }
    }

    /// The offset and count last recorded.
    pub fn current(&self) -> (Option<Offset>, u64) {
        self.state
            .lock()
            .map(|s| (s.offset.clone(), s.messages))
            .unwrap_or((None, 0))
    }

    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }
}

/// Every running job's [`Slot`], flushed to the store every `checkpoint_interval` in one
/// batch (offsets and lease renewals), so a stream's messages cost no store write each.
pub struct Checkpointer {
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next_id: AtomicU64,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    interval: Duration,
    lease_ttl: Duration,
}

/// Unregisters its slot when the stream ends, so nothing is written after the final state.
pub struct SlotGuard {
    id: u64,
    pub slot: Arc<Slot>,
    owner: Arc<Checkpointer>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slot.closed.store(true, Ordering::Relaxed);
        if let Ok(mut slots) = self.owner.slots.lock() {
            slots.remove(&self.id);
        }
    }
}

impl Checkpointer {
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        interval: Duration,
        lease_ttl: Duration,
    ) -> Self {
        Checkpointer {
            slots: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            store,
            metrics,
            interval,
            lease_ttl,
        }
    }

    pub fn register(
        self: &Arc<Self>,
        job: NewJob,
        fence: u64,
        backend: Backend,
        offset: Option<Offset>,
        messages: u64,
    ) -> SlotGuard {
        let slot = Arc::new(Slot {
            job_id: job.job_id.clone(),
            job,
            fence,
            backend,
            state: Mutex::new(SlotState {
                offset,
                messages,
                dirty: false,
                last_write: Instant::now(),
            }),
            lost: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut slots) = self.slots.lock() {
            slots.insert(id, slot.clone());
        }
        SlotGuard {
            id,
            slot,
            owner: self.clone(),
        }
    }

    /// Runs until `shutdown`; the final state of each stream is written by the stream itself.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.flush().await,
            }
        }
    }

    /// Writes every dirty slot, and every slot whose lease is a third of the way to expiry.
    pub async fn flush(&self) {
        let renew_after = self.lease_ttl / 3;
        let now = Instant::now();
        let mut batches: HashMap<Backend, (Vec<Arc<Slot>>, Vec<Checkpoint>)> = HashMap::new();
        let slots: Vec<Arc<Slot>> = match self.slots.lock() {
            Ok(s) => s.values().cloned().collect(),
            Err(_) => return,
        };
        for slot in slots {
            let Ok(mut s) = slot.state.lock() else {
                continue;
            };
            if !s.dirty && now.duration_since(s.last_write) < renew_after {
                continue;
            }
            s.dirty = false;
            s.last_write = now;
            let cp = Checkpoint {
                job_id: slot.job_id.clone(),
                fence: slot.fence,
                offset: s.offset.as_ref().map(ToString::to_string),
                messages: s.messages,
                lease_ttl: self.lease_ttl,
            };
            drop(s);
            let batch = batches.entry(slot.backend).or_default();
            batch.0.push(slot);
            batch.1.push(cp);
        }
        for (backend, (slots, cps)) in batches {
            let Some(results) = self.store.checkpoint_many(backend, &cps).await else {
                // Redis is down: write these again next tick.
                for slot in &slots {
                    if let Ok(mut s) = slot.state.lock() {
                        s.dirty = true;
                    }
                }
                continue;
            };
            for ((slot, result), cp) in slots.iter().zip(results).zip(cps) {
                if result == Write::Ok {
                    self.metrics.checkpoint_writes.inc();
                    continue;
                }
                if slot.closed.load(Ordering::Relaxed) {
                    continue;
                }
                if result == Write::Forgotten {
                    let restore = Restore {
                        job: slot.job.clone(),
                        fence: slot.fence,
                        offset: cp.offset,
                        messages: cp.messages,
                        note: String::new(),
                    };
                    match self.store.restore(backend, restore).await {
                        Some(Write::Ok) => continue,
                        Some(_) => {}
                        None => {
                            // Redis went away again: the next tick tries once more.
                            if let Ok(mut s) = slot.state.lock() {
                                s.dirty = true;
                            }
                            continue;
                        }
                    }
                }
                if !slot.lost.swap(true, Ordering::Relaxed) {
                    self.metrics.checkpoint_fenced.inc();
                    tracing::warn!(job.id = %slot.job_id, fence = slot.fence, "checkpoint refused: another owner holds this job now");
                }
            }
        }
    }
}
