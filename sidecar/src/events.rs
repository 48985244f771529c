//! Handoff events on RabbitMQ: what a stream tells the other pods of its service when it is
//! interrupted or completed, and the queue through which a `resume: deliver` sidecar takes jobs
//! over (its consume loop is [`crate::handoff::consumer`]).
//!
//! Redis is the truth; events only make takeovers fast. An event the broker cannot take goes to
//! the Redis outbox and is published once the broker is back. Without `amqp_url` nothing is
//! published and nothing is consumed.

use std::{sync::Mutex, time::Duration};

use reprise_jobs::{
    BusConfig, BusError, Consumer, ConsumerCanceller, Event, EventBus, EventKind, Outbox, Owner,
    Publisher, RedisStore, Sent, redact_url as redact,
};
use tokio_util::sync::CancellationToken;

/// The job fields an event carries.
pub struct JobEvent<'a> {
    pub job_id: &'a str,
    pub method: &'a str,
    pub offset: Option<&'a str>,
    pub fence: u64,
}

/// The pod's voice on RabbitMQ: `job.interrupted` on a handoff (confirmed by the broker or kept
/// in the Redis outbox), `job.completed` for information, and the resume queue a `deliver`
/// sidecar consumes. Disabled without `amqp_url`.
pub struct Events {
    service: String,
    owner: Owner,
    bus: Option<(EventBus, Publisher)>,
    canceller: Mutex<Option<ConsumerCanceller>>,
}

impl Events {
    /// No broker: events are not published.
    pub fn disabled(service: &str, owner: &Owner) -> Events {
        Events {
            service: service.to_owned(),
            owner: owner.clone(),
            bus: None,
            canceller: Mutex::new(None),
        }
    }

    /// Starts the bus (it connects, and reconnects, in the background) with the Redis outbox.
    pub fn start(
        url: &str,
        prefix: &str,
        service: &str,
        owner: &Owner,
        redis: &RedisStore,
    ) -> Result<Events, String> {
        let config = BusConfig::new(url, prefix)
            .with_connection_name(format!("reprise-sidecar {}/{}", owner.pod, owner.instance));
        let bus = EventBus::start(config)
            .map_err(|e| format!("key `amqp_url` ({}): {e}", redact(url)))?;
        let publisher = Publisher::new(bus.clone(), Outbox::new(redis));
        // Declare the service's queue up front, so the first handoff published during a
        // shutdown does not pay for it (and events wait in it before any consumer runs).
        let (declarer, service_name) = (bus.clone(), service.to_owned());
        tokio::spawn(async move {
            if declarer
                .wait_connected(Duration::from_secs(60))
                .await
                .is_ok()
                && let Err(e) = declarer.declare_service(&service_name).await
            {
                tracing::warn!(error = %e, "cannot declare the service's resume queue yet");
            }
        });
        Ok(Events {
            service: service.to_owned(),
            owner: owner.clone(),
            bus: Some((bus, publisher)),
            canceller: Mutex::new(None),
        })
    }

    /// Publishes the outbox's events whenever the broker is reachable, until `cancel`.
    pub fn spawn_drainer(&self, cancel: CancellationToken) {
        if let Some((_, publisher)) = &self.bus {
            tokio::spawn(publisher.clone().run_drainer(cancel));
        }
    }

    fn event(&self, kind: EventKind, job: &JobEvent<'_>, reason: &str) -> Event {
        let (id, service, method, fence) =
            (job.job_id, self.service.as_str(), job.method, job.fence);
        match kind {
            EventKind::JobCompleted => {
                Event::job_completed(id, service, method, fence, &self.owner)
            }
            _ => Event::job_interrupted(id, service, method, fence, &self.owner),
        }
        .with_offset(job.offset.map(str::to_owned))
        .with_reason(reason)
    }

    /// `job.interrupted.{service}`; returns once the broker confirmed it or it is in the outbox.
    pub async fn interrupted(&self, job: &JobEvent<'_>, reason: &str) {
        let Some((_, publisher)) = &self.bus else {
            return;
        };
        let event = self.event(EventKind::JobInterrupted, job, reason);
        match publisher.publish(&event).await {
            Ok(Sent::Published) => {
                tracing::info!(job.id = job.job_id, "published job.interrupted (confirmed)");
            }
            Ok(Sent::Queued) => {
                tracing::warn!(
                    job.id = job.job_id,
                    "broker unreachable: job.interrupted is in the outbox"
                );
            }
            Err(e) => tracing::error!(
                job.id = job.job_id,
                error = %e,
                "job.interrupted neither published nor queued; the job waits in Redis for a request or the recoverer"
            ),
        }
    }

    /// `job.completed.{service}`, published in the background (informational).
    pub fn completed(&self, job: &JobEvent<'_>) {
        let Some((_, publisher)) = &self.bus else {
            return;
        };
        let event = self.event(EventKind::JobCompleted, job, "completed");
        let publisher = publisher.clone();
        tokio::spawn(async move {
            if let Err(e) = publisher.publish(&event).await {
                tracing::debug!(error = %e, "job.completed not published");
            }
        });
    }

    /// Shutdown step 2: stop taking handoffs.
    pub async fn cancel_consumer(&self) {
        let canceller = self.canceller.lock().ok().and_then(|mut c| c.take());
        if let Some(c) = canceller {
            c.cancel().await;
        }
    }

    /// Shutdown step 5: close the channel, then the connection.
    pub async fn close(&self) {
        if let Some((bus, _)) = &self.bus
            && let Err(e) = bus.close().await
        {
            tracing::warn!(error = %e, "closing the AMQP connection");
        }
    }

    /// Starts consuming the service's resume queue with `prefetch` unacknowledged events
    /// (`None` without a broker). Shutdown step 2 ([`Events::cancel_consumer`]) cancels it.
    pub async fn consume_queue(&self, prefetch: u16) -> Option<Result<Consumer, BusError>> {
        let (bus, _) = self.bus.as_ref()?;
        let consumer = bus.consume(&self.service, prefetch).await;
        if let (Ok(c), Ok(mut canceller)) = (&consumer, self.canceller.lock()) {
            *canceller = Some(c.canceller());
        }
        Some(consumer)
    }

    /// The service whose queue this pod consumes.
    pub fn service(&self) -> &str {
        &self.service
    }
}
