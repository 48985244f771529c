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
//!
//! Handoffs travel as [`Event`]s (a JSON contract, see `events.rs`) over RabbitMQ: an
//! [`EventBus`] publishes them with confirms and consumes a service's shared resume queue,
//! reconnecting by itself. Redis stays the truth; events only make progress fast. A
//! [`Publisher`] falls back to a Redis [`Outbox`] while the broker is away, so an outage delays
//! handoffs without losing them.
//!
//! Shared by the binaries beside the job model: [`Acceptor`], an accept loop that backs off
//! and rate-limits its warnings when `accept` fails (file descriptors run out).

mod bus;
pub mod config_file;
mod error;
mod events;
mod keys;
mod listen;
mod memory;
mod model;
mod outbox;
mod publisher;
mod record;
mod redis_store;
mod scripts;
mod status;
mod store;

pub use bus::{
    BusConfig, BusError, BusNames, Consumer, ConsumerCanceller, DEFAULT_PREFETCH, EventBus,
    Incoming, QueueType,
};
pub use error::{StoreError, redact_url};
pub use events::{DecodeError, EVENT_VERSION, Event, EventKind};
pub use keys::{DEFAULT_PREFIX, Keys};
pub use listen::{AcceptBackoff, AcceptFailed, Acceptor};
pub use memory::MemoryStore;
pub use model::{
    Checkpoint, Claim, Finish, JobRecord, NewJob, Owner, Position, Restore, ResumeMode, Write,
};
pub use outbox::{Outbox, OutboxError};
pub use publisher::{PublishError, Publisher, Sent};
pub use record::FIELDS;
pub use redis_store::{DueHandoff, OrphanIf, RedisStore, SidecarInstance};
pub use status::{JobStatus, UnknownStatus};
pub use store::JobStore;
