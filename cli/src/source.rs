//! Where jobs are read from. Each job's hash is read and parsed by the jobs crate, so the CLI
//! and the sidecars agree on its format; the key scan and the clock need a plain connection.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt as _;
use redis::aio::MultiplexedConnection;
use reprise_jobs::{JobRecord, JobStore as _, Keys, RedisStore, StoreError, redact_url};

/// Same bounds as the sidecar's store: a Redis that does not answer within this is down.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Jobs read at once; the reads share one multiplexed connection.
const CONCURRENT_READS: usize = 32;
/// Keys Redis examines per SCAN step: bounded work per call, never a blocking KEYS.
const SCAN_COUNT: usize = 1000;

pub struct Jobs {
    store: RedisStore,
    raw: MultiplexedConnection,
    keys: Keys,
}

/// What a scan of every job found.
pub struct Listing {
    pub jobs: Vec<JobRecord>,
    /// Keys under `{prefix}:job:` that are not a readable job, with why.
    pub unreadable: Vec<(String, StoreError)>,
}

impl Jobs {
    /// Connects and checks that Redis answers. Errors name the URL with its password masked.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let store = RedisStore::connect(url, prefix).await?;
        let connect_error = |source| StoreError::Connect {
            url: redact_url(url),
            source,
        };
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let raw = redis::Client::open(url)
            .map_err(connect_error)?
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(connect_error)?;
        Ok(Self {
            store,
            raw,
            keys: Keys::new(prefix),
        })
    }

    pub fn prefix(&self) -> &str {
        self.keys.prefix()
    }

    /// Now by Redis `TIME`, in epoch milliseconds: the clock every lease and timestamp uses.
    pub async fn now_ms(&self) -> Result<u64, StoreError> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut self.raw.clone())
            .await
            .map_err(|source| StoreError::Redis { op: "TIME", source })?;
        Ok(secs.saturating_mul(1000).saturating_add(micros / 1000))
    }

    pub async fn get(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.store.get(job_id).await
    }

    /// Every job under the prefix. A job that fails to parse is reported, not fatal; Redis
    /// failing is.
    pub async fn list(&self) -> Result<Listing, StoreError> {
        let ids = self.scan_ids().await?;
        let mut reads = futures::stream::iter(ids)
            .map(|id| async move {
                let read = self.store.get(&id).await;
                (id, read)
            })
            .buffer_unordered(CONCURRENT_READS);
        let mut listing = Listing {
            jobs: Vec::new(),
            unreadable: Vec::new(),
        };
        while let Some((id, read)) = reads.next().await {
            match read {
                Ok(Some(job)) => listing.jobs.push(job),
                // Deleted between the scan and the read.
                Ok(None) => {}
                Err(e) if e.is_unavailable() => return Err(e),
                Err(e) => listing.unreadable.push((id, e)),
            }
        }
        Ok(listing)
    }

    /// Job ids under the prefix, by SCAN (which may return a key twice: hence the set).
    async fn scan_ids(&self) -> Result<BTreeSet<String>, StoreError> {
        let key_start = self.keys.job("");
        let pattern = format!("{}*", glob_escape(&key_start));
        let mut conn = self.raw.clone();
        let mut ids = BTreeSet::new();
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut conn)
                .await
                .map_err(|source| StoreError::Redis { op: "SCAN", source })?;
            ids.extend(
                keys.iter()
                    .filter_map(|key| key.strip_prefix(&key_start))
                    .map(str::to_owned),
            );
            if next == 0 {
                return Ok(ids);
            }
            cursor = next;
        }
    }
}

/// `text` as a Redis glob that matches only itself: a prefix may contain `*`, `?` or `[`.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::glob_escape;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("reprise:job:"), "reprise:job:");
        assert_eq!(glob_escape(r"a*b?[c]\d"), r"a\*b\?\[c\]\\d");
    }
}
