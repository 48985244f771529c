//! Reprise's job model: a job store with fenced writes and leases.
//!
//! A *job* is one long-running server stream the sidecar keeps alive. Its record (owner, fence,
//! last offset forwarded to the app, counters, the original request) lives in a [`JobStore`]:
//!
//! - [`RedisStore`] shares jobs between pods; the key layout in [`Keys`] is a public contract.
//! - [`MemoryStore`] keeps them inside one process, with the same semantics.
//!
//! Ownership is guarded twice. A *lease* (renewed by every checkpoint) tells others whether the
//! owner is alive; a *fence* (a number that grows with every change of owner) makes every
//! write of a former owner fail, so a zombie can never move an offset.
//!
//! Every multi-step write in Redis is one Lua script, timed by Redis `TIME`. The scripts touch
//! keys in different hash slots (and one they cannot declare in advance: a previous owner's pod
//! set), so the Redis store needs a single Redis primary (standalone or Sentinel), not Cluster.

mod error;
mod keys;
mod memory;
mod model;
mod record;
mod redis_store;
mod scripts;
mod status;
mod store;

pub use error::{StoreError, redact_url};
pub use keys::{DEFAULT_PREFIX, Keys};
pub use memory::MemoryStore;
pub use model::{Checkpoint, Claim, Finish, JobRecord, NewJob, Owner, Write};
pub use record::FIELDS;
pub use redis_store::RedisStore;
pub use status::{JobStatus, UnknownStatus};
pub use store::JobStore;
