//! Shared by the integration tests: a throw-away key prefix on the real Redis, and builders.
#![allow(dead_code)] // each test crate uses a different part

pub mod amqp;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use redis::aio::MultiplexedConnection;
use reprise_jobs::{
    Checkpoint, Finish, JobStatus, JobStore, Keys, MemoryStore, NewJob, Owner, RedisStore,
};

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// What a Redis test gets: the store under test, plus a raw connection and the key names to
/// check the layout the way an operator with `redis-cli` would.
pub struct Fixture {
    pub store: Arc<dyn JobStore>,
    pub raw: MultiplexedConnection,
    pub keys: Keys,
}

/// Runs `test` against a [`RedisStore`] under a fresh `test-{uuid}` prefix, then deletes every
/// key under that prefix, whether the test passed, failed or panicked.
pub async fn with_redis<F, Fut>(test: F) -> Result<()>
where
    F: FnOnce(Fixture) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let prefix = format!("test-{}", uuid::Uuid::new_v4());
    let url = redis_url();
    let store = RedisStore::connect(&url, &prefix).await?;
    let mut raw = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let fixture = Fixture {
        store: Arc::new(store),
        raw: raw.clone(),
        keys: Keys::new(&prefix),
    };
    let outcome = tokio::spawn(test(fixture)).await;
    delete_prefix(&mut raw, &prefix).await?;
    match outcome {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(e.into()),
    }
}

/// Runs `test` against a fresh [`MemoryStore`].
pub async fn with_memory<F, Fut>(test: F) -> Result<()>
where
    F: FnOnce(Arc<dyn JobStore>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    test(Arc::new(MemoryStore::new())).await
}

pub async fn delete_prefix(raw: &mut MultiplexedConnection, prefix: &str) -> Result<()> {
    let pattern = format!("{prefix}:*");
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(raw)
            .await?;
        if !keys.is_empty() {
            redis::cmd("DEL").arg(&keys).exec_async(raw).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Polls `condition` until it holds; fails after `within`. For the one thing tests must wait
/// for in real time: a lease running out.
pub async fn wait_for<F, Fut>(what: &str, within: Duration, mut condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + within;
    while !condition().await? {
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits until the store reports `job_id`'s lease as expired.
pub async fn wait_for_expiry(store: &dyn JobStore, job_id: &str) -> Result<()> {
    wait_for("the lease to expire", Duration::from_secs(5), || async {
        Ok(store
            .expired_leases(100)
            .await?
            .iter()
            .any(|id| id == job_id))
    })
    .await
}

pub fn owner(pod: &str) -> Owner {
    Owner::new(pod, format!("{pod}-instance"))
}

pub fn new_job(job_id: &str, owner: &Owner, lease_ttl: Duration) -> NewJob {
    NewJob {
        job_id: job_id.to_owned(),
        service: "users-client".to_owned(),
        method: "/demo.v1.Feed/Subscribe".to_owned(),
        request_b64: "CgV0b3BpYw==".to_owned(),
        request_json: r#"{"topic":"topic"}"#.to_owned(),
        owner: owner.clone(),
        lease_ttl,
        resume: reprise_jobs::ResumeMode::OnRequest,
    }
}

pub fn checkpoint(job_id: &str, fence: u64, offset: Option<&str>, messages: u64) -> Checkpoint {
    Checkpoint {
        job_id: job_id.to_owned(),
        fence,
        offset: offset.map(str::to_owned),
        messages,
        lease_ttl: Duration::from_secs(60),
        replay: None,
    }
}

pub fn finish(job_id: &str, fence: u64, status: JobStatus, offset: Option<&str>) -> Finish {
    Finish {
        job_id: job_id.to_owned(),
        fence,
        status,
        offset: offset.map(str::to_owned),
        messages: offset.and_then(|o| o.parse().ok()).unwrap_or(0),
        error: None,
    }
}

/// The record of a job that must exist.
pub async fn record(store: &dyn JobStore, job_id: &str) -> Result<reprise_jobs::JobRecord> {
    store
        .get(job_id)
        .await?
        .with_context(|| format!("job {job_id} is missing"))
}
