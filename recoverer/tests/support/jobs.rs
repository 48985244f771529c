//! Jobs on the real Redis (env `REDIS_URL`, default `redis://127.0.0.1:6379`) under a
//! throw-away key prefix that is deleted when the test ends, passed or not.
//!
//! Use from another test file: `#[path = "support/jobs.rs"] mod jobs;`.

#![allow(dead_code)]

use std::time::Duration;

use reprise_jobs::{JobRecord, JobStore as _, NewJob, Owner, RedisStore};

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A unique key prefix; every key under it is deleted on drop.
pub struct Prefix(pub String);

impl Prefix {
    pub fn new() -> Self {
        Self(format!("test-recoverer-{}", uuid::Uuid::new_v4().simple()))
    }

    pub async fn store(&self) -> RedisStore {
        RedisStore::connect(&redis_url(), &self.0)
            .await
            .expect("Redis reachable (scripts/services starts it)")
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let Ok(mut con) = redis::Client::open(redis_url()).and_then(|c| c.get_connection()) else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.0))
            .query(&mut con)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&keys).query(&mut con);
        }
    }
}

/// A job of the `users-client` service claimed by `owner` with a lease of `lease_ttl`.
pub fn new_job(job_id: &str, owner: &Owner, lease_ttl: Duration) -> NewJob {
    NewJob {
        job_id: job_id.to_owned(),
        service: "users-client".to_owned(),
        method: "/demo.v1.UserService/ListUsers".to_owned(),
        request_b64: String::new(),
        request_json: "{}".to_owned(),
        owner: owner.clone(),
        lease_ttl,
        resume: reprise_jobs::ResumeMode::OnRequest,
    }
}

/// The record of a job that must exist.
pub async fn record(store: &RedisStore, job_id: &str) -> JobRecord {
    store
        .get(job_id)
        .await
        .expect("Redis answers")
        .unwrap_or_else(|| panic!("job {job_id} exists"))
}
