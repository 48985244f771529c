//! The Redis key layout is a contract read by operators and outside tests with `redis-cli`:
//! these tests read the raw keys rather than going through the store.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use redis::AsyncCommands;
use reprise_jobs::{
    Claim, FIELDS, JobStatus, JobStore as _, OrphanIf, RedisStore, ResumeMode, StoreError, Write,
};
use support::{Fixture, checkpoint, finish, new_job, owner, wait_for_expiry, with_redis};

const LONG: Duration = Duration::from_secs(30);

async fn redis_now_ms(f: &mut Fixture) -> Result<u64> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut f.raw).await?;
    Ok(secs * 1000 + micros / 1000)
}

async fn hash(f: &mut Fixture, job_id: &str) -> Result<HashMap<String, String>> {
    Ok(f.raw.hgetall(f.keys.job(job_id)).await?)
}

fn field<'a>(h: &'a HashMap<String, String>, name: &str) -> Result<&'a str> {
    h.get(name)
        .map(String::as_str)
        .with_context(|| format!("field {name} missing from {h:?}"))
}

fn number(h: &HashMap<String, String>, name: &str) -> Result<u64> {
    let text = field(h, name)?;
    text.parse()
        .with_context(|| format!("field {name} = {text:?} is not a number"))
}

async fn lease_score(f: &mut Fixture, job_id: &str) -> Result<Option<u64>> {
    Ok(f.raw.zscore(f.keys.leases(), job_id).await?)
}

