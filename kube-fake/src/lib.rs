//! A fake Kubernetes API server for pods, for tests and demos: it speaks the real API server's
//! wire protocol, so the real kube client (and kubectl, curl) can be pointed at it over
//! loopback. It is not a Kubernetes: nothing schedules, runs or validates pods.
//!
//! Reads, as the real one answers `GET /api/v1/pods` and `GET /api/v1/namespaces/{ns}/pods`:
//! - lists: a `PodList` with `metadata.resourceVersion`, items without `kind`/`apiVersion` (as
//!   the API server sends them), `labelSelector`, `limit` + `continue` pagination over a
//!   consistent snapshot, `410 Gone` for a continue token older than the history;
//! - watches (`watch=true`): newline-delimited `{"type":…,"object":…}` events in a chunked
//!   body, replayed from `resourceVersion`, `BOOKMARK`s when `allowWatchBookmarks=true`, objects
//!   that stop (start) matching the selector seen as `DELETED` (`ADDED`), `timeoutSeconds`, and
//!   for a resource version older than the compacted history an HTTP 200 whose only event is an
//!   `ERROR` carrying a `Status` with code 410 — what the watch cache does, and what makes
//!   kube's watcher re-list;
//! - one pod: `GET /api/v1/namespaces/{ns}/pods/{name}` (and `…/status`).
//!
//! Writes, as a kubelet or a controller makes them (`write.rs`): create (`POST`), replace
//! (`PUT`, on the pod or its `status` subresource), JSON merge patch (`PATCH`), `DELETE`, with
//! the real one's `Status` errors (404, 409, 400, 415).
//!
//! In-process, the cluster is scripted: [`FakeApiServer::add`],
//! [`modify`](FakeApiServer::modify), [`update`](FakeApiServer::update),
//! [`delete`](FakeApiServer::delete) bump one global resourceVersion and push to open watches,
//! exactly as the HTTP writes do; [`bookmark`](FakeApiServer::bookmark),
//! [`expire_history`](FakeApiServer::expire_history), [`drop_watches`](FakeApiServer::drop_watches)
//! (abrupt: the connection dies mid-body), [`close_watches`](FakeApiServer::close_watches)
//! (clean end, like a timeout). [`batch`](FakeApiServer::batch) runs several steps under one
//! lock, so no client request can slip in between them. [`pods`] builds pods shaped like the
//! kubelet's. The `reprise-fake-apiserver` binary serves the same thing as a process.

mod cluster;
pub mod pods;
mod read;
mod selector;
mod serve;
mod status;
mod write;

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

pub use cluster::Cluster;

/// Request counters, for waiting on what the client did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// List requests received (each page counts).
    pub lists: usize,
    /// Watch requests answered (counted once the watch is registered, so it can be cut).
    pub watches: usize,
    /// Watches answered with a 410 `ERROR` event (or lists with an expired continue token).
    pub gone: usize,
    /// Every request's path and query, in order.
    pub requests: Vec<String>,
}

/// The running server. Dropping it stops accepting connections.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    cluster: Mutex<Cluster>,
    stats: watch::Sender<Stats>,
    /// While true, list requests are held (counted, not answered).
    lists_held: watch::Sender<bool>,
}

impl Shared {
    fn cluster(&self) -> MutexGuard<'_, Cluster> {
        // A scripted step may panic under the lock (adding a pod that exists), but only before
        // it changed anything: the cluster is consistent, and the server keeps serving.
        self.cluster.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FakeApiServer {
    /// Binds 127.0.0.1 on a free port and serves until dropped. Panics if it cannot bind.
    pub async fn start() -> Self {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind the fake API server")
    }

    /// Binds `addr` and serves on the current runtime until dropped.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            cluster: Mutex::new(Cluster::default()),
            stats: watch::Sender::new(Stats::default()),
            lists_held: watch::Sender::new(false),
        });
        let accept = tokio::spawn(serve::accept_loop(listener, shared.clone()));
        Ok(Self {
            addr,
            shared,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A real kube client for this server: plain HTTP, no auth, namespace `default`.
    pub fn client(&self) -> kube::Client {
        // kube's TLS stack is built even for http:// URLs; make the provider choice explicit.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = self.url().parse().expect("server URL");
        kube::Client::try_from(kube::Config::new(url)).expect("kube client for the fake API server")
    }

    /// A kubeconfig pointing at this server (plain HTTP, no credentials, namespace `default`),
    /// for a child process (`KUBECONFIG=…`).
    pub fn kubeconfig(&self) -> String {
        let server = self.url();
        format!(
            r#"apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {server}
users:
- name: fake
  user: {{}}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
    namespace: default
current-context: fake
"#
        )
    }

    /// Writes [`Self::kubeconfig`] to `dir/kubeconfig` and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig()).expect("write kubeconfig");
        path
    }

    fn cluster(&self) -> MutexGuard<'_, Cluster> {
        self.shared.cluster()
    }

    /// Runs `f` with the cluster locked: the client sees all of its steps at once.
    pub fn batch<T>(&self, f: impl FnOnce(&mut Cluster) -> T) -> T {
        f(&mut self.cluster())
    }

    pub fn add(&self, pod: Pod) -> Pod {
        self.cluster().add(pod)
    }

    pub fn modify(&self, pod: Pod) -> Pod {
        self.cluster().modify(pod)
    }

    pub fn update(&self, namespace: &str, name: &str, f: impl FnOnce(&mut Pod)) -> Pod {
        self.cluster().update(namespace, name, f)
    }

    pub fn delete(&self, namespace: &str, name: &str) -> Pod {
        self.cluster().delete(namespace, name)
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.cluster().pod(namespace, name)
    }

    pub fn bookmark(&self) {
        self.cluster().bookmark()
    }

    pub fn expire_history(&self) {
        self.cluster().expire_history()
    }

    pub fn drop_watches(&self) -> usize {
        self.cluster().drop_watches()
    }

    pub fn close_watches(&self) -> usize {
        self.cluster().close_watches()
    }

    pub fn resource_version(&self) -> u64 {
        self.cluster().resource_version()
    }

    /// Holds every list request (after counting it) until [`Self::release_lists`].
    pub fn hold_lists(&self) {
        self.shared.lists_held.send_replace(true);
    }

    pub fn release_lists(&self) {
        self.shared.lists_held.send_replace(false);
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats.borrow().clone()
    }

    /// Waits until `ready(stats)` holds; panics after `timeout` with the stats seen.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl FnMut(&Stats) -> bool,
    ) -> Stats {
        let mut rx = self.shared.stats.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(ready)).await {
            Ok(Ok(stats)) => stats.clone(),
            _ => panic!(
                "fake API server: timed out waiting for {what}; stats: {:?}",
                self.stats()
            ),
        }
    }
}
