//! From the app's call to a job this sidecar owns: the job id, a wait for a task of this process
//! that still holds it or for another owner's lease, the claim in the store, and where the job
//! starts (its stored offset, or the app's own resume value when that is further on).

use std::{sync::Arc, time::Duration};

use hyper::body::Incoming;
use reprise_jobs::{Claim, JobStatus, NewJob, Owner};
use tokio::sync::oneshot;

use super::call::{Call, base64_encode, independent_id};
use super::{Claimed, Recipient, Reply, StreamCtx, Task};
use crate::{
    config::ResumeMode, descriptors::ResumableMethod, grpc::ProxyBody, offset::Offset, request,
};

/// How long a new request waits for a task of this process whose app went away to write the
/// job's state before it takes the job over.
const LET_GO_WAIT: Duration = Duration::from_secs(5);

impl Task {
    /// Reads the app's request, derives and claims the job. Returns the task and the receiver
    /// of the app's response (sent once the upstream answers or the call ends).
    pub(super) async fn prepare(
        ctx: Arc<StreamCtx>,
        method: Arc<ResumableMethod>,
        req: http::Request<Incoming>,
    ) -> Result<(Task, oneshot::Receiver<http::Response<ProxyBody>>), Reply> {
        let call = Call::read(
            &ctx.settings.service,
            &method,
            ctx.settings.max_message_bytes,
            req,
        )
        .await?;
        let claimed = claim(&ctx, &method, &call).await?;
        Ok(Task::new(ctx, method, claimed, call, Recipient::App))
    }
}

/// Redis did not take the claim (it is down, or failed just now): the call waits for it, and
/// whether it came back.
///
/// An `on_request` call waits up to a `lease_ttl`: the job's stored offset is there, and a
/// claim in memory would start the stream from its beginning and send the app everything
/// again (the soak's finding 15: 5,165 messages twice after a Redis SIGKILL and a sidecar
/// SIGTERM 1.2 s apart; finding 21: the first call to find Redis gone claimed in memory at
/// once). A Redis restart or failover shorter than that is waited out; after it the call goes
/// on in memory.
///
/// A `deliver` job must be in Redis before its stream starts: the app counts on another pod
/// delivering the rest if this sidecar dies, and a job only in this process's memory dies with
/// it (the soak's finding 10). So its call waits up to the method's `max_outage`, and then
/// ends `UNAVAILABLE` before any response: an app calling again later loses nothing.
async fn wait_for_redis(ctx: &StreamCtx, method: &ResumableMethod) -> bool {
    let limit = match method.mode {
        ResumeMode::Deliver => {
            tracing::info!(method = %method.name, "redis is down: a deliver-mode call waits for it before its stream starts");
            method.max_outage
        }
        ResumeMode::OnRequest => {
            let limit = ctx.settings.lease_ttl;
            tracing::info!(method = %method.name, limit = %humantime::format_duration(limit), "redis is down: the call waits for it before claiming its job in memory");
            limit
        }
    };
    ctx.store.redis_back_within(limit).await
}

