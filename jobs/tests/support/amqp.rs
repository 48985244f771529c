//! The real RabbitMQ (and Redis) for the event-bus tests: a throw-away name prefix, a raw
//! lapin channel to look at queues the way an operator would, and cleanup of both.

use std::future::Future;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use lapin::options::{
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use redis::aio::ConnectionManager;
use reprise_jobs::{BusConfig, BusNames, EventBus, Keys};

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// What an event-bus test gets. Its services' queues, the exchange and the Redis keys under
/// `prefix` are deleted afterwards, whatever the outcome.
pub struct AmqpFixture {
    pub prefix: String,
    pub names: BusNames,
    pub keys: Keys,
    /// Our own connection, outside the code under test.
    pub raw: Channel,
    pub redis: ConnectionManager,
}

impl AmqpFixture {
    /// A bus config under this test's prefix; its connection name carries the prefix so
    /// `rabbitmqctl` can find it.
    pub fn config(&self) -> BusConfig {
        BusConfig::new(amqp_url(), &self.prefix)
            .with_connection_name(format!("reprise-test {}", self.prefix))
    }

    pub async fn bus(&self) -> Result<EventBus> {
        Ok(EventBus::connect(self.config()).await?)
    }

    /// Ready messages in `service`'s queue (unacked ones not counted).
    pub async fn ready(&self, service: &str) -> Result<u32> {
        let queue = self
            .raw
            .queue_declare(
                self.names.resume_queue(service).into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(queue.message_count())
    }
}

pub async fn with_amqp<F, Fut>(services: &[&str], test: F) -> Result<()>
where
    F: FnOnce(AmqpFixture) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let prefix = format!("test-{}", uuid::Uuid::new_v4());
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .context("RabbitMQ must run at AMQP_URL")?;
    let raw = connection.create_channel().await?;
    // Confirms, so that a raw publish has reached its queues when it returns: a test that
    // publishes raw messages and then an event through the bus (another channel) may rely on
    // their order in the queue.
    raw.confirm_select(ConfirmSelectOptions::default()).await?;
    let redis_client = redis::Client::open(super::redis_url())?;
    let redis = ConnectionManager::new(redis_client).await?;
    let fixture = AmqpFixture {
        prefix: prefix.clone(),
        names: BusNames::new(&prefix),
        keys: Keys::new(&prefix),
        raw: raw.clone(),
        redis: redis.clone(),
    };
    let outcome = tokio::spawn(test(fixture)).await;

    // A passive declare that failed closed `raw`; clean up on a fresh channel.
    let cleanup = connection.create_channel().await?;
    let names = BusNames::new(&prefix);
    for service in services {
        cleanup
            .queue_delete(
                names.resume_queue(service).into(),
                QueueDeleteOptions::default(),
            )
            .await?;
    }
    cleanup
        .exchange_delete(names.exchange().into(), ExchangeDeleteOptions::default())
        .await?;
    connection.close(200, "OK".into()).await?;
    let mut redis_raw = redis::Client::open(super::redis_url())?
        .get_multiplexed_async_connection()
        .await?;
    super::delete_prefix(&mut redis_raw, &prefix).await?;
    match outcome {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(e.into()),
    }
}

/// `rabbitmqctl`, if this machine has it (the broker-side fault tests need it).
pub fn rabbitmqctl_available() -> bool {
    Command::new("rabbitmqctl")
        .arg("-q")
        .arg("list_connections")
        .arg("pid")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Closes, from the broker's side, every connection whose client properties mention
/// `marker`; returns how many. `rabbitmqctl` is a short-lived Erlang node: each call ~0.5 s.
pub fn close_connections_matching(marker: &str) -> Result<usize> {
    let listing = Command::new("rabbitmqctl")
        .args([
            "-q",
            "--no-table-headers",
            "list_connections",
            "pid",
            "client_properties",
        ])
        .output()
        .context("running rabbitmqctl")?;
    if !listing.status.success() {
        bail!(
            "rabbitmqctl list_connections: {}",
            String::from_utf8_lossy(&listing.stderr)
        );
    }
    let text = String::from_utf8_lossy(&listing.stdout);
    let mut closed = 0;
    for line in text.lines().filter(|line| line.contains(marker)) {
        let Some(pid) = line.split_whitespace().next() else {
            continue;
        };
        let status = Command::new("rabbitmqctl")
            .args([
                "-q",
                "close_connection",
                pid,
                "reprise test: simulated connection loss",
            ])
            .status()
            .context("running rabbitmqctl close_connection")?;
        if status.success() {
            closed += 1;
        }
    }
    Ok(closed)
}

/// Waits for `rx` to produce something, failing after `within`.
pub async fn within<T>(
    within: Duration,
    what: &str,
    fut: impl Future<Output = Option<T>>,
) -> Result<T> {
    match tokio::time::timeout(within, fut).await {
        Ok(Some(value)) => Ok(value),
        Ok(None) => bail!("{what}: the stream ended"),
        Err(_) => bail!("timed out after {within:?} waiting for {what}"),
    }
}

/// A TCP relay in front of the broker, so a test can cut every socket (a network failure, or a
/// broker that died) and bring the path back on the same port (the broker restarted).
pub struct Relay {
    pub port: u16,
    target: String,
    stop: tokio_util::sync::CancellationToken,
}

impl Relay {
    /// Listens on `port` (0: any free one) and relays to the broker of `AMQP_URL`.
    pub async fn start(port: u16) -> Result<Self> {
        let uri: lapin::uri::AMQPUri = amqp_url().parse().map_err(anyhow::Error::msg)?;
        let target = format!("{}:{}", uri.authority.host, uri.authority.port);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let port = listener.local_addr()?.port();
        let stop = tokio_util::sync::CancellationToken::new();
        let relay = Self {
            port,
            target: target.clone(),
            stop: stop.clone(),
        };
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut client, _)) = accepted else {
                    continue;
                };
                let stop = stop.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut broker) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut broker) => {}
                    }
                });
            }
        });
        Ok(relay)
    }

    /// `amqp://…` through this relay, with the credentials and vhost of `AMQP_URL`.
    pub fn url(&self) -> String {
        let url = amqp_url();
        let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", &url));
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let userinfo = authority
            .rsplit_once('@')
            .map(|(userinfo, _)| format!("{userinfo}@"))
            .unwrap_or_default();
        format!("{scheme}://{userinfo}127.0.0.1:{}{path}", self.port)
    }

    /// Closes the listener and every relayed socket.
    pub fn cut(&self) {
        self.stop.cancel();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
