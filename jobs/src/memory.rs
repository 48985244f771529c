//! The job store inside one process: the same semantics as [`RedisStore`](crate::RedisStore),
//! for sidecars without Redis and as a fallback while Redis is down. Resuming then only works
//! within the process.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::model::duration_ms;
use crate::{
    Checkpoint, Claim, Finish, JobRecord, JobStatus, JobStore, NewJob, Restore, StoreError, Write,
};

/// A [`JobStore`] in a mutex-guarded map. Leases are timed by the monotonic clock; the epoch
/// milliseconds in the records are for reading only.
#[derive(Debug, Default)]
pub struct MemoryStore {
    jobs: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    record: JobRecord,
    /// Set while running.
    lease_deadline: Option<Instant>,
}

/// One reading of both clocks, so a record's epoch times and its lease deadline agree.
#[derive(Clone, Copy)]
struct Now {
    instant: Instant,
    epoch_ms: u64,
}

impl Now {
    fn read() -> Self {
        Self {
            instant: Instant::now(),
            epoch_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(duration_ms)
                .unwrap_or(0),
        }
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // Every critical section below leaves the map consistent before anything can panic,
        // so a poisoned lock still guards good data.
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The fence check of every owner's write (`may_write` in `lua/common.lua`): the job, if the
/// owner holding `fence` may write it; otherwise why not. This store never loses data, so
/// [`Write::Forgotten`] here means a job that was never claimed in it.
fn writable<'a>(
    jobs: &'a mut HashMap<String, Entry>,
    job_id: &str,
    fence: u64,
) -> Result<&'a mut Entry, Write> {
    match jobs.get_mut(job_id) {
        None => Err(Write::Forgotten),
        Some(e) if e.record.fence < fence => Err(Write::Forgotten),
        Some(e) if e.record.fence == fence && e.record.status == JobStatus::Running => Ok(e),
        Some(_) => Err(Write::Fenced),
    }
}

impl Entry {
    /// Runs the job under `job.owner` with `fence` and a new lease.
    fn own(&mut self, job: &NewJob, fence: u64, now: Now) {
        let r = &mut self.record;
        r.status = JobStatus::Running;
        r.owner = job.owner.clone();
        r.fence = fence;
        r.updated_at_ms = now.epoch_ms;
        r.finished_at_ms = None;
        r.lease_expires_at_ms = Some(now.epoch_ms.saturating_add(duration_ms(job.lease_ttl)));
        self.lease_deadline = Some(now.instant + job.lease_ttl);
    }

    fn checkpoint(&mut self, cp: &Checkpoint, now: Now) {
        if let Some(offset) = &cp.offset {
            self.record.offset = Some(offset.clone()).filter(|o| !o.is_empty());
        }
        self.record.messages = cp.messages;
        self.record.updated_at_ms = now.epoch_ms;
        self.record.lease_expires_at_ms =
            Some(now.epoch_ms.saturating_add(duration_ms(cp.lease_ttl)));
        self.lease_deadline = Some(now.instant + cp.lease_ttl);
    }
}

fn fresh(job: &NewJob, fence: u64, now: Now) -> Entry {
    let mut entry = Entry {
        record: JobRecord {
            job_id: job.job_id.clone(),
            service: job.service.clone(),
            method: job.method.clone(),
            status: JobStatus::Running,
            offset: None,
            owner: job.owner.clone(),
            fence,
            started_at_ms: now.epoch_ms,
            updated_at_ms: now.epoch_ms,
            finished_at_ms: None,
            messages: 0,
            resumes: 0,
            last_error: None,
            request_b64: job.request_b64.clone(),
            request_json: job.request_json.clone(),
            lease_expires_at_ms: None,
            resume: Some(job.resume),
        },
        lease_deadline: None,
    };
    entry.own(job, fence, now);
    entry
}

/// The claim script's logic; `takeover_only` never creates or restarts a job (`None`).
fn claim_in(jobs: &mut HashMap<String, Entry>, job: &NewJob, takeover_only: bool) -> Option<Claim> {
    let now = Now::read();
    let Some(entry) = jobs.get_mut(&job.job_id) else {
        if takeover_only {
            return None;
        }
        jobs.insert(job.job_id.clone(), fresh(job, 1, now));
        return Some(Claim::Fresh { fence: 1 });
    };
    let fence = entry.record.fence.saturating_add(1);
    let previous_status = entry.record.status;
    match previous_status {
        JobStatus::Completed | JobStatus::Failed => {
            if takeover_only {
                return None;
            }
            *entry = fresh(job, fence, now);
            return Some(Claim::Fresh { fence });
        }
        JobStatus::Running => {
            if let Some(deadline) = entry.lease_deadline.filter(|d| *d > now.instant) {
                return Some(Claim::Busy {
                    owner: entry.record.owner.clone(),
                    lease_remaining: deadline - now.instant,
                });
            }
            // An expired lease means a dead owner: take the job over.
        }
        JobStatus::Interrupted | JobStatus::Orphaned => {}
    }
    entry.record.resumes = entry.record.resumes.saturating_add(1);
    entry.own(job, fence, now);
    Some(Claim::Resumed {
        fence,
        offset: entry.record.offset.clone(),
        messages: entry.record.messages,
        previous_status,
    })
}

