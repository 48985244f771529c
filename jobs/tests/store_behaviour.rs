//! One behavioural suite, run against both stores: the Redis store on a real Redis and the
//! in-process store must be interchangeable.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, ensure};
use reprise_jobs::{Claim, JobStatus, JobStore, Restore, StoreError, Write};
use support::{checkpoint, finish, new_job, owner, record, wait_for_expiry};

const LONG: Duration = Duration::from_secs(30);
const SHORT: Duration = Duration::from_millis(200);

/// Instantiates each named suite function once per store.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn redis() -> anyhow::Result<()> {
                super::support::with_redis(|f| super::$name(f.store)).await
            }

            #[tokio::test]
            async fn memory() -> anyhow::Result<()> {
                super::support::with_memory(super::$name).await
            }
        }
    )*};
}

on_both_stores!(
    fresh_claim_records_the_job,
    checkpoint_moves_offset_and_renews_lease,
    stale_fence_changes_nothing,
    interrupted_and_orphaned_jobs_resume_from_their_offset,
    live_lease_means_busy,
    expired_lease_is_taken_over,
    late_owner_that_renews_keeps_its_job,
    finished_jobs_restart_fresh,
    finish_leaves_running,
    checkpoint_many_mixes_ok_and_fenced,
    note_resume_counts_and_is_fenced,
    missing_jobs_and_ping,
    take_over_only_claims_jobs_that_wait,
    restore_writes_a_forgotten_job_back_but_never_over_a_later_fence,
    owner_namespace_and_uid_are_kept,
);

fn epoch_ms() -> Result<u64> {
    Ok(u64::try_from(
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis(),
    )?)
}

async fn fresh_claim_records_the_job(store: Arc<dyn JobStore>) -> Result<()> {
    let a = owner("pod-a");
    let job = new_job("j1", &a, LONG);
    assert_eq!(store.claim(&job).await?, Claim::Fresh { fence: 1 });

    let r = record(&*store, "j1").await?;
    assert_eq!(r.job_id, "j1");
    assert_eq!(
        (r.service.as_str(), r.method.as_str()),
        (job.service.as_str(), job.method.as_str())
    );
    assert_eq!(r.status, JobStatus::Running);
    assert_eq!(r.owner, a);
    assert_eq!((r.fence, r.messages, r.resumes), (1, 0, 0));
    assert_eq!(
        (&r.offset, &r.last_error, r.finished_at_ms),
        (&None, &None, None)
    );
    assert_eq!(r.request_b64, job.request_b64);
    assert_eq!(r.request_json, job.request_json);
    assert_eq!(r.started_at_ms, r.updated_at_ms);
    ensure!(
        r.started_at_ms.abs_diff(epoch_ms()?) < 60_000,
        "clock is off: {r:?}"
    );
    assert_eq!(r.lease_expires_at_ms, Some(r.updated_at_ms + 30_000));

    assert_eq!(store.pod_jobs("pod-a").await?, ["j1"]);
    assert!(store.expired_leases(10).await?.is_empty());
    Ok(())
}

async fn checkpoint_moves_offset_and_renews_lease(store: Arc<dyn JobStore>) -> Result<()> {
    store.claim(&new_job("j1", &owner("pod-a"), LONG)).await?;
    let before = record(&*store, "j1").await?;

    // The checkpoint's ttl (60 s) outlasts the claim's (30 s): the lease must move forward.
    assert_eq!(
        store.checkpoint(&checkpoint("j1", 1, Some("7"), 7)).await?,
        Write::Ok
    );
    let after = record(&*store, "j1").await?;
    assert_eq!((after.offset.as_deref(), after.messages), (Some("7"), 7));
    assert!(
        after.lease_expires_at_ms > before.lease_expires_at_ms,
        "{after:?}"
    );
    assert_eq!(
        after.lease_expires_at_ms,
        Some(after.updated_at_ms + 60_000)
    );

    // No offset: the stored one stays, the count moves.
    assert_eq!(
        store.checkpoint(&checkpoint("j1", 1, None, 8)).await?,
        Write::Ok
    );
    let r = record(&*store, "j1").await?;
    assert_eq!((r.offset.as_deref(), r.messages), (Some("7"), 8));
    Ok(())
}

