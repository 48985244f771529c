//! Events that could not be published wait in Redis, so a broker outage delays handoffs but
//! never loses them.
//!
//! The outbox is one list per prefix, shared by every pod: whoever sees RabbitMQ first drains
//! it, even for a pod that has died since. Draining publishes the oldest entry, waits for the
//! broker's confirm, and only then removes it (`LINDEX` then `LREM`), so a crash in between
//! publishes it twice rather than never. Duplicates are harmless: a consumer takes a job
//! through a fenced claim in Redis, and an event whose fence is behind the job's is stale.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use crate::{BusError, Event, EventBus, Keys, RedisStore, StoreError};

/// One drain holds the lock at most this long, and stops publishing after [`DRAIN_BUDGET`]
/// so that it never outlives it: the next drain carries on.
const LOCK_TTL: Duration = Duration::from_secs(30);
const DRAIN_BUDGET: Duration = Duration::from_secs(10);

/// Deletes the lock only if it is still ours (it may have expired and been taken).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker went away (or refused) mid-drain; the entries from this one on stay queued.
    #[error("outbox drain stopped after {published} events: {source}")]
    Publish {
        published: usize,
        #[source]
        source: BusError,
    },
}

/// The Redis outbox (`{prefix}:outbox`, see [`Keys::outbox`]). Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    conn: ConnectionManager,
    keys: Keys,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("key", &self.keys.outbox())
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// Shares the store's connection and prefix.
    pub fn new(store: &RedisStore) -> Self {
        Self::with_connection(store.conn(), store.keys().prefix())
    }

    pub fn with_connection(conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            conn,
            keys: Keys::new(prefix),
        }
    }

    /// Appends `event` (newest last).
    pub async fn push(&self, event: &Event) -> Result<(), StoreError> {
        self.conn
            .clone()
            .rpush::<_, _, ()>(self.keys.outbox(), event.to_json())
            .await
            .map_err(StoreError::redis("outbox push"))
    }

    /// How many events wait.
    pub async fn len(&self) -> Result<u64, StoreError> {
        self.conn
            .clone()
            .llen(self.keys.outbox())
            .await
            .map_err(StoreError::redis("outbox len"))
    }

    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len().await? == 0)
    }

    /// Publishes waiting events oldest first, each removed once confirmed; returns how many.
    /// Returns `Ok(0)` at once if another pod is draining.
    pub async fn drain(&self, bus: &EventBus) -> Result<usize, OutboxError> {
        let token = format!("{:016x}", rand::random::<u64>());
        if !self.lock(&token).await? {
            return Ok(0);
        }
        let result = self.drain_locked(bus).await;
        let released: Result<i64, _> = redis::Script::new(RELEASE)
            .key(self.keys.outbox_lock())
            .arg(&token)
            .invoke_async(&mut self.conn.clone())
            .await;
        if let Err(error) = released {
            // It expires by itself.
            tracing::debug!(%error, "cannot release the outbox lock");
        }
        result
    }

    async fn lock(&self, token: &str) -> Result<bool, StoreError> {
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(LOCK_TTL.as_millis() as u64));
        let set: Option<String> = self
            .conn
            .clone()
            .set_options(self.keys.outbox_lock(), token, options)
            .await
            .map_err(StoreError::redis("outbox lock"))?;
        Ok(set.is_some())
    }

    async fn drain_locked(&self, bus: &EventBus) -> Result<usize, OutboxError> {
        let started = Instant::now();
        let mut conn = self.conn.clone();
        let mut published = 0;
        while started.elapsed() < DRAIN_BUDGET {
            let head: Option<String> = conn
                .lindex(self.keys.outbox(), 0)
                .await
                .map_err(StoreError::redis("outbox read"))?;
            let Some(body) = head else {
                break;
            };
            let outcome = match Event::from_json(body.as_bytes()) {
                Ok(event) => bus.publish(&event).await,
                Err(error) => Err(BusError::InvalidEvent(error)),
            };
            match outcome {
                Ok(()) => {
                    published += 1;
                    conn.lrem::<_, _, ()>(self.keys.outbox(), 1, &body)
                        .await
                        .map_err(StoreError::redis("outbox remove"))?;
                }
                Err(error) if error.is_retryable() => {
                    return Err(OutboxError::Publish {
                        published,
                        source: error,
                    });
                }
                Err(error) => {
                    tracing::error!(
                        %error,
                        redis.key = %self.keys.outbox_dead(),
                        "an outbox entry can never be published; moved aside"
                    );
                    redis::pipe()
                        .atomic()
                        .lrem(self.keys.outbox(), 1, &body)
                        .rpush(self.keys.outbox_dead(), &body)
                        .exec_async(&mut conn)
                        .await
                        .map_err(StoreError::redis("outbox dead-letter"))?;
                }
            }
        }
        Ok(published)
    }
}
