//! The handoff events on RabbitMQ: a JSON contract other processes (and other versions of this
//! one) read, so decoding is strict about what it must understand and lenient about the rest.
//!
//! ```json
//! {"type":"job.interrupted","version":1,"job_id":"…","service":"users-client",
//!  "method":"/demo.v1.UserService/ListUsers","offset":"41","fence":3,"pod":"users-7d9f-x2",
//!  "instance":"…","reason":"SIGTERM","at_ms":1764000000000}
//! ```
//!
//! Fields that do not apply are omitted, never `null`. Unknown fields are ignored, so a field can
//! be added without a version bump; `version` is a *major* version, raised only when an existing
//! field changes meaning, and a reader refuses a major it does not know.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{JobRecord, Owner};

/// The schema major version this code writes and the highest it reads.
pub const EVENT_VERSION: u64 = 1;

/// What happened. The wire name is the `type` field and the start of the routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A live owner let the job go (SIGTERM): another pod of the service should resume it.
    JobInterrupted,
    /// The owner died (its lease ran out, or its pod was killed): the recoverer hands it over.
    JobOrphaned,
    /// The stream ended normally; informational.
    JobCompleted,
    /// A pod disappeared without interrupting its jobs; informational, per namespace.
    PodKilled,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::JobInterrupted,
        EventKind::JobOrphaned,
        EventKind::JobCompleted,
        EventKind::PodKilled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::JobInterrupted => "job.interrupted",
            EventKind::JobOrphaned => "job.orphaned",
            EventKind::JobCompleted => "job.completed",
            EventKind::PodKilled => "pod.killed",
        }
    }

    /// True for the kinds a service's resume queue receives.
    pub fn is_handoff(self) -> bool {
        matches!(self, EventKind::JobInterrupted | EventKind::JobOrphaned)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message is not an event this code can act on. Never a panic: bodies come from outside.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not an event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("event schema version {version} is newer than the {EVENT_VERSION} this build reads")]
    UnsupportedVersion { version: u64 },
    #[error("a `{kind}` event needs the field `{field}`")]
    MissingField {
        kind: &'static str,
        field: &'static str,
    },
}

/// One event. Build it with a constructor ([`Event::job_interrupted`], …), which fills the
/// fields its kind needs; the `Option`s are the fields a kind may leave out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub job_id: Option<String>,
    /// The logical service (the sidecar's `service`): the routing key of job events.
    pub service: Option<String>,
    pub method: Option<String>,
    /// The last offset forwarded to the app, as text (the same text as the job hash's `offset`).
    pub offset: Option<String>,
    /// The job's fence when the event was written: a consumer whose job record shows a higher
    /// fence is looking at a stale event.
    pub fence: Option<u64>,
    /// The owner pod (for `pod.killed`, the pod that died).
    pub pod: Option<String>,
    pub instance: Option<String>,
    /// The Kubernetes namespace: the routing key of `pod.killed`.
    pub namespace: Option<String>,
    pub reason: Option<String>,
    /// When the event was made, Unix epoch milliseconds of the writer's clock.
    pub at_ms: u64,
}

impl Event {
    fn job(kind: EventKind, job_id: &str, service: &str, method: &str, fence: u64) -> Self {
        Self {
            kind,
            job_id: Some(job_id.to_owned()),
            service: Some(service.to_owned()),
            method: Some(method.to_owned()),
            offset: None,
            fence: Some(fence),
            pod: None,
            instance: None,
            namespace: None,
            reason: None,
            at_ms: now_ms(),
        }
    }

    /// `job.interrupted`: `owner` let the job go at `fence`; add the offset with [`Event::with_offset`].
    pub fn job_interrupted(
        job_id: &str,
        service: &str,
        method: &str,
        fence: u64,
        owner: &Owner,
    ) -> Self {
        Self::job(EventKind::JobInterrupted, job_id, service, method, fence).with_owner(owner)
    }

    /// `job.orphaned`: `owner` (now dead) held the job at `fence`.
    pub fn job_orphaned(
        job_id: &str,
        service: &str,
        method: &str,
        fence: u64,
        owner: &Owner,
    ) -> Self {
        Self::job(EventKind::JobOrphaned, job_id, service, method, fence).with_owner(owner)
    }

