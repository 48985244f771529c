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

use reprise_jobs::{Checkpoint, NewJob, Position, Restore, Write};
use tokio_util::sync::CancellationToken;

use crate::{
    appwindow::AppWindow,
    metrics::Metrics,
    offset::Offset,
    store::{Backend, Store},
};

/// Where a job's state lives, and the fence every write presents there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Home {
    pub backend: Backend,
    pub fence: u64,
}

/// The checkpoint state of one running job.
pub struct Slot {
    pub job_id: String,
    /// The job as claimed, written back with the slot's state if the store forgets it.
    pub job: NewJob,
    /// Where the job lives and under which fence: fixed at claim, except that a job claimed
    /// in memory while Redis was down moves to Redis once it answers ([`Checkpointer::adopt`]).
    home: Mutex<Home>,
    /// When a job in memory may next try to move to Redis (another owner held it there).
    adopt_after: Mutex<Option<Instant>>,
    /// The app's connection, when the app's connection taking a chunk moves the checkpoint:
    /// then a checkpoint stays behind what a sidecar killed now would not have delivered.
    app: Option<Arc<AppWindow>>,
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
    /// What the app's connection took, for [`Slot::consumed`].
    handed: Handed,
}

/// (bytes taken through the sample, offset, messages).
type Sample = (u64, Offset, u64);

/// Positions the app's connection took, spaced by bytes: enough to find one at least a given
/// number of bytes behind the latest without keeping every message's offset.
#[derive(Default)]
struct Handed {
    /// Bytes the app's connection has taken in this call.
    bytes: u64,
    /// The largest chunk: a gRPC library may open its window for one message larger than it.
    largest: u64,
    /// Where the call started (the job's resume point).
    start: (Option<Offset>, u64),
    /// Samples after it in levels: level `k` holds up to [`LEVEL_SAMPLES`] samples at least
    /// `SAMPLE_SPACING << k` bytes apart, oldest first, and every sample of level `k + 1` is
    /// older than those of level `k`. So the spacing doubles every `LEVEL_SAMPLES` samples back
    /// from the head, and a position `d` bytes back is found less than `d / 4` further back
    /// than asked, whatever the length of the stream (the levels reach tens of GiB back).
    levels: Vec<std::collections::VecDeque<Sample>>,
}

/// Samples at least this many bytes apart near the head of the stream, where checkpoints
/// look (a few KiB behind). Further back, where an app death looks (a window behind), they
/// thin out.
const SAMPLE_SPACING: u64 = 512;
/// Samples per level, and levels: 352 samples at most, reaching about `SAMPLE_SPACING <<
/// SAMPLE_LEVELS` times `LEVEL_SAMPLES` bytes back.
const LEVEL_SAMPLES: usize = 16;
const SAMPLE_LEVELS: usize = 22;

impl Handed {
    fn take(&mut self, offset: &Offset, messages: u64, bytes: u64) {
        self.bytes += bytes;
        self.largest = self.largest.max(bytes);
        if self.levels.is_empty() {
            self.levels.resize_with(SAMPLE_LEVELS, Default::default);
        }
        let spaced = self.levels[0]
            .back()
            .is_none_or(|(at, _, _)| self.bytes >= at + SAMPLE_SPACING);
        if !spaced {
            return;
        }
        self.levels[0].push_back((self.bytes, offset.clone(), messages));
        // A full level passes its oldest sample down, where it stays if it is far enough
        // from that level's newest.
        for k in 0..SAMPLE_LEVELS {
            if self.levels[k].len() <= LEVEL_SAMPLES {
                break;
            }
            let Some(oldest) = self.levels[k].pop_front() else {
                break;
            };
            let Some(next) = self.levels.get_mut(k + 1) else {
                break;
            };
            let spacing = SAMPLE_SPACING << (k + 1);
            if next
                .back()
                .is_none_or(|(at, _, _)| oldest.0 >= at + spacing)
            {
                next.push_back(oldest);
            }
        }
    }

    /// Every sample, newest first.
    fn newest_first(&self) -> impl Iterator<Item = &Sample> {
        self.levels.iter().flat_map(|level| level.iter().rev())
    }

    /// The latest position at least `behind` bytes, and the largest chunk, before what was
    /// taken (the start if none).
    fn behind(&self, behind: u64) -> (Option<Offset>, u64) {
        self.behind_from(self.bytes, behind)
    }

    /// The same, counted back from `bytes` taken (what was taken when `behind` was measured;
    /// chunks taken since are not behind anything yet).
    fn behind_from(&self, bytes: u64, behind: u64) -> (Option<Offset>, u64) {
        let limit = bytes.saturating_sub(behind.saturating_add(self.largest));
        self.newest_first()
            .find(|(at, _, _)| *at <= limit)
            .map(|(_, offset, messages)| (Some(offset.clone()), *messages))
            .unwrap_or_else(|| self.start.clone())
    }
}

