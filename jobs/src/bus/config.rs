//! How the bus reaches RabbitMQ, and its timings.

use std::fmt;
use std::time::Duration;

use crate::redact_url;

/// How to reach RabbitMQ and what to call things there.
#[derive(Clone)]
pub struct BusConfig {
    /// `amqp://user:pass@host:5672/%2f`; query parameters such as `heartbeat=10` (seconds)
    /// are passed to the broker. `amqps://` needs a TLS feature this build leaves out.
    pub url: String,
    /// Name prefix: `{prefix}.events`, `{prefix}.{service}.resume`.
    pub prefix: String,
    /// Shown by `rabbitmqctl list_connections` (client property `connection_name`).
    pub connection_name: String,
    /// A TCP connect plus AMQP handshake that takes longer than this counts as failed.
    pub connect_timeout: Duration,
    /// [`EventBus::publish`](crate::EventBus::publish) fails with
    /// [`BusError::ConfirmTimeout`](crate::BusError::ConfirmTimeout) after this long.
    pub confirm_timeout: Duration,
    /// First reconnection delay; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl BusConfig {
    /// Checks `url` as [`EventBus::start`](crate::EventBus::start) will parse it, without any
    /// I/O, so a binary can refuse a bad URL while it validates its configuration. The error is
    /// the problem alone, the password masked (as [`RedisStore::check_url`](crate::RedisStore::check_url)).
    pub fn check_url(url: &str) -> Result<(), String> {
        super::shared::parse_url(url)
            .map(drop)
            .map_err(|e| match e {
                super::BusError::InvalidUrl { problem, .. } => problem,
                other => other.to_string(),
            })
    }

    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        Self {
            url: url.into(),
            connection_name: format!("reprise {prefix}"),
            prefix,
            connect_timeout: Duration::from_secs(5),
            confirm_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }

    pub fn with_connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }
}

impl fmt::Debug for BusConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusConfig")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("connection_name", &self.connection_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}
