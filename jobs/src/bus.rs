//! The event bus: handoff events over RabbitMQ, with publisher confirms and reconnection.
//!
//! One [`EventBus`] holds one AMQP connection, kept by a background task (the supervisor, in
//! `supervisor.rs`) that reconnects with exponential backoff (100 ms doubling to 5 s, with
//! jitter), re-declares the topology and re-opens the open consumers. While it is disconnected,
//! [`EventBus::publish`] fails at once with [`BusError::Unavailable`] rather than waiting: the
//! caller decides where the event goes meanwhile (see [`Publisher`](crate::Publisher)).
//!
//! We keep lapin's own automatic recovery off: our topology is three declarations, and doing
//! it ourselves gives a publish that fails fast while disconnected, a quorum→classic fallback
//! that is re-run on every connection, and consumers that keep one receiver across connections.
//!
//! Channels: one in confirm mode for publishing, one per consumer (so a consumer's `basic.qos`
//! and a failed declaration never touch the publishing channel), and short-lived ones for
//! declarations.

mod config;
mod consumer;
mod credentials;
mod error;
mod shared;
mod supervisor;
mod topology;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::DropGuard;

pub use config::BusConfig;
pub use consumer::{Consumer, ConsumerCanceller, DEFAULT_PREFETCH, Incoming};
pub use error::BusError;
pub use topology::{BusNames, QueueType};

use crate::Event;
use consumer::ConsumerShared;
use shared::{Live, Shared, lock, write};

