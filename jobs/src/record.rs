//! Turning a job's raw hash back into a typed [`JobRecord`].
//!
//! Everything here came from outside the process, so every field is checked and a bad one is
//! an error naming the job and the field, never a panic.

use std::collections::HashMap;

use crate::{JobRecord, JobStatus, Owner, ResumeMode, StoreError};

/// The fields of a job's hash, as the stores write them (the job id is in the key).
/// `owner_namespace` and `owner_uid` are empty when the owner did not know them; they and
/// `resume_mode` (`on_request` | `deliver`) are absent from hashes written before they existed.
pub const FIELDS: [&str; 19] = [
    "service",
    "method",
    "status",
    "offset",
    "owner_pod",
    "owner_instance",
    "owner_namespace",
    "owner_uid",
    "fence",
    "started_at",
    "updated_at",
    "finished_at",
    "messages",
    "resumes",
    "last_error",
    "request",
    "request_json",
    "lease_expires_at",
    "resume_mode",
];

/// Parses `HGETALL` output. Empty and absent optional fields both mean "none".
pub(crate) fn parse(
    job_id: &str,
    mut hash: HashMap<String, String>,
) -> Result<JobRecord, StoreError> {
    let corrupt = |field: &'static str, problem: String| StoreError::Corrupt {
        job_id: job_id.to_owned(),
        field,
        problem,
    };
    let mut text = |field: &'static str| -> Result<String, StoreError> {
        hash.remove(field)
            .ok_or_else(|| corrupt(field, "missing".to_owned()))
    };
    let number = |field: &'static str, value: &str| -> Result<u64, StoreError> {
        value
            .parse::<u64>()
            .map_err(|_| corrupt(field, format!("{value:?} is not a non-negative integer")))
    };
    let optional = |value: String| Some(value).filter(|v| !v.is_empty());

    let status_text = text("status")?;
    let status = status_text
        .parse::<JobStatus>()
        .map_err(|e| corrupt("status", e.to_string()))?;
    let fence = number("fence", &text("fence")?)?;
    let started_at_ms = number("started_at", &text("started_at")?)?;
    let updated_at_ms = number("updated_at", &text("updated_at")?)?;
    let messages = number("messages", &text("messages")?)?;
    let resumes = number("resumes", &text("resumes")?)?;
    let finished_at_ms = match optional(text("finished_at").unwrap_or_default()) {
        Some(v) => Some(number("finished_at", &v)?),
        None => None,
    };
    let lease_expires_at_ms = match optional(text("lease_expires_at").unwrap_or_default()) {
        Some(v) => Some(number("lease_expires_at", &v)?),
        None => None,
    };
    let resume = match optional(text("resume_mode").unwrap_or_default()) {
        Some(v) => Some(ResumeMode::parse(&v).ok_or_else(|| {
            corrupt(
                "resume_mode",
                format!("{v:?} is not a resume mode; valid: on_request, deliver"),
            )
        })?),
        None => None,
    };
    Ok(JobRecord {
        job_id: job_id.to_owned(),
        service: text("service")?,
        method: text("method")?,
        status,
        offset: optional(text("offset").unwrap_or_default()),
        owner: Owner {
            pod: text("owner_pod")?,
            instance: text("owner_instance")?,
            namespace: optional(text("owner_namespace").unwrap_or_default()),
            uid: optional(text("owner_uid").unwrap_or_default()),
        },
        fence,
        started_at_ms,
        updated_at_ms,
        finished_at_ms,
        messages,
        resumes,
        last_error: optional(text("last_error").unwrap_or_default()),
        request_b64: text("request")?,
        request_json: text("request_json")?,
        lease_expires_at_ms,
        resume,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash() -> HashMap<String, String> {
        let values = [
            "svc", "m", "running", "41", "pod-a", "i-1", "apps", "u-1", "3", "1000", "2000", "",
            "41", "2", "", "AAE=", "{}", "3000", "deliver",
        ];
        FIELDS
            .iter()
            .zip(values)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_complete_hash_parses() -> Result<(), StoreError> {
        let record = parse("j", hash())?;
        assert_eq!(record.status, JobStatus::Running);
        assert_eq!(record.offset.as_deref(), Some("41"));
        assert_eq!(
            record.owner,
            Owner::new("pod-a", "i-1")
                .in_namespace("apps")
                .with_uid("u-1")
        );
        assert_eq!((record.fence, record.messages, record.resumes), (3, 41, 2));
        assert_eq!(record.finished_at_ms, None);
        assert_eq!(record.last_error, None);
        assert_eq!(record.lease_expires_at_ms, Some(3000));
        Ok(())
    }

    #[test]
    fn absent_optional_fields_mean_none() -> Result<(), StoreError> {
        let mut h = hash();
        for field in [
            "offset",
            "finished_at",
            "last_error",
            "lease_expires_at",
            "owner_namespace",
            "owner_uid",
        ] {
            h.remove(field);
        }
        let record = parse("j", h)?;
        assert_eq!(record.offset, None);
        assert_eq!(
            record.owner,
            Owner::new("pod-a", "i-1"),
            "written before namespaces"
        );
        assert_eq!(record.lease_expires_at_ms, None);
        Ok(())
    }

    #[test]
    fn bad_fields_are_errors_naming_the_field() {
        for (field, value) in [("status", "zombie"), ("fence", "-1"), ("messages", "x")] {
            let mut h = hash();
            h.insert(field.to_owned(), value.to_owned());
            match parse("j", h) {
                Err(StoreError::Corrupt { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}={value}: expected Corrupt, got {other:?}"),
            }
        }
        let mut h = hash();
        h.remove("fence");
        assert!(matches!(
            parse("j", h),
            Err(StoreError::Corrupt { field: "fence", .. })
        ));
    }
}
