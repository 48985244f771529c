//! What a Pod's status says about the sidecar inside it.
//!
//! Pure functions over `k8s_openapi` Pods, so every rule can be tested against status JSON shaped
//! exactly like the kubelet's. Two questions are answered separately:
//!
//! - [`pod_death`]: is the whole pod gone for good (every job its sidecar owned is dead)?
//! - [`container_kills`]: was the sidecar *container* killed without notice (OOM, SIGKILL),
//!   even if the kubelet restarted it in the same pod? Jobs owned by the instance that ran
//!   before the kill are dead; the restarted instance has a new instance id.
//!
//! A deletion that is still in progress (`metadata.deletionTimestamp` set) is deliberately *not*
//! death: graceful termination sends SIGTERM, and the sidecar hands its jobs off itself. The
//! object actually disappearing (a watch `DELETED` event) is reported by [`crate::watch`].

use std::fmt;

use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The label the injection webhook puts on every pod it gives a sidecar.
pub const INJECTED_LABEL: &str = "reprise.dev/injected";
/// The default pod label selector of the watch: only injected pods.
pub const DEFAULT_LABEL_SELECTOR: &str = "reprise.dev/injected=true";
/// The default name of the sidecar container.
pub const DEFAULT_SIDECAR_CONTAINER: &str = "reprise-sidecar";

/// SIGKILL: the exit code a container runtime reports is 128 + the signal number.
const SIGKILL: i32 = 9;
const EXIT_SIGKILL: i32 = 128 + SIGKILL;

/// Why the jobs owned by a pod (or by one run of its sidecar container) are dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeathReason {
    /// The container was killed by the kernel's OOM killer (`reason: OOMKilled`).
    OomKilled,
    /// The container died of SIGKILL (exit code 137 or `signal: 9`), typically after the
    /// termination grace period ran out.
    Sigkill,
    /// The pod object was deleted.
    Deleted,
    /// The pod reached phase `Failed`.
    Failed,
    /// The kubelet evicted the pod (phase `Failed`, reason `Evicted`).
    Evicted,
    /// The pod carries a `DisruptionTarget` condition: preemption, eviction API, taint manager or
    /// kubelet-initiated termination is taking it away.
    Disruption,
    /// The pod's node stopped reporting (phase `Unknown`, or reason `NodeLost`).
    NodeLost,
}

impl DeathReason {
    /// Every reason, e.g. to pre-register metric label values.
    pub const ALL: [DeathReason; 7] = [
        DeathReason::OomKilled,
        DeathReason::Sigkill,
        DeathReason::Deleted,
        DeathReason::Failed,
        DeathReason::Evicted,
        DeathReason::Disruption,
        DeathReason::NodeLost,
    ];

    /// A stable, snake_case name, used as a metric label and in logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeathReason::OomKilled => "oom_killed",
            DeathReason::Sigkill => "sigkill",
            DeathReason::Deleted => "deleted",
            DeathReason::Failed => "failed",
            DeathReason::Evicted => "evicted",
            DeathReason::Disruption => "disruption",
            DeathReason::NodeLost => "node_lost",
        }
    }
}

impl fmt::Display for DeathReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One run of the sidecar container that ended in a kill rather than an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerKill {
    /// [`DeathReason::OomKilled`] or [`DeathReason::Sigkill`].
    pub reason: DeathReason,
    /// When the killed run ended; jobs owned by a sidecar instance that started before this are
    /// dead. `None` when the runtime lost the container (kubelet's `ContainerStatusUnknown`).
    pub finished_at: Option<Time>,
    /// The container's restart count when the kill was observed.
    pub restart_count: i32,
}

/// Whether the whole pod is dead, and why.
///
/// Checked in order of specificity: an evicted pod is also `Failed` and usually carries a
/// `DisruptionTarget` condition, and reports [`DeathReason::Evicted`].
pub fn pod_death(pod: &Pod) -> Option<DeathReason> {
    let status = pod.status.as_ref()?;
    let phase = status.phase.as_deref();
    let reason = status.reason.as_deref();

    if reason == Some("Evicted") {
        return Some(DeathReason::Evicted);
    }
    if phase == Some("Unknown") || reason == Some("NodeLost") {
        return Some(DeathReason::NodeLost);
    }
    if phase == Some("Failed") {
        return Some(DeathReason::Failed);
    }
    let disrupted = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "DisruptionTarget" && c.status == "True");
    if disrupted {
        return Some(DeathReason::Disruption);
    }
    None
}

