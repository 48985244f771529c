//! Consuming a service's resume queue: one receiver that outlives reconnections.
//!
//! Each connection gets its own AMQP channel and `basic.consume`; a forwarding task decodes its
//! deliveries into the one [`Consumer`] receiver. Undecodable bodies never reach the caller:
//! they are acked, logged and counted, so a poison message cannot be redelivered forever.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, Channel};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::shared::Shared;
use crate::{BusError, Event};

/// How many unacknowledged deliveries a consumer holds when the caller does not say.
pub const DEFAULT_PREFETCH: u16 = 4;

/// How long [`ConsumerCanceller::cancel`] waits for the broker's `basic.cancel-ok`.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// One event taken from a resume queue. Settle it with [`Incoming::ack`] once the job is
/// claimed (or found stale), or [`Incoming::nack`]; one dropped unsettled goes back to the queue.
#[derive(Debug)]
pub struct Incoming {
    pub event: Event,
    pub routing_key: String,
    /// The broker delivered it before (to us or to another consumer) without an ack.
    pub redelivered: bool,
    acker: Option<Acker>,
}

impl Incoming {
    pub async fn ack(mut self) -> Result<(), BusError> {
        let acker = self.acker.take().ok_or(BusError::StaleDelivery)?;
        settled(acker.ack(BasicAckOptions::default()).await, "basic.ack")
    }

    /// `requeue`: put it back for any consumer of the service (ours included); otherwise the
    /// broker drops it.
    pub async fn nack(mut self, requeue: bool) -> Result<(), BusError> {
        let acker = self.acker.take().ok_or(BusError::StaleDelivery)?;
        let options = BasicNackOptions {
            multiple: false,
            requeue,
        };
        settled(acker.nack(options).await, "basic.nack")
    }
}

fn settled(result: lapin::Result<bool>, op: &'static str) -> Result<(), BusError> {
    match result {
        Ok(true) => Ok(()),
        // The channel it came on is gone: the broker requeued it already.
        Ok(false) => Err(BusError::StaleDelivery),
        Err(source) if source.is_amqp_error() || source.is_io_error() => {
            Err(BusError::Amqp { op, source })
        }
        Err(_) => Err(BusError::StaleDelivery),
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        let Some(acker) = self.acker.take() else {
            return;
        };
        tracing::debug!(
            amqp.routing_key = %self.routing_key,
            "event dropped without ack; returning it to the queue"
        );
        // Without a runtime the process is ending: closing the channel requeues it as well.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = acker.nack(requeue()).await;
            });
        }
    }
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        multiple: false,
        requeue: true,
    }
}

/// What the bus keeps per consumer to re-open it after a reconnection.
pub(super) struct ConsumerShared {
    pub(super) service: String,
    pub(super) prefetch: u16,
    token: CancellationToken,
    tx: Mutex<Option<mpsc::Sender<Incoming>>>,
    slot: tokio::sync::Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    /// The connection the consumer is open on, so a reconnection opens it once.
    generation: Option<u64>,
    /// Kept open after a cancel until the bus closes: events already handed out still need
    /// it for their ack.
    channel: Option<Channel>,
    task: Option<JoinHandle<()>>,
}

impl ConsumerShared {
    pub(super) fn new(service: &str, prefetch: u16) -> (Arc<Self>, mpsc::Receiver<Incoming>) {
        let (tx, rx) = mpsc::channel(usize::from(prefetch.max(1)));
        let shared = Arc::new(Self {
            service: service.to_owned(),
            prefetch: prefetch.max(1),
            token: CancellationToken::new(),
            tx: Mutex::new(Some(tx)),
            slot: tokio::sync::Mutex::new(Slot::default()),
        });
        (shared, rx)
    }

    pub(super) fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Opens the consumer on `generation`'s connection unless it is already open there or
    /// was cancelled. `open` does the AMQP part and returns the channel and lapin consumer.
    pub(super) async fn open_on<F, Fut>(
        self: &Arc<Self>,
        bus: &Arc<Shared>,
        generation: u64,
        open: F,
    ) -> Result<(), BusError>
    where
        F: FnOnce(ShortString) -> Fut,
        Fut: Future<Output = Result<(Channel, lapin::Consumer), BusError>>,
    {
        let mut slot = self.slot.lock().await;
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(tx) = tx.filter(|_| !self.is_cancelled()) else {
            return Ok(());
        };
        if slot.generation == Some(generation) {
            return Ok(());
        }
        let tag = format!(
            "{}.{}.{:016x}",
            bus.names.prefix(),
            self.service,
            rand::random::<u64>()
        );
        let (channel, consumer) = open(tag.as_str().into()).await?;
        let forward = Forward {
            channel: channel.clone(),
            tag: tag.as_str().into(),
            tx,
            token: self.token.clone(),
            closing: bus.shutdown.clone(),
            lost: bus.lost.clone(),
            dropped: Arc::clone(&bus.dropped),
            generation,
        };
        let span =
            tracing::info_span!("amqp_consumer", service = %self.service, amqp.consumer_tag = %tag);
        slot.generation = Some(generation);
        slot.channel = Some(channel);
        slot.task = Some(tokio::spawn(forward.run(consumer).instrument(span)));
        tracing::debug!(service = %self.service, amqp.consumer_tag = %tag, "consuming");
        Ok(())
    }

