//! The values that cross the [`JobStore`](crate::JobStore) API.

use std::time::Duration;

use crate::JobStatus;

/// Who runs a job: the pod, and the sidecar process inside it (a restarted container in the
/// same pod is a different instance, so it cannot mistake its predecessor's streams for its own).
///
/// A pod name is unique only within its namespace, and only at one time (a StatefulSet's
/// `users-0` comes back under a new uid): `namespace` and `uid` (the downward API's
/// `metadata.namespace` and `metadata.uid`) tell such pods apart. Either is `None` when the
/// sidecar was not told (an older sidecar, a pod spec without the env vars).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub pod: String,
    pub instance: String,
    pub namespace: Option<String>,
    pub uid: Option<String>,
}

impl Owner {
    /// An owner whose namespace and uid are unknown; see [`Owner::in_namespace`],
    /// [`Owner::with_uid`].
    pub fn new(pod: impl Into<String>, instance: impl Into<String>) -> Self {
        Self {
            pod: pod.into(),
            instance: instance.into(),
            namespace: None,
            uid: None,
        }
    }

    /// The pod's namespace; an empty one means unknown.
    pub fn in_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into()).filter(|ns| !ns.is_empty());
        self
    }

    /// The pod's uid; an empty one means unknown.
    pub fn with_uid(mut self, uid: impl Into<String>) -> Self {
        self.uid = Some(uid.into()).filter(|uid| !uid.is_empty());
        self
    }

    /// `namespace/pod`, or the bare pod name when the namespace is unknown: how operators
    /// (and `kubectl`) name a pod.
    pub fn pod_ref(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.pod),
            None => self.pod.clone(),
        }
    }

    /// Whether `self` and `other` may run in the same pod: the same pod name, and then the
    /// uids when both know theirs, else the namespaces when both know theirs. What one side
    /// does not know matches. (`lua/orphan.lua` applies the same rule.)
    pub fn same_pod(&self, other: &Owner) -> bool {
        let known = |a: &Option<String>, b: &Option<String>| match (a, b) {
            (Some(a), Some(b)) => Some(a == b),
            _ => None,
        };
        self.pod == other.pod
            && known(&self.uid, &other.uid)
                .or_else(|| known(&self.namespace, &other.namespace))
                .unwrap_or(true)
    }
}

/// A call the sidecar wants to run as a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub job_id: String,
    pub service: String,
    pub method: String,
    /// The original request, base64 of its protobuf bytes, so another pod can rebuild it.
    pub request_b64: String,
    /// A human-readable rendering of the request, for operators.
    pub request_json: String,
    pub owner: Owner,
    /// How long the claim holds without a checkpoint before others may take the job over.
    pub lease_ttl: Duration,
    /// Who resumes the job once it is let go: its app (`on_request`) or any pod of the service
    /// (`deliver`). Stored as `resume_mode`; a `deliver` job waiting for a pod is indexed in
    /// `{prefix}:handoffs`, so that the recoverer offers it again if its event was lost.
    pub resume: ResumeMode,
}

/// A resumable method's `resume` setting, as far as the job store cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeMode {
    /// The job waits, `interrupted`, until an app sends the matching request again.
    OnRequest,
    /// Another sidecar claims the job and hands the rest to its app's ResumeSink.
    Deliver,
}

impl ResumeMode {
    /// The value of the job hash's `resume_mode` field (the config's spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            ResumeMode::OnRequest => "on_request",
            ResumeMode::Deliver => "deliver",
        }
    }

    /// The inverse of [`ResumeMode::as_str`].
    pub fn parse(text: &str) -> Option<ResumeMode> {
        match text {
            "on_request" => Some(ResumeMode::OnRequest),
            "deliver" => Some(ResumeMode::Deliver),
            _ => None,
        }
    }
}

/// The outcome of [`JobStore::claim`](crate::JobStore::claim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The job is ours from the start: it was new, or a completed/failed job run again
    /// (offset cleared, counters zeroed, `started_at` reset).
    Fresh { fence: u64 },
    /// The job is ours to continue from `offset`: it was interrupted, orphaned, or running
    /// under an owner whose lease expired (`previous_status` is then `Running`).
    Resumed {
        fence: u64,
        offset: Option<String>,
        messages: u64,
        previous_status: JobStatus,
    },
    /// Someone (possibly us, in another call) runs it under a live lease; nothing changed.
    Busy {
        owner: Owner,
        lease_remaining: Duration,
    },
}

impl Claim {
    /// The fence to present on every later write, unless the claim failed.
    pub fn fence(&self) -> Option<u64> {
        match self {
            Claim::Fresh { fence } | Claim::Resumed { fence, .. } => Some(*fence),
            Claim::Busy { .. } => None,
        }
    }
}