/// Every kill of the container named `container` that the pod's status still shows: the
/// previous run (`lastState.terminated`) first, then the current one (`state.terminated`).
///
/// Looks at regular and init containers alike, so a native sidecar (an init container with
/// `restartPolicy: Always`) is covered. A clean exit, or any exit that was not a kill (e.g. 143
/// after SIGTERM), yields nothing.
pub fn container_kills(pod: &Pod, container: &str) -> Vec<ContainerKill> {
    let Some(status) = sidecar_status(pod, container) else {
        return Vec::new();
    };
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref());
    let current = status.state.as_ref().and_then(|s| s.terminated.as_ref());
    [last, current]
        .into_iter()
        .flatten()
        .filter_map(|terminated| {
            termination_kill(terminated).map(|reason| ContainerKill {
                reason,
                finished_at: terminated.finished_at.clone(),
                restart_count: status.restart_count,
            })
        })
        .collect()
}

/// Whether one container termination was a kill, and of which kind.
pub fn termination_kill(terminated: &ContainerStateTerminated) -> Option<DeathReason> {
    if terminated.reason.as_deref() == Some("OOMKilled") {
        Some(DeathReason::OomKilled)
    } else if terminated.exit_code == EXIT_SIGKILL || terminated.signal == Some(SIGKILL) {
        Some(DeathReason::Sigkill)
    } else {
        None
    }
}