    /// Stops deliveries: `basic.cancel`, then waits until the forwarding task has returned
    /// whatever was in flight to the queue.
    pub(super) async fn cancel(&self) {
        self.token.cancel();
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let task = self.slot.lock().await.task.take();
        if let Some(task) = task
            && tokio::time::timeout(CANCEL_TIMEOUT, task).await.is_err()
        {
            tracing::warn!(service = %self.service, "RabbitMQ did not confirm the consumer cancel in time");
        }
    }

    /// Stops forwarding without waiting for the broker (the bus is closing).
    pub(super) fn stop(&self) {
        self.token.cancel();
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// The channel, for a clean close with the bus.
    pub(super) async fn take_channel(&self) -> Option<Channel> {
        self.slot.lock().await.channel.take()
    }
}

/// The receiving end of [`EventBus::consume`](crate::EventBus::consume). It keeps receiving
/// across reconnections; `recv` returns `None` once the consumer is cancelled (or the bus closed)
/// and what was already received has been handed out.
pub struct Consumer {
    rx: mpsc::Receiver<Incoming>,
    canceller: ConsumerCanceller,
}

impl Consumer {
    pub(super) fn new(rx: mpsc::Receiver<Incoming>, canceller: ConsumerCanceller) -> Self {
        Self { rx, canceller }
    }

    pub async fn recv(&mut self) -> Option<Incoming> {
        loop {
            let incoming = self.rx.recv().await?;
            // Received before the cancel but not yet handed out: another pod should take it.
            if self.canceller.consumer.is_cancelled() {
                let _ = incoming.nack(true).await;
                continue;
            }
            return Some(incoming);
        }
    }

    /// A handle that cancels this consumer from another task (the shutdown path).
    pub fn canceller(&self) -> ConsumerCanceller {
        self.canceller.clone()
    }

    pub async fn cancel(&self) {
        self.canceller.cancel().await
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // The forwarding task sees this and sends basic.cancel itself.
        self.canceller.consumer.token.cancel();
    }
}

/// Cancels a [`Consumer`]: no new deliveries arrive, and the consumer is not re-opened after a
/// reconnection. Events already handed out can still be acked until the bus closes.
#[derive(Clone)]
pub struct ConsumerCanceller {
    pub(super) consumer: Arc<ConsumerShared>,
    /// Keeps the bus state alive while a consumer handle exists.
    pub(super) _bus: Arc<Shared>,
}

impl ConsumerCanceller {
    /// Idempotent. The consumer stays listed (skipped on reconnection) so that
    /// [`EventBus::close`](crate::EventBus::close) still closes its channel.
    pub async fn cancel(&self) {
        self.consumer.cancel().await;
    }
}

/// Moves one connection's deliveries into the consumer's receiver.
struct Forward {
    channel: Channel,
    tag: ShortString,
    tx: mpsc::Sender<Incoming>,
    token: CancellationToken,
    closing: CancellationToken,
    lost: mpsc::UnboundedSender<u64>,
    dropped: Arc<AtomicU64>,
    generation: u64,
}

impl Forward {
    async fn run(self, mut deliveries: lapin::Consumer) {
        let mut cancelling = false;
        loop {
            tokio::select! {
                biased;
                _ = self.token.cancelled(), if !cancelling => {
                    cancelling = true;
                    // lapin ends the stream once the broker confirms (basic.cancel-ok).
                    if let Err(error) = self
                        .channel
                        .basic_cancel(self.tag.clone(), BasicCancelOptions::default())
                        .await
                    {
                        tracing::debug!(%error, "basic.cancel failed; the channel is gone anyway");
                        return;
                    }
                }
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) if cancelling => {
                        let _ = delivery.acker.nack(requeue()).await;
                    }
                    Some(Ok(delivery)) => self.forward(delivery).await,
                    Some(Err(error)) => {
                        self.report_loss(&error.to_string(), cancelling);
                        return;
                    }
                    None => {
                        self.report_loss("the broker cancelled the consumer", cancelling);
                        return;
                    }
                },
            }
        }
    }

    fn report_loss(&self, why: &str, cancelling: bool) {
        if cancelling || self.closing.is_cancelled() {
            return;
        }
        tracing::warn!(reason = %why, "consumer stopped; reconnecting");
        let _ = self.lost.send(self.generation);
    }

    async fn forward(&self, delivery: lapin::message::Delivery) {
        let routing_key = delivery.routing_key.to_string();
        let event = match Event::from_json(&delivery.data) {
            Ok(event) => event,
            Err(error) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    amqp.routing_key = %routing_key,
                    amqp.redelivered = delivery.redelivered,
                    body.len = delivery.data.len(),
                    %error,
                    "dropping an undecodable event"
                );
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                return;
            }
        };
        let incoming = Incoming {
            event,
            routing_key,
            redelivered: delivery.redelivered,
            acker: Some(delivery.acker),
        };
        tokio::select! {
            biased;
            // A cancel while the caller is not reading: `incoming` is dropped, and requeued.
            _ = self.token.cancelled() => {}
            permit = self.tx.reserve() => {
                if let Ok(permit) = permit {
                    permit.send(incoming);
                }
            }
        }
    }
}

/// `basic.consume` with manual acks, after `basic.qos` so the broker hands this consumer at
/// most `prefetch` unacknowledged events.
pub(super) async fn consume_on(
    channel: &Channel,
    queue: &str,
    tag: ShortString,
    prefetch: u16,
) -> Result<lapin::Consumer, BusError> {
    channel
        .basic_qos(prefetch, lapin::options::BasicQosOptions::default())
        .await
        .map_err(BusError::amqp("basic.qos"))?;
    channel
        .basic_consume(
            queue.into(),
            tag,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BusError::amqp("basic.consume"))
}
