//! The jobs this process's stream tasks serve right now, by job id, so that a second identical
//! request either waits for the first task to let go (its app is gone) or becomes an
//! independent job (both apps are alive).
//!
//! An entry lives exactly as long as its task: [`ActiveJobs::begin`] returns an
//! [`ActiveGuard`] that the task owns, and dropping the guard removes the entry and tells every
//! waiter the task is done. Drop runs on every exit, a panic included (tokio drops a panicked
//! task's future), so no entry outlives its task and no request waits for a ghost.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

/// The jobs being served, by job id.
#[derive(Default)]
pub(crate) struct ActiveJobs {
    jobs: Mutex<HashMap<String, Entry>>,
    /// Tells entries of the same job id apart: a guard removes only its own entry.
    serial: AtomicU64,
}

struct Entry {
    serial: u64,
    job: ActiveJob,
}

/// What a new request learns of a job a task serves.
#[derive(Clone)]
pub(crate) struct ActiveJob {
    /// Cancelled when the app's response body is dropped.
    pub app_gone: CancellationToken,
    /// Cancelled when the task has let go of the job (written its final state, or died).
    pub done: CancellationToken,
}

/// Owned by the task serving the job; dropping it ends the entry.
pub(crate) struct ActiveGuard {
    jobs: Arc<ActiveJobs>,
    job_id: String,
    serial: u64,
    done: CancellationToken,
}

impl ActiveJobs {
    /// The job `job_id` is served by the caller from now until the guard drops.
    pub fn begin(self: &Arc<Self>, job_id: &str, job: ActiveJob) -> ActiveGuard {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let done = job.done.clone();
        self.lock().insert(job_id.to_owned(), Entry { serial, job });
        ActiveGuard {
            jobs: self.clone(),
            job_id: job_id.to_owned(),
            serial,
            done,
        }
    }

    /// The task serving `job_id`, if one is.
    pub fn get(&self, job_id: &str) -> Option<ActiveJob> {
        self.lock().get(job_id).map(|e| e.job.clone())
    }

    /// How many jobs are being served.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// The map stays usable after a panic elsewhere: its entries are whole at every unlock.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        {
            let mut jobs = self.jobs.lock();
            if jobs
                .get(&self.job_id)
                .is_some_and(|e| e.serial == self.serial)
            {
                jobs.remove(&self.job_id);
            }
        }
        self.done.cancel();
    }
}

/// A gauge raised while this value lives (the streams being served), lowered on every exit.
pub(crate) struct Counted(Gauge);

impl Counted {
    pub fn inc(gauge: Gauge) -> Self {
        gauge.inc();
        Counted(gauge)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> ActiveJob {
        ActiveJob {
            app_gone: CancellationToken::new(),
            done: CancellationToken::new(),
        }
    }

    #[tokio::test]
    async fn a_task_that_panics_leaves_no_entry_behind() {
        let jobs = Arc::new(ActiveJobs::default());
        let entry = job();
        let guard = jobs.begin("job-1", entry.clone());
        assert!(jobs.get("job-1").is_some());
        let task = tokio::spawn(async move {
            let _guard = guard;
            tokio::task::yield_now().await;
            panic!("a bug in a stream task");
        });
        assert!(task.await.expect_err("the task panicked").is_panic());
        assert!(jobs.get("job-1").is_none(), "the entry outlived its task");
        assert!(entry.done.is_cancelled(), "a waiter would wait for a ghost");
        assert_eq!(jobs.len(), 0);
    }

    #[test]
    fn a_guard_removes_only_its_own_entry() {
        let jobs = Arc::new(ActiveJobs::default());
        let old = jobs.begin("job-1", job());
        // The next request stopped waiting for `old` and took the job over.
        let new_entry = job();
        let new = jobs.begin("job-1", new_entry.clone());
        drop(old);
        assert!(
            jobs.get("job-1").is_some(),
            "the new task's entry was removed"
        );
        assert!(!new_entry.done.is_cancelled());
        drop(new);
        assert!(jobs.get("job-1").is_none());
        assert!(new_entry.done.is_cancelled());
    }
}
