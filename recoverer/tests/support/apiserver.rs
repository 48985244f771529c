//! An in-process Kubernetes API server for pods, driven by the real kube client over loopback.
//!
//! It speaks the wire protocol of the real one for `GET /api/v1/pods` and
//! `GET /api/v1/namespaces/{ns}/pods`:
//! - lists: a `PodList` with `metadata.resourceVersion`, items without `kind`/`apiVersion` (as
//!   the API server sends them), `labelSelector`, `limit` + `continue` pagination over a
//!   consistent snapshot, `410 Gone` for a continue token older than the history;
//! - watches (`watch=true`): newline-delimited `{"type":…,"object":…}` events in a chunked
//!   body, replayed from `resourceVersion`, `BOOKMARK`s when `allowWatchBookmarks=true`, objects
//!   that stop (start) matching the selector seen as `DELETED` (`ADDED`), `timeoutSeconds`, and
//!   for a resource version older than the compacted history an HTTP 200 whose only event is an
//!   `ERROR` carrying a `Status` with code 410 — what the watch cache does, and what makes
//!   kube's watcher re-list.
//!
//! The cluster is scripted: [`FakeApiServer::add`], [`modify`](FakeApiServer::modify),
//! [`update`](FakeApiServer::update), [`delete`](FakeApiServer::delete) bump one global
//! resourceVersion and push to open watches; [`bookmark`](FakeApiServer::bookmark),
//! [`expire_history`](FakeApiServer::expire_history), [`drop_watches`](FakeApiServer::drop_watches)
//! (abrupt: the connection dies mid-body), [`close_watches`](FakeApiServer::close_watches)
//! (clean end, like a timeout). [`batch`](FakeApiServer::batch) runs several steps under one
//! lock, so no client request can slip in between them.
//!
//! Use from another test file: `#[path = "support/apiserver.rs"] mod apiserver;`.

#![allow(dead_code)]

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time, jiff};
use serde_json::{Value, json};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
    task::JoinHandle,
};

type Body = UnsyncBoxBody<Bytes, io::Error>;
type Chunk = Result<Bytes, io::Error>;

