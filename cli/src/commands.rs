//! `reprise jobs ls` and `reprise jobs show`: read, select, render. Each returns what to print
//! rather than printing, so `main` owns the streams and the exit code.

use anyhow::bail;
use reprise_jobs::{JobRecord, StoreError};

use crate::args::{LsArgs, Output};
use crate::render::{self, JobJson};
use crate::source::Jobs;

pub struct Outcome {
    pub stdout: String,
    /// For stderr, one line each: what went wrong, or why stdout is empty.
    pub notes: Vec<String>,
    /// False when some job could not be read: the listing is then incomplete.
    pub complete: bool,
}

pub async fn ls(jobs: &Jobs, args: &LsArgs, output: Output) -> anyhow::Result<Outcome> {
    let listing = jobs.list().await?;
    // Read after the jobs, so no update in the listing is ahead of it.
    let now = jobs.now_ms().await?;
    let readable = listing.jobs.len();
    let mut selected: Vec<JobRecord> = listing
        .jobs
        .into_iter()
        .filter(|job| selects(args, job))
        .collect();
    selected.sort_by(|a, b| {
        (b.updated_at_ms.cmp(&a.updated_at_ms)).then_with(|| a.job_id.cmp(&b.job_id))
    });
    if let Some(limit) = args.limit {
        selected.truncate(limit.get());
    }

    let stdout = match output {
        Output::Table => render::table(&selected, now),
        Output::Json => {
            let all: Vec<JobJson<'_>> = selected.iter().map(JobJson::from).collect();
            serde_json::to_string_pretty(&all)? + "\n"
        }
    };
    let mut notes: Vec<String> = listing
        .unreadable
        .iter()
        .map(|(id, e)| unreadable(id, e))
        .collect();
    if selected.is_empty() {
        if readable > 0 {
            notes.push(format!(
                "no jobs under prefix {} match the filters",
                jobs.prefix()
            ));
        } else if listing.unreadable.is_empty() {
            notes.push(format!("no jobs under prefix {}", jobs.prefix()));
        }
    }
    Ok(Outcome {
        stdout,
        notes,
        complete: listing.unreadable.is_empty(),
    })
}

pub async fn show(jobs: &Jobs, id: &str, output: Output) -> anyhow::Result<Outcome> {
    let Some(job) = jobs.get(id).await? else {
        bail!("no job {id:?} under prefix {}", jobs.prefix());
    };
    let stdout = match output {
        Output::Table => render::details(&job, jobs.now_ms().await?),
        Output::Json => serde_json::to_string_pretty(&JobJson::from(&job))? + "\n",
    };
    Ok(Outcome {
        stdout,
        notes: Vec::new(),
        complete: true,
    })
}

fn selects(args: &LsArgs, job: &JobRecord) -> bool {
    args.status.is_none_or(|status| job.status == status)
        && args.service.as_ref().is_none_or(|s| *s == job.service)
        && args
            .pod
            .as_ref()
            .is_none_or(|pod| *pod == job.owner.pod || *pod == job.owner.pod_ref())
}

fn unreadable(id: &str, e: &StoreError) -> String {
    match e {
        // Already names the job and the field.
        StoreError::Corrupt { .. } => e.to_string(),
        _ => format!("job {id:?}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reprise_jobs::{JobStatus, Owner};

    fn job(status: JobStatus, service: &str, pod: &str) -> JobRecord {
        JobRecord {
            job_id: "j".to_owned(),
            service: service.to_owned(),
            method: "/p.S/M".to_owned(),
            status,
            offset: None,
            owner: Owner::new(pod, "i"),
            fence: 1,
            started_at_ms: 0,
            updated_at_ms: 0,
            finished_at_ms: None,
            messages: 0,
            resumes: 0,
            last_error: None,
            request_b64: String::new(),
            request_json: "{}".to_owned(),
            lease_expires_at_ms: None,
            resume: None,
        }
    }

    #[test]
    fn every_filter_must_hold() {
        let a = job(JobStatus::Running, "svc-a", "pod-a");
        assert!(selects(&LsArgs::default(), &a));
        let by = |status, service: Option<&str>, pod: Option<&str>| LsArgs {
            status,
            service: service.map(str::to_owned),
            pod: pod.map(str::to_owned),
            limit: None,
        };
        assert!(selects(
            &by(Some(JobStatus::Running), Some("svc-a"), Some("pod-a")),
            &a
        ));
        assert!(!selects(&by(Some(JobStatus::Failed), None, None), &a));
        assert!(!selects(&by(None, Some("svc-b"), None), &a));
        assert!(!selects(
            &by(Some(JobStatus::Running), None, Some("pod-b")),
            &a
        ));
        let mut namespaced = job(JobStatus::Running, "svc-a", "pod-a");
        namespaced.owner = namespaced.owner.in_namespace("demo");
        assert!(selects(&by(None, None, Some("pod-a")), &namespaced));
        assert!(selects(&by(None, None, Some("demo/pod-a")), &namespaced));
        assert!(!selects(
            &by(None, None, Some("staging/pod-a")),
            &namespaced
        ));
    }
}
