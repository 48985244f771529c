//! Pods as the kubelet reports them, built from `k8s_openapi` types: an injected pod with an
//! app container and the sidecar, and the status changes the kubelet, the eviction manager and
//! the node controller write when things go wrong.
//!
//! The builders panic on what they cannot build (a pod without a sidecar container status, a
//! timestamp that is not RFC 3339): their input is the caller's code, not the outside world.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
        ContainerStatus, Pod, PodCondition, PodSpec, PodStatus,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff,
};

pub const SIDECAR: &str = "reprise-sidecar";
pub const APP: &str = "app";

pub fn time(rfc3339: &str) -> Time {
    Time(rfc3339.parse().expect("RFC 3339 timestamp"))
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// A running pod carrying `reprise.dev/injected=true`, both containers running and ready.
pub fn injected_pod(namespace: &str, name: &str) -> Pod {
    let mut pod = plain_pod(namespace, name);
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert("reprise.dev/injected".into(), "true".into());
    pod
}

/// The same pod without the injection label.
pub fn plain_pod(namespace: &str, name: &str) -> Pod {
    let started = now();
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([("app".into(), "users-client".into())])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![
                container(APP, "demo/users-client:1"),
                container(SIDECAR, "reprise/sidecar:1"),
            ],
            node_name: Some("worker-1".into()),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(
                [
                    "PodReadyToStartContainers",
                    "Initialized",
                    "Ready",
                    "ContainersReady",
                    "PodScheduled",
                ]
                .into_iter()
                .map(|t| condition(t, "True", None))
                .collect(),
            ),
            host_ip: Some("10.0.3.17".into()),
            pod_ip: Some("10.244.1.23".into()),
            start_time: Some(started.clone()),
            qos_class: Some("Burstable".into()),
            container_statuses: Some(vec![
                running(APP, "demo/users-client:1", &started),
                running(SIDECAR, "reprise/sidecar:1", &started),
            ]),
            ..PodStatus::default()
        }),
    }
}

fn container(name: &str, image: &str) -> Container {
    Container {
        name: name.into(),
        image: Some(image.into()),
        ..Container::default()
    }
}

fn condition(type_: &str, status: &str, reason: Option<&str>) -> PodCondition {
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.map(Into::into),
        last_transition_time: Some(now()),
        ..PodCondition::default()
    }
}

fn running(name: &str, image: &str, started: &Time) -> ContainerStatus {
    ContainerStatus {
        name: name.into(),
        image: image.into(),
        image_id: format!("docker.io/{image}@sha256:4b1f"),
        container_id: Some(format!("containerd://{name}-0")),
        ready: true,
        started: Some(true),
        restart_count: 0,
        state: Some(ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(started.clone()),
            }),
            ..ContainerState::default()
        }),
        last_state: Some(ContainerState::default()),
        ..ContainerStatus::default()
    }
}

/// A container termination record.
pub fn terminated(
    exit_code: i32,
    reason: &str,
    signal: Option<i32>,
    finished_at: &str,
) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code,
        reason: Some(reason.into()),
        signal,
        started_at: Some(time("2026-11-24T10:00:03Z")),
        finished_at: Some(time(finished_at)),
        container_id: Some("containerd://reprise-sidecar-old".into()),
        ..ContainerStateTerminated::default()
    }
}

fn sidecar_status(pod: &mut Pod) -> &mut ContainerStatus {
    pod.status
        .as_mut()
        .and_then(|s| s.container_statuses.as_mut())
        .and_then(|cs| cs.iter_mut().find(|c| c.name == SIDECAR))
        .expect("the pod has a sidecar container status")
}

/// The kubelet restarted the sidecar after `how`: `lastState.terminated`, restartCount + 1, and
/// a new running state.
pub fn sidecar_restarted(mut pod: Pod, how: ContainerStateTerminated) -> Pod {
    let status = sidecar_status(&mut pod);
    status.restart_count += 1;
    status.container_id = Some(format!("containerd://{SIDECAR}-{}", status.restart_count));
    status.last_state = Some(ContainerState {
        terminated: Some(how),
        ..ContainerState::default()
    });
    status.state = Some(ContainerState {
        running: Some(ContainerStateRunning {
            started_at: Some(now()),
        }),
        ..ContainerState::default()
    });
    pod
}

/// The sidecar has just terminated and is not restarted yet: `state.terminated`, not ready.
pub fn sidecar_terminated(mut pod: Pod, how: ContainerStateTerminated) -> Pod {
    let status = sidecar_status(&mut pod);
    status.ready = false;
    status.started = Some(false);
    status.state = Some(ContainerState {
        terminated: Some(how),
        ..ContainerState::default()
    });
    pod
}

fn pod_status(pod: &mut Pod) -> &mut PodStatus {
    pod.status.get_or_insert_with(PodStatus::default)
}

fn set_condition(pod: &mut Pod, cond: PodCondition) {
    let conditions = pod_status(pod).conditions.get_or_insert_with(Vec::new);
    conditions.retain(|c| c.type_ != cond.type_);
    conditions.push(cond);
}

/// What the kubelet's eviction manager writes: a `DisruptionTarget` condition, then phase
/// `Failed` with reason `Evicted`.
pub fn evicted(mut pod: Pod) -> Pod {
    let mut disruption = condition("DisruptionTarget", "True", Some("TerminationByKubelet"));
    disruption.message = Some("The node was low on resource: memory.".into());
    set_condition(&mut pod, disruption);
    set_condition(&mut pod, condition("Ready", "False", Some("PodFailed")));
    let status = pod_status(&mut pod);
    status.phase = Some("Failed".into());
    status.reason = Some("Evicted".into());
    status.message = Some(
        "The node was low on resource: memory. Threshold quantity: 100Mi, available: 91Mi.".into(),
    );
    pod
}

/// What the node controller writes for a pod on a node that stopped reporting.
pub fn node_lost(mut pod: Pod) -> Pod {
    set_condition(&mut pod, condition("Ready", "False", Some("NodeNotReady")));
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod_status(&mut pod);
    status.phase = Some("Unknown".into());
    status.reason = Some("NodeLost".into());
    status.message = Some(format!(
        "Node worker-1 which was running pod {name} is unresponsive"
    ));
    pod
}

/// A `DisruptionTarget` condition, e.g. `PreemptionByScheduler`, `EvictionByEvictionAPI`,
/// `DeletionByTaintManager`.
pub fn disrupted(mut pod: Pod, reason: &str) -> Pod {
    set_condition(
        &mut pod,
        condition("DisruptionTarget", "True", Some(reason)),
    );
    pod
}

/// Graceful deletion started: `deletionTimestamp` set, the pod still exists.
pub fn terminating(mut pod: Pod, grace_seconds: i64) -> Pod {
    pod.metadata.deletion_timestamp = Some(now());
    pod.metadata.deletion_grace_period_seconds = Some(grace_seconds);
    pod
}
