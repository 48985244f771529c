//! What can go wrong on the event bus. URLs in these errors have their password masked.

use std::time::Duration;

use crate::DecodeError;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid AMQP URL {url}: {problem}")]
    InvalidUrl { url: String, problem: String },
    /// The first connection (made by [`EventBus::connect`](crate::EventBus::connect)) failed.
    #[error("cannot connect to RabbitMQ at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    /// No connection right now; the bus is reconnecting in the background. Fails fast, so a
    /// caller can queue the event elsewhere (see [`Publisher`](crate::Publisher)).
    #[error("RabbitMQ at {url} is not connected (reconnecting)")]
    Unavailable { url: String },
    #[error("RabbitMQ {op} failed: {source}")]
    Amqp {
        op: &'static str,
        #[source]
        source: lapin::Error,
    },
    /// The broker took the message but could not keep it (a `basic.nack` confirm).
    #[error("RabbitMQ refused the event `{routing_key}` (nack)")]
    Nacked { routing_key: String },
    #[error("RabbitMQ did not confirm the event `{routing_key}` within {after:?}")]
    ConfirmTimeout {
        routing_key: String,
        after: Duration,
    },
    #[error("cannot publish an invalid event: {0}")]
    InvalidEvent(#[source] DecodeError),
    #[error("invalid service name {name:?}: {problem}")]
    InvalidName { name: String, problem: &'static str },
    /// An ack or nack for a delivery whose channel is gone (the connection dropped since): the
    /// broker has already put the message back, and will deliver it again.
    #[error("the delivery's channel is gone; RabbitMQ redelivers the message")]
    StaleDelivery,
    #[error("the event bus is closed")]
    Closed,
}

impl BusError {
    pub(crate) fn amqp(op: &'static str) -> impl FnOnce(lapin::Error) -> Self {
        move |source| BusError::Amqp { op, source }
    }

    /// True when the broker could not take the event now but may later: the caller should
    /// keep the event (outbox) and retry. False for events or names that will never go through.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            BusError::InvalidEvent(_) | BusError::InvalidName { .. } | BusError::InvalidUrl { .. }
        )
    }
}
