//! Publishing that survives a broker outage: the bus when it can, the Redis outbox when not.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{BusError, Event, EventBus, Outbox, OutboxError, StoreError};

/// How often the drainer looks at the outbox while the bus is connected.
const DRAIN_EVERY: Duration = Duration::from_secs(1);

/// Where an event went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The broker confirmed it.
    Published,
    /// The broker could not take it; it waits in the outbox for the drainer.
    Queued,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event itself is wrong (a missing field, a wildcard in the service name): it would
    /// never go through, so it is not queued.
    #[error(transparent)]
    Invalid(BusError),
    /// Neither RabbitMQ nor Redis took it. Redis being the truth, a reconcile still finds the job.
    #[error("event neither published ({bus}) nor queued ({outbox})")]
    Lost {
        bus: BusError,
        #[source]
        outbox: StoreError,
    },
}

/// The bus plus the outbox. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Publisher {
    bus: EventBus,
    outbox: Outbox,
}

impl Publisher {
    pub fn new(bus: EventBus, outbox: Outbox) -> Self {
        Self { bus, outbox }
    }

    pub fn bus(&self) -> &EventBus {
        &self.bus
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Publishes with a confirm, or queues in the outbox if the broker cannot take it (down,
    /// nack, no confirm in time). Events published directly may overtake older queued ones;
    /// consumers order by fence, not by arrival.
    pub async fn publish(&self, event: &Event) -> Result<Sent, PublishError> {
        let error = match self.bus.publish(event).await {
            Ok(()) => return Ok(Sent::Published),
            Err(error) if !error.is_retryable() => return Err(PublishError::Invalid(error)),
            Err(error) => error,
        };
        match self.outbox.push(event).await {
            Ok(()) => {
                tracing::warn!(
                    job.id = event.job_id.as_deref().unwrap_or_default(),
                    amqp.routing_key = %event.routing_key(),
                    %error,
                    "event queued in the Redis outbox"
                );
                Ok(Sent::Queued)
            }
            Err(outbox) => Err(PublishError::Lost { bus: error, outbox }),
        }
    }

    /// Drains the outbox every second while the bus is connected, and at once when it
    /// reconnects, until `cancel`.
    pub async fn run_drainer(self, cancel: CancellationToken) {
        let mut connected = self.bus.watch_connected();
        let mut tick = tokio::time::interval(DRAIN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
                changed = connected.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            if !self.bus.is_connected() {
                continue;
            }
            match self.outbox.drain(&self.bus).await {
                Ok(0) => {}
                Ok(published) => tracing::info!(published, "drained the event outbox"),
                Err(OutboxError::Publish { published, source }) => {
                    tracing::warn!(published, error = %source, "outbox drain interrupted");
                }
                Err(error) => tracing::warn!(%error, "cannot drain the event outbox"),
            }
        }
    }
}
