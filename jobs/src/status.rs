//! The lifecycle of a job, as stored in the `status` field of its hash.

use std::fmt;
use std::str::FromStr;

/// Where a job stands. The text forms are part of the Redis contract (see `DESIGN.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// An owner is streaming it and renews its lease.
    Running,
    /// Its owner stopped on purpose (shutdown) after checkpointing; anyone may resume it.
    Interrupted,
    /// Its owner died; the recoverer marked it for another pod to resume.
    Orphaned,
    /// The upstream ended the stream with OK.
    Completed,
    /// The stream ended with an error that resuming cannot fix.
    Failed,
}

impl JobStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Running,
        JobStatus::Interrupted,
        JobStatus::Orphaned,
        JobStatus::Completed,
        JobStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Interrupted => "interrupted",
            JobStatus::Orphaned => "orphaned",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
        }
    }

    /// Completed and failed jobs are over: claiming one again starts it from scratch.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed)
    }

    /// Interrupted and orphaned jobs wait for a new owner to resume them from their offset.
    pub fn is_resumable(self) -> bool {
        matches!(self, JobStatus::Interrupted | JobStatus::Orphaned)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status text that is none of the five known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job status {0:?} (expected running, interrupted, orphaned, completed or failed)")]
pub struct UnknownStatus(pub String);

impl FromStr for JobStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>(), Ok(status));
            assert_eq!(status.to_string(), status.as_str());
        }
    }

    #[test]
    fn unknown_text_is_an_error() {
        assert_eq!(
            "Running".parse::<JobStatus>(),
            Err(UnknownStatus("Running".into()))
        );
        assert!("".parse::<JobStatus>().is_err());
    }
}
