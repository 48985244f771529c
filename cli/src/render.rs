//! The three ways a job is printed: a table row, `field: value` lines, JSON.
//! Field names are those of the job's Redis hash, so what `reprise` shows is what
//! `redis-cli HGETALL` shows.

use std::fmt::Write as _;

use reprise_jobs::{JobRecord, JobStatus};
use serde::Serialize;

use crate::format::{ago, compact, method_labels, printable, remaining, rfc3339, truncate};

/// Offsets can be long (bytes offsets are hex); the full value is in `show`.
const OFFSET_WIDTH: usize = 24;
/// Space between table columns.
const GAP: &str = "   ";

pub const HEADER: [&str; 11] = [
    "JOB", "SERVICE", "METHOD", "STATUS", "OFFSET", "MESSAGES", "RESUMES", "OWNER", "FENCE",
    "UPDATED", "LEASE",
];

/// A table with a header and one row per job; columns as wide as their widest cell.
pub fn table(jobs: &[JobRecord], now: u64) -> String {
    let labels = method_labels(jobs.iter().map(|job| job.method.as_str()));
    let rows: Vec<[String; HEADER.len()]> = jobs
        .iter()
        .map(|job| {
            let method = labels.get(job.method.as_str()).unwrap_or(&job.method);
            let offset = job.offset.as_deref().map(|o| truncate(o, OFFSET_WIDTH));
            [
                cell(&job.job_id),
                cell(&job.service),
                cell(method),
                job.status.to_string(),
                offset.map_or_else(|| "-".to_owned(), |o| cell(&o)),
                job.messages.to_string(),
                job.resumes.to_string(),
                cell(&job.owner.pod_ref()),
                job.fence.to_string(),
                ago(now, job.updated_at_ms),
                lease(job, now),
            ]
        })
        .collect();

    let mut widths = HEADER.map(|name| name.chars().count());
    for row in &rows {
        for (width, value) in widths.iter_mut().zip(row) {
            *width = (*width).max(value.chars().count());
        }
    }
    let mut out = String::new();
    push_row(&mut out, &HEADER, &widths);
    for row in &rows {
        push_row(&mut out, row, &widths);
    }
    out
}

fn push_row(out: &mut String, cells: &[impl AsRef<str>], widths: &[usize]) {
    let last = cells.len() - 1;
    for (i, (value, width)) in cells.iter().zip(widths).enumerate() {
        let value = value.as_ref();
        if i == last {
            // No trailing blanks.
            out.push_str(value);
        } else {
            let pad = width.saturating_sub(value.chars().count());
            out.push_str(value);
            out.extend(std::iter::repeat_n(' ', pad));
            out.push_str(GAP);
        }
    }
    out.push('\n');
}

fn cell(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        printable(text).into_owned()
    }
}

/// `7s` left on a running job's lease, `expired` past it, `-` for jobs not running.
fn lease(job: &JobRecord, now: u64) -> String {
    match (job.status, job.lease_expires_at_ms) {
        (JobStatus::Running, Some(until)) => remaining(now, until),
        _ => "-".to_owned(),
    }
}