async fn stale_fence_changes_nothing(store: Arc<dyn JobStore>) -> Result<()> {
    let (a, b) = (owner("pod-a"), owner("pod-b"));
    store.claim(&new_job("j1", &a, LONG)).await?;
    assert_eq!(
        store
            .checkpoint(&checkpoint("j1", 1, Some("10"), 10))
            .await?,
        Write::Ok
    );
    let handoff = finish("j1", 1, JobStatus::Interrupted, Some("10"));
    assert_eq!(store.finish(&handoff).await?, Write::Ok);
    let claim = store.claim(&new_job("j1", &b, LONG)).await?;
    assert!(
        matches!(claim, Claim::Resumed { fence: 2, .. }),
        "{claim:?}"
    );
    let taken_over = record(&*store, "j1").await?;

    // The old owner, still holding fence 1, tries every write: forwards, backwards, done.
    for offset in ["11", "9"] {
        let stale = checkpoint("j1", 1, Some(offset), 11);
        assert_eq!(store.checkpoint(&stale).await?, Write::Fenced);
        assert_eq!(store.checkpoint_many(&[stale]).await?, [Write::Fenced]);
    }
    assert_eq!(store.note_resume("j1", 1, "zombie").await?, Write::Fenced);
    let done = finish("j1", 1, JobStatus::Completed, Some("12"));
    assert_eq!(store.finish(&done).await?, Write::Fenced);
    // A fence from the future writes nothing either; it means the store is behind its
    // writer (lost data), which only a restore may repair.
    assert_eq!(
        store
            .checkpoint(&checkpoint("j1", 3, Some("13"), 13))
            .await?,
        Write::Forgotten
    );

    assert_eq!(record(&*store, "j1").await?, taken_over);
    assert_eq!(store.pod_jobs("pod-a").await?, Vec::<String>::new());
    assert_eq!(store.pod_jobs("pod-b").await?, ["j1"]);
    Ok(())
}

async fn interrupted_and_orphaned_jobs_resume_from_their_offset(
    store: Arc<dyn JobStore>,
) -> Result<()> {
    let (a, b) = (owner("pod-a"), owner("pod-b"));
    for (job_id, status) in [("j1", JobStatus::Interrupted), ("j2", JobStatus::Orphaned)] {
        store.claim(&new_job(job_id, &a, LONG)).await?;
        assert_eq!(
            store
                .checkpoint(&checkpoint(job_id, 1, Some("42"), 42))
                .await?,
            Write::Ok
        );
        let mut stop = finish(job_id, 1, status, Some("43"));
        stop.error = Some("shutting down".to_owned());
        assert_eq!(store.finish(&stop).await?, Write::Ok);

        let stopped = record(&*store, job_id).await?;
        assert_eq!(stopped.status, status);
        assert_eq!(
            (stopped.offset.as_deref(), stopped.messages),
            (Some("43"), 43)
        );
        assert_eq!(stopped.last_error.as_deref(), Some("shutting down"));
        assert_eq!(
            (stopped.finished_at_ms, stopped.lease_expires_at_ms),
            (None, None)
        );

        let claim = store.claim(&new_job(job_id, &b, LONG)).await?;
        assert_eq!(
            claim,
            Claim::Resumed {
                fence: 2,
                offset: Some("43".to_owned()),
                messages: 43,
                previous_status: status,
            }
        );
        let r = record(&*store, job_id).await?;
        assert_eq!((r.status, r.fence, r.resumes), (JobStatus::Running, 2, 1));
        assert_eq!(r.owner, b);
        assert_eq!(r.started_at_ms, stopped.started_at_ms);
        assert!(r.lease_expires_at_ms.is_some());
    }
    assert_eq!(store.pod_jobs("pod-a").await?, Vec::<String>::new());
    assert_eq!(store.pod_jobs("pod-b").await?, ["j1", "j2"]);
    Ok(())
}

async fn live_lease_means_busy(store: Arc<dyn JobStore>) -> Result<()> {
    let a = owner("pod-a");
    store.claim(&new_job("j1", &a, LONG)).await?;
    let before = record(&*store, "j1").await?;

    // Another pod, and the same owner in a second call: neither may share the live stream.
    for claimant in [owner("pod-b"), a.clone()] {
        match store.claim(&new_job("j1", &claimant, LONG)).await? {
            Claim::Busy {
                owner,
                lease_remaining,
            } => {
                assert_eq!(owner, a);
                ensure!(
                    lease_remaining <= LONG && lease_remaining > LONG - Duration::from_secs(5),
                    "lease remaining {lease_remaining:?}"
                );
            }
            other => anyhow::bail!("expected Busy, got {other:?}"),
        }
    }
    assert_eq!(record(&*store, "j1").await?, before);
    Ok(())
}