    /// `job.completed`: `owner` finished the stream at `fence`.
    pub fn job_completed(
        job_id: &str,
        service: &str,
        method: &str,
        fence: u64,
        owner: &Owner,
    ) -> Self {
        Self::job(EventKind::JobCompleted, job_id, service, method, fence).with_owner(owner)
    }

    /// A job event of `kind` describing `record` as stored: its offset, fence and owner.
    /// `kind` should be a job kind: a `PodKilled` event needs a namespace ([`Event::validate`]).
    pub fn from_record(kind: EventKind, record: &JobRecord) -> Self {
        Self::job(
            kind,
            &record.job_id,
            &record.service,
            &record.method,
            record.fence,
        )
        .with_owner(&record.owner)
        .with_offset(record.offset.clone())
    }

    /// `pod.killed`: `pod` in `namespace` is gone.
    pub fn pod_killed(pod: &str, namespace: &str) -> Self {
        Self {
            kind: EventKind::PodKilled,
            job_id: None,
            service: None,
            method: None,
            offset: None,
            fence: None,
            pod: Some(pod.to_owned()),
            instance: None,
            namespace: Some(namespace.to_owned()),
            reason: None,
            at_ms: now_ms(),
        }
    }

    pub fn with_owner(mut self, owner: &Owner) -> Self {
        self.pod = Some(owner.pod.clone());
        self.instance = Some(owner.instance.clone());
        self
    }

    pub fn with_offset(mut self, offset: Option<String>) -> Self {
        self.offset = offset;
        self
    }

    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn with_at_ms(mut self, at_ms: u64) -> Self {
        self.at_ms = at_ms;
        self
    }

    /// `job.interrupted.{service}`, `job.orphaned.{service}`, `job.completed.{service}` or
    /// `pod.killed.{namespace}`. The subject is empty if the event lacks it (see [`Event::validate`]).
    pub fn routing_key(&self) -> String {
        let subject = match self.kind {
            EventKind::PodKilled => self.namespace.as_deref(),
            _ => self.service.as_deref(),
        };
        format!("{}.{}", self.kind, subject.unwrap_or_default())
    }

