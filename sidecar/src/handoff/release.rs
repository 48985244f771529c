//! A container restart's leftovers: jobs an earlier sidecar process of this pod left `running`.

use reprise_jobs::{Finish, JobStatus, JobStore as _, Owner, Write};

use crate::{
    events::{Events, JobEvent},
    store::Store,
};

/// Jobs an earlier sidecar process of this pod left `running` (its container was OOM-killed
/// or restarted): mark them `interrupted` under their current fence, at once, and tell the
/// other pods. Without this they would wait for their leases to lapse.
pub async fn release_previous_instances(store: &Store, owner: &Owner, events: &Events) {
    let Some(redis) = store.redis() else {
        return;
    };
    let ids = match redis.pod_jobs(&owner.pod).await {
        Ok(ids) => ids,
        Err(e) => {
            store.failed("release", &e);
            return;
        }
    };
    for id in ids {
        let job = match redis.get(&id).await {
            Ok(Some(job)) => job,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(job.id = %id, error = %e, "cannot read a job of this pod; leaving it to its lease");
                continue;
            }
        };
        // The pod set is per pod name: a namesake in another namespace shares it.
        if job.status != JobStatus::Running || job.owner == *owner || !job.owner.same_pod(owner) {
            continue;
        }
        let finish = Finish {
            job_id: id.clone(),
            fence: job.fence,
            status: JobStatus::Interrupted,
            offset: None,
            messages: job.messages,
            error: Some(format!(
                "released: sidecar instance {} of pod {} stopped without a handoff",
                job.owner.instance, job.owner.pod
            )),
        };
        match redis.finish(&finish).await {
            Ok(Write::Ok) => {
                tracing::info!(
                    job.id = %id,
                    previous.instance = %job.owner.instance,
                    offset = job.offset.as_deref().unwrap_or(""),
                    "released a job an earlier sidecar of this pod left running"
                );
                let event = JobEvent {
                    job_id: &id,
                    method: &job.method,
                    offset: job.offset.as_deref(),
                    fence: job.fence,
                };
                events
                    .interrupted(&event, "previous sidecar instance stopped")
                    .await;
            }
            Ok(Write::Fenced | Write::Forgotten) => {}
            Err(e) => store.failed("release", &e),
        }
    }
}
