//! Every Redis key name Reprise uses, built in one place.
//!
//! The layout is a contract: operators and tests outside the project read it with `redis-cli`.
//! The Lua scripts build one key themselves (the pod set of a job's *previous* owner, which is
//! only known inside the script); `lua/common.lua` mirrors [`Keys::pod_jobs`] and the
//! integration tests check that both agree.

/// The prefix used when the configuration names none.
pub const DEFAULT_PREFIX: &str = "reprise";

/// Builds key names under one prefix, so tests and tenants can share a Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}:job:{job_id}` — the job's hash.
    pub fn job(&self, job_id: &str) -> String {
        format!("{}:job:{job_id}", self.prefix)
    }

    /// `{prefix}:pod:{pod}:jobs` — the set of jobs `pod` owns while they are running.
    pub fn pod_jobs(&self, pod: &str) -> String {
        format!("{}:pod:{pod}:jobs", self.prefix)
    }

    /// `{prefix}:pod:{pod}:sidecar` — hash `instance`, `started_at` (epoch ms), `namespace`,
    /// `uid`: the sidecar process that registered last under the pod name `pod`. A job of that
    /// pod owned by another instance is dead. Pods of the same name in different namespaces
    /// share this key; see [`Keys::namespaced_pod_sidecar`].
    pub fn pod_sidecar(&self, pod: &str) -> String {
        format!("{}:pod:{pod}:sidecar", self.prefix)
    }

    /// `{prefix}:pod:{namespace}/{pod}:sidecar` — the same hash, written also by a sidecar that
    /// knows its namespace (a pod name never contains `/`), so that namesakes in other
    /// namespaces cannot overwrite it.
    pub fn namespaced_pod_sidecar(&self, namespace: &str, pod: &str) -> String {
        format!("{}:pod:{namespace}/{pod}:sidecar", self.prefix)
    }

    /// `{prefix}:pod:{namespace}/{pod}:killed` — set (with a TTL) by the recoverer that
    /// reported the pod's death, so `pod.killed` is published once per pod whatever the number
    /// of recoverers.
    pub fn pod_killed(&self, namespace: &str, pod: &str) -> String {
        format!("{}:pod:{namespace}/{pod}:killed", self.prefix)
    }

    /// `{prefix}:leases` — running jobs scored by lease expiry (epoch ms, Redis clock).
    pub fn leases(&self) -> String {
        format!("{}:leases", self.prefix)
    }

    /// `{prefix}:handoffs` — the `deliver` jobs waiting for a pod of their service to take them
    /// over (`interrupted` or `orphaned`), scored by when they were let go (epoch ms, Redis
    /// clock); the recoverer offers a job again once it has waited its `handoff_retry`, and
    /// after each offer moves the score on by the backoff. A claim takes the job out.
    pub fn handoffs(&self) -> String {
        format!("{}:handoffs", self.prefix)
    }

    /// `{prefix}:outbox` — a list of event JSON bodies (oldest first) that could not be
    /// published while RabbitMQ was unreachable; drained by any pod once it is back.
    pub fn outbox(&self) -> String {
        format!("{}:outbox", self.prefix)
    }

    /// `{prefix}:outbox:dead` — outbox entries that can never be published (not an event this
    /// build reads), kept for an operator instead of blocking the outbox.
    pub fn outbox_dead(&self) -> String {
        format!("{}:outbox:dead", self.prefix)
    }

    /// `{prefix}:outbox:lock` — held (with a TTL) by the one pod draining the outbox.
    pub fn outbox_lock(&self) -> String {
        format!("{}:outbox:lock", self.prefix)
    }
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_contract() {
        let keys = Keys::new("t1");
        assert_eq!(keys.job("abc"), "t1:job:abc");
        assert_eq!(keys.pod_jobs("pod-0"), "t1:pod:pod-0:jobs");
        assert_eq!(keys.pod_sidecar("pod-0"), "t1:pod:pod-0:sidecar");
        assert_eq!(
            keys.namespaced_pod_sidecar("apps", "pod-0"),
            "t1:pod:apps/pod-0:sidecar"
        );
        assert_eq!(keys.pod_killed("apps", "pod-0"), "t1:pod:apps/pod-0:killed");
        assert_eq!(keys.leases(), "t1:leases");
        assert_eq!(keys.outbox(), "t1:outbox");
        assert_eq!(keys.outbox_dead(), "t1:outbox:dead");
        assert_eq!(keys.outbox_lock(), "t1:outbox:lock");
        assert_eq!(Keys::default().prefix(), "reprise");
    }
}
