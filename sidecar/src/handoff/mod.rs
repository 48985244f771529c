//! What crosses pods: jobs handed over through RabbitMQ and Redis.
//!
//! - [`deliver`]: `resume: deliver`, a job taken over and delivered to the app's ResumeSink;
//! - [`consumer`]: the loop that takes handoff events from the service's queue;
//! - [`release`]: at start-up, the jobs an earlier sidecar of this pod left `running`.
//!
//! Publishing the events is [`crate::events`]'; the stream task itself is [`crate::stream`].

pub mod consumer;
pub mod deliver;
pub mod release;