fn sidecar_status<'a>(pod: &'a Pod, container: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    let regular = status.container_statuses.iter().flatten();
    let init = status.init_container_statuses.iter().flatten();
    regular.chain(init).find(|s| s.name == container)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const SIDECAR: &str = DEFAULT_SIDECAR_CONTAINER;

    /// A running injected pod, as `kubectl get pod -o json` shows it, with `status` replaced.
    fn pod(status: Value) -> Pod {
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "users-client-7d4f4bd8dc-f6c44",
                "namespace": "apps",
                "uid": "0b6c2e5e-6c1d-4d7e-9c55-1f0f1c2d3e4f",
                "resourceVersion": "48213",
                "labels": { "app": "users-client", "reprise.dev/injected": "true" }
            },
            "spec": {
                "containers": [
                    { "name": "app", "image": "demo/users-client:1" },
                    { "name": "reprise-sidecar", "image": "reprise/sidecar:1" }
                ]
            },
            "status": status
        });
        serde_json::from_value(pod).expect("valid Pod JSON")
    }

    fn running(name: &str, restart_count: i32, last_state: Value) -> Value {
        json!({
            "name": name,
            "image": "reprise/sidecar:1",
            "imageID": "docker.io/reprise/sidecar@sha256:4b1f",
            "containerID": "containerd://9a7c",
            "ready": true,
            "started": true,
            "restartCount": restart_count,
            "state": { "running": { "startedAt": "2026-11-24T10:05:12Z" } },
            "lastState": last_state
        })
    }

    fn ready_conditions() -> Value {
        json!([
            { "type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": "2026-11-24T10:00:02Z" },
            { "type": "Initialized", "status": "True", "lastTransitionTime": "2026-11-24T10:00:01Z" },
            { "type": "Ready", "status": "True", "lastTransitionTime": "2026-11-24T10:00:09Z" },
            { "type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-11-24T10:00:09Z" },
            { "type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-24T10:00:00Z" }
        ])
    }

    fn running_status(sidecar: Value) -> Value {
        json!({
            "phase": "Running",
            "conditions": ready_conditions(),
            "hostIP": "10.0.3.17",
            "podIP": "10.244.1.23",
            "startTime": "2026-11-24T10:00:00Z",
            "qosClass": "Burstable",
            "containerStatuses": [running("app", 0, json!({})), sidecar]
        })
    }

    fn time(s: &str) -> Time {
        Time(s.parse().expect("RFC 3339 timestamp"))
    }

    #[test]
    fn a_healthy_pod_is_alive() {
        let p = pod(running_status(running(SIDECAR, 0, json!({}))));
        assert_eq!(pod_death(&p), None);
        assert!(container_kills(&p, SIDECAR).is_empty());
    }

    #[test]
    fn oom_killed_sidecar_restarted_in_place() {
        let last = json!({ "terminated": {
            "exitCode": 137, "reason": "OOMKilled", "containerID": "containerd://77e1",
            "startedAt": "2026-11-24T10:00:03Z", "finishedAt": "2026-11-24T10:05:10Z"
        }});
        let p = pod(running_status(running(SIDECAR, 1, last)));
        assert_eq!(pod_death(&p), None, "the pod itself lives on");
        assert_eq!(
            container_kills(&p, SIDECAR),
            vec![ContainerKill {
                reason: DeathReason::OomKilled,
                finished_at: Some(time("2026-11-24T10:05:10Z")),
                restart_count: 1,
            }]
        );
    }

    #[test]
    fn sigkill_after_grace_period_before_restart() {
        // Between the kill and the restart the current state itself is `terminated`.
        let sidecar = json!({
            "name": SIDECAR, "image": "reprise/sidecar:1", "imageID": "", "containerID": "containerd://9a7c",
            "ready": false, "started": false, "restartCount": 0,
            "state": { "terminated": {
                "exitCode": 137, "reason": "Error", "containerID": "containerd://9a7c",
                "startedAt": "2026-11-24T10:00:03Z", "finishedAt": "2026-11-24T10:07:41Z"
            }},
            "lastState": {}
        });
        let p = pod(running_status(sidecar));
        let kills = container_kills(&p, SIDECAR);
        assert_eq!(kills.len(), 1);
        assert_eq!(kills[0].reason, DeathReason::Sigkill);
        assert_eq!(kills[0].finished_at, Some(time("2026-11-24T10:07:41Z")));
    }

    #[test]
    fn signal_nine_counts_as_sigkill() {
        let last = json!({ "terminated": {
            "exitCode": 0, "signal": 9, "reason": "Error",
            "startedAt": "2026-11-24T10:00:03Z", "finishedAt": "2026-11-24T10:02:00Z"
        }});
        let p = pod(running_status(running(SIDECAR, 3, last)));
        let kills = container_kills(&p, SIDECAR);
        assert_eq!(kills.len(), 1);
        assert_eq!(kills[0].reason, DeathReason::Sigkill);
        assert_eq!(kills[0].restart_count, 3);
    }

    #[test]
    fn clean_exit_and_sigterm_exit_are_not_kills() {
        for (code, reason) in [(0, "Completed"), (143, "Error"), (1, "Error")] {
            let last = json!({ "terminated": {
                "exitCode": code, "reason": reason,
                "startedAt": "2026-11-24T10:00:03Z", "finishedAt": "2026-11-24T10:02:00Z"
            }});
            let p = pod(running_status(running(SIDECAR, 1, last)));
            assert!(
                container_kills(&p, SIDECAR).is_empty(),
                "exit {code} ({reason}) is not a kill"
            );
            assert_eq!(pod_death(&p), None);
        }
    }

    #[test]
    fn only_the_sidecar_container_counts() {
        let app_oom = json!({
            "name": "app", "image": "demo/users-client:1", "imageID": "", "ready": true, "restartCount": 1,
            "state": { "running": { "startedAt": "2026-11-24T10:05:12Z" } },
            "lastState": { "terminated": { "exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-11-24T10:05:10Z" } }
        });
        let mut status = running_status(running(SIDECAR, 0, json!({})));
        status["containerStatuses"][0] = app_oom;
        let p = pod(status);
        assert!(container_kills(&p, SIDECAR).is_empty());
        assert_eq!(container_kills(&p, "app").len(), 1);
    }

    #[test]
    fn native_sidecar_in_init_container_statuses() {
        let last = json!({ "terminated": { "exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-11-24T10:05:10Z" } });
        let mut status = running_status(running("app", 0, json!({})));
        status["containerStatuses"] = json!([running("app", 0, json!({}))]);
        status["initContainerStatuses"] = json!([running(SIDECAR, 1, last)]);
        let p = pod(status);
        assert_eq!(
            container_kills(&p, SIDECAR)[0].reason,
            DeathReason::OomKilled
        );
    }

    #[test]
    fn both_previous_and_current_kill_are_reported_oldest_first() {
        let sidecar = json!({
            "name": SIDECAR, "image": "reprise/sidecar:1", "imageID": "", "ready": false, "restartCount": 1,
            "state": { "terminated": { "exitCode": 137, "reason": "Error", "finishedAt": "2026-11-24T10:09:00Z" } },
            "lastState": { "terminated": { "exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-11-24T10:05:10Z" } }
        });
        let p = pod(running_status(sidecar));
        let reasons: Vec<_> = container_kills(&p, SIDECAR)
            .iter()
            .map(|k| k.reason)
            .collect();
        assert_eq!(reasons, [DeathReason::OomKilled, DeathReason::Sigkill]);
    }

    #[test]
    fn evicted_pod() {
        // What the kubelet writes when it evicts under node pressure.
        let p = pod(json!({
            "phase": "Failed",
            "reason": "Evicted",
            "message": "The node was low on resource: memory. Threshold quantity: 100Mi, available: 91Mi.",
            "conditions": [
                { "type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
                  "message": "The node was low on resource: memory.", "lastTransitionTime": "2026-11-24T10:07:00Z" },
                { "type": "Ready", "status": "False", "reason": "PodFailed", "lastTransitionTime": "2026-11-24T10:07:30Z" }
            ],
            "startTime": "2026-11-24T10:00:00Z"
        }));
        assert_eq!(pod_death(&p), Some(DeathReason::Evicted));
    }

    #[test]
    fn failed_pod() {
        let p = pod(json!({
            "phase": "Failed",
            "conditions": ready_conditions(),
            "containerStatuses": [running(SIDECAR, 0, json!({}))]
        }));
        assert_eq!(pod_death(&p), Some(DeathReason::Failed));
    }

    #[test]
    fn node_lost_pod() {
        let p = pod(json!({
            "phase": "Unknown",
            "reason": "NodeLost",
            "message": "Node worker-3 which was running pod users-client-7d4f4bd8dc-f6c44 is unresponsive",
            "conditions": [ { "type": "Ready", "status": "False", "reason": "NodeNotReady",
                              "lastTransitionTime": "2026-11-24T10:08:00Z" } ]
        }));
        assert_eq!(pod_death(&p), Some(DeathReason::NodeLost));

        let unknown_only = pod(json!({ "phase": "Unknown" }));
        assert_eq!(pod_death(&unknown_only), Some(DeathReason::NodeLost));
    }

    #[test]
    fn disruption_target_condition() {
        let mut status = running_status(running(SIDECAR, 0, json!({})));
        status["conditions"]
            .as_array_mut()
            .expect("array")
            .push(json!({
                "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                "message": "default-scheduler: preempting to accommodate a higher priority pod",
                "lastTransitionTime": "2026-11-24T10:07:00Z"
            }));
        assert_eq!(
            pod_death(&pod(status.clone())),
            Some(DeathReason::Disruption)
        );

        status["conditions"][5]["status"] = json!("False");
        assert_eq!(
            pod_death(&pod(status)),
            None,
            "a cleared DisruptionTarget is not death"
        );
    }

    #[test]
    fn graceful_deletion_in_progress_is_not_death() {
        let mut p = pod(running_status(running(SIDECAR, 0, json!({}))));
        p.metadata.deletion_timestamp = Some(time("2026-11-24T10:10:00Z"));
        p.metadata.deletion_grace_period_seconds = Some(30);
        assert_eq!(pod_death(&p), None);
    }

    #[test]
    fn succeeded_pod_is_not_death() {
        let p = pod(json!({ "phase": "Succeeded", "conditions": ready_conditions() }));
        assert_eq!(pod_death(&p), None);
    }

    #[test]
    fn pod_without_status_is_alive() {
        let mut p = pod(json!({}));
        p.status = None;
        assert_eq!(pod_death(&p), None);
        assert!(container_kills(&p, SIDECAR).is_empty());
    }

    #[test]
    fn reason_labels_are_stable() {
        let labels: Vec<_> = DeathReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "oom_killed",
                "sigkill",
                "deleted",
                "failed",
                "evicted",
                "disruption",
                "node_lost"
            ]
        );
    }
}
