//! The state every handle of one bus shares: the current connection (if any), the consumers
//! to re-open, and the operations the public API and the supervisor have in common.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Channel, Connection};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::consumer::{self, ConsumerShared};
use super::{BusConfig, BusError, BusNames, QueueType, credentials, topology};
use crate::redact_url;

/// One established connection, replaced as a whole on reconnection.
#[derive(Clone)]
pub(super) struct Live {
    pub(super) generation: u64,
    pub(super) connection: Arc<Connection>,
    pub(super) publish: Channel,
    /// Service queues declared on this connection (declared again on the next one, in case the
    /// broker came back without them).
    pub(super) declared: Arc<Mutex<HashMap<String, QueueType>>>,
}

pub(super) struct Shared {
    /// Without the password when `auth` carries it.
    pub(super) uri: AMQPUri,
    pub(super) auth: Option<credentials::PlainAuth>,
    /// The URL with its password masked, for every log line and error.
    pub(super) url: String,
    pub(super) config: BusConfig,
    pub(super) names: BusNames,
    pub(super) live: RwLock<Option<Live>>,
    pub(super) connected: watch::Sender<bool>,
    pub(super) consumers: Mutex<Vec<Arc<ConsumerShared>>>,
    /// Tasks report a failed connection here, tagged with its generation.
    pub(super) lost: mpsc::UnboundedSender<u64>,
    pub(super) shutdown: CancellationToken,
    pub(super) generation: AtomicU64,
    pub(super) dropped: Arc<AtomicU64>,
    pub(super) reconnects: AtomicU64,
    pub(super) supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    pub(super) fn new(
        config: BusConfig,
    ) -> Result<(Arc<Self>, mpsc::UnboundedReceiver<u64>), BusError> {
        let url = redact_url(&config.url);
        let mut uri = parse_url(&config.url)?;
        let auth = credentials::take_password(&mut uri);
        let (lost, lost_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Self {
            uri,
            auth,
            url,
            names: BusNames::new(&config.prefix),
            config,
            live: RwLock::new(None),
            connected: watch::Sender::new(false),
            consumers: Mutex::new(Vec::new()),
            lost,
            shutdown: CancellationToken::new(),
            generation: AtomicU64::new(0),
            dropped: Arc::new(AtomicU64::new(0)),
            reconnects: AtomicU64::new(0),
            supervisor: Mutex::new(None),
        });
        Ok((shared, lost_rx))
    }

    pub(super) fn current(&self) -> Option<Live> {
        read(&self.live).clone()
    }

    pub(super) fn unavailable(&self) -> BusError {
        if self.shutdown.is_cancelled() {
            return BusError::Closed;
        }
        BusError::Unavailable {
            url: self.url.clone(),
        }
    }

    /// A failed operation on `live`: if its connection is gone, say so (the caller may queue
    /// the event) and have the supervisor reconnect; if only the channel died (e.g. someone
    /// deleted the exchange), reconnecting rebuilds it too.
    pub(super) fn failed(&self, live: &Live, op: &'static str, source: lapin::Error) -> BusError {
        let _ = self.lost.send(live.generation);
        if live.connection.status().connected() {
            BusError::Amqp { op, source }
        } else {
            self.unavailable()
        }
    }

    /// Connection, publishing channel in confirm mode, exchange. Bounded by `connect_timeout`.
    pub(super) async fn open_connection(&self) -> Result<Live, BusError> {
        let mut properties = lapin::ConnectionProperties::default()
            .with_connection_name(self.config.connection_name.as_str().into());
        if let Some(auth) = &self.auth {
            properties = properties.with_auth_provider(auth.clone());
        }
        let open = async {
            let connection = Connection::connect_uri(self.uri.clone(), properties)
                .await
                .map_err(BusError::amqp("connect"))?;
            let publish = connection
                .create_channel()
                .await
                .map_err(BusError::amqp("channel.open"))?;
            publish
                .confirm_select(lapin::options::ConfirmSelectOptions::default())
                .await
                .map_err(BusError::amqp("confirm.select"))?;
            topology::declare_exchange(&publish, &self.names)
                .await
                .map_err(BusError::amqp("exchange.declare"))?;
            Ok(Live {
                generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
                connection: Arc::new(connection),
                publish,
                declared: Arc::default(),
            })
        };
        tokio::time::timeout(self.config.connect_timeout, open)
            .await
            .unwrap_or_else(|_| Err(self.unavailable()))
    }

    pub(super) async fn ensure_service(
        &self,
        live: &Live,
        service: &str,
    ) -> Result<QueueType, BusError> {
        if let Some(kind) = lock(&live.declared).get(service) {
            return Ok(*kind);
        }
        let kind = topology::declare_service(&live.connection, &self.names, service)
            .await
            .map_err(|source| self.failed_declare(live, source))?;
        lock(&live.declared).insert(service.to_owned(), kind);
        Ok(kind)
    }

    pub(super) fn failed_declare(&self, live: &Live, source: lapin::Error) -> BusError {
        if live.connection.status().connected() {
            BusError::Amqp {
                op: "queue.declare",
                source,
            }
        } else {
            let _ = self.lost.send(live.generation);
            self.unavailable()
        }
    }

    pub(super) async fn open_consumer(
        self: &Arc<Self>,
        consumer: &Arc<ConsumerShared>,
        live: &Live,
    ) -> Result<(), BusError> {
        consumer
            .open_on(self, live.generation, |tag| async move {
                self.ensure_service(live, &consumer.service).await?;
                let channel = live
                    .connection
                    .create_channel()
                    .await
                    .map_err(BusError::amqp("channel.open"))?;
                let queue = self.names.resume_queue(&consumer.service);
                let deliveries =
                    consumer::consume_on(&channel, &queue, tag, consumer.prefetch).await?;
                Ok((channel, deliveries))
            })
            .await
    }

    pub(super) fn forget_consumer(&self, consumer: &Arc<ConsumerShared>) {
        lock(&self.consumers).retain(|c| !Arc::ptr_eq(c, consumer));
    }
}

/// Poisoned locks only mean a panic elsewhere; the data (handles and sets) stays usable.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// `url` parsed as the bus will use it, without any I/O: what [`BusConfig::check_url`] and
/// [`Shared::new`] both run, so configuration checks and start-up cannot disagree.
pub(super) fn parse_url(raw: &str) -> Result<AMQPUri, BusError> {
    let url = redact_url(raw);
    let uri: AMQPUri = raw
        .parse()
        .map_err(|problem: String| BusError::InvalidUrl {
            url: url.clone(),
            problem: problem.replace(raw, &url),
        })?;
    if uri.scheme == AMQPScheme::AMQPS {
        return Err(BusError::InvalidUrl {
            url,
            problem: "amqps:// needs TLS support, which this build leaves out".to_owned(),
        });
    }
    Ok(uri)
}