async fn expired_lease_is_taken_over(store: Arc<dyn JobStore>) -> Result<()> {
    let (a, b) = (owner("pod-a"), owner("pod-b"));
    store.claim(&new_job("j1", &a, SHORT)).await?;
    wait_for_expiry(&*store, "j1").await?;

    let claim = store.claim(&new_job("j1", &b, LONG)).await?;
    assert_eq!(
        claim,
        Claim::Resumed {
            fence: 2,
            offset: None,
            messages: 0,
            previous_status: JobStatus::Running,
        }
    );
    // The presumed-dead owner wakes up: its writes bounce.
    let late = checkpoint("j1", 1, Some("1"), 1);
    assert_eq!(store.checkpoint(&late).await?, Write::Fenced);

    let r = record(&*store, "j1").await?;
    assert_eq!((r.owner, r.fence, r.resumes, r.offset), (b, 2, 1, None));
    assert_eq!(store.pod_jobs("pod-a").await?, Vec::<String>::new());
    assert_eq!(store.pod_jobs("pod-b").await?, ["j1"]);
    assert!(store.expired_leases(10).await?.is_empty());
    Ok(())
}

async fn late_owner_that_renews_keeps_its_job(store: Arc<dyn JobStore>) -> Result<()> {
    let a = owner("pod-a");
    store.claim(&new_job("j1", &a, SHORT)).await?;
    wait_for_expiry(&*store, "j1").await?;

    // Nobody took it over yet, so the fence is still the owner's and the lease comes back.
    assert_eq!(
        store.checkpoint(&checkpoint("j1", 1, Some("3"), 3)).await?,
        Write::Ok
    );
    assert!(store.expired_leases(10).await?.is_empty());
    let claim = store.claim(&new_job("j1", &owner("pod-b"), LONG)).await?;
    assert!(
        matches!(claim, Claim::Busy { ref owner, .. } if *owner == a),
        "{claim:?}"
    );
    Ok(())
}

async fn finished_jobs_restart_fresh(store: Arc<dyn JobStore>) -> Result<()> {
    let (a, b) = (owner("pod-a"), owner("pod-b"));
    for (job_id, status) in [("j1", JobStatus::Completed), ("j2", JobStatus::Failed)] {
        store.claim(&new_job(job_id, &a, LONG)).await?;
        assert_eq!(
            store
                .checkpoint(&checkpoint(job_id, 1, Some("9"), 9))
                .await?,
            Write::Ok
        );
        assert_eq!(
            store.note_resume(job_id, 1, "upstream reset").await?,
            Write::Ok
        );
        assert_eq!(
            store.finish(&finish(job_id, 1, status, Some("10"))).await?,
            Write::Ok
        );
        let done = record(&*store, job_id).await?;
        assert_eq!((done.status, done.resumes), (status, 1));

        let mut again = new_job(job_id, &b, LONG);
        again.request_b64 = "CgNuZXc=".to_owned();
        assert_eq!(store.claim(&again).await?, Claim::Fresh { fence: 2 });
        let r = record(&*store, job_id).await?;
        assert_eq!(
            (r.status, r.fence, r.owner),
            (JobStatus::Running, 2, b.clone())
        );
        assert_eq!((r.offset, r.messages, r.resumes), (None, 0, 0));
        assert_eq!((r.last_error, r.finished_at_ms), (None, None));
        assert_eq!(r.request_b64, "CgNuZXc=");
        assert!(r.started_at_ms >= done.started_at_ms);
        assert_eq!(r.started_at_ms, r.updated_at_ms);
    }
    assert_eq!(store.pod_jobs("pod-b").await?, ["j1", "j2"]);
    Ok(())
}

async fn finish_leaves_running(store: Arc<dyn JobStore>) -> Result<()> {
    let a = owner("pod-a");
    let statuses = [
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Interrupted,
        JobStatus::Orphaned,
    ];
    for status in statuses {
        let job_id = status.as_str();
        store.claim(&new_job(job_id, &a, SHORT)).await?;
        let mut end = finish(job_id, 1, status, Some("5"));
        end.error = Some("boom".to_owned());
        assert_eq!(store.finish(&end).await?, Write::Ok);
        // Once out of `running`, even the right fence writes nothing more.
        assert_eq!(store.finish(&end).await?, Write::Fenced);
        assert_eq!(
            store
                .checkpoint(&checkpoint(job_id, 1, Some("6"), 6))
                .await?,
            Write::Fenced
        );

        let r = record(&*store, job_id).await?;
        assert_eq!(r.status, status);
        assert_eq!((r.offset.as_deref(), r.messages), (Some("5"), 5));
        assert_eq!(r.last_error.as_deref(), Some("boom"));
        assert_eq!(r.finished_at_ms.is_some(), status.is_terminal(), "{r:?}");
        assert_eq!(r.lease_expires_at_ms, None);
    }
    assert_eq!(store.pod_jobs("pod-a").await?, Vec::<String>::new());
    // Their short leases would have run out by now; finished jobs are not dead owners' jobs.
    tokio::time::sleep(SHORT).await;
    assert!(store.expired_leases(10).await?.is_empty());

    store.claim(&new_job("j-run", &a, LONG)).await?;
    let still_running = finish("j-run", 1, JobStatus::Running, None);
    assert!(matches!(
        store.finish(&still_running).await,
        Err(StoreError::InvalidFinish { .. })
    ));
    Ok(())
}

