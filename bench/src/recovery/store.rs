//! What a run reads from Redis: the job's hash, as the recoverer and the sidecars write it.

/// The fields of a job's hash that say who holds it and from where it resumes.
#[derive(Debug, Clone, Default)]
pub struct JobFields {
    pub status: Option<String>,
    pub owner_pod: Option<String>,
    /// The last checkpoint: the user_id of the last user A's app was sent.
    pub offset: Option<String>,
    /// Epoch ms (Redis clock); empty once the job is orphaned.
    pub lease_expires_at: Option<u64>,
}

impl JobFields {
    pub fn read(con: &mut redis::Connection, job: &str) -> anyhow::Result<JobFields> {
        let [status, owner_pod, offset, lease]: [Option<String>; 4] = redis::cmd("HMGET")
            .arg(job)
            .arg(&["status", "owner_pod", "offset", "lease_expires_at"])
            .query::<Vec<Option<String>>>(con)?
            .try_into()
            .map_err(|v: Vec<_>| anyhow::anyhow!("HMGET of 4 fields answered {}", v.len()))?;
        Ok(JobFields {
            status,
            owner_pod,
            offset: offset.filter(|o| !o.is_empty()),
            lease_expires_at: lease.and_then(|l| l.parse().ok()),
        })
    }

    /// Still `running` under `pod`: not orphaned yet (nor taken over, nor finished).
    pub fn held_by(&self, pod: &str) -> bool {
        self.status.as_deref() == Some("running") && self.owner_pod.as_deref() == Some(pod)
    }
}