/// Every field, one per line; timestamps also as RFC 3339 UTC and relative to `now`.
pub fn details(job: &JobRecord, now: u64) -> String {
    let none = || "<none>".to_owned();
    let text = |value: &str| {
        if value.is_empty() {
            none()
        } else {
            printable(value).into_owned()
        }
    };
    let time = |ms: u64| format!("{ms} ({}, {})", rfc3339(ms), ago(now, ms));
    let lease = |until: u64| {
        let relative = if until > now {
            format!("in {}", remaining(now, until))
        } else {
            format!("expired {} ago", compact(now - until))
        };
        format!("{until} ({}, {relative})", rfc3339(until))
    };
    let fields: [(&str, String); 19] = [
        ("job_id", text(&job.job_id)),
        ("service", text(&job.service)),
        ("method", text(&job.method)),
        ("status", job.status.to_string()),
        ("offset", job.offset.as_deref().map_or_else(none, text)),
        ("owner_pod", text(&job.owner.pod)),
        ("owner_instance", text(&job.owner.instance)),
        (
            "owner_namespace",
            job.owner.namespace.as_deref().map_or_else(none, text),
        ),
        (
            "owner_uid",
            job.owner.uid.as_deref().map_or_else(none, text),
        ),
        ("fence", job.fence.to_string()),
        ("started_at", time(job.started_at_ms)),
        ("updated_at", time(job.updated_at_ms)),
        ("finished_at", job.finished_at_ms.map_or_else(none, time)),
        (
            "lease_expires_at",
            job.lease_expires_at_ms.map_or_else(none, lease),
        ),
        ("messages", job.messages.to_string()),
        ("resumes", job.resumes.to_string()),
        (
            "last_error",
            job.last_error.as_deref().map_or_else(none, text),
        ),
        (
            "resume_mode",
            job.resume.map_or_else(none, |m| m.as_str().to_owned()),
        ),
        ("request", text(&job.request_b64)),
    ];
    let mut out = String::new();
    for (name, value) in fields {
        let _ = writeln!(out, "{name}: {value}");
    }
    let request = if job.request_json.is_empty() {
        none()
    } else {
        pretty_json(&job.request_json)
    };
    if request.contains('\n') {
        // A block, indented, so none of its lines reads as a field of the job.
        out.push_str("request_json:\n");
        for line in request.lines() {
            let _ = writeln!(out, "  {line}");
        }
    } else {
        let _ = writeln!(out, "request_json: {request}");
    }
    out
}

/// `text` re-indented like `serde_json::to_string_pretty`, but keeping the field order the
/// sidecar wrote (proto field order); as stored when it is not JSON.
fn pretty_json(text: &str) -> String {
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
        return printable(text).into_owned();
    }
    let mut out = String::with_capacity(text.len() * 2);
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.next_if(|c| c.is_whitespace()).is_some() {}
                match chars.next_if(|c| matches!(c, '}' | ']')) {
                    Some(close) => out.push(close),
                    None => {
                        depth += 1;
                        newline(&mut out, depth);
                    }
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            _ if c.is_whitespace() => {}
            _ => out.push(c),
        }
    }
    out
}

/// A job as JSON: the hash's fields, typed (numbers as numbers, empty fields as `null`,
/// timestamps in epoch milliseconds), with `request_json` embedded as JSON when it parses.
#[derive(Serialize)]
pub struct JobJson<'a> {
    job_id: &'a str,
    service: &'a str,
    method: &'a str,
    status: &'static str,
    offset: Option<&'a str>,
    owner_pod: &'a str,
    owner_instance: &'a str,
    owner_namespace: Option<&'a str>,
    owner_uid: Option<&'a str>,
    fence: u64,
    started_at: u64,
    updated_at: u64,
    finished_at: Option<u64>,
    lease_expires_at: Option<u64>,
    messages: u64,
    resumes: u64,
    last_error: Option<&'a str>,
    resume_mode: Option<&'static str>,
    request: &'a str,
    request_json: serde_json::Value,
}