async fn checkpoint_many_mixes_ok_and_fenced(store: Arc<dyn JobStore>) -> Result<()> {
    let (a, b) = (owner("pod-a"), owner("pod-b"));
    store.claim(&new_job("j1", &a, LONG)).await?;
    store.claim(&new_job("j2", &a, LONG)).await?;
    let handoff = finish("j2", 1, JobStatus::Interrupted, None);
    assert_eq!(store.finish(&handoff).await?, Write::Ok);
    store.claim(&new_job("j2", &b, LONG)).await?;

    assert_eq!(store.checkpoint_many(&[]).await?, []);
    let results = store
        .checkpoint_many(&[
            checkpoint("j1", 1, Some("5"), 5),
            checkpoint("j2", 1, Some("6"), 6),
            checkpoint("j3", 1, Some("7"), 7),
            checkpoint("j2", 2, Some("8"), 8),
        ])
        .await?;
    assert_eq!(
        results,
        [Write::Ok, Write::Fenced, Write::Forgotten, Write::Ok]
    );
    assert_eq!(record(&*store, "j1").await?.offset.as_deref(), Some("5"));
    assert_eq!(record(&*store, "j2").await?.offset.as_deref(), Some("8"));
    assert_eq!(store.get("j3").await?, None);
    Ok(())
}

async fn note_resume_counts_and_is_fenced(store: Arc<dyn JobStore>) -> Result<()> {
    store.claim(&new_job("j1", &owner("pod-a"), LONG)).await?;
    assert_eq!(store.note_resume("j1", 1, "reset 1").await?, Write::Ok);
    assert_eq!(store.note_resume("j1", 1, "reset 2").await?, Write::Ok);
    assert_eq!(
        store.note_resume("j1", 2, "not ours").await?,
        Write::Forgotten,
        "a fence above the store's: behind, not ours to write"
    );
    assert_eq!(store.note_resume("j1", 0, "not ours").await?, Write::Fenced);
    assert_eq!(
        store.note_resume("nope", 1, "no job").await?,
        Write::Forgotten
    );
    let r = record(&*store, "j1").await?;
    assert_eq!((r.resumes, r.last_error.as_deref()), (2, Some("reset 2")));
    Ok(())
}

async fn missing_jobs_and_ping(store: Arc<dyn JobStore>) -> Result<()> {
    store.ping().await?;
    assert_eq!(store.get("nope").await?, None);
    assert_eq!(
        store
            .checkpoint(&checkpoint("nope", 1, Some("1"), 1))
            .await?,
        Write::Forgotten
    );
    let end = finish("nope", 1, JobStatus::Completed, None);
    assert_eq!(store.finish(&end).await?, Write::Forgotten);
    assert_eq!(
        store.get("nope").await?,
        None,
        "a refused write creates nothing"
    );
    assert_eq!(store.pod_jobs("pod-a").await?, Vec::<String>::new());
    Ok(())
}

/// A handoff's claim never creates a job nor restarts a finished one; it takes over only what
/// waits to be resumed, with the same fencing as a claim.
async fn take_over_only_claims_jobs_that_wait(store: Arc<dyn JobStore>) -> Result<()> {
    let (a, b) = (owner("pod-a"), owner("pod-b"));
    assert_eq!(store.take_over(&new_job("absent", &b, LONG)).await?, None);
    assert!(store.get("absent").await?.is_none(), "nothing created");

    store.claim(&new_job("done", &a, LONG)).await?;
    assert_eq!(
        store
            .finish(&finish("done", 1, JobStatus::Completed, Some("7")))
            .await?,
        Write::Ok
    );
    assert_eq!(store.take_over(&new_job("done", &b, LONG)).await?, None);
    let r = record(&*store, "done").await?;
    assert_eq!(
        (r.status, r.offset.as_deref(), r.fence),
        (JobStatus::Completed, Some("7"), 1)
    );

    store.claim(&new_job("live", &a, LONG)).await?;
    assert!(matches!(
        store.take_over(&new_job("live", &b, LONG)).await?,
        Some(Claim::Busy { .. })
    ));

    store.claim(&new_job("waiting", &a, LONG)).await?;
    assert_eq!(
        store
            .finish(&finish("waiting", 1, JobStatus::Interrupted, Some("3")))
            .await?,
        Write::Ok
    );
    let claimed = store.take_over(&new_job("waiting", &b, LONG)).await?;
    ensure!(
        matches!(
            claimed,
            Some(Claim::Resumed { fence: 2, ref offset, previous_status: JobStatus::Interrupted, .. })
                if offset.as_deref() == Some("3")
        ),
        "unexpected {claimed:?}"
    );
    assert_eq!(record(&*store, "waiting").await?.owner, b);
    Ok(())
}