/// The API server's message for a list continue token older than the compacted history.
const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a \
    consistent list result. You can start a new list without the continue parameter.";

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

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FakeApiServer {
    /// Binds 127.0.0.1 on a free port and serves until dropped.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            cluster: Mutex::new(Cluster::default()),
            stats: watch::Sender::new(Stats::default()),
            lists_held: watch::Sender::new(false),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Self {
            addr,
            shared,
            accept,
        }
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

    /// A kubeconfig pointing at this server, for a child process (`KUBECONFIG=…`).
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
        self.shared.cluster.lock().expect("cluster lock")
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
        self.cluster().rv
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

// ---------------------------------------------------------------------------------------------
// The scripted cluster
// ---------------------------------------------------------------------------------------------

/// The pods, their history, and the open watches. Mutations behave like the API server's:
/// each bumps the global resourceVersion and is delivered to every open watch it matches.
#[derive(Default)]
pub struct Cluster {
    rv: u64,
    /// Watches from a resourceVersion older than this get 410 Gone.
    compacted: u64,
    pods: BTreeMap<(String, String), Pod>,
    history: Vec<Change>,
    watches: Vec<OpenWatch>,
    /// Remaining list pages by continue token: (snapshot resourceVersion, items).
    pages: HashMap<String, (u64, Vec<Value>)>,
    next_token: u64,
    next_uid: u64,
}

struct Change {
    rv: u64,
    old: Option<Pod>,
    new: Option<Pod>,
}

struct OpenWatch {
    filter: Filter,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Chunk>,
}

impl Cluster {
    /// Creates `pod` (namespace defaults to `default`); fills uid, creationTimestamp and
    /// resourceVersion as the API server would. Panics if it exists.
    pub fn add(&mut self, mut pod: Pod) -> Pod {
        let key = key_of(&pod);
        assert!(
            !self.pods.contains_key(&key),
            "pod {}/{} already exists",
            key.0,
            key.1
        );
        self.next_uid += 1;
        let meta = &mut pod.metadata;
        meta.namespace = Some(key.0.clone());
        meta.uid
            .get_or_insert_with(|| format!("00000000-0000-4000-8000-{:012x}", self.next_uid));
        meta.creation_timestamp
            .get_or_insert_with(|| Time(jiff::Timestamp::now()));
        self.commit(key, None, Some(pod))
    }

    /// Replaces an existing pod (status updates included); keeps its uid and creation time.
    pub fn modify(&mut self, mut pod: Pod) -> Pod {
        let key = key_of(&pod);
        let old = self
            .pods
            .get(&key)
            .cloned()
            .unwrap_or_else(|| panic!("no pod {}/{}", key.0, key.1));
        pod.metadata.namespace = Some(key.0.clone());
        pod.metadata.uid = old.metadata.uid.clone();
        pod.metadata.creation_timestamp = old.metadata.creation_timestamp.clone();
        self.commit(key, Some(old), Some(pod))
    }

    pub fn update(&mut self, namespace: &str, name: &str, f: impl FnOnce(&mut Pod)) -> Pod {
        let mut pod = self
            .pod(namespace, name)
            .unwrap_or_else(|| panic!("no pod {namespace}/{name}"));
        f(&mut pod);
        self.modify(pod)
    }

    /// Deletes a pod; watchers get `DELETED` with its last state at the deletion's version.
    pub fn delete(&mut self, namespace: &str, name: &str) -> Pod {
        let key = (namespace.to_owned(), name.to_owned());
        let old = self
            .pods
            .get(&key)
            .cloned()
            .unwrap_or_else(|| panic!("no pod {namespace}/{name}"));
        self.commit(key, Some(old), None)
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.pods
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Sends a `BOOKMARK` at the current resourceVersion to every watch that allowed them.
    pub fn bookmark(&mut self) {
        let line = event_line("BOOKMARK", &bookmark_object(self.rv));
        self.watches
            .retain(|w| !w.bookmarks || w.tx.send(Ok(line.clone())).is_ok());
    }

    /// Forgets all history (like an etcd compaction): a watch resuming from any earlier
    /// resourceVersion gets 410 Gone, and pending list continue tokens expire.
    pub fn expire_history(&mut self) {
        self.compacted = self.rv;
        self.history.clear();
        self.pages.clear();
    }

    /// Kills every open watch connection mid-body (no terminating chunk). Returns how many.
    pub fn drop_watches(&mut self) -> usize {
        let n = self.watches.len();
        for w in self.watches.drain(..) {
            let _ = w.tx.send(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "watch dropped",
            )));
        }
        n
    }

    /// Ends every open watch cleanly, as the API server does when `timeoutSeconds` expire.
    pub fn close_watches(&mut self) -> usize {
        let n = self.watches.len();
        self.watches.clear();
        n
    }

    fn commit(&mut self, key: (String, String), old: Option<Pod>, new: Option<Pod>) -> Pod {
        self.rv += 1;
        let rv = self.rv.to_string();
        let new = new.map(|mut p| {
            p.metadata.resource_version = Some(rv.clone());
            p
        });
        let change = Change {
            rv: self.rv,
            old,
            new,
        };
        self.watches.retain(|w| match change.event_for(&w.filter) {
            Some(line) => w.tx.send(Ok(line)).is_ok(),
            None => !w.tx.is_closed(),
        });
        let result = match &change.new {
            Some(p) => {
                self.pods.insert(key, p.clone());
                p.clone()
            }
            None => {
                self.pods.remove(&key);
                change
                    .deleted_object()
                    .expect("a deletion has an old object")
            }
        };
        self.history.push(change);
        result
    }

    fn list(
        &mut self,
        filter: &Filter,
        limit: Option<usize>,
        token: Option<&str>,
    ) -> Result<Value, Value> {
        // Err: the `Status` of an expired continue token.
        let (rv, mut items) = match token {
            Some(token) => self
                .pages
                .remove(token)
                .ok_or_else(|| status_object(StatusCode::GONE, "Expired", CONTINUE_EXPIRED))?,
            None => {
                let items = self
                    .pods
                    .values()
                    .filter(|p| filter.matches(p))
                    .map(list_item)
                    .collect();
                (self.rv, items)
            }
        };
        let mut metadata = json!({ "resourceVersion": rv.to_string() });
        if let Some(limit) = limit.filter(|l| *l > 0 && *l < items.len()) {
            let rest = items.split_off(limit);
            self.next_token += 1;
            let token = format!("fake-continue-{}", self.next_token);
            metadata["continue"] = json!(token);
            metadata["remainingItemCount"] = json!(rest.len());
            self.pages.insert(token, (rv, rest));
        }
        Ok(json!({ "kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": items }))
    }

    /// Registers a watch from `from` (a resourceVersion), replaying what it missed.
    fn watch(
        &mut self,
        filter: Filter,
        from: &str,
        bookmarks: bool,
        tx: mpsc::UnboundedSender<Chunk>,
    ) -> bool {
        let since = match from {
            // "" and "0": start now, with a synthetic ADDED for every current object.
            "" | "0" => {
                for pod in self.pods.values().filter(|p| filter.matches(p)) {
                    let _ = tx.send(Ok(event_line("ADDED", &to_value(pod))));
                }
                self.rv
            }
            v => v.parse::<u64>().unwrap_or(0),
        };
        if since < self.compacted {
            let status = status_object(
                StatusCode::GONE,
                "Expired",
                &format!("too old resource version: {since} ({})", self.compacted),
            );
            let _ = tx.send(Ok(event_line("ERROR", &status)));
            return false; // the stream ends after the error, as the API server's does
        }
        for change in self.history.iter().filter(|c| c.rv > since) {
            if let Some(line) = change.event_for(&filter) {
                let _ = tx.send(Ok(line));
            }
        }
        self.watches.push(OpenWatch {
            filter,
            bookmarks,
            tx,
        });
        true
    }
}

