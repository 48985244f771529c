//! Accepting connections, the same way on every listener (the app's and the admin one).
//!
//! - An accept error (out of file descriptors, `EMFILE`/`ENFILE`, is the usual one) backs off
//!   exponentially from 5 ms to 1 s, reset by the next success, so a listener never spins; the
//!   warning is written at most once a second, with the number of errors it stands for
//!   ([`reprise_jobs::Acceptor`], which the recoverer's admin port uses too).
//! - A connection that sends nothing within `preface_timeout` is closed (a port scanner, a
//!   client stuck before its first byte): it would hold a file descriptor forever otherwise.
//! - The app listener holds at most `max_app_connections` open; one more is closed at once.
//!
//! Every refusal is counted (`reprise_accept_errors_total`, `reprise_connections_closed_total`).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::metrics::counter::Counter;
use reprise_jobs::Acceptor;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};

use crate::metrics::{ClosedLabels, ListenerLabels, Metrics};

/// Binds `addr` for the configuration key `key`; the error names the key (exit 2: a port in use
/// is a configuration problem, as linkerd2-proxy and Envoy report it).
pub async fn bind(key: &str, addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("key `{key}`: cannot listen on {addr}: {e}"))
}

/// Put in every request's extensions by the server: cancelled when the app connection the
/// request came on closes (how a stream tells an app that died from one that cancelled).
#[derive(Clone, Debug)]
pub struct AppConnection {
    pub closed: tokio_util::sync::CancellationToken,
    /// What the app's HTTP/2 stack may hold unread on this connection.
    pub window: std::sync::Arc<crate::appwindow::AppWindow>,
}

/// A listener that accepts with backoff and counts what it refuses.
pub struct Listener {
    inner: Acceptor,
    name: &'static str,
    errors: Counter,
    /// The acceptor's failures already added to `errors`.
    counted: u64,
    silent: Counter,
    preface_timeout: Duration,
    /// The app listener's bound on open connections.
    slots: Option<(Arc<Semaphore>, Counter)>,
}

/// An accepted connection; holds its place under the connection limit until dropped.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    _slot: Option<OwnedSemaphorePermit>,
    preface_timeout: Duration,
    silent: Counter,
}

impl Accepted {
    /// Waits for the connection's first byte, at most `preface_timeout`. False (and counted)
    /// when the peer sent nothing or closed: the caller drops the connection.
    pub async fn spoke(&self) -> bool {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(self.preface_timeout, self.stream.peek(&mut byte)).await {
            Ok(Ok(n)) if n > 0 => true,
            Ok(_) => false,
            Err(_) => {
                self.silent.inc();
                tracing::debug!(peer = %self.peer, timeout = ?self.preface_timeout, "closed a connection that sent nothing");
                false
            }
        }
    }
}

impl Listener {
    pub fn new(
        inner: TcpListener,
        name: &'static str,
        metrics: &Metrics,
        preface_timeout: Duration,
    ) -> Self {
        Listener {
            inner: Acceptor::new(inner, name),
            name,
            counted: 0,
            errors: metrics
                .accept_errors
                .get_or_create(&ListenerLabels { listener: name })
                .clone(),
            silent: metrics
                .connections_closed
                .get_or_create(&ClosedLabels {
                    listener: name,
                    reason: "silent",
                })
                .clone(),
            preface_timeout,
            slots: None,
        }
    }

    /// Holds at most `max` connections open at once; past it, new ones are closed at once.
    pub fn limit(mut self, max: usize, metrics: &Metrics) -> Self {
        let refused = metrics
            .connections_closed
            .get_or_create(&ClosedLabels {
                listener: self.name,
                reason: "limit",
            })
            .clone();
        self.slots = Some((Arc::new(Semaphore::new(max)), refused));
        self
    }

    /// The next connection under the limit. Errors never end the loop: they pause it (and
    /// are counted in `reprise_accept_errors_total` once the listener accepts again).
    pub async fn accept(&mut self) -> Accepted {
        loop {
            let (stream, peer) = self.inner.accept().await;
            let failures = self.inner.failures();
            self.errors.inc_by(failures - self.counted);
            self.counted = failures;
            let slot = match &self.slots {
                None => None,
                Some((slots, refused)) => match slots.clone().try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        refused.inc();
                        tracing::debug!(%peer, listener = self.name, "connection limit reached; closed a new connection");
                        continue;
                    }
                },
            };
            return Accepted {
                stream,
                peer,
                _slot: slot,
                preface_timeout: self.preface_timeout,
                silent: self.silent.clone(),
            };
        }
    }
}