#[async_trait]
impl JobStore for MemoryStore {
    async fn take_over(&self, job: &NewJob) -> Result<Option<Claim>, StoreError> {
        Ok(claim_in(&mut self.lock(), job, true))
    }

    async fn claim(&self, job: &NewJob) -> Result<Claim, StoreError> {
        // Without `takeover_only` a claim always yields a Claim.
        Ok(claim_in(&mut self.lock(), job, false).unwrap_or(Claim::Fresh { fence: 0 }))
    }

    async fn checkpoint(&self, cp: &Checkpoint) -> Result<Write, StoreError> {
        Ok(self
            .checkpoint_many(std::slice::from_ref(cp))
            .await?
            .pop()
            .unwrap_or(Write::Fenced))
    }

    async fn checkpoint_many(&self, cps: &[Checkpoint]) -> Result<Vec<Write>, StoreError> {
        let now = Now::read();
        let mut jobs = self.lock();
        Ok(cps
            .iter()
            .map(|cp| match writable(&mut jobs, &cp.job_id, cp.fence) {
                Ok(entry) => {
                    entry.checkpoint(cp, now);
                    Write::Ok
                }
                Err(refused) => refused,
            })
            .collect())
    }

    async fn note_resume(
        &self,
        job_id: &str,
        fence: u64,
        error: &str,
    ) -> Result<Write, StoreError> {
        let now = Now::read();
        let mut jobs = self.lock();
        let entry = match writable(&mut jobs, job_id, fence) {
            Ok(entry) => entry,
            Err(refused) => return Ok(refused),
        };
        let r = &mut entry.record;
        r.resumes = r.resumes.saturating_add(1);
        r.last_error = Some(error.to_owned()).filter(|e| !e.is_empty());
        r.updated_at_ms = now.epoch_ms;
        Ok(Write::Ok)
    }

    async fn finish(&self, f: &Finish) -> Result<Write, StoreError> {
        if f.status == JobStatus::Running {
            return Err(StoreError::InvalidFinish {
                job_id: f.job_id.clone(),
                status: f.status,
            });
        }
        let now = Now::read();
        let mut jobs = self.lock();
        let entry = match writable(&mut jobs, &f.job_id, f.fence) {
            Ok(entry) => entry,
            Err(refused) => return Ok(refused),
        };
        let r = &mut entry.record;
        r.status = f.status;
        if let Some(offset) = &f.offset {
            r.offset = Some(offset.clone()).filter(|o| !o.is_empty());
        }
        if let Some(error) = &f.error {
            r.last_error = Some(error.clone()).filter(|e| !e.is_empty());
        }
        r.messages = f.messages;
        r.updated_at_ms = now.epoch_ms;
        r.finished_at_ms = f.status.is_terminal().then_some(now.epoch_ms);
        r.lease_expires_at_ms = None;
        entry.lease_deadline = None;
        Ok(Write::Ok)
    }

    async fn restore(&self, r: &Restore) -> Result<Write, StoreError> {
        let now = Now::read();
        let mut jobs = self.lock();
        match writable(&mut jobs, &r.job.job_id, r.fence) {
            Ok(_) => return Ok(Write::Ok),
            Err(Write::Fenced) => return Ok(Write::Fenced),
            Err(_) => {}
        }
        let mut entry = fresh(&r.job, r.fence, now);
        if let Some(behind) = jobs.get(&r.job.job_id) {
            entry.record.started_at_ms = behind.record.started_at_ms;
            entry.record.resumes = behind.record.resumes;
        }
        entry.record.offset = r.offset.clone().filter(|o| !o.is_empty());
        entry.record.messages = r.messages;
        entry.record.last_error = Some(r.note.clone()).filter(|n| !n.is_empty());
        jobs.insert(r.job.job_id.clone(), entry);
        Ok(Write::Ok)
    }

    async fn get(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.lock().get(job_id).map(|e| e.record.clone()))
    }

    async fn pod_jobs(&self, pod: &str) -> Result<Vec<String>, StoreError> {
        let mut ids: Vec<String> = self
            .lock()
            .values()
            .filter(|e| e.record.status == JobStatus::Running && e.record.owner.pod == pod)
            .map(|e| e.record.job_id.clone())
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn expired_leases(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let now = Instant::now();
        let jobs = self.lock();
        let mut expired: Vec<(Instant, &str)> = jobs
            .values()
            .filter(|e| e.record.status == JobStatus::Running)
            .filter_map(|e| Some((e.lease_deadline?, e.record.job_id.as_str())))
            .filter(|(deadline, _)| *deadline <= now)
            .collect();
        expired.sort();
        Ok(expired
            .into_iter()
            .take(limit)
            .map(|(_, id)| id.to_owned())
            .collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