impl Change {
    /// The event a watch with `filter` sees for this change, if any.
    fn event_for(&self, filter: &Filter) -> Option<Bytes> {
        let old = self.old.as_ref().filter(|p| filter.matches(p));
        let new = self.new.as_ref().filter(|p| filter.matches(p));
        match (old, new) {
            (None, Some(new)) => Some(event_line("ADDED", &to_value(new))),
            (Some(_), Some(new)) => Some(event_line("MODIFIED", &to_value(new))),
            (Some(_), None) => Some(event_line("DELETED", &to_value(&self.deleted_object()?))),
            (None, None) => None,
        }
    }

    /// A pod that was deleted, or stopped matching a selector, is sent as its previous state
    /// stamped with this change's resourceVersion.
    fn deleted_object(&self) -> Option<Pod> {
        let mut pod = self.old.clone()?;
        pod.metadata.resource_version = Some(self.rv.to_string());
        Some(pod)
    }
}

fn key_of(pod: &Pod) -> (String, String) {
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let name = pod
        .metadata
        .name
        .clone()
        .expect("a pod needs metadata.name");
    (namespace, name)
}

fn to_value(pod: &Pod) -> Value {
    serde_json::to_value(pod).expect("Pod serializes")
}

/// List items come without `kind` and `apiVersion`, as from the real API server.
fn list_item(pod: &Pod) -> Value {
    let mut v = to_value(pod);
    if let Some(map) = v.as_object_mut() {
        map.remove("kind");
        map.remove("apiVersion");
    }
    v
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({ "type": kind, "object": object })).expect("event JSON");
    line.push(b'\n');
    Bytes::from(line)
}

/// What the API server sends as a bookmark: an empty object of the watched kind.
fn bookmark_object(rv: u64) -> Value {
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": { "resourceVersion": rv.to_string(), "creationTimestamp": null },
        "spec": { "containers": null },
        "status": {}
    })
}

fn status_object(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16()
    })
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status_object(code, reason, message))
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(serde_json::to_vec(value).expect("JSON")))
        .map_err(|never| match never {});
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body.boxed_unsync())
        .expect("response")
}

// ---------------------------------------------------------------------------------------------
// Selectors
// ---------------------------------------------------------------------------------------------

/// Namespace scope plus a parsed label selector.
#[derive(Clone, Debug)]
struct Filter {
    namespace: Option<String>,
    selector: Vec<Requirement>,
}