    /// Checks that the fields this kind cannot do without are there.
    pub fn validate(&self) -> Result<(), DecodeError> {
        let required: &[(&'static str, bool)] = match self.kind {
            EventKind::PodKilled => &[
                ("pod", self.pod.is_some()),
                ("namespace", self.namespace.is_some()),
            ],
            _ => &[
                ("job_id", self.job_id.is_some()),
                ("service", self.service.is_some()),
            ],
        };
        match required.iter().find(|(_, present)| !present) {
            Some((field, _)) => Err(DecodeError::MissingField {
                kind: self.kind.as_str(),
                field,
            }),
            None => Ok(()),
        }
    }

    /// The JSON body, fields in the documented order.
    pub fn to_json(&self) -> Vec<u8> {
        let wire = WireOut {
            kind: self.kind.as_str(),
            version: EVENT_VERSION,
            job_id: self.job_id.as_deref(),
            service: self.service.as_deref(),
            method: self.method.as_deref(),
            offset: self.offset.as_deref(),
            fence: self.fence,
            pod: self.pod.as_deref(),
            instance: self.instance.as_deref(),
            namespace: self.namespace.as_deref(),
            reason: self.reason.as_deref(),
            at_ms: self.at_ms,
        };
        // A struct of strings and integers always serializes.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Parses a body written by any version of Reprise with the same major schema version.
    pub fn from_json(body: &[u8]) -> Result<Self, DecodeError> {
        let wire: WireIn = serde_json::from_slice(body)?;
        let kind = EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == wire.kind)
            .ok_or_else(|| DecodeError::UnknownType(wire.kind.clone()))?;
        let version = wire.version.ok_or(DecodeError::MissingField {
            kind: kind.as_str(),
            field: "version",
        })?;
        if version > EVENT_VERSION || version == 0 {
            return Err(DecodeError::UnsupportedVersion { version });
        }
        let at_ms = wire.at_ms.ok_or(DecodeError::MissingField {
            kind: kind.as_str(),
            field: "at_ms",
        })?;
        let event = Event {
            kind,
            job_id: wire.job_id,
            service: wire.service,
            method: wire.method,
            offset: wire.offset,
            fence: wire.fence,
            pod: wire.pod,
            instance: wire.instance,
            namespace: wire.namespace,
            reason: wire.reason,
            at_ms,
        };
        event.validate()?;
        Ok(event)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[derive(Serialize)]
struct WireOut<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    at_ms: u64,
}

/// Lenient on purpose: unknown fields are ignored, `version` and `at_ms` are checked by hand so
/// their absence is a [`DecodeError::MissingField`] rather than a bare JSON error.
#[derive(Deserialize)]
struct WireIn {
    #[serde(rename = "type")]
    kind: String,
    version: Option<u64>,
    job_id: Option<String>,
    service: Option<String>,
    method: Option<String>,
    offset: Option<String>,
    fence: Option<u64>,
    pod: Option<String>,
    instance: Option<String>,
    namespace: Option<String>,
    reason: Option<String>,
    at_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner::new("pod-a", "inst-1")
    }

    #[test]
    fn interrupted_event_has_the_documented_body() {
        let event = Event::job_interrupted("j1", "users", "/demo.v1.U/List", 3, &owner())
            .with_offset(Some("41".to_owned()))
            .with_reason("SIGTERM")
            .with_at_ms(1_700_000_000_000);
        assert_eq!(
            String::from_utf8(event.to_json()).unwrap_or_default(),
            r#"{"type":"job.interrupted","version":1,"job_id":"j1","service":"users","method":"/demo.v1.U/List","offset":"41","fence":3,"pod":"pod-a","instance":"inst-1","reason":"SIGTERM","at_ms":1700000000000}"#
        );
        assert_eq!(event.routing_key(), "job.interrupted.users");
        assert_eq!(Event::from_json(&event.to_json()).ok(), Some(event));
    }

    #[test]
    fn routing_keys_follow_the_contract() {
        let o = owner();
        assert_eq!(
            Event::job_orphaned("j", "svc", "m", 1, &o).routing_key(),
            "job.orphaned.svc"
        );
        assert_eq!(
            Event::job_completed("j", "svc", "m", 1, &o).routing_key(),
            "job.completed.svc"
        );
        assert_eq!(
            Event::pod_killed("pod-a", "prod").routing_key(),
            "pod.killed.prod"
        );
    }

    #[test]
    fn absent_fields_are_omitted() {
        let body = Event::pod_killed("pod-a", "prod").with_at_ms(5).to_json();
        assert_eq!(
            String::from_utf8(body).unwrap_or_default(),
            r#"{"type":"pod.killed","version":1,"pod":"pod-a","namespace":"prod","at_ms":5}"#
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body = br#"{"type":"job.orphaned","version":1,"job_id":"j","service":"s","at_ms":7,"new_field":{"x":[1,2]}}"#;
        let event = Event::from_json(body).ok();
        assert_eq!(
            event.map(|e| (e.kind, e.at_ms)),
            Some((EventKind::JobOrphaned, 7))
        );
    }

    #[test]
    fn bodies_that_cannot_be_acted_on_are_typed_errors() {
        let cases: [(&[u8], &str); 8] = [
            (b"not json", "Json"),
            (b"\xff\xfe", "Json"),
            (b"[1,2]", "Json"),
            (br#"{"version":1,"at_ms":1}"#, "Json"),
            (
                br#"{"type":"job.exploded","version":1,"at_ms":1}"#,
                "UnknownType",
            ),
            (
                br#"{"type":"pod.killed","version":2,"pod":"p","namespace":"n","at_ms":1}"#,
                "UnsupportedVersion",
            ),
            (
                br#"{"type":"pod.killed","pod":"p","namespace":"n","at_ms":1}"#,
                "MissingField",
            ),
            (
                br#"{"type":"job.interrupted","version":1,"job_id":"j","at_ms":1}"#,
                "MissingField",
            ),
        ];
        for (body, expected) in cases {
            let got = match Event::from_json(body) {
                Err(DecodeError::Json(_)) => "Json",
                Err(DecodeError::UnknownType(_)) => "UnknownType",
                Err(DecodeError::UnsupportedVersion { .. }) => "UnsupportedVersion",
                Err(DecodeError::MissingField { .. }) => "MissingField",
                Ok(_) => "Ok",
            };
            assert_eq!(got, expected, "{}", String::from_utf8_lossy(body));
        }
    }
}