impl Slot {
    /// Where the job lives now (see [`Slot::home`]'s field).
    pub fn home(&self) -> Home {
        *self.home.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, offset: Option<&Offset>, messages: u64) {
        if let Ok(mut s) = self.state.lock() {
            s.offset = offset.cloned();
            s.messages = messages;
            s.dirty = true;
        }
    }

    /// The app's connection took a chunk that ends at `offset`, message `messages`: the
    /// checkpoint moves there, and the chunk is remembered for [`Slot::consumed`].
    pub fn handed(&self, offset: &Offset, messages: u64, bytes: u64) {
        if let Ok(mut s) = self.state.lock() {
            s.offset = Some(offset.clone());
            s.messages = messages;
            s.dirty = true;
            s.handed.take(offset, messages, bytes);
        }
    }

    /// What an app that died surely read: the latest position its connection took at least
    /// `unread` bytes (what its HTTP/2 stack may hold, `AppWindow::unread_bound`) plus the
    /// largest chunk before the last one it took; the call's start if there is none.
    pub fn consumed(&self, unread: u64) -> (Option<Offset>, u64) {
        self.state
            .lock()
            .map(|s| s.handed.behind(unread))
            .unwrap_or((None, 0))
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
        (offset, messages): (Option<Offset>, u64),
        app: Option<Arc<AppWindow>>,
    ) -> SlotGuard {
        let slot = Arc::new(Slot {
            job_id: job.job_id.clone(),
            job,
            home: Mutex::new(Home { backend, fence }),
            adopt_after: Mutex::new(None),
            app,
            state: Mutex::new(SlotState {
                handed: Handed {
                    start: (offset.clone(), messages),
                    ..Handed::default()
                },
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

    /// Moves a job claimed in memory (Redis was down at its claim) to Redis, now that it
    /// answers: the job is claimed there as any call's job would be, and this flush writes
    /// its position under the new fence. From then on it is as protected as any other job:
    /// a sidecar death resumes it from Redis, another pod can take it over, it ends in Redis.
    /// If another owner runs the same job in Redis with a live lease, the job stays in memory
    /// and tries again a lease later. Counted in `reprise_store_adoptions_total`.
    async fn adopt(&self, slot: &Arc<Slot>, now: Instant) {
        {
            let mut after = slot.adopt_after.lock().unwrap_or_else(|e| e.into_inner());
            if after.is_some_and(|t| now < t) {
                return;
            }
            *after = Some(now + self.lease_ttl);
        }
        let Some(claim) = self.store.adopt(&slot.job).await else {
            return;
        };
        let Some(fence) = claim.fence() else {
            tracing::info!(job.id = %slot.job_id, "job claimed in memory while redis was down: another owner runs it in redis, so it stays in memory");
            return;
        };
        let old = std::mem::replace(
            &mut *slot.home.lock().unwrap_or_else(|e| e.into_inner()),
            Home {
                backend: Backend::Redis,
                fence,
            },
        );
        let (offset, messages) = if let Ok(mut s) = slot.state.lock() {
            s.dirty = true;
            (s.offset.as_ref().map(ToString::to_string), s.messages)
        } else {
            (None, 0)
        };
        // The in-process record lets the job go, so that a claim in memory in a later outage
        // finds it `interrupted` rather than `running` under this process.
        let finish = reprise_jobs::Finish {
            job_id: slot.job_id.clone(),
            fence: old.fence,
            status: reprise_jobs::JobStatus::Interrupted,
            offset: offset.clone(),
            messages,
            error: Some("moved to redis once it answered again".into()),
        };
        let _ = self.store.finish(Backend::Memory, &finish, None).await;
        self.metrics.store_adoptions.inc();
        tracing::info!(
            job.id = %slot.job_id,
            fence,
            offset = offset.as_deref().unwrap_or_default(),
            messages,
            "job claimed in memory while redis was down is now stored in redis"
        );
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
        if self.store.redis_ready() {
            self.store.write_pending().await;
            for slot in slots.iter().filter(|s| s.home().backend == Backend::Memory) {
                self.adopt(slot, now).await;
            }
        }
        // A checkpoint's offset is what reaches the app if the app outlives this sidecar:
        // behind what hyper and its kernel still held for the app (that dies with it), not at
        // what the app's connection took. So first, per slot, where the stream stands and
        // what hyper holds; then the kernel's send queues, read after (whatever moves from
        // hyper to the kernel in between is counted twice, never missed).
        let mut due = Vec::new();
        for slot in slots {
            let Ok(mut s) = slot.state.lock() else {
                continue;
            };
            if !s.dirty && now.duration_since(s.last_write) < renew_after {
                continue;
            }
            s.dirty = false;
            s.last_write = now;
            let at = match &slot.app {
                Some(app) if s.handed.bytes > 0 => Some((s.handed.bytes, app.unwritten())),
                _ => None,
            };
            drop(s);
            due.push((slot, at));
        }
        let queues = due
            .iter()
            .any(|(_, at)| at.is_some())
            .then(crate::appwindow::send_queues);
        for (slot, at) in due {
            let Ok(s) = slot.state.lock() else {
                continue;
            };
            // And where a takeover resumes if this sidecar dies without letting the job go:
            // as far back as an app death rewinds (`consumed`), because a pod killed takes the
            // app, and what it held unread, with the sidecar.
            let ((offset, messages), replay) = match (&slot.app, at, &queues) {
                (Some(app), Some((bytes, unwritten)), Some(queues)) => {
                    let unsent = app.unsent_bound(unwritten, queues);
                    let (replay, replay_messages) =
                        s.handed.behind_from(bytes, unsent.max(app.unread_bound()));
                    (
                        s.handed.behind_from(bytes, unsent),
                        Some(Position {
                            offset: replay.as_ref().map(ToString::to_string).unwrap_or_default(),
                            messages: replay_messages,
                        }),
                    )
                }
                _ => ((s.offset.clone(), s.messages), None),
            };
            let home = slot.home();
            let cp = Checkpoint {
                job_id: slot.job_id.clone(),
                fence: home.fence,
                offset: offset
                    .as_ref()
                    .map(ToString::to_string)
                    .or_else(|| at.map(|_| String::new())),
                messages,
                lease_ttl: self.lease_ttl,
                replay,
            };
            drop(s);
            let batch = batches.entry(home.backend).or_default();
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
                        fence: cp.fence,
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
                    tracing::warn!(job.id = %slot.job_id, fence = cp.fence, "checkpoint refused: another owner holds this job now");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(chunks: &[(u64, u64)]) -> Handed {
        let mut h = Handed {
            start: (Some(Offset::Int(100)), 100),
            ..Handed::default()
        };
        for &(seq, bytes) in chunks {
            h.take(&Offset::Int(i128::from(seq)), seq, bytes);
        }
        h
    }

    #[test]
    fn consumed_is_at_least_the_bound_and_the_largest_chunk_behind_what_was_taken() {
        // 1,000 chunks of 100 bytes after offset 100: samples every 16 KiB (164 chunks).
        let h = taken(&(101..=1100).map(|s| (s, 100)).collect::<Vec<_>>());
        assert_eq!(h.bytes, 100_000);
        for behind in [0, 1, 5_000, 40_000, 83_000] {
            let (offset, messages) = h.behind(behind);
            let Some(Offset::Int(seq)) = offset else {
                panic!("an offset")
            };
            let seq = seq as u64;
            assert_eq!(messages, seq);
            let through = (seq - 100) * 100;
            // Never less far behind than asked; close to it near the head, where samples are
            // dense, and within a sixth of the distance further back, where they thin out.
            assert!(through + behind + 100 <= h.bytes, "{behind}: {seq}");
            let slack = if behind <= 5_000 {
                2 * SAMPLE_SPACING + 100
            } else {
                behind / 6 + 100
            };
            assert!(through + behind + slack > h.bytes, "{behind}: {seq}");
        }
        // Further back than anything taken: the call's start.
        assert_eq!(h.behind(100_000), (Some(Offset::Int(100)), 100));
    }

    /// The soak's short run (seed 7): an app of 1 KiB messages killed after 7,068 of them
    /// replayed the whole stream from its start, because thinning had left no sample further
    /// back than about 0.5 MiB, less than the app's 2 MiB window. Whatever the stream's
    /// length, a position a window back is found, and close to it.
    #[test]
    fn samples_stay_bounded_and_reach_a_window_back_on_a_long_stream() {
        for (messages, size) in [(7_068, 1_043), (200_000, 1_000), (40_000, 65_600)] {
            let h = taken(&(1..=messages).map(|s| (s, size)).collect::<Vec<_>>());
            let kept: usize = h.levels.iter().map(|l| l.len()).sum();
            assert!(kept <= LEVEL_SAMPLES * SAMPLE_LEVELS, "{kept}");
            for behind in [4_096, 1 << 20, 2 << 20, 5 << 20] {
                let (offset, _) = h.behind(behind);
                let Some(Offset::Int(seq)) = offset else {
                    panic!("an offset")
                };
                let back = h.bytes - seq as u64 * size;
                assert!(
                    back >= behind + size,
                    "{messages}×{size}, {behind}: only {back} back"
                );
                assert!(
                    back <= behind + behind / 4 + 2 * size + 2 * SAMPLE_SPACING,
                    "{messages}×{size}, {behind}: {back} back, too far"
                );
            }
        }
    }
}
