//! The scripted cluster: pods, their history, and the open watches. Every change, scripted or
//! from an HTTP write, goes through one `commit`: the global resourceVersion goes up by one,
//! and every open watch it matches gets its event.

use std::{
    collections::{BTreeMap, HashMap},
    io,
};

use bytes::Bytes;
use http::StatusCode;
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time, jiff};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{selector::Filter, status::status_object};

/// One piece of a watch's chunked body; an error cuts the connection.
pub(crate) type Chunk = Result<Bytes, io::Error>;

/// The API server's message for a list continue token older than the compacted history.
const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a \
    consistent list result. You can start a new list without the continue parameter.";

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

    pub(crate) fn list(
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
    pub(crate) fn watch(
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

pub(crate) fn to_value(pod: &Pod) -> Value {
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
