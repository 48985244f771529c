//! The job store interface shared by the Redis store and its in-process twin.

use async_trait::async_trait;

use crate::{Checkpoint, Claim, Finish, JobRecord, NewJob, Restore, StoreError, Write};

/// Where jobs, their offsets and their leases live.
///
/// Every write by an owner carries the fence its claim returned and goes through only while
/// the job still runs under that fence; otherwise it returns [`Write::Fenced`] and changes
/// nothing, so an owner that lost the job can move its offset neither backwards nor forwards.
/// A store that lost the job (no record, or one with a lower fence) answers
/// [`Write::Forgotten`] instead: the owner writes it back with [`JobStore::restore`].
///
/// Object safe: the sidecar holds an `Arc<dyn JobStore>`.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Takes a job for `job.owner`: see [`Claim`] for the cases.
    async fn claim(&self, job: &NewJob) -> Result<Claim, StoreError>;

    /// A handoff's claim: like [`JobStore::claim`] for a job that waits to be resumed
    /// (`interrupted`, `orphaned`, or `running` under a lapsed lease), but `None` for a job that
    /// is absent, `completed` or `failed`: a takeover never creates or restarts a job.
    async fn take_over(&self, job: &NewJob) -> Result<Option<Claim>, StoreError>;

    /// Offset checkpoint and lease renewal, fenced. One call is one round trip.
    async fn checkpoint(&self, cp: &Checkpoint) -> Result<Write, StoreError>;

    /// Many checkpoints in one pipelined round trip; results in the order given. Each one is
    /// atomic on its own; together they are not a transaction.
    async fn checkpoint_many(&self, cps: &[Checkpoint]) -> Result<Vec<Write>, StoreError>;

    /// An upstream break the owner is resuming from: `resumes` + 1 and `last_error`, fenced.
    async fn note_resume(&self, job_id: &str, fence: u64, error: &str)
    -> Result<Write, StoreError>;

    /// Takes the job out of `running` (into `f.status`), fenced: final offset and message
    /// count, `finished_at` for completed/failed, and it leaves the pod's set and the leases.
    async fn finish(&self, f: &Finish) -> Result<Write, StoreError>;

    /// Writes a forgotten job back from its owner's state: `running` under `r.fence`, with the
    /// owner's offset and count, in its pod's set and the leases. Only when the store still
    /// has no record under that fence or a later one; [`Write::Fenced`] if another owner's
    /// fence is there now, [`Write::Ok`] if the job is back under ours (written now or by a
    /// concurrent restore).
    async fn restore(&self, r: &Restore) -> Result<Write, StoreError>;

    /// The job's record, or `None` if there is no such job.
    async fn get(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError>;

    /// Ids of the running jobs `pod` owns, sorted.
    async fn pod_jobs(&self, pod: &str) -> Result<Vec<String>, StoreError>;

    /// Up to `limit` running jobs whose lease has expired (dead owners), oldest first.
    async fn expired_leases(&self, limit: usize) -> Result<Vec<String>, StoreError>;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
}
