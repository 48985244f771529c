//! The exchange and queues, named under one prefix, declared idempotently.
//!
//! ```text
//! {prefix}.events                topic exchange, durable
//! {prefix}.{service}.resume      durable quorum queue (classic if the broker refuses quorum),
//!                                bound to job.interrupted.{service} and job.orphaned.{service}
//! ```

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};

use crate::{BusError, EventKind};

/// Queue names are at most 255 bytes; leave room for the prefix and suffix.
const MAX_SERVICE_LEN: usize = 200;

/// RabbitMQ names under one prefix (the sidecar's `key_prefix`), built in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusNames {
    prefix: String,
}

impl BusNames {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}.events` — the topic exchange every event goes through.
    pub fn exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// `{prefix}.{service}.resume` — the queue the sidecars of `service` share.
    pub fn resume_queue(&self, service: &str) -> String {
        format!("{}.{service}.resume", self.prefix)
    }
}

/// What kind of queue the broker gave us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// Replicated (Raft); survives the loss of a minority of nodes.
    Quorum,
    /// The broker refused a quorum queue (or one of that name already exists as classic).
    Classic,
}

/// A service name becomes a routing-key word and part of a queue name: `*` and `#` would act as
/// wildcards in the bindings.
pub(crate) fn check_service(service: &str) -> Result<(), BusError> {
    let problem = if service.is_empty() {
        "it is empty"
    } else if service.len() > MAX_SERVICE_LEN {
        "it is longer than 200 bytes"
    } else if service.contains(['*', '#']) {
        "`*` and `#` are routing-key wildcards"
    } else {
        return Ok(());
    };
    Err(BusError::InvalidName {
        name: service.to_owned(),
        problem,
    })
}

pub(crate) async fn declare_exchange(channel: &Channel, names: &BusNames) -> lapin::Result<()> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            names.exchange().into(),
            ExchangeKind::Topic,
            options,
            FieldTable::default(),
        )
        .await
}

/// Declares `service`'s resume queue and its bindings. A declaration the broker refuses closes
/// the channel it was made on, so each attempt gets a channel of its own.
pub(crate) async fn declare_service(
    connection: &Connection,
    names: &BusNames,
    service: &str,
) -> lapin::Result<QueueType> {
    let queue = names.resume_queue(service);
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );

    let channel = connection.create_channel().await?;
    let (channel, kind) = match channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            quorum,
        )
        .await
    {
        Ok(_) => (channel, QueueType::Quorum),
        Err(error) if error.is_amqp_soft_error() => {
            tracing::warn!(
                amqp.queue = %queue,
                %error,
                "RabbitMQ refused a quorum queue; using a classic durable queue (not replicated)"
            );
            let channel = connection.create_channel().await?;
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions::durable(),
                    FieldTable::default(),
                )
                .await?;
            (channel, QueueType::Classic)
        }
        Err(error) => return Err(error),
    };
    for kind in [EventKind::JobInterrupted, EventKind::JobOrphaned] {
        channel
            .queue_bind(
                queue.as_str().into(),
                names.exchange().into(),
                format!("{kind}.{service}").into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    channel.close(200, "OK".into()).await?;
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        let names = BusNames::new("t1");
        assert_eq!(names.exchange(), "t1.events");
        assert_eq!(names.resume_queue("users"), "t1.users.resume");
    }

    #[test]
    fn wildcards_are_not_service_names() {
        assert!(check_service("users-client").is_ok());
        assert!(check_service("a.b").is_ok());
        for bad in ["", "a*", "#", &"x".repeat(201)] {
            assert!(check_service(bad).is_err(), "{bad}");
        }
    }
}