/// A handle on the bus. Cheap to clone; the connection closes when [`EventBus::close`] is
/// called or the last clone is dropped.
#[derive(Clone)]
pub struct EventBus {
    shared: Arc<Shared>,
    _stop_on_drop: Arc<DropGuard>,
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBus")
            .field("url", &self.shared.url)
            .field("prefix", &self.shared.names.prefix())
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl EventBus {
    /// Connects now, failing if the broker cannot be reached or refuses us (so a wrong URL or
    /// password fails start-up); later connection losses are repaired in the background.
    pub async fn connect(config: BusConfig) -> Result<Self, BusError> {
        let (shared, lost_rx) = Shared::new(config)?;
        let live = shared.open_connection().await.map_err(|e| match e {
            BusError::Amqp { source, .. } => BusError::Connect {
                url: shared.url.clone(),
                source,
            },
            other => other,
        })?;
        tracing::info!(amqp.url = %shared.url, "connected to RabbitMQ");
        Ok(Self::spawn(shared, lost_rx, Some(live)))
    }

    /// Starts without waiting for the broker: the connection is made in the background, and
    /// [`EventBus::publish`] fails with [`BusError::Unavailable`] until it is. Only a malformed
    /// URL is an error here.
    pub fn start(config: BusConfig) -> Result<Self, BusError> {
        let (shared, lost_rx) = Shared::new(config)?;
        Ok(Self::spawn(shared, lost_rx, None))
    }

    fn spawn(
        shared: Arc<Shared>,
        lost_rx: mpsc::UnboundedReceiver<u64>,
        live: Option<Live>,
    ) -> Self {
        // Usable as soon as `connect` returns, not when the supervisor first runs.
        if let Some(live) = &live {
            *write(&shared.live) = Some(live.clone());
            shared.connected.send_replace(true);
        }
        let span = tracing::info_span!("amqp_connection", amqp.url = %shared.url);
        let task = tokio::spawn(tracing::Instrument::instrument(
            supervisor::run(Arc::clone(&shared), lost_rx, live),
            span,
        ));
        *lock(&shared.supervisor) = Some(task);
        Self {
            _stop_on_drop: Arc::new(shared.shutdown.clone().drop_guard()),
            shared,
        }
    }

    pub fn names(&self) -> &BusNames {
        &self.shared.names
    }

    pub fn is_connected(&self) -> bool {
        *self.shared.connected.borrow()
    }

    /// Follows [`EventBus::is_connected`]: a drainer wakes up on reconnection with it.
    pub fn watch_connected(&self) -> watch::Receiver<bool> {
        self.shared.connected.subscribe()
    }

    /// Waits until the bus is connected; [`BusError::Unavailable`] after `within`.
    pub async fn wait_connected(&self, within: Duration) -> Result<(), BusError> {
        let mut rx = self.watch_connected();
        match tokio::time::timeout(within, rx.wait_for(|up| *up)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(BusError::Closed),
            Err(_) => Err(self.shared.unavailable()),
        }
    }

    /// How many times the connection was re-established after a loss.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// Deliveries whose body was not an event this build understands: acked and dropped.
    pub fn dropped_undecodable(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Declares `service`'s resume queue and bindings (the exchange is declared on connect).
    /// Idempotent. Publishing and consuming declare it too; call this to fail fast at start-up.
    pub async fn declare_service(&self, service: &str) -> Result<QueueType, BusError> {
        topology::check_service(service)?;
        let live = self
            .shared
            .current()
            .ok_or_else(|| self.shared.unavailable())?;
        self.shared.ensure_service(&live, service).await
    }

    /// Publishes `event` persistently and returns once the broker has confirmed it (for a
    /// handoff event: written to the service's queue, which is declared first if need be).
    pub async fn publish(&self, event: &Event) -> Result<(), BusError> {
        event.validate().map_err(BusError::InvalidEvent)?;
        let live = self
            .shared
            .current()
            .ok_or_else(|| self.shared.unavailable())?;
        if event.kind.is_handoff()
            && let Some(service) = event.service.as_deref()
        {
            topology::check_service(service)?;
            self.shared.ensure_service(&live, service).await?;
        }
        let routing_key = event.routing_key();
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_type(event.kind.as_str().into())
            .with_timestamp(event.at_ms / 1000)
            .with_app_id("reprise".into());
        let body = event.to_json();
        let confirm = async {
            live.publish
                .basic_publish(
                    self.shared.names.exchange().into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await?
                .await
        };
        let after = self.shared.config.confirm_timeout;
        match tokio::time::timeout(after, confirm).await {
            Err(_) => Err(BusError::ConfirmTimeout { routing_key, after }),
            Ok(Ok(confirmation)) if confirmation.is_nack() => Err(BusError::Nacked { routing_key }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(self.shared.failed(&live, "basic.publish", source)),
        }
    }

    /// Consumes `service`'s resume queue with at most `prefetch` unacknowledged events (see
    /// [`DEFAULT_PREFETCH`]). While disconnected this registers the consumer, and the bus opens
    /// it once connected; it stays open across reconnections until cancelled.
    pub async fn consume(&self, service: &str, prefetch: u16) -> Result<Consumer, BusError> {
        topology::check_service(service)?;
        if self.shared.shutdown.is_cancelled() {
            return Err(BusError::Closed);
        }
        let (consumer, rx) = ConsumerShared::new(service, prefetch);
        lock(&self.shared.consumers).push(Arc::clone(&consumer));
        if let Some(live) = self.shared.current()
            && let Err(error) = self.shared.open_consumer(&consumer, &live).await
        {
            // On a dead connection the supervisor opens it after reconnecting; otherwise
            // the broker refused it (a missing permission, a bad queue): tell the caller.
            if live.connection.status().connected() {
                self.shared.forget_consumer(&consumer);
                return Err(error);
            }
        }
        let canceller = ConsumerCanceller {
            consumer,
            _bus: Arc::clone(&self.shared),
        };
        Ok(Consumer::new(rx, canceller))
    }

    /// Stops reconnecting, then closes the consumer channels, the publishing channel and the
    /// connection, in that order. Cancel consumers first ([`Consumer::cancel`]) to stop taking
    /// work before in-flight events are settled: closing their channel requeues what is unacked.
    pub async fn close(&self) -> Result<(), BusError> {
        self.shared.shutdown.cancel();
        let task = lock(&self.shared.supervisor).take();
        if let Some(mut task) = task {
            // It stops at its next await; one stuck on a hung broker is not waited for.
            if tokio::time::timeout(self.shared.config.connect_timeout, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        self.shared.connected.send_replace(false);
        let consumers = std::mem::take(&mut *lock(&self.shared.consumers));
        let live = write(&self.shared.live).take();
        let mut channels = Vec::new();
        for consumer in &consumers {
            // No new deliveries; the channel close below requeues what is unacked.
            consumer.stop();
            channels.extend(consumer.take_channel().await);
        }
        let Some(live) = live else {
            return Ok(());
        };
        channels.push(live.publish.clone());
        let close = async {
            let mut first_error = None;
            for channel in channels {
                if channel.status().connected()
                    && let Err(error) = channel.close(200, "OK".into()).await
                {
                    first_error.get_or_insert(BusError::Amqp {
                        op: "channel.close",
                        source: error,
                    });
                }
            }
            if live.connection.status().connected() {
                live.connection
                    .close(200, "OK".into())
                    .await
                    .map_err(BusError::amqp("connection.close"))?;
            }
            first_error.map_or(Ok(()), Err)
        };
        let result = tokio::time::timeout(self.shared.config.connect_timeout, close)
            .await
            .unwrap_or(Err(BusError::Closed));
        tracing::info!(amqp.url = %self.shared.url, "closed the RabbitMQ connection");
        result
    }
}
