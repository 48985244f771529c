//! The Lua scripts behind every multi-step write, and the decoding of their replies.
//!
//! Each write runs as one script so it is atomic: the fence check and the write cannot be
//! separated by another pod's takeover. The sources live in `lua/`, each prefixed with
//! `lua/common.lua` (clock, key names, the fence check).

use std::time::Duration;

use redis::Script;

use crate::{Claim, JobStatus, Owner, StoreError};

const COMMON: &str = include_str!("lua/common.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

pub(crate) struct Scripts {
    pub claim: Script,
    pub checkpoint: Script,
    pub note_resume: Script,
    pub finish: Script,
    pub expired_leases: Script,
    pub orphan: Script,
    pub restore: Script,
    pub due_handoffs: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            claim: script(include_str!("lua/claim.lua")),
            checkpoint: script(include_str!("lua/checkpoint.lua")),
            note_resume: script(include_str!("lua/note_resume.lua")),
            finish: script(include_str!("lua/finish.lua")),
            expired_leases: script(include_str!("lua/expired_leases.lua")),
            orphan: script(include_str!("lua/orphan.lua")),
            restore: script(include_str!("lua/restore.lua")),
            due_handoffs: script(include_str!("lua/due_handoffs.lua")),
        }
    }
}

/// Optional texts travel as a flag plus a value; no value means "keep what is stored".
pub(crate) fn flag(value: Option<&str>) -> (&'static str, &str) {
    match value {
        Some(v) => ("1", v),
        None => ("0", ""),
    }
}

/// Decodes the reply of `claim.lua` (its header documents the shapes).
/// A takeover's reply: `None` when nothing waits to be resumed (`gone`).
pub(crate) fn decode_take_over(
    job_id: &str,
    reply: &[String],
) -> Result<Option<Claim>, StoreError> {
    match reply {
        [kind, _] if kind == "gone" => Ok(None),
        _ => decode_claim(job_id, reply).map(Some),
    }
}

pub(crate) fn decode_claim(job_id: &str, reply: &[String]) -> Result<Claim, StoreError> {
    let protocol = |detail: String| StoreError::Protocol {
        script: "claim",
        detail,
    };
    let count = |field: &'static str, value: &str| {
        value.parse::<u64>().map_err(|_| StoreError::Corrupt {
            job_id: job_id.to_owned(),
            field,
            problem: format!("{value:?} is not a non-negative integer"),
        })
    };
    match reply {
        [kind, fence] if kind == "fresh" => Ok(Claim::Fresh {
            fence: count("fence", fence)?,
        }),
        [kind, fence, offset, messages, previous] if kind == "resumed" => Ok(Claim::Resumed {
            fence: count("fence", fence)?,
            offset: Some(offset.clone()).filter(|o| !o.is_empty()),
            messages: count("messages", messages)?,
            previous_status: previous
                .parse::<JobStatus>()
                .map_err(|e| protocol(e.to_string()))?,
        }),
        [kind, pod, instance, remaining, namespace, uid] if kind == "busy" => Ok(Claim::Busy {
            owner: Owner::new(pod.clone(), instance.clone())
                .in_namespace(namespace.clone())
                .with_uid(uid.clone()),
            lease_remaining: Duration::from_millis(count("lease_expires_at", remaining)?),
        }),
        [kind, field, value] if kind == "corrupt" => Err(StoreError::Corrupt {
            job_id: job_id.to_owned(),
            field: match field.as_str() {
                "status" => "status",
                "fence" => "fence",
                "messages" => "messages",
                "resumes" => "resumes",
                _ => "unknown",
            },
            problem: format!("{value:?} cannot be claimed"),
        }),
        other => Err(protocol(format!("{other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn every_reply_shape_decodes() -> Result<(), StoreError> {
        assert_eq!(
            decode_claim("j", &reply(&["fresh", "4"]))?,
            Claim::Fresh { fence: 4 }
        );
        assert_eq!(
            decode_claim("j", &reply(&["resumed", "5", "", "0", "running"]))?,
            Claim::Resumed {
                fence: 5,
                offset: None,
                messages: 0,
                previous_status: JobStatus::Running
            }
        );
        assert_eq!(
            decode_claim("j", &reply(&["busy", "p", "i", "1500", "", ""]))?,
            Claim::Busy {
                owner: Owner::new("p", "i"),
                lease_remaining: Duration::from_millis(1500)
            }
        );
        assert_eq!(
            decode_claim("j", &reply(&["busy", "p", "i", "1", "apps", "u-1"]))?,
            Claim::Busy {
                owner: Owner::new("p", "i").in_namespace("apps").with_uid("u-1"),
                lease_remaining: Duration::from_millis(1)
            }
        );
        Ok(())
    }

    #[test]
    fn bad_replies_are_errors() {
        assert!(matches!(
            decode_claim("j", &reply(&["corrupt", "status", "zombie"])),
            Err(StoreError::Corrupt {
                field: "status",
                ..
            })
        ));
        assert!(matches!(
            decode_claim("j", &reply(&["what"])),
            Err(StoreError::Protocol { .. })
        ));
    }
}