impl<'a> From<&'a JobRecord> for JobJson<'a> {
    fn from(job: &'a JobRecord) -> Self {
        Self {
            job_id: &job.job_id,
            service: &job.service,
            method: &job.method,
            status: job.status.as_str(),
            offset: job.offset.as_deref(),
            owner_pod: &job.owner.pod,
            owner_instance: &job.owner.instance,
            owner_namespace: job.owner.namespace.as_deref(),
            owner_uid: job.owner.uid.as_deref(),
            fence: job.fence,
            started_at: job.started_at_ms,
            updated_at: job.updated_at_ms,
            finished_at: job.finished_at_ms,
            lease_expires_at: job.lease_expires_at_ms,
            messages: job.messages,
            resumes: job.resumes,
            last_error: job.last_error.as_deref(),
            resume_mode: job.resume.map(reprise_jobs::ResumeMode::as_str),
            request: &job.request_b64,
            request_json: serde_json::from_str(&job.request_json)
                .unwrap_or_else(|_| serde_json::Value::String(job.request_json.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reprise_jobs::Owner;

    fn job(id: &str, status: JobStatus) -> JobRecord {
        JobRecord {
            job_id: id.to_owned(),
            service: "users-client".to_owned(),
            method: "/demo.v1.Feed/Subscribe".to_owned(),
            status,
            offset: Some("41".to_owned()),
            owner: Owner::new("pod-a", "i-1"),
            fence: 3,
            started_at_ms: 1_767_225_600_000,
            updated_at_ms: 1_767_225_700_000,
            finished_at_ms: None,
            messages: 41,
            resumes: 2,
            last_error: None,
            request_b64: "CgV0b3BpYw==".to_owned(),
            request_json: r#"{"topic":"t","n":1}"#.to_owned(),
            lease_expires_at_ms: Some(1_767_225_707_000),
            resume: Some(reprise_jobs::ResumeMode::Deliver),
        }
    }

    const NOW: u64 = 1_767_225_703_000;

    #[test]
    fn columns_fit_their_content() {
        let mut long = job("a-much-longer-job-id", JobStatus::Interrupted);
        long.offset = Some("ab".repeat(40));
        let out = table(&[job("j1", JobStatus::Running), long], NOW);
        let mut namespaced = job("j2", JobStatus::Running);
        namespaced.owner = Owner::new("pod-a", "i-1").in_namespace("demo");
        let with_namespace = table(&[namespaced], NOW);
        assert!(
            with_namespace.contains("   demo/pod-a   "),
            "the owner as kubectl names it: {with_namespace}"
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "JOB                    SERVICE        METHOD           STATUS        OFFSET                     MESSAGES   RESUMES   OWNER   FENCE   UPDATED   LEASE"
        );
        assert_eq!(
            lines[1],
            "j1                     users-client   Feed/Subscribe   running       41                         41         2         pod-a   3       3s ago    4s"
        );
        let cut = format!("{}…   ", &"ab".repeat(40)[..OFFSET_WIDTH - 1]);
        assert!(lines[2].contains(&cut), "{}", lines[2]);
        assert!(lines[2].ends_with("3s ago    -"), "{}", lines[2]);
        assert!(out.lines().all(|l| l == l.trim_end()));
    }

    #[test]
    fn a_lease_past_its_expiry_reads_expired() {
        let out = table(&[job("j1", JobStatus::Running)], NOW + 10_000);
        assert!(out.lines().nth(1).is_some_and(|l| l.ends_with("expired")));
    }

    #[test]
    fn details_have_one_field_per_line() {
        let out = details(&job("j1", JobStatus::Running), NOW);
        assert!(out.contains("job_id: j1\n"));
        assert!(out.contains("started_at: 1767225600000 (2026-01-01T00:00:00.000Z, 103s ago)\n"));
        assert!(
            out.contains("lease_expires_at: 1767225707000 (2026-01-01T00:01:47.000Z, in 4s)\n")
        );
        assert!(out.contains("finished_at: <none>\n"));
        // Pretty-printed, in the order stored (not sorted).
        assert!(out.ends_with("request_json:\n  {\n    \"topic\": \"t\",\n    \"n\": 1\n  }\n"));
    }

    #[test]
    fn request_json_is_reindented_in_stored_order() {
        let text = r#"{"z":[1, {"a":"x,\"y\"{"}],"e":{},"l":[ ],"b":true}"#;
        let pretty = pretty_json(text);
        let expected = "{\n  \"z\": [\n    1,\n    {\n      \"a\": \"x,\\\"y\\\"{\"\n    }\n  ],\n  \"e\": {},\n  \"l\": [],\n  \"b\": true\n}";
        assert_eq!(pretty, expected);
        // Same value as the input, whatever the layout.
        let parse = |t: &str| serde_json::from_str::<serde_json::Value>(t).ok();
        assert_eq!(parse(&pretty), parse(text));
        assert_eq!(pretty_json("not json\n"), "not json\\n");
    }

    #[test]
    fn json_keeps_hash_field_names_and_types() -> Result<(), serde_json::Error> {
        let record = job("j1", JobStatus::Running);
        let value = serde_json::to_value(JobJson::from(&record))?;
        assert_eq!(value["owner_pod"], "pod-a");
        assert_eq!(value["owner_namespace"], serde_json::Value::Null);
        assert_eq!(value["fence"], 3);
        assert_eq!(value["finished_at"], serde_json::Value::Null);
        assert_eq!(value["request_json"]["topic"], "t");
        Ok(())
    }
}
