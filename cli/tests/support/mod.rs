//! Shared by the CLI tests: a throw-away key prefix on the real Redis, jobs written through
//! the jobs crate exactly as a sidecar writes them, and the `reprise` binary run against both.
#![allow(dead_code)] // each test crate uses a different part

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use redis::aio::MultiplexedConnection;
use reprise_jobs::{
    Checkpoint, Claim, Finish, JobRecord, JobStatus, JobStore, NewJob, Owner, RedisStore,
};

pub const METHOD: &str = "/demo.v1.Feed/Subscribe";

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// What `reprise` did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the built `reprise` with `args` and `env`, and none of the caller's own `REPRISE_*`
/// settings.
pub async fn reprise(args: &[&str], env: &[(&str, &str)]) -> Result<Run> {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args(args)
        .env_remove("REPRISE_REDIS_URL")
        .env_remove("REPRISE_KEY_PREFIX")
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output()
        .await
        .context("run reprise")?;
    Ok(Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout)?,
        stderr: String::from_utf8(output.stderr)?,
    })
}

/// A Redis test's view: the store that seeds jobs, a raw connection, and the prefix.
pub struct Fixture {
    pub store: RedisStore,
    pub raw: MultiplexedConnection,
    pub url: String,
    pub prefix: String,
}

/// Runs `test` under a fresh `test-{uuid}` prefix, then deletes every key under that prefix,
/// whether the test passed, failed or panicked.
pub async fn with_redis<F, Fut>(test: F) -> Result<()>
where
    F: FnOnce(Fixture) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let prefix = format!("test-{}", uuid::Uuid::new_v4());
    let url = redis_url();
    let store = RedisStore::connect(&url, &prefix).await?;
    let mut raw = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let fixture = Fixture {
        store,
        raw: raw.clone(),
        url,
        prefix: prefix.clone(),
    };
    let outcome = tokio::spawn(test(fixture)).await;
    delete_prefix(&mut raw, &prefix).await?;
    match outcome {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(e.into()),
    }
}

async fn delete_prefix(raw: &mut MultiplexedConnection, prefix: &str) -> Result<()> {
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

impl Fixture {
    /// `reprise --redis-url … --prefix … args…`.
    pub async fn reprise(&self, args: &[&str]) -> Result<Run> {
        let mut all = vec!["--redis-url", &self.url, "--prefix", &self.prefix];
        all.extend_from_slice(args);
        reprise(&all, &[]).await
    }

    pub async fn now_ms(&self) -> Result<u64> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut self.raw.clone())
            .await?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// Waits until the Redis clock is past `ms`: for leases to run out, and so that jobs
    /// seeded one after the other have distinct `updated_at`.
    pub async fn wait_past(&self, ms: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.now_ms().await? <= ms {
            if Instant::now() > deadline {
                bail!("timed out waiting for the Redis clock to pass {ms}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    pub async fn record(&self, job_id: &str) -> Result<JobRecord> {
        self.store
            .get(job_id)
            .await?
            .with_context(|| format!("job {job_id} is missing"))
    }

    /// Claims `job_id` for `pod` as a sidecar would; returns the fence.
    pub async fn claim(
        &self,
        job_id: &str,
        service: &str,
        pod: &str,
        ttl: Duration,
    ) -> Result<u64> {
        let job = NewJob {
            job_id: job_id.to_owned(),
            service: service.to_owned(),
            method: METHOD.to_owned(),
            request_b64: "CgV0b3BpYw==".to_owned(),
            request_json: r#"{"topic":"topic","fromOffset":"0"}"#.to_owned(),
            owner: Owner::new(pod, format!("{pod}-instance")),
            lease_ttl: ttl,
            resume: reprise_jobs::ResumeMode::OnRequest,
        };
        match self.store.claim(&job).await? {
            claim @ (Claim::Fresh { .. } | Claim::Resumed { .. }) => {
                claim.fence().context("a granted claim has a fence")
            }
            busy => bail!("claim of {job_id} refused: {busy:?}"),
        }
    }

    pub async fn checkpoint(
        &self,
        job_id: &str,
        fence: u64,
        offset: &str,
        messages: u64,
    ) -> Result<()> {
        let written = self
            .store
            .checkpoint(&Checkpoint {
                job_id: job_id.to_owned(),
                fence,
                offset: Some(offset.to_owned()),
                messages,
                lease_ttl: Duration::from_secs(60),
                replay: None,
            })
            .await?;
        ensure!(written.is_ok(), "checkpoint of {job_id} fenced");
        Ok(())
    }

    pub async fn resumed_after(&self, job_id: &str, fence: u64, error: &str) -> Result<()> {
        let written = self.store.note_resume(job_id, fence, error).await?;
        ensure!(written.is_ok(), "note_resume of {job_id} fenced");
        Ok(())
    }

    pub async fn finish(
        &self,
        job_id: &str,
        fence: u64,
        status: JobStatus,
        offset: Option<&str>,
        messages: u64,
    ) -> Result<()> {
        let written = self
            .store
            .finish(&Finish {
                job_id: job_id.to_owned(),
                fence,
                status,
                offset: offset.map(str::to_owned),
                messages,
                error: None,
            })
            .await?;
        ensure!(written.is_ok(), "finish of {job_id} fenced");
        Ok(())
    }

    /// The job's record once its last write is in the past, so the next job seeded is newer.
    pub async fn settled(&self, job_id: &str) -> Result<JobRecord> {
        let record = self.record(job_id).await?;
        self.wait_past(record.updated_at_ms).await?;
        Ok(record)
    }
}

/// A table's rows as column name → cell, cut at the header's column positions (cells such
/// as `3s ago` contain blanks).
pub fn parse_table(stdout: &str) -> Result<Vec<BTreeMap<String, String>>> {
    let mut lines = stdout.lines();
    let header = lines.next().context("no header line")?;
    let mut starts = Vec::new();
    let chars: Vec<char> = header.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if !c.is_whitespace() && (i == 0 || chars[i - 1].is_whitespace()) {
            let name: String = chars[i..]
                .iter()
                .take_while(|c| !c.is_whitespace())
                .collect();
            starts.push((i, name));
        }
    }
    lines
        .map(|line| {
            let chars: Vec<char> = line.chars().collect();
            let mut row = BTreeMap::new();
            for (n, (start, name)) in starts.iter().enumerate() {
                let end = starts.get(n + 1).map_or(chars.len(), |(next, _)| *next);
                ensure!(chars.len() >= end, "row shorter than the header: {line:?}");
                let cell: String = chars[*start..end].iter().collect();
                row.insert(name.clone(), cell.trim().to_owned());
            }
            Ok(row)
        })
        .collect()
}

/// The job ids of a table, in order.
pub fn ids(stdout: &str) -> Result<Vec<String>> {
    Ok(parse_table(stdout)?
        .into_iter()
        .filter_map(|mut row| row.remove("JOB"))
        .collect())
}
