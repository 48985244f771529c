//! The read side: lists and watches of a collection (moved as they were from the recoverer's
//! test support), and one pod by name.

use std::{collections::HashMap, time::Duration};

use futures::StreamExt;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;

use crate::{
    Shared,
    cluster::{Chunk, to_value},
    selector::{Filter, parse_selector},
    serve::{Body, error_response, json_response},
    status::ApiError,
};

/// `GET` of a collection: a list, or with `watch=true` a watch.
pub(crate) async fn collection(
    shared: &Shared,
    namespace: Option<String>,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let selector = match parse_selector(query.get("labelSelector").map_or("", String::as_str)) {
        Ok(s) => s,
        Err(e) => return error_response(&ApiError::bad_request(e)),
    };
    for unsupported in ["fieldSelector", "sendInitialEvents"] {
        if query
            .get(unsupported)
            .is_some_and(|v| !v.is_empty() && v != "false")
        {
            let msg = format!("{unsupported} is not supported by the fake API server");
            return error_response(&ApiError::bad_request(msg));
        }
    }
    let filter = Filter {
        namespace,
        selector,
    };
    let is_watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    if is_watch {
        watch_response(shared, filter, query)
    } else {
        list_response(shared, filter, query).await
    }
}

/// `GET /api/v1/namespaces/{namespace}/pods/{name}` (and `…/status`: the same object).
pub(crate) fn one(shared: &Shared, namespace: &str, name: &str) -> Response<Body> {
    match shared.cluster().pod(namespace, name) {
        Some(pod) => json_response(StatusCode::OK, &to_value(&pod)),
        None => error_response(&ApiError::not_found(name)),
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
    let result = shared.cluster().list(&filter, limit, token);
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
    let open = shared.cluster().watch(filter, from, bookmarks, tx);
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
