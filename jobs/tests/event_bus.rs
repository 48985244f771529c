//! The event bus against the real RabbitMQ (and the outbox against the real Redis). Each test
//! works under its own `test-{uuid}` prefix and deletes its queues, exchange and keys.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use redis::AsyncCommands;
use reprise_jobs::{
    BusConfig, BusError, Event, EventBus, Outbox, Owner, Publisher, QueueType, Sent,
};
use serde_json::json;
use support::amqp::{
    AmqpFixture, Relay, close_connections_matching, rabbitmqctl_available, with_amqp, within,
};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);
/// How long an event that must *not* arrive is given to show up anyway.
const QUIET: Duration = Duration::from_millis(500);

fn interrupted(job_id: &str, service: &str) -> Event {
    Event::job_interrupted(
        job_id,
        service,
        "/demo.v1.UserService/ListUsers",
        3,
        &Owner::new("pod-a", "inst-a"),
    )
    .with_offset(Some("41".to_owned()))
    .with_reason("SIGTERM")
}

/// Publishes a raw body the way a foreign (or broken) publisher would.
async fn publish_raw(f: &AmqpFixture, routing_key: &str, body: &[u8]) -> Result<()> {
    let channel = f.raw.clone();
    channel
        .basic_publish(
            f.names.exchange().into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await?
        .await?;
    Ok(())
}

#[tokio::test]
async fn topology_declared_twice_is_fine() -> Result<()> {
    with_amqp(&["users", "legacy"], |f| async move {
        let bus = f.bus().await?;
        assert_eq!(bus.declare_service("users").await?, QueueType::Quorum);
        assert_eq!(bus.declare_service("users").await?, QueueType::Quorum);
        // Another process (another pod) declares the same names.
        let other = f.bus().await?;
        assert_eq!(other.declare_service("users").await?, QueueType::Quorum);
        other.close().await?;

        // A queue someone made classic before: quorum is refused, classic is used.
        f.raw
            .queue_declare(
                f.names.resume_queue("legacy").into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
        assert_eq!(bus.declare_service("legacy").await?, QueueType::Classic);
        assert_eq!(bus.declare_service("legacy").await?, QueueType::Classic);

        assert!(matches!(
            bus.declare_service("users.*").await,
            Err(BusError::InvalidName { .. })
        ));
        bus.close().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_published_event_is_confirmed_persistent_and_keeps_the_json_contract() -> Result<()> {
    with_amqp(&["users"], |f| async move {
        let bus = f.bus().await?;
        // No declare first: publishing a handoff declares the service's queue itself.
        let event = interrupted("job-1", "users").with_at_ms(1_764_000_000_123);
        bus.publish(&event).await?;

        let message = f
            .raw
            .basic_get(
                f.names.resume_queue("users").into(),
                BasicGetOptions::default(),
            )
            .await?
            .context("the confirmed event is in the queue")?;
        assert_eq!(
            message.delivery.routing_key.as_str(),
            "job.interrupted.users"
        );
        let properties = &message.delivery.properties;
        assert_eq!(*properties.delivery_mode(), Some(2));
        assert_eq!(
            properties.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        let body: serde_json::Value = serde_json::from_slice(&message.delivery.data)?;
        assert_eq!(
            body,
            json!({
                "type": "job.interrupted",
                "version": 1,
                "job_id": "job-1",
                "service": "users",
                "method": "/demo.v1.UserService/ListUsers",
                "offset": "41",
                "fence": 3,
                "pod": "pod-a",
                "instance": "inst-a",
                "reason": "SIGTERM",
                "at_ms": 1_764_000_000_123u64,
            })
        );
        message
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await?;

        // The same way round through the consumer.
        let mut consumer = bus.consume("users", 4).await?;
        let second = interrupted("job-2", "users");
        bus.publish(&second).await?;
        let incoming = within(WAIT, "the event", consumer.recv()).await?;
        assert_eq!(incoming.event, second);
        assert_eq!(incoming.routing_key, "job.interrupted.users");
        assert!(!incoming.redelivered);
        incoming.ack().await?;

        // Informational events go to the exchange without a queue of their own.
        bus.publish(&Event::pod_killed("pod-a", "default")).await?;
        bus.publish(&Event::job_completed(
            "job-2",
            "users",
            "/m",
            3,
            &Owner::new("p", "i"),
        ))
        .await?;

        consumer.cancel().await;
        bus.close().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn consumers_of_one_service_compete() -> Result<()> {
    with_amqp(&["users"], |f| async move {
        let (bus_a, bus_b) = (f.bus().await?, f.bus().await?);
        let mut a = bus_a.consume("users", 4).await?;
        let mut b = bus_b.consume("users", 4).await?;
        let publisher = f.bus().await?;
        let sent: BTreeSet<String> = (0..20).map(|i| format!("job-{i:02}")).collect();
        for id in &sent {
            publisher.publish(&interrupted(id, "users")).await?;
        }

        let mut got_a = Vec::new();
        let mut got_b = Vec::new();
        let deadline = Instant::now() + WAIT;
        while got_a.len() + got_b.len() < sent.len() {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {} events arrived",
                    got_a.len() + got_b.len(),
                    sent.len()
                );
            }
            tokio::select! {
                Some(incoming) = a.recv() => {
                    got_a.push(incoming.event.job_id.clone().unwrap_or_default());
                    incoming.ack().await?;
                }
                Some(incoming) = b.recv() => {
                    got_b.push(incoming.event.job_id.clone().unwrap_or_default());
                    incoming.ack().await?;
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        let all: Vec<&String> = got_a.iter().chain(&got_b).collect();
        let distinct: BTreeSet<String> = all.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            all.len(),
            distinct.len(),
            "an event arrived twice: a={got_a:?} b={got_b:?}"
        );
        assert_eq!(distinct, sent);
        assert!(
            !got_a.is_empty() && !got_b.is_empty(),
            "a={got_a:?} b={got_b:?}"
        );
        for consumer in [&mut a, &mut b] {
            ensure!(
                tokio::time::timeout(QUIET, consumer.recv()).await.is_err(),
                "an extra delivery arrived"
            );
        }
        assert_eq!(f.ready("users").await?, 0);

        a.cancel().await;
        b.cancel().await;
        for bus in [bus_a, bus_b, publisher] {
            bus.close().await?;
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_nack_with_requeue_delivers_the_event_again() -> Result<()> {
    with_amqp(&["users"], |f| async move {
        let bus = f.bus().await?;
        let mut consumer = bus.consume("users", 1).await?;
        let event = interrupted("job-1", "users");
        bus.publish(&event).await?;

        let first = within(WAIT, "the event", consumer.recv()).await?;
        assert!(!first.redelivered);
        first.nack(true).await?;
        let again = within(WAIT, "the redelivery", consumer.recv()).await?;
        assert_eq!(again.event, event);
        assert!(again.redelivered);
        again.ack().await?;

        // Dropped without a decision: back to the queue as well.
        bus.publish(&interrupted("job-2", "users")).await?;
        drop(within(WAIT, "job-2", consumer.recv()).await?);
        let redelivered = within(WAIT, "job-2 again", consumer.recv()).await?;
        assert_eq!(redelivered.event.job_id.as_deref(), Some("job-2"));
        assert!(redelivered.redelivered);
        redelivered.ack().await?;

        consumer.cancel().await;
        bus.close().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn cancel_stops_deliveries_but_in_flight_events_can_still_be_acked() -> Result<()> {
    with_amqp(&["users"], |f| async move {
        let bus = f.bus().await?;
        let mut consumer = bus.consume("users", 4).await?;
        bus.publish(&interrupted("job-1", "users")).await?;
        let in_flight = within(WAIT, "job-1", consumer.recv()).await?;

        // Cancelled from another task while this one waits in recv (the shutdown path).
        let canceller = consumer.canceller();
        let waiting = tokio::spawn(async move {
            let next = consumer.recv().await;
            (consumer, next.map(|incoming| incoming.event.clone()))
        });
        canceller.cancel().await;
        let (mut consumer, next) =
            within(WAIT, "recv to return", async { waiting.await.ok() }).await?;
        assert_eq!(next, None, "recv ends after a cancel");

        bus.publish(&interrupted("job-2", "users")).await?;
        in_flight.ack().await?;
        assert!(
            tokio::time::timeout(QUIET, consumer.recv())
                .await
                .is_ok_and(|n| n.is_none())
        );
        // job-2 waits in the queue for another pod.
        assert_eq!(f.ready("users").await?, 1);

        bus.close().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn undecodable_events_are_dropped_and_counted() -> Result<()> {
    with_amqp(&["users"], |f| async move {
        let bus = f.bus().await?;
        let mut consumer = bus.consume("users", 4).await?;
        for body in [
            &b"not json"[..],
            br#"{"type":"job.exploded","version":1,"job_id":"x","service":"users","at_ms":1}"#,
            br#"{"type":"job.interrupted","version":2,"job_id":"x","service":"users","at_ms":1}"#,
        ] {
            publish_raw(&f, "job.interrupted.users", body).await?;
        }
        let good = interrupted("job-1", "users");
        bus.publish(&good).await?;

        let incoming = within(WAIT, "the good event", consumer.recv()).await?;
        assert_eq!(incoming.event, good);
        incoming.ack().await?;
        assert_eq!(bus.dropped_undecodable(), 3);
        ensure!(
            tokio::time::timeout(QUIET, consumer.recv()).await.is_err(),
            "a dropped event came back"
        );
        assert_eq!(f.ready("users").await?, 0);

        consumer.cancel().await;
        bus.close().await?;
        Ok(())
    })
    .await
}

/// A port nothing listens on: bound, then released.
fn closed_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[tokio::test]
async fn an_unreachable_broker_queues_events_in_the_outbox_until_a_drain() -> Result<()> {
    with_amqp(&["users"], |f| async move {
        let url = format!("amqp://guest:s3cret@127.0.0.1:{}/%2f", closed_port()?);
        let down = EventBus::start(BusConfig::new(&url, &f.prefix))?;
        let error = down.publish(&interrupted("job-0", "users")).await;
        match error {
            Err(BusError::Unavailable { url }) => assert!(!url.contains("s3cret"), "{url}"),
            other => bail!("expected Unavailable, got {other:?}"),
        }
        let connect_error = EventBus::connect(BusConfig::new(&url, &f.prefix))
            .await
            .err()
            .context("connecting to a closed port fails")?;
        assert!(
            !connect_error.to_string().contains("s3cret"),
            "{connect_error}"
        );

        let outbox = Outbox::with_connection(f.redis.clone(), &f.prefix);
        let publisher = Publisher::new(down.clone(), outbox.clone());
        let events: Vec<Event> = (0..5)
            .map(|i| interrupted(&format!("job-{i}"), "users"))
            .collect();
        for event in &events {
            assert_eq!(publisher.publish(event).await?, Sent::Queued);
        }
        let raw: Vec<String> = f.redis.clone().lrange(f.keys.outbox(), 0, -1).await?;
        let expected: Vec<String> = events
            .iter()
            .map(|e| String::from_utf8(e.to_json()))
            .collect::<Result<_, _>>()?;
        assert_eq!(
            raw, expected,
            "the outbox is a list of event JSON, oldest first"
        );

        let bus = f.bus().await?;
        let mut consumer = bus.consume("users", 8).await?;
        assert_eq!(outbox.drain(&bus).await?, 5);
        assert!(outbox.is_empty().await?);
        for event in &events {
            let incoming = within(WAIT, "a drained event", consumer.recv()).await?;
            assert_eq!(&incoming.event, event, "drained in order");
            incoming.ack().await?;
        }
        assert_eq!(outbox.drain(&bus).await?, 0);

        // With the broker there, the publisher publishes.
        let live = Publisher::new(bus.clone(), outbox.clone());
        assert_eq!(
            live.publish(&interrupted("job-9", "users")).await?,
            Sent::Published
        );
        within(WAIT, "job-9", consumer.recv()).await?.ack().await?;

        consumer.cancel().await;
        down.close().await?;
        bus.close().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn the_drainer_publishes_what_waits_once_the_bus_connects() -> Result<()> {
    with_amqp(&["users"], |f| async move {
        let outbox = Outbox::with_connection(f.redis.clone(), &f.prefix);
        let waiting = interrupted("job-1", "users");
        outbox.push(&waiting).await?;
        // An entry no build can publish is moved aside instead of blocking the rest.
        let _: () = f
            .redis
            .clone()
            .rpush(f.keys.outbox(), r#"{"type":"job.exploded","version":1}"#)
            .await?;
        let after = interrupted("job-2", "users");
        outbox.push(&after).await?;

        let observer = f.bus().await?;
        let mut consumer = observer.consume("users", 4).await?;
        // Started, not connected: the drainer waits for the connection.
        let bus = EventBus::start(f.config())?;
        let cancel = CancellationToken::new();
        let drainer =
            tokio::spawn(Publisher::new(bus.clone(), outbox.clone()).run_drainer(cancel.clone()));

        for expected in [&waiting, &after] {
            let incoming = within(WAIT, "a drained event", consumer.recv()).await?;
            assert_eq!(&incoming.event, expected);
            incoming.ack().await?;
        }
        support::wait_for("the outbox to empty", WAIT, || async {
            Ok(outbox.is_empty().await?)
        })
        .await?;
        let dead: Vec<String> = f.redis.clone().lrange(f.keys.outbox_dead(), 0, -1).await?;
        assert_eq!(
            dead,
            vec![r#"{"type":"job.exploded","version":1}"#.to_owned()]
        );

        cancel.cancel();
        drainer.await?;
        consumer.cancel().await;
        for bus in [bus, observer] {
            bus.close().await?;
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn the_bus_reconnects_after_the_broker_closes_its_connection() -> Result<()> {
    if !rabbitmqctl_available() {
        eprintln!("skipped: rabbitmqctl is not available here");
        return Ok(());
    }
    with_amqp(&["users"], |f| async move {
        let bus = f.bus().await?;
        let mut consumer = bus.consume("users", 4).await?;
        bus.publish(&interrupted("job-1", "users")).await?;
        within(WAIT, "job-1", consumer.recv()).await?.ack().await?;

        let marker = f.prefix.clone();
        let closed =
            tokio::task::spawn_blocking(move || close_connections_matching(&marker)).await??;
        assert_eq!(closed, 1, "the bus's connection, found by its name");

        support::wait_for("a reconnection", WAIT, || async {
            Ok(bus.reconnects() >= 1)
        })
        .await?;
        bus.wait_connected(WAIT).await?;
        bus.publish(&interrupted("job-2", "users")).await?;
        let incoming = within(WAIT, "job-2 on the same receiver", consumer.recv()).await?;
        assert_eq!(incoming.event.job_id.as_deref(), Some("job-2"));
        incoming.ack().await?;

        consumer.cancel().await;
        bus.close().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_wrong_password_fails_connect_without_showing_it() -> Result<()> {
    let url = support::amqp::amqp_url();
    let Some((head, rest)) = url.split_once('@') else {
        return Ok(());
    };
    let user = head.rsplit_once(':').map_or(head, |(user, _)| user);
    let wrong = format!("{user}:n0t-the-pa55word@{rest}");
    let error = EventBus::connect(BusConfig::new(&wrong, "test-wrong-password"))
        .await
        .err()
        .context("a wrong password is refused")?;
    assert!(matches!(error, BusError::Connect { .. }), "{error:?}");
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("n0t-the-pa55word"), "{shown}");
    Ok(())
}

#[tokio::test]
async fn a_closed_bus_refuses_work() -> Result<()> {
    with_amqp(&[], |f| async move {
        let bus = f.bus().await?;
        assert!(bus.is_connected());
        bus.close().await?;
        assert!(!bus.is_connected());
        assert!(matches!(
            bus.publish(&interrupted("job-1", "users")).await,
            Err(BusError::Closed)
        ));
        assert!(matches!(
            bus.consume("users", 1).await,
            Err(BusError::Closed)
        ));
        assert!(bus.close().await.is_ok(), "closing twice is fine");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_cut_connection_fails_publishes_fast_then_reconnects_on_the_same_receiver() -> Result<()>
{
    with_amqp(&["users"], |f| async move {
        let relay = Relay::start(0).await?;
        let config = BusConfig::new(relay.url(), &f.prefix);
        let bus = EventBus::connect(config).await?;
        let mut consumer = bus.consume("users", 4).await?;
        bus.publish(&interrupted("job-1", "users")).await?;
        let unacked = within(WAIT, "job-1", consumer.recv()).await?;

        let port = relay.port;
        relay.cut();
        support::wait_for("the bus to notice", WAIT, || async {
            Ok(!bus.is_connected())
        })
        .await?;
        let started = Instant::now();
        let refused = bus.publish(&interrupted("job-2", "users")).await;
        assert!(
            matches!(refused, Err(BusError::Unavailable { .. })),
            "{refused:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "fails fast, not after a confirm timeout"
        );

        // The broker is back on the same address.
        let relay = Relay::start(port).await?;
        bus.wait_connected(WAIT).await?;
        assert_eq!(bus.reconnects(), 1);
        // Its channel died with the connection: the broker put job-1 back, to us again.
        assert!(matches!(unacked.ack().await, Err(BusError::StaleDelivery)));
        let again = within(WAIT, "job-1 redelivered", consumer.recv()).await?;
        assert_eq!(again.event.job_id.as_deref(), Some("job-1"));
        assert!(again.redelivered);
        again.ack().await?;
        bus.publish(&interrupted("job-3", "users")).await?;
        let next = within(WAIT, "job-3", consumer.recv()).await?;
        assert_eq!(next.event.job_id.as_deref(), Some("job-3"));
        next.ack().await?;

        consumer.cancel().await;
        bus.close().await?;
        drop(relay);
        Ok(())
    })
    .await
}