/// A job the store does not know under the owner's fence is written back from the owner's
/// state; a job another owner took is never written over, by a restore or anything else.
async fn restore_writes_a_forgotten_job_back_but_never_over_a_later_fence(
    store: Arc<dyn JobStore>,
) -> Result<()> {
    let (a, b) = (owner("pod-a"), owner("pod-b"));
    let job = new_job("j1", &a, LONG);
    let restore = |fence, offset: &str, messages| Restore {
        job: job.clone(),
        fence,
        offset: Some(offset.to_owned()),
        messages,
        note: "restored".into(),
    };
    // Never claimed here: forgotten, and the restore creates it as the owner had it.
    assert_eq!(
        store
            .checkpoint(&checkpoint("j1", 4, Some("40"), 40))
            .await?,
        Write::Forgotten
    );
    assert_eq!(store.restore(&restore(4, "40", 40)).await?, Write::Ok);
    let r = record(&*store, "j1").await?;
    assert_eq!(r.status, JobStatus::Running);
    assert_eq!(
        (r.fence, r.messages, r.offset.as_deref()),
        (4, 40, Some("40"))
    );
    assert_eq!((&r.owner, r.last_error.as_deref()), (&a, Some("restored")));
    assert_eq!(r.request_b64, job.request_b64);
    assert_eq!(store.pod_jobs("pod-a").await?, ["j1"]);
    ensure!(
        r.lease_expires_at_ms.is_some(),
        "the restore renews the lease: {r:?}"
    );
    // Back under the owner's fence: its writes go through again; a second restore is a no-op.
    assert_eq!(
        store
            .checkpoint(&checkpoint("j1", 4, Some("41"), 41))
            .await?,
        Write::Ok
    );
    assert_eq!(store.restore(&restore(4, "40", 40)).await?, Write::Ok);
    assert_eq!(record(&*store, "j1").await?.offset.as_deref(), Some("41"));
    // An older owner (fence 3) is fenced: the store is ahead of it, not behind.
    assert_eq!(store.restore(&restore(3, "99", 99)).await?, Write::Fenced);
    assert_eq!(
        store
            .checkpoint(&checkpoint("j1", 3, Some("99"), 99))
            .await?,
        Write::Fenced
    );
    // Another owner takes the job (fence 5): the zombie at 4 can neither write nor restore.
    let handoff = finish("j1", 4, JobStatus::Interrupted, Some("41"));
    assert_eq!(store.finish(&handoff).await?, Write::Ok);
    assert!(matches!(
        store.claim(&new_job("j1", &b, LONG)).await?,
        Claim::Resumed { fence: 5, .. }
    ));
    assert_eq!(store.restore(&restore(4, "10", 10)).await?, Write::Fenced);
    assert_eq!(
        store
            .checkpoint(&checkpoint("j1", 4, Some("10"), 10))
            .await?,
        Write::Fenced
    );
    let r = record(&*store, "j1").await?;
    assert_eq!(
        (r.fence, &r.owner, r.offset.as_deref()),
        (5, &b, Some("41"))
    );
    Ok(())
}

async fn owner_namespace_and_uid_are_kept(store: Arc<dyn JobStore>) -> Result<()> {
    let a = owner("users-0").in_namespace("demo").with_uid("u-1");
    store.claim(&new_job("j1", &a, SHORT)).await?;
    assert_eq!(record(&*store, "j1").await?.owner, a);
    // The owner a live call is told about is the whole owner: a sidecar compares it to its own.
    match store.claim(&new_job("j1", &owner("users-0"), LONG)).await? {
        Claim::Busy { owner, .. } => assert_eq!(owner, a),
        other => anyhow::bail!("expected Busy, got {other:?}"),
    }
    // A takeover by an owner that knows neither (an older sidecar) clears both.
    wait_for_expiry(&*store, "j1").await?;
    let b = owner("users-0");
    store.claim(&new_job("j1", &b, LONG)).await?;
    assert_eq!(record(&*store, "j1").await?.owner, b);
    Ok(())
}
