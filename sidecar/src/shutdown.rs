//! The ordered shutdown on SIGTERM, one step at a time so the order is visible in the log:
//!
//! 1. not ready; accept no new streams (listener closed, GOAWAY to the app's connections);
//!    a drain period lets streams that are about to end finish;
//! 2. cancel the RabbitMQ consumer, so a leaving pod takes no handoffs (not even its own);
//! 3. interrupt every stream through one cancellation token: each checkpoints its final
//!    offset, marks its job `interrupted`, publishes its event (confirmed, or in the outbox) and
//!    ends its app call with a status after the messages it already forwarded;
//! 4. wait for them (the task tracker), then for the app connections to flush;
//! 5. close the AMQP channel and connection, then Redis.
//!
//! All of it is bounded by `shutdown_timeout`; a second SIGTERM/SIGINT or the deadline exits
//! at once, and leases (plus the recoverer) pick up whatever was left.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{events::Events, metrics::Health, store::Store};

/// The ordered shutdown (steps above), holding what each step stops.
pub struct Shutdown {
    /// Step 1 turns `/readyz` to not-ready.
    pub health: Arc<Health>,
    /// Step 1: stops the listener and sends GOAWAY; new resumable calls are refused.
    pub accept: CancellationToken,
    /// Step 1: how long streams about to end may finish before step 3.
    pub drain_period: Duration,
    /// Step 2: cancels the handoff consumer.
    pub consumer: CancellationToken,
    /// Step 3: interrupts every stream.
    pub interrupt: CancellationToken,
    /// Step 4: every stream task, waited for.
    pub streams: TaskTracker,
    /// Step 4: every app connection, flushed.
    pub connections: TaskTracker,
    /// Step 4: the final states Redis has not taken yet are waited for.
    pub store: Arc<Store>,
    /// Step 5: the AMQP channel and connection, closed.
    pub events: Arc<Events>,
    /// Step 5 (last): checkpointer, Redis probe, admin endpoint.
    pub background: CancellationToken,
    /// `shutdown_timeout`: the bound on all of it.
    pub timeout: Duration,
}

/// How the shutdown ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    Clean,
    Deadline,
    SecondSignal,
}

impl Shutdown {
    pub async fn run(self) -> Ending {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let ending = tokio::select! {
            _ = self.steps() => Ending::Clean,
            _ = tokio::time::sleep_until(deadline) => Ending::Deadline,
            _ = second_signal() => Ending::SecondSignal,
        };
        match ending {
            Ending::Clean => tracing::info!("shutdown: complete"),
            Ending::Deadline => tracing::warn!(
                timeout = %humantime::format_duration(self.timeout),
                streams = self.streams.len(),
                "shutdown: deadline passed; exiting now (leases and the recoverer take over what is left)"
            ),
            Ending::SecondSignal => tracing::warn!(
                streams = self.streams.len(),
                "shutdown: second signal; exiting now (leases and the recoverer take over what is left)"
            ),
        }
        self.background.cancel();
        ending
    }

    async fn steps(&self) {
        tracing::info!("shutdown 1/5: not ready; accepting no new streams");
        self.health.draining.store(true, Ordering::Relaxed);
        self.accept.cancel();
        self.streams.close();
        self.connections.close();
        if !self.drain_period.is_zero() && !self.streams.is_empty() {
            tracing::info!(
                streams = self.streams.len(),
                drain_period = %humantime::format_duration(self.drain_period),
                "shutdown: drain period, letting streams that are about to end finish"
            );
            let _ = tokio::time::timeout(self.drain_period, self.streams.wait()).await;
        }

        tracing::info!("shutdown 2/5: handoff consumer cancelled; this pod takes no more jobs");
        self.consumer.cancel();
        self.events.cancel_consumer().await;

        tracing::info!(
            streams = self.streams.len(),
            "shutdown 3/5: interrupting streams (checkpoint, mark interrupted, publish, end the app's call)"
        );
        self.interrupt.cancel();
        self.streams.wait().await;

        tracing::info!(
            "shutdown 4/5: every stream interrupted and handed off; flushing app connections"
        );
        self.connections.wait().await;
        self.wait_for_final_states().await;

        tracing::info!("shutdown 5/5: closing the AMQP channel and connection, then Redis");
        self.events.close().await;
        self.background.cancel();
    }
}

impl Shutdown {
    /// A job whose final state Redis did not take (it was down when the stream ended) would be
    /// left `running` under this instance, and the next claim would not know where it stands:
    /// wait for Redis to take them (the checkpoint ticks write them as soon as it answers),
    /// within the shutdown deadline. The soak's finding 15.
    async fn wait_for_final_states(&self) {
        let pending = self.store.pending_len();
        if pending == 0 {
            return;
        }
        tracing::warn!(
            pending,
            "shutdown: redis has not taken the final state of some jobs; waiting for it (within shutdown_timeout)"
        );
        while self.store.pending_len() > 0 {
            if self.store.redis_ready() {
                self.store.write_pending().await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::info!(pending, "shutdown: redis took every final state");
    }
}

/// The first SIGTERM/SIGINT starts the shutdown.
pub async fn first_signal() -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("shutdown: SIGTERM received"),
        _ = int.recv() => tracing::info!("shutdown: SIGINT received"),
    }
    Ok(())
}

async fn second_signal() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
