//! HTTP/1.1 on a TCP listener: the routes of the pod API, the request bodies of the writes, and
//! the one place where a result becomes a response (an [`ApiError`] a `Status`).

use std::{collections::HashMap, convert::Infallible, io, sync::Arc};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header::CONTENT_TYPE};
use http_body_util::{BodyExt, Full, Limited, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use reprise_jobs::Acceptor;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::{Shared, cluster::to_value, read, status::ApiError, write::Part};

pub(crate) type Body = UnsyncBoxBody<Bytes, io::Error>;

/// The largest request body read, as the real API server's limit (3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;
const MERGE_PATCH: &str = "application/merge-patch+json";

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Out of file descriptors, accept waits instead of spinning.
    let mut acceptor = Acceptor::new(listener, "fake-apiserver");
    loop {
        let (stream, _) = acceptor.accept().await;
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

/// What a path names.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// `/api/v1/pods` (`None`: every namespace) or `/api/v1/namespaces/{ns}/pods`.
    Collection(Option<String>),
    /// `/api/v1/namespaces/{ns}/pods/{name}` or `…/{name}/status`.
    Pod {
        namespace: String,
        name: String,
        part: Part,
    },
}

fn route(path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.strip_prefix("/api/v1/")?.split('/').collect();
    let pod = |namespace: &str, name: &str, part| {
        (!namespace.is_empty() && !name.is_empty()).then(|| Route::Pod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            part,
        })
    };
    match segments.as_slice() {
        ["pods"] => Some(Route::Collection(None)),
        ["namespaces", ns, "pods"] => Some(Route::Collection(Some((*ns).to_owned()))),
        ["namespaces", ns, "pods", name] => pod(ns, name, Part::Pod),
        ["namespaces", ns, "pods", name, "status"] => pod(ns, name, Part::Status),
        _ => None,
    }
}

/// A write, as its route and method name it.
#[derive(Debug, Clone, Copy)]
enum Write<'a> {
    Create,
    Replace(&'a str, Part),
    Patch(&'a str, Part),
    Delete(&'a str),
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let query = parse_query(req.uri().query().unwrap_or(""));
    shared
        .stats
        .send_modify(|s| s.requests.push(req.uri().to_string()));
    let Some(route) = route(req.uri().path()) else {
        return error_response(&ApiError::no_route());
    };
    let method = req.method().clone();
    let (namespace, write) = match (&route, method) {
        (Route::Collection(namespace), Method::GET) => {
            return read::collection(shared, namespace.clone(), &query).await;
        }
        (
            Route::Pod {
                namespace, name, ..
            },
            Method::GET,
        ) => return read::one(shared, namespace, name),
        (Route::Collection(Some(namespace)), Method::POST) => (namespace, Write::Create),
        (
            Route::Pod {
                namespace,
                name,
                part,
            },
            Method::PUT,
        ) => (namespace, Write::Replace(name, *part)),
        (
            Route::Pod {
                namespace,
                name,
                part,
            },
            Method::PATCH,
        ) => (namespace, Write::Patch(name, *part)),
        (
            Route::Pod {
                namespace,
                name,
                part: Part::Pod,
            },
            Method::DELETE,
        ) => (namespace, Write::Delete(name)),
        (Route::Collection(_), _) => {
            return error_response(&ApiError::method_not_allowed(
                "only GET, and POST in a namespace, are served on pods by the fake",
            ));
        }
        (Route::Pod { .. }, _) => {
            return error_response(&ApiError::method_not_allowed(
                "only GET, PUT, PATCH and DELETE (not on status) are served on a pod by the fake",
            ));
        }
    };
    let path = req.uri().path().to_owned();
    match apply(shared, req, &query, namespace, write).await {
        Ok(pod) => {
            let rv = pod.metadata.resource_version.as_deref().unwrap_or_default();
            tracing::info!(?write, %namespace, %path, resource_version = rv, "pod written");
            let code = match write {
                Write::Create => StatusCode::CREATED,
                _ => StatusCode::OK,
            };
            json_response(code, &to_value(&pod))
        }
        Err(e) => {
            tracing::info!(
                ?write,
                %namespace,
                %path,
                code = e.code.as_u16(),
                reason = e.reason,
                message = %e.message,
                "write refused"
            );
            error_response(&e)
        }
    }
}

/// Reads the body `write` needs, then applies it to the cluster.
async fn apply(
    shared: &Shared,
    req: Request<Incoming>,
    query: &HashMap<String, String>,
    namespace: &str,
    write: Write<'_>,
) -> Result<Pod, ApiError> {
    if query.get("dryRun").is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the fake API server",
        ));
    }
    match write {
        Write::Create => {
            let pod = pod_body(req).await?;
            shared.cluster().create(namespace, pod)
        }
        Write::Replace(name, part) => {
            let pod = pod_body(req).await?;
            shared.cluster().replace(namespace, name, part, pod)
        }
        Write::Patch(name, part) => {
            let patch = patch_body(req).await?;
            shared.cluster().merge_patch(namespace, name, part, &patch)
        }
        // The body, DeleteOptions, is not read: every deletion is immediate.
        Write::Delete(name) => shared.cluster().remove(namespace, name),
    }
}

/// The media type of the body, without its parameters (`; charset=utf-8`).
fn media_type(req: &Request<Incoming>) -> Option<String> {
    let value = req.headers().get(CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or_default();
    Some(essence.trim().to_ascii_lowercase())
}

/// A POST's or PUT's Pod: JSON, also when no Content-Type is sent (as the real one).
async fn pod_body(req: Request<Incoming>) -> Result<Pod, ApiError> {
    if media_type(&req).is_some_and(|m| m != "application/json") {
        return Err(ApiError::unsupported_media_type(
            "the body of the request was in an unknown format - accepted media types include: \
             application/json",
        ));
    }
    let body = read_body(req).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not a Pod: {e}")))
}

/// A PATCH's merge patch; the other patch types (JSON patch, strategic merge, apply) are 415.
async fn patch_body(req: Request<Incoming>) -> Result<Value, ApiError> {
    if media_type(&req).as_deref() != Some(MERGE_PATCH) {
        return Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format - accepted media types include: \
             {MERGE_PATCH}"
        )));
    }
    let body = read_body(req).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the patch is not JSON: {e}")))
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large(MAX_BODY)),
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}

pub(crate) fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status())
}

pub(crate) fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(serde_json::to_vec(value).expect("JSON")))
        .map_err(|never| match never {});
    Response::builder()
        .status(code)
        .header(CONTENT_TYPE, "application/json")
        .body(body.boxed_unsync())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let pod = |ns: &str, name: &str, part| {
            Some(Route::Pod {
                namespace: ns.into(),
                name: name.into(),
                part,
            })
        };
        assert_eq!(route("/api/v1/pods"), Some(Route::Collection(None)));
        assert_eq!(
            route("/api/v1/namespaces/demo/pods"),
            Some(Route::Collection(Some("demo".into())))
        );
        assert_eq!(
            route("/api/v1/namespaces/demo/pods/a"),
            pod("demo", "a", Part::Pod)
        );
        assert_eq!(
            route("/api/v1/namespaces/demo/pods/a/status"),
            pod("demo", "a", Part::Status)
        );
        for unserved in [
            "/api/v1/namespaces/demo/pods/a/log",
            "/api/v1/namespaces/demo/pods//status",
            "/api/v1/namespaces//pods/a",
            "/api/v1/namespaces/demo/configmaps",
            "/apis/apps/v1/deployments",
        ] {
            assert_eq!(route(unserved), None, "{unserved}");
        }
    }
}