/// Claims the job of `call`: under its own id, or under an independent one when a live owner
/// (a task of this process whose app is still there, or another pod that renews its lease)
/// serves the same request.
async fn claim(ctx: &StreamCtx, method: &ResumableMethod, call: &Call) -> Result<Claimed, Reply> {
    let new_job = |job_id: &str| NewJob {
        job_id: job_id.to_owned(),
        service: ctx.settings.service.clone(),
        method: method.name.clone(),
        request_b64: base64_encode(&call.original),
        request_json: request::to_json(&call.request),
        owner: ctx.owner.clone(),
        lease_ttl: ctx.settings.lease_ttl,
        resume: method.mode,
    };
    let mut job_id = call.base_id.clone();
    let mut waited_for_lease = false;
    let mut waited_for_redis = false;
    let (backend, fence, stored) = loop {
        if let Some(active) = ctx.active.get(&job_id) {
            if active.app_gone.is_cancelled() || active.done.is_cancelled() {
                // Its app went away (crashed, restarted): let that task write `interrupted`
                // first, then take the job over from its offset.
                let _ = tokio::time::timeout(LET_GO_WAIT, active.done.cancelled()).await;
            } else {
                job_id = independent_id(&call.base_id);
                continue;
            }
        }
        let claim = match ctx.store.claim(&new_job(&job_id)).await {
            Some(claim) => claim,
            None if !waited_for_redis => {
                waited_for_redis = true;
                wait_for_redis(ctx, method).await;
                continue;
            }
            None if method.mode == ResumeMode::Deliver => {
                return Err(super::reject(
                    crate::grpc::code::UNAVAILABLE,
                    format!(
                        "reprise: the job store (redis) is unreachable, and a deliver-mode job must be stored before its stream starts; waited max_outage ({:?})",
                        method.max_outage
                    ),
                ));
            }
            None => ctx.store.claim_in_memory(&new_job(&job_id)).await,
        };
        match claim {
            (
                _,
                Claim::Busy {
                    owner,
                    lease_remaining,
                },
            ) => {
                if owner != ctx.owner && !waited_for_lease {
                    waited_for_lease = true;
                    wait_for_lease(&job_id, &owner, lease_remaining).await;
                    continue;
                }
                tracing::info!(
                    job.id = %job_id,
                    owner.pod = %owner.pod,
                    "job is running under a live owner; serving this call as an independent job"
                );
                job_id = independent_id(&call.base_id);
            }
            (backend, Claim::Fresh { fence }) => break (backend, fence, None),
            (
                backend,
                Claim::Resumed {
                    fence,
                    offset,
                    messages,
                    previous_status,
                },
            ) => {
                let stored = stored_offset(method, &job_id, offset.as_deref(), messages);
                log_resume(&job_id, previous_status, stored.as_ref());
                break (backend, fence, Some((stored, messages)));
            }
        }
    };
    let (stored, messages) = stored.unwrap_or((None, 0));
    let last = std::cmp::max(stored.clone(), own_resume_point(method, call));
    Ok(Claimed {
        job: new_job(&job_id),
        fence,
        backend,
        moved: last != stored,
        last,
        messages,
    })
}

/// Another owner runs the job: if it is dead its lease lapses and the job is ours; if it
/// renews, it is alive and the call becomes an independent job.
async fn wait_for_lease(job_id: &str, owner: &Owner, lease_remaining: Duration) {
    tracing::info!(
        job.id = %job_id,
        owner.pod = %owner.pod,
        owner.instance = %owner.instance,
        lease_remaining_ms = lease_remaining.as_millis() as u64,
        "job is running under another owner; waiting for its lease"
    );
    tokio::time::sleep(lease_remaining + Duration::from_millis(50)).await;
}

/// The stored offset as this method reads it; an unreadable one is ignored (the job restarts
/// from the beginning: delivered again, never skipped).
fn stored_offset(
    method: &ResumableMethod,
    job_id: &str,
    offset: Option<&str>,
    messages: u64,
) -> Option<Offset> {
    Offset::from_stored(method.offset.leaf, offset, messages)
        .map_err(
            |e| tracing::warn!(job.id = %job_id, error = %e, "ignoring unreadable stored offset"),
        )
        .ok()
        .flatten()
}

fn log_resume(job_id: &str, from: JobStatus, stored: Option<&Offset>) {
    tracing::info!(
        job.id = %job_id,
        from = %from.as_str(),
        offset = stored.map(ToString::to_string).unwrap_or_default(),
        "resuming job from its stored offset"
    );
}

/// The app's own resume value counts too: it already holds everything up to it ("after v";
/// with an inclusive resume field, everything before it). Where it moves the start, it is
/// written as the job's offset at the first checkpoint.
fn own_resume_point(method: &ResumableMethod, call: &Call) -> Option<Offset> {
    request::resume_value(method, &call.request).and_then(|v| {
        if method.resume_inclusive {
            v.predecessor()
        } else {
            Some(v)
        }
    })
}