#[tokio::test]
async fn fresh_claim_writes_the_documented_keys() -> Result<()> {
    with_redis(|mut f| async move {
        let job = new_job("j1", &owner("pod-a"), LONG);
        let before = redis_now_ms(&mut f).await?;
        assert_eq!(f.store.claim(&job).await?, Claim::Fresh { fence: 1 });
        let after = redis_now_ms(&mut f).await?;

        let h = hash(&mut f, "j1").await?;
        let names: BTreeSet<&str> = h.keys().map(String::as_str).collect();
        assert_eq!(names, FIELDS.into_iter().collect::<BTreeSet<_>>());
        let expected = [
            ("service", job.service.as_str()),
            ("method", job.method.as_str()),
            ("status", "running"),
            ("offset", ""),
            ("owner_pod", "pod-a"),
            ("owner_instance", "pod-a-instance"),
            ("owner_namespace", ""),
            ("owner_uid", ""),
            ("fence", "1"),
            ("finished_at", ""),
            ("messages", "0"),
            ("resumes", "0"),
            ("last_error", ""),
            ("request", job.request_b64.as_str()),
            ("request_json", job.request_json.as_str()),
        ];
        for (name, value) in expected {
            assert_eq!(field(&h, name)?, value, "field {name}");
        }
        // Times are Redis's own clock, in epoch milliseconds.
        let started = number(&h, "started_at")?;
        ensure!(
            (before..=after).contains(&started),
            "started_at {started} not in {before}..={after}"
        );
        assert_eq!(number(&h, "updated_at")?, started);
        let lease = number(&h, "lease_expires_at")?;
        assert_eq!(lease, started + 30_000);

        let members: Vec<String> = f.raw.smembers(f.keys.pod_jobs("pod-a")).await?;
        assert_eq!(members, ["j1"]);
        assert_eq!(lease_score(&mut f, "j1").await?, Some(lease));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn checkpoint_moves_the_lease_score() -> Result<()> {
    with_redis(|mut f| async move {
        f.store.claim(&new_job("j1", &owner("pod-a"), LONG)).await?;
        let first = lease_score(&mut f, "j1").await?.context("no lease")?;
        assert_eq!(
            f.store
                .checkpoint(&checkpoint("j1", 1, Some("7"), 7))
                .await?,
            Write::Ok
        );

        let h = hash(&mut f, "j1").await?;
        assert_eq!((field(&h, "offset")?, field(&h, "messages")?), ("7", "7"));
        let lease = number(&h, "lease_expires_at")?;
        assert_eq!(lease, number(&h, "updated_at")? + 60_000);
        ensure!(lease > first, "lease did not move: {first} -> {lease}");
        assert_eq!(lease_score(&mut f, "j1").await?, Some(lease));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn takeover_moves_the_job_between_pod_sets() -> Result<()> {
    with_redis(|mut f| async move {
        // The dead owner never cleans up; the script must find its set by name.
        f.store
            .claim(&new_job("j1", &owner("pod-a"), Duration::from_millis(200)))
            .await?;
        wait_for_expiry(&*f.store, "j1").await?;
        let claim = f.store.claim(&new_job("j1", &owner("pod-b"), LONG)).await?;
        assert!(
            matches!(claim, Claim::Resumed { fence: 2, .. }),
            "{claim:?}"
        );

        let old: Vec<String> = f.raw.smembers(f.keys.pod_jobs("pod-a")).await?;
        let new: Vec<String> = f.raw.smembers(f.keys.pod_jobs("pod-b")).await?;
        assert_eq!((old, new), (vec![], vec!["j1".to_owned()]));
        let h = hash(&mut f, "j1").await?;
        assert_eq!((field(&h, "fence")?, field(&h, "resumes")?), ("2", "1"));
        let lease = number(&h, "lease_expires_at")?;
        assert_eq!(lease_score(&mut f, "j1").await?, Some(lease));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn finish_removes_the_pod_set_and_lease_entries() -> Result<()> {
    with_redis(|mut f| async move {
        f.store.claim(&new_job("j1", &owner("pod-a"), LONG)).await?;
        let end = finish("j1", 1, JobStatus::Completed, Some("3"));
        assert_eq!(f.store.finish(&end).await?, Write::Ok);

        let member: bool = f.raw.sismember(f.keys.pod_jobs("pod-a"), "j1").await?;
        assert!(!member);
        assert_eq!(lease_score(&mut f, "j1").await?, None);
        let h = hash(&mut f, "j1").await?;
        assert_eq!(field(&h, "status")?, "completed");
        assert_eq!(field(&h, "lease_expires_at")?, "");
        assert_eq!(number(&h, "finished_at")?, number(&h, "updated_at")?);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_garbage_hash_is_an_error_not_a_panic() -> Result<()> {
    with_redis(|mut f| async move {
        let job = f.keys.job("j1");
        let _: () = f
            .raw
            .hset_multiple(
                &job,
                &[("status", "zombie"), ("fence", "3"), ("messages", "1")],
            )
            .await?;
        let err = f
            .store
            .get("j1")
            .await
            .err()
            .context("get accepted a bad status")?;
        assert!(
            matches!(
                err,
                StoreError::Corrupt {
                    field: "status",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("zombie"), "{err}");

        let claim = f.store.claim(&new_job("j1", &owner("pod-a"), LONG)).await;
        assert!(
            matches!(
                claim,
                Err(StoreError::Corrupt {
                    field: "status",
                    ..
                })
            ),
            "{claim:?}"
        );
        let cp = checkpoint("j1", 3, Some("9"), 9);
        assert_eq!(f.store.checkpoint(&cp).await?, Write::Fenced);
        assert_eq!(field(&hash(&mut f, "j1").await?, "status")?, "zombie");

        let _: () = f
            .raw
            .hset_multiple(&job, &[("status", "running"), ("fence", "x")])
            .await?;
        let claim = f.store.claim(&new_job("j1", &owner("pod-a"), LONG)).await;
        assert!(
            matches!(claim, Err(StoreError::Corrupt { field: "fence", .. })),
            "{claim:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn checkpoint_many_survives_a_flushed_script_cache() -> Result<()> {
    with_redis(|mut f| async move {
        f.store.claim(&new_job("j1", &owner("pod-a"), LONG)).await?;
        // What a Redis restart does to the script cache; pipelines do not reload by themselves.
        redis::cmd("SCRIPT")
            .arg("FLUSH")
            .exec_async(&mut f.raw)
            .await?;
        let results = f
            .store
            .checkpoint_many(&[checkpoint("j1", 1, Some("4"), 4)])
            .await?;
        assert_eq!(results, [Write::Ok]);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn connect_errors_name_the_url_without_its_password() -> Result<()> {
    let url = "redis://reprise:hunter2@127.0.0.1:1/0";
    let err = RedisStore::connect(url, "test")
        .await
        .err()
        .context("connected to a closed port")?;
    let message = err.to_string();
    assert!(
        message.contains("redis://reprise:***@127.0.0.1:1/0"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    assert!(err.is_unavailable(), "{err:?}");
    Ok(())
}

/// What an owner meets when Redis loses data: the job's hash gone (Redis restarted empty,
/// FLUSHDB, eviction) or a copy with a lower fence (a failover to a replica that was behind).
/// Either is `Forgotten`, never `Fenced`, and the restore writes the documented keys back.
#[tokio::test]
async fn a_lost_or_older_hash_is_forgotten_and_restored_with_its_keys() -> Result<()> {
    with_redis(|mut f| async move {
        let job = new_job("j1", &owner("pod-a"), LONG);
        assert_eq!(f.store.claim(&job).await?, Claim::Fresh { fence: 1 });
        let cp = checkpoint("j1", 1, Some("7"), 7);
        assert_eq!(f.store.checkpoint(&cp).await?, Write::Ok);

        // The store forgets everything (as a restarted, empty Redis would).
        let key = f.keys.job("j1");
        let _: () = f
            .raw
            .del(&[&key, &f.keys.leases(), &f.keys.pod_jobs("pod-a")])
            .await?;
        let cp = checkpoint("j1", 1, Some("8"), 8);
        assert_eq!(f.store.checkpoint(&cp).await?, Write::Forgotten);
        let end = finish("j1", 1, JobStatus::Completed, Some("9"));
        assert_eq!(f.store.finish(&end).await?, Write::Forgotten);
        assert_eq!(f.store.note_resume("j1", 1, "x").await?, Write::Forgotten);
        let restore = reprise_jobs::Restore {
            job: job.clone(),
            fence: 1,
            offset: Some("8".into()),
            messages: 8,
            note: "written back".into(),
        };
        assert_eq!(f.store.restore(&restore).await?, Write::Ok);
        let h = hash(&mut f, "j1").await?;
        let names: BTreeSet<&str> = h.keys().map(String::as_str).collect();
        assert_eq!(names, FIELDS.into_iter().collect::<BTreeSet<_>>());
        for (name, value) in [
            ("status", "running"),
            ("fence", "1"),
            ("offset", "8"),
            ("messages", "8"),
            ("owner_pod", "pod-a"),
            ("last_error", "written back"),
            ("request", job.request_b64.as_str()),
        ] {
            assert_eq!(field(&h, name)?, value, "{name}");
        }
        ensure!(lease_score(&mut f, "j1").await?.is_some(), "lease restored");
        let members: Vec<String> = f.raw.smembers(f.keys.pod_jobs("pod-a")).await?;
        assert_eq!(members, ["j1"]);
        assert_eq!(f.store.finish(&end).await?, Write::Ok);

        // A copy from before the claim, behind the owner (fence 0 < 1): forgotten too.
        let _: () = f
            .raw
            .hset_multiple(&key, &[("status", "completed"), ("fence", "0")])
            .await?;
        assert_eq!(f.store.checkpoint(&cp).await?, Write::Forgotten);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn owner_namespace_and_uid_are_fields_and_the_pod_set_keeps_its_name() -> Result<()> {
    with_redis(|mut f| async move {
        let a = owner("users-0").in_namespace("demo").with_uid("u-1");
        f.store.claim(&new_job("j1", &a, LONG)).await?;
        let h = hash(&mut f, "j1").await?;
        assert_eq!(field(&h, "owner_pod")?, "users-0");
        assert_eq!(field(&h, "owner_namespace")?, "demo");
        assert_eq!(field(&h, "owner_uid")?, "u-1");
        let members: Vec<String> = f.raw.smembers(f.keys.pod_jobs("users-0")).await?;
        assert_eq!(members, ["j1"]);
        Ok(())
    })
    .await
}

/// Which jobs recorded under a pod name a dead pod reaches: uids decide when both sides know
/// them, else namespaces; a job without a namespace only when the caller allows it.
#[tokio::test]
async fn orphan_by_owner_matches_uid_then_namespace() -> Result<()> {
    with_redis(|f| async move {
        let store = RedisStore::connect(&support::redis_url(), f.keys.prefix()).await?;
        let owners = [
            (
                "demo-u1",
                owner("users-0").in_namespace("demo").with_uid("u-1"),
            ),
            (
                "demo-u2",
                owner("users-0").in_namespace("demo").with_uid("u-2"),
            ),
            ("demo", owner("users-0").in_namespace("demo")),
            ("staging", owner("users-0").in_namespace("staging")),
            ("unknown", owner("users-0")),
            ("other-pod", owner("users-1").in_namespace("demo")),
        ];
        for (id, o) in &owners {
            f.store.claim(&new_job(id, o, LONG)).await?;
        }
        let dead = |include_unknown_namespace| OrphanIf::OwnedBy {
            pod: "users-0".into(),
            namespace: "demo".into(),
            uid: Some("u-1".into()),
            spare: None,
            include_unknown_namespace,
        };
        let mut orphaned = Vec::new();
        for (id, _) in &owners {
            let reason = "pod demo/users-0: deleted";
            if store.orphan(id, &dead(false), reason).await?.is_some() {
                orphaned.push(*id);
            }
        }
        assert_eq!(orphaned, ["demo-u1", "demo"]);
        assert!(store.orphan("unknown", &dead(true), "x").await?.is_some());
        Ok(())
    })
    .await
}

/// The recoverer's verdict that pod-a (no namespace, no uid recorded) is dead.
fn pod_a_dead() -> OrphanIf {
    OrphanIf::OwnedBy {
        pod: "pod-a".into(),
        namespace: String::new(),
        uid: None,
        spare: None,
        include_unknown_namespace: true,
    }
}

/// A checkpoint's replay point (where a takeover starts if its owner dies without saying where
/// the job stands) is stored beside the offset; each way a dead owner's job is taken up starts
/// there and says how far back it moved (`replayed`), and each way an owner lets its job go
/// leaves its own position.
#[tokio::test]
async fn a_dead_owners_job_resumes_from_its_replay_point() -> Result<()> {
    with_redis(|mut f| async move {
        let short = Duration::from_millis(200);
        let with_replay = |id: &str| reprise_jobs::Checkpoint {
            replay: Some(reprise_jobs::Position {
                offset: "60".into(),
                messages: 60,
            }),
            ..checkpoint(id, 1, Some("90"), 90)
        };
        let replayed = |h: &HashMap<String, String>| {
            (
                h.get("offset").cloned().unwrap_or_default(),
                h.get("messages").cloned().unwrap_or_default(),
                h.get("replayed").cloned(),
                h.contains_key("replay_offset") || h.contains_key("replay_messages"),
            )
        };
        // Lease expired: the claim resumes at the replay point.
        f.store.claim(&new_job("lease", &owner("pod-a"), short)).await?;
        assert_eq!(f.store.checkpoint(&with_replay("lease")).await?, Write::Ok);
        let h = hash(&mut f, "lease").await?;
        assert_eq!((field(&h, "replay_offset")?, field(&h, "replay_messages")?), ("60", "60"));
        // The checkpoint's own lease is the default test lease: expire it by hand.
        redis::cmd("HSET")
            .arg(f.keys.job("lease"))
            .arg("lease_expires_at")
            .arg(1)
            .query_async::<()>(&mut f.raw)
            .await?;
        let claim = f.store.claim(&new_job("lease", &owner("pod-b"), LONG)).await?;
        assert_eq!(
            claim,
            Claim::Resumed {
                fence: 2,
                offset: Some("60".into()),
                messages: 60,
                previous_status: JobStatus::Running
            }
        );
        let h = hash(&mut f, "lease").await?;
        assert_eq!(replayed(&h), ("60".into(), "60".into(), Some("30".into()), false));

        // Orphaned by the recoverer: the same, through the claim.
        f.store.claim(&new_job("orphan", &owner("pod-a"), LONG)).await?;
        assert_eq!(f.store.checkpoint(&with_replay("orphan")).await?, Write::Ok);
        let dead = pod_a_dead();
        let store = RedisStore::connect(&support::redis_url(), f.keys.prefix()).await?;
        assert!(store.orphan("orphan", &dead, "pod deleted").await?.is_some());
        let claim = f.store.take_over(&new_job("orphan", &owner("pod-b"), LONG)).await?;
        assert!(
            matches!(&claim, Some(Claim::Resumed { offset: Some(o), messages: 60, .. }) if o == "60"),
            "{claim:?}"
        );

        // Released by the pod's next sidecar (a finish that gives no offset): at the replay
        // point, so the next claim resumes there too.
        f.store.claim(&new_job("release", &owner("pod-a"), LONG)).await?;
        assert_eq!(f.store.checkpoint(&with_replay("release")).await?, Write::Ok);
        let mut release = finish("release", 1, JobStatus::Interrupted, None);
        release.messages = 90;
        assert_eq!(f.store.finish(&release).await?, Write::Ok);
        let h = hash(&mut f, "release").await?;
        assert_eq!(replayed(&h), ("60".into(), "60".into(), Some("30".into()), false));

        // Let go by its owner (a finish with its offset): the replay point is dropped, and a
        // claim resumes where the owner said.
        f.store.claim(&new_job("let-go", &owner("pod-a"), LONG)).await?;
        assert_eq!(f.store.checkpoint(&with_replay("let-go")).await?, Write::Ok);
        let end = finish("let-go", 1, JobStatus::Interrupted, Some("90"));
        assert_eq!(f.store.finish(&end).await?, Write::Ok);
        let h = hash(&mut f, "let-go").await?;
        assert!(!replayed(&h).3, "replay point left behind: {h:?}");
        let claim = f.store.claim(&new_job("let-go", &owner("pod-b"), LONG)).await?;
        assert!(
            matches!(&claim, Claim::Resumed { offset: Some(o), .. } if o == "90"),
            "{claim:?}"
        );
        // A fresh run of a finished job starts with no replay point and no `replayed`.
        let done = finish("let-go", 2, JobStatus::Completed, Some("99"));
        assert_eq!(f.store.finish(&done).await?, Write::Ok);
        f.store.claim(&new_job("let-go", &owner("pod-b"), LONG)).await?;
        let h = hash(&mut f, "let-go").await?;
        assert!(!h.contains_key("replayed") && !h.contains_key("replay_offset"), "{h:?}");
        Ok(())
    })
    .await
}

/// An owner whose lease lapsed while it could not reach Redis, orphaned by the recoverer, may
/// still write that the job completed (or failed) as long as nobody took it up since; after a
/// takeover it is fenced like any zombie, and it can never write `interrupted` over an orphan.
#[tokio::test]
async fn an_orphaned_job_nobody_took_up_takes_its_owners_end() -> Result<()> {
    with_redis(|mut f| async move {
        let store = RedisStore::connect(&support::redis_url(), f.keys.prefix()).await?;
        let dead = pod_a_dead();
        for id in ["done", "taken", "let-go"] {
            f.store.claim(&new_job(id, &owner("pod-a"), LONG)).await?;
            assert_eq!(store.orphan(id, &dead, "lease expired").await?, Some(2));
        }
        let end = finish("done", 1, JobStatus::Completed, Some("99"));
        assert_eq!(f.store.finish(&end).await?, Write::Ok);
        let h = hash(&mut f, "done").await?;
        assert_eq!(
            (field(&h, "status")?, field(&h, "offset")?),
            ("completed", "99")
        );
        let late = f
            .store
            .take_over(&new_job("done", &owner("pod-b"), LONG))
            .await?;
        assert_eq!(late, None, "a completed job is not taken over");

        f.store
            .take_over(&new_job("taken", &owner("pod-b"), LONG))
            .await?;
        let end = finish("taken", 1, JobStatus::Completed, Some("99"));
        assert_eq!(f.store.finish(&end).await?, Write::Fenced);

        let end = finish("let-go", 1, JobStatus::Interrupted, Some("50"));
        assert_eq!(f.store.finish(&end).await?, Write::Fenced);
        assert_eq!(field(&hash(&mut f, "let-go").await?, "status")?, "orphaned");
        Ok(())
    })
    .await
}

/// A `deliver` job let go (handed off, or orphaned) waits in `{prefix}:handoffs` until a pod
/// claims it; one the pods never take is due once it has waited the recoverer's
/// `handoff_retry`, and then after a backoff that doubles per offer up to the cap. `on_request` jobs never enter: their
/// apps ask for them. (Findings 12 and 13 of docs/reliability.md: a job whose event was lost,
/// or that nobody was told about, waited `interrupted` forever.)
#[tokio::test]
async fn a_deliver_job_let_go_waits_in_the_handoff_index_until_claimed() -> Result<()> {
    with_redis(|mut f| async move {
        let retry = Duration::from_millis(300);
        let store = RedisStore::connect(&support::redis_url(), f.keys.prefix()).await?;
        let deliver = |id: &str, pod: &str| {
            let mut job = new_job(id, &owner(pod), LONG);
            job.resume = ResumeMode::Deliver;
            job
        };
        // As if let go long ago: due at the next look.
        let make_due = |f: &mut Fixture| {
            let (mut raw, key) = (f.raw.clone(), f.keys.handoffs());
            async move {
                redis::cmd("ZADD")
                    .arg(key)
                    .arg(0)
                    .arg("orphan")
                    .query_async::<()>(&mut raw)
                    .await
            }
        };
        let score = |f: &mut Fixture, id: &'static str| {
            let (mut raw, key) = (f.raw.clone(), f.keys.handoffs());
            async move { Ok::<Option<u64>, anyhow::Error>(raw.zscore(key, id).await?) }
        };

        store.claim(&deliver("handed", "pod-a")).await?;
        store
            .claim(&new_job("asked", &owner("pod-a"), LONG))
            .await?;
        store.claim(&deliver("orphan", "pod-a")).await?;
        assert_eq!(
            field(&hash(&mut f, "handed").await?, "resume_mode")?,
            "deliver"
        );
        assert_eq!(
            field(&hash(&mut f, "asked").await?, "resume_mode")?,
            "on_request"
        );
        assert_eq!(score(&mut f, "handed").await?, None, "running: not waiting");

        let before = redis_now_ms(&mut f).await?;
        for id in ["handed", "asked"] {
            let end = finish(id, 1, JobStatus::Interrupted, Some("7"));
            assert_eq!(store.finish(&end).await?, Write::Ok);
        }
        assert_eq!(
            store.orphan("orphan", &pod_a_dead(), "pod killed").await?,
            Some(2)
        );
        let after = redis_now_ms(&mut f).await?;
        for id in ["handed", "orphan"] {
            let at = score(&mut f, id).await?.context("in the index")?;
            ensure!(
                (before..=after).contains(&at),
                "{id} let go at {at}, not within {before}..{after}"
            );
        }
        assert_eq!(
            score(&mut f, "asked").await?,
            None,
            "on_request jobs wait for their app"
        );
        assert!(
            store.due_handoffs(100, retry, LONG).await?.is_empty(),
            "nothing is due before the retry"
        );

        // A pod claims one: it leaves the index. The other is never taken and comes due.
        store.take_over(&deliver("handed", "pod-b")).await?;
        assert_eq!(score(&mut f, "handed").await?, None);
        tokio::time::sleep(retry + Duration::from_millis(50)).await;
        let due = store.due_handoffs(100, retry, retry * 4).await?;
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(
            (due[0].job_id.as_str(), due[0].status, due[0].offers),
            ("orphan", JobStatus::Orphaned, 1)
        );
        assert_eq!(
            field(&hash(&mut f, "orphan").await?, "handoff_offers")?,
            "1"
        );
        // Each offer puts the next one off by twice as long, up to the cap: 2, 4, then 4
        // retries (the score is when it counts as let go: due one retry after it).
        let retry_ms = retry.as_millis() as u64;
        let mut gaps = Vec::new();
        for _ in 0..3 {
            let now = redis_now_ms(&mut f).await?;
            let let_go = score(&mut f, "orphan").await?.context("still waiting")?;
            gaps.push((let_go + retry_ms).saturating_sub(now).div_ceil(retry_ms));
            make_due(&mut f).await?;
            assert_eq!(store.due_handoffs(100, retry, retry * 4).await?.len(), 1);
        }
        assert_eq!(gaps, [2, 4, 4], "the backoff in retries");

        // A claim, then its end, takes it out for good; an id whose job ended leaves too.
        let claim = store.take_over(&deliver("orphan", "pod-b")).await?;
        assert!(
            matches!(claim, Some(Claim::Resumed { fence: 3, .. })),
            "{claim:?}"
        );
        assert_eq!(score(&mut f, "orphan").await?, None);
        assert!(!hash(&mut f, "orphan").await?.contains_key("handoff_offers"));
        let end = finish("orphan", 3, JobStatus::Completed, Some("9"));
        assert_eq!(store.finish(&end).await?, Write::Ok);
        make_due(&mut f).await?;
        assert!(store.due_handoffs(100, retry, LONG).await?.is_empty());
        assert_eq!(
            score(&mut f, "orphan").await?,
            None,
            "a completed job leaves the index"
        );
        Ok(())
    })
    .await
}

/// `run_id` tells a restarted Redis (or another server after a failover) from the one a
/// client saw before; a user whose ACL refuses `INFO` gets `None`, not an error, so that a
/// store's probe does not count a live Redis as down.
#[tokio::test]
async fn run_id_is_the_servers_and_none_where_info_is_refused() -> Result<()> {
    with_redis(|mut f| async move {
        let url = support::redis_url();
        let store = RedisStore::connect(&url, "run-id").await?;
        let id = store
            .run_id()
            .await?
            .context("INFO server gives a run_id")?;
        ensure!(id.len() == 40, "a run_id is 40 hex digits: {id:?}");
        ensure!(store.run_id().await? == Some(id.clone()), "the same server");

        let user = format!("reprise-noinfo-{}", uuid::Uuid::new_v4().simple());
        let _: () = redis::cmd("ACL")
            .arg(&["SETUSER", &user, "on", ">pw", "~*", "&*", "+@all", "-info"][..])
            .query_async(&mut f.raw)
            .await?;
        let limited = url.replacen("redis://", &format!("redis://{user}:pw@"), 1);
        let outcome = async {
            let store = RedisStore::connect(&limited, "run-id").await?;
            ensure!(store.run_id().await?.is_none(), "INFO refused: no run_id");
            store.ping().await?;
            Ok(())
        }
        .await;
        let _: () = redis::cmd("ACL")
            .arg(&["DELUSER", &user][..])
            .query_async(&mut f.raw)
            .await?;
        outcome
    })
    .await
}