#[derive(Clone, Debug)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Filter {
    fn matches(&self, pod: &Pod) -> bool {
        if let Some(ns) = &self.namespace
            && pod.metadata.namespace.as_deref() != Some(ns)
        {
            return false;
        }
        let empty = BTreeMap::new();
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        self.selector.iter().all(|r| match r {
            Requirement::Eq(k, v) => labels.get(k) == Some(v),
            Requirement::NotEq(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => !labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

/// Parses the label selector syntax the API server accepts: `k=v`, `k==v`, `k!=v`,
/// `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, comma-separated.
fn parse_selector(s: &str) -> Result<Vec<Requirement>, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    let set = |rest: &str| -> Result<Vec<String>, String> {
        let inner = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'));
        let inner = inner.ok_or_else(|| format!("expected a (set) in {s:?}"))?;
        Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
    };
    let mut out = Vec::new();
    for term in terms.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
        let req = if let Some(k) = term.strip_prefix('!') {
            Requirement::NotExists(k.trim().to_owned())
        } else if let Some((k, rest)) = term.split_once(" notin ") {
            Requirement::NotIn(k.trim().to_owned(), set(rest)?)
        } else if let Some((k, rest)) = term.split_once(" in ") {
            Requirement::In(k.trim().to_owned(), set(rest)?)
        } else if let Some((k, v)) = term.split_once("!=") {
            Requirement::NotEq(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Requirement::Eq(k.trim().to_owned(), v.trim().to_owned())
        } else if term
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            Requirement::Exists(term.to_owned())
        } else {
            return Err(format!("unable to parse requirement {term:?}"));
        };
        out.push(req);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            // Errors here are connections the client (or drop_watches) cut: expected.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query = parse_query(req.uri().query().unwrap_or(""));
    shared
        .stats
        .send_modify(|s| s.requests.push(req.uri().to_string()));

    let namespace = match path
        .strip_prefix("/api/v1/")
        .map(|p| p.split('/').collect::<Vec<_>>())
        .as_deref()
    {
        Some(["pods"]) => None,
        Some(["namespaces", ns, "pods"]) => Some((*ns).to_owned()),
        _ => {
            return status_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
    };
    if req.method() != Method::GET {
        return status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "only GET is served by the fake",
        );
    }
    let selector = match parse_selector(query.get("labelSelector").map_or("", String::as_str)) {
        Ok(s) => s,
        Err(e) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    for unsupported in ["fieldSelector", "sendInitialEvents"] {
        if query
            .get(unsupported)
            .is_some_and(|v| !v.is_empty() && v != "false")
        {
            let msg = format!("{unsupported} is not supported by the fake API server");
            return status_response(StatusCode::BAD_REQUEST, "BadRequest", &msg);
        }
    }
    let filter = Filter {
        namespace,
        selector,
    };
    let is_watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    if is_watch {
        watch_response(shared, filter, &query)
    } else {
        list_response(shared, filter, &query).await
    }
}

async fn list_response(
    shared: &Shared,
    filter: Filter,
    query: &HashMap<String, String>,
) -> Response<Body> {
    shared.stats.send_modify(|s| s.lists += 1);
    let mut held = shared.lists_held.subscribe();
    let _ = held.wait_for(|held| !*held).await;

    let limit = query.get("limit").and_then(|l| l.parse().ok());
    let token = query
        .get("continue")
        .map(String::as_str)
        .filter(|t| !t.is_empty());
    let result = shared
        .cluster
        .lock()
        .expect("cluster lock")
        .list(&filter, limit, token);
    match result {
        Ok(list) => json_response(StatusCode::OK, &list),
        Err(status) => {
            shared.stats.send_modify(|s| s.gone += 1);
            json_response(StatusCode::GONE, &status)
        }
    }
}

fn watch_response(
    shared: &Shared,
    filter: Filter,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let from = query.get("resourceVersion").map_or("", String::as_str);
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let (tx, rx) = mpsc::unbounded_channel::<Chunk>();
    let open = shared
        .cluster
        .lock()
        .expect("cluster lock")
        .watch(filter, from, bookmarks, tx);
    // Counted once registered, so a test that saw the count can cut this watch.
    shared.stats.send_modify(|s| {
        s.watches += 1;
        s.gone += usize::from(!open);
    });

    let events = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    // timeoutSeconds: the API server ends the watch cleanly when it elapses.
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0);
    let deadline = async move {
        match timeout {
            Some(t) => tokio::time::sleep(Duration::from_secs(t)).await,
            None => std::future::pending().await,
        }
    };
    let frames = events
        .take_until(Box::pin(deadline))
        .map(|chunk| chunk.map(Frame::data));
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(StreamBody::new(frames).boxed_unsync())
        .expect("response")
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
