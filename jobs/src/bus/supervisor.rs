//! The task that keeps the bus connected: connect, watch, and on loss reconnect with backoff.
//!
//! A loss is noticed three ways, whichever comes first: lapin reports an error event and the
//! connection is no longer up; a publisher or consumer task reports its channel failed; or the connection status,
//! checked every [`STATUS_POLL`], is no longer connected (a broker-initiated close, e.g.
//! `rabbitmqctl close_connection`, only shows there). A connection that hangs without closing
//! is found by AMQP heartbeats (`?heartbeat=N` in the URL; RabbitMQ proposes 60 s).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;

use super::shared::{Live, Shared, lock, write};

const STATUS_POLL: Duration = Duration::from_millis(250);
/// How long a dead connection gets to close politely before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

pub(super) async fn run(
    shared: Arc<Shared>,
    mut lost: mpsc::UnboundedReceiver<u64>,
    mut live: Option<Live>,
) {
    let mut backoff = Backoff::new(shared.config.min_backoff, shared.config.max_backoff);
    let mut attempt: u32 = 0;
    loop {
        let current = match live.take() {
            Some(current) => current,
            None => {
                attempt += 1;
                let opened = tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    opened = shared.open_connection() => opened,
                };
                match opened {
                    Ok(current) => current,
                    Err(error) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(
                            attempt,
                            retry_in_ms = delay.as_millis() as u64,
                            %error,
                            "cannot connect to RabbitMQ"
                        );
                        if sleep_or_shutdown(&shared, delay).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        let complete = install(&shared, &current).await;
        if current.generation > 1 {
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(attempt, "reconnected to RabbitMQ");
        }
        attempt = 0;
        // A consumer that cannot be re-opened makes the connection count as failed, and
        // the delays keep growing rather than reconnecting every 100 ms.
        if complete {
            backoff.reset();
        }
        let reason = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            reason = wait_for_loss(&current, &mut lost) => reason,
        };
        tracing::warn!(%reason, "lost the RabbitMQ connection; reconnecting");
        uninstall(&shared, current).await;
        if sleep_or_shutdown(&shared, backoff.next_delay()).await {
            return;
        }
    }
}

/// Makes `live` the bus's connection and re-opens the consumers on it. The connection is
/// published before the consumers are listed, so a consumer registered meanwhile is opened by
/// either its caller or this loop (and by both at worst, which the consumer ignores).
async fn install(shared: &Arc<Shared>, live: &Live) -> bool {
    *write(&shared.live) = Some(live.clone());
    let consumers = {
        let mut consumers = lock(&shared.consumers);
        // Cancelled ones only stayed listed for their channel, which died with the connection.
        consumers.retain(|c| !c.is_cancelled());
        consumers.clone()
    };
    for consumer in consumers {
        if let Err(error) = shared.open_consumer(&consumer, live).await {
            tracing::warn!(service = %consumer.service, %error, "cannot re-open the consumer");
            let _ = shared.lost.send(live.generation);
            return false;
        }
    }
    shared.connected.send_replace(true);
    true
}

async fn uninstall(shared: &Shared, live: Live) {
    shared.connected.send_replace(false);
    {
        let mut current = write(&shared.live);
        if current.as_ref().map(|l| l.generation) == Some(live.generation) {
            *current = None;
        }
    }
    // Lost because a channel failed while the connection lives on: close it, or it lingers.
    if live.connection.status().connected() {
        let close = live.connection.close(320, "reconnecting".into());
        let _ = tokio::time::timeout(CLOSE_GRACE, close).await;
    }
}

async fn wait_for_loss(live: &Live, lost: &mut mpsc::UnboundedReceiver<u64>) -> String {
    let mut events = live.connection.events_listener();
    let mut events_open = true;
    let mut poll = tokio::time::interval(STATUS_POLL);
    loop {
        tokio::select! {
            generation = lost.recv() => match generation {
                Some(g) if g == live.generation => return "a channel failed".to_owned(),
                // A report about an earlier connection.
                Some(_) => {}
                None => return "the bus is gone".to_owned(),
            },
            event = events.next(), if events_open => match event {
                // Channel errors (a refused declaration) are reported here too, while the
                // connection lives on: those belong to the operation that caused them.
                Some(lapin::Event::Error(error)) if !live.connection.status().connected() => {
                    return error.to_string();
                }
                Some(_) => {}
                None => events_open = false,
            },
            _ = poll.tick() => {
                if !live.connection.status().connected() {
                    return "the connection was closed".to_owned();
                }
            }
        }
    }
}

/// True if the bus is shutting down.
async fn sleep_or_shutdown(shared: &Shared, delay: Duration) -> bool {
    tokio::select! {
        _ = shared.shutdown.cancelled() => true,
        _ = tokio::time::sleep(delay) => false,
    }
}

/// Exponential backoff with up to 25% added jitter, so the sidecars of a whole cluster do not
/// reconnect in lockstep after a broker restart.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    fn next_delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = (nominal * 2).min(self.max);
        nominal
            .mul_f64(1.0 + rand::random_range(0.0..0.25))
            .min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(5000));
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        for (delay, nominal) in delays
            .iter()
            .zip([100, 200, 400, 800, 1600, 3200, 5000, 5000])
        {
            assert!(*delay >= ms(nominal) && *delay <= ms(nominal * 5 / 4).min(ms(5000)));
        }
        assert_eq!(delays[9], ms(5000));
        backoff.reset();
        assert!(backoff.next_delay() < ms(126));
    }
}