/// The outcome of a fenced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a fenced write means the job is no longer ours"]
pub enum Write {
    Ok,
    /// Someone took the job: its fence is above ours, or it left `running` under ours. Nothing
    /// was written; the owner must stop.
    Fenced,
    /// The store has no record of the job under our fence or a later one: its hash is gone, or
    /// holds a fence below ours. Fences only grow and jobs are never deleted, so this is lost
    /// data (Redis restarted empty, failed over to a replica that was behind, was flushed, or
    /// evicted the key), never a takeover. Nothing was written; the owner, whose state is the
    /// truth, writes the job back with [`JobStore::restore`](crate::JobStore::restore) and
    /// goes on.
    Forgotten,
}

impl Write {
    pub fn is_ok(self) -> bool {
        self == Write::Ok
    }
}

/// A job written back by its owner after the store forgot it ([`Write::Forgotten`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restore {
    /// The job as the owner claimed it (service, method, request, owner, lease).
    pub job: NewJob,
    pub fence: u64,
    /// The last offset forwarded to the app, if any.
    pub offset: Option<String>,
    pub messages: u64,
    /// Recorded as `last_error`, so an operator sees that the job was written back.
    pub note: String,
}

/// An owner's progress report, which also renews its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub job_id: String,
    pub fence: u64,
    /// The last offset forwarded to the app; `None` keeps the stored one (nothing new yet).
    pub offset: Option<String>,
    /// How many messages have been forwarded to the app in total.
    pub messages: u64,
    pub lease_ttl: Duration,
    /// Where a takeover resumes if this owner dies without letting the job go (`None` keeps
    /// the stored one): behind `offset` by what the app may not have read yet, so that an app
    /// that dies with its sidecar (a pod killed) misses nothing. Stored as `replay_offset` and
    /// `replay_messages`; a claim of an `orphaned` job, or of a `running` one whose lease
    /// expired, starts there.
    pub replay: Option<Position>,
}

/// A point in a job's stream: the offset of the last message before it (`""` for the very
/// start) and how many messages came before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub offset: String,
    pub messages: u64,
}

/// How a job leaves `running`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    pub job_id: String,
    pub fence: u64,
    /// `Completed`, `Failed`, `Interrupted` or `Orphaned`; `Running` is rejected.
    pub status: JobStatus,
    /// The final offset; `None` keeps the stored one.
    pub offset: Option<String>,
    pub messages: u64,
    /// Recorded as `last_error` when given; `None` keeps the stored one.
    pub error: Option<String>,
}

/// A job's hash, typed. Timestamps are Unix epoch milliseconds from the store's clock
/// (Redis `TIME` for the Redis store, so every pod agrees).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub job_id: String,
    pub service: String,
    pub method: String,
    pub status: JobStatus,
    pub offset: Option<String>,
    pub owner: Owner,
    pub fence: u64,
    pub started_at_ms: u64,
    pub updated_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub messages: u64,
    pub resumes: u64,
    pub last_error: Option<String>,
    pub request_b64: String,
    pub request_json: String,
    /// Meaningful while `running`; cleared when the job leaves it.
    pub lease_expires_at_ms: Option<u64>,
    /// `None` for a job written before the field existed.
    pub resume: Option<ResumeMode>,
}

/// Milliseconds as Redis and the hash count them; saturates instead of wrapping.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_name_is_unique_only_within_its_namespace_and_incarnation() {
        let demo = Owner::new("users-0", "i-1").in_namespace("demo");
        let staging = Owner::new("users-0", "i-2").in_namespace("staging");
        let unknown = Owner::new("users-0", "i-3");
        assert!(!demo.same_pod(&staging));
        assert!(demo.same_pod(&Owner::new("users-0", "i-4").in_namespace("demo")));
        assert!(
            unknown.same_pod(&demo) && demo.same_pod(&unknown),
            "unknown matches"
        );
        assert!(!demo.same_pod(&Owner::new("users-1", "i-1").in_namespace("demo")));

        // A StatefulSet pod recreated under the same name is another pod.
        let old = demo.clone().with_uid("u-1");
        assert!(!old.same_pod(&demo.clone().with_uid("u-2")));
        assert!(
            old.same_pod(&demo),
            "uid unknown on one side: the namespace decides"
        );
        assert!(old.same_pod(&unknown.clone().with_uid("u-1")));
    }

    #[test]
    fn empty_means_unknown_and_pod_ref_reads_like_kubectl() {
        let owner = Owner::new("users-0", "i").in_namespace("").with_uid("");
        assert_eq!(owner, Owner::new("users-0", "i"));
        assert_eq!(owner.pod_ref(), "users-0");
        assert_eq!(owner.in_namespace("demo").pod_ref(), "demo/users-0");
    }
}
