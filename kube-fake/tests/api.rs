//! The writes through the real kube client over loopback, as a kubelet or a controller makes
//! them: each is seen by a watch as the event the real API server sends, and each refusal is
//! the real one's status code and `Status`.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
};
use reprise_kube_fake::{
    FakeApiServer,
    pods::{SIDECAR, injected_pod},
};
use serde_json::{Value, json};

const NS: &str = "demo";
const WAIT: Duration = Duration::from_secs(20);

/// The `Status` of a failed call through `kube::Api`.
fn status_of<T: std::fmt::Debug>(result: kube::Result<T>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A raw request through the kube client's connection: the status code and the JSON body.
async fn raw(
    client: &Client,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut req = http::Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        req = req.header(http::header::CONTENT_TYPE, ct);
    }
    let req = req
        .body(kube::client::Body::from(body.as_bytes().to_vec()))
        .expect("request");
    let res = client.send(req).await.expect("response");
    let code = res.status().as_u16();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    let value = serde_json::from_slice(&bytes).expect("a JSON body");
    (code, value)
}

fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code
    })
}

fn rv(pod: &Pod) -> u64 {
    pod.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("a numeric resourceVersion")
}

fn sidecar_state(pod: &Pod) -> Option<Value> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let sidecar = statuses.iter().find(|s| s.name == SIDECAR)?;
    serde_json::to_value(sidecar.state.as_ref()?).ok()
}

#[tokio::test]
async fn every_write_is_an_event_of_a_watch_at_a_higher_resource_version() {
    let server = FakeApiServer::start().await;
    let api: Api<Pod> = Api::namespaced(server.client(), NS);
    let mut events = api
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch")
        .boxed();
    let pp = PostParams::default();

    let created = api
        .create(&pp, &injected_pod(NS, "a"))
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some(), "the server assigns a uid");

    let mut relabelled = created.clone();
    relabelled
        .metadata
        .labels
        .get_or_insert_default()
        .insert("tier".into(), "web".into());
    let replaced = api.replace("a", &pp, &relabelled).await.expect("replace");

    let mut failed = replaced.clone();
    if let Some(status) = failed.status.as_mut() {
        status.phase = Some("Failed".into());
    }
    let status_replaced = api
        .replace_status("a", &pp, &failed)
        .await
        .expect("replace status");

    let patch = json!({ "metadata": { "annotations": { "note": "patched" } } });
    let patched = api
        .patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");

    let oom = json!({ "status": { "containerStatuses": [{
        "name": SIDECAR, "image": "reprise/sidecar:1", "imageID": "", "ready": false,
        "restartCount": 0,
        "state": { "terminated": { "exitCode": 137, "reason": "OOMKilled" } }
    }]}});
    let status_patched = api
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&oom))
        .await
        .expect("patch status");

    let deleted = api
        .delete("a", &DeleteParams::default())
        .await
        .expect("delete")
        .left()
        .expect("the deleted pod, not a Status");

    let written = [
        &created,
        &replaced,
        &status_replaced,
        &patched,
        &status_patched,
        &deleted,
    ];
    let versions: Vec<u64> = written.iter().map(|p| rv(p)).collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "increasing: {versions:?}"
    );

    let mut seen = Vec::new();
    while seen.len() < written.len() {
        let event = tokio::time::timeout(WAIT, events.try_next())
            .await
            .expect("an event in time")
            .expect("a good event")
            .expect("the watch goes on");
        seen.push(match event {
            WatchEvent::Added(p) => ("ADDED", rv(&p), p),
            WatchEvent::Modified(p) => ("MODIFIED", rv(&p), p),
            WatchEvent::Deleted(p) => ("DELETED", rv(&p), p),
            other => panic!("unexpected {other:?}"),
        });
    }
    let kinds: Vec<&str> = seen.iter().map(|(k, _, _)| *k).collect();
    assert_eq!(
        kinds,
        [
            "ADDED", "MODIFIED", "MODIFIED", "MODIFIED", "MODIFIED", "DELETED"
        ]
    );
    let seen_versions: Vec<u64> = seen.iter().map(|(_, v, _)| *v).collect();
    assert_eq!(
        seen_versions, versions,
        "each write is the event at its version"
    );

    // What each write changed, as the watch saw it.
    let tier = seen[1]
        .2
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("tier"));
    assert_eq!(tier.map(String::as_str), Some("web"));
    let phase = seen[2].2.status.as_ref().and_then(|s| s.phase.as_deref());
    assert_eq!(phase, Some("Failed"));
    let note = seen[3]
        .2
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("note"));
    assert_eq!(note.map(String::as_str), Some("patched"));
    let state = sidecar_state(&seen[4].2).expect("the sidecar's state");
    assert_eq!(state["terminated"]["reason"], "OOMKilled");
    assert_eq!(
        seen[4]
            .2
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(Vec::len),
        Some(1),
        "a merge patch replaces the list whole"
    );
    assert_eq!(server.pod(NS, "a"), None);
}

#[tokio::test]
async fn the_pod_and_its_status_subresource_are_written_separately() {
    let server = FakeApiServer::start().await;
    let api: Api<Pod> = Api::namespaced(server.client(), NS);
    let pp = PostParams::default();
    let created = api
        .create(&pp, &injected_pod(NS, "a"))
        .await
        .expect("create");

    // A status change sent to the pod itself is ignored, as by the real API server.
    let mut failed = created.clone();
    if let Some(status) = failed.status.as_mut() {
        status.phase = Some("Failed".into());
    }
    let replaced = api.replace("a", &pp, &failed).await.expect("replace");
    assert_eq!(replaced.status, created.status);
    assert!(rv(&replaced) > rv(&created));

    // And a spec change sent to the status.
    let patch = json!({ "spec": { "nodeName": "worker-9" }, "status": { "phase": "Failed" } });
    let patched = api
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch status");
    let node = patched.spec.as_ref().and_then(|s| s.node_name.as_deref());
    assert_eq!(node, Some("worker-1"));
    let phase = patched.status.as_ref().and_then(|s| s.phase.as_deref());
    assert_eq!(phase, Some("Failed"));
    assert_eq!(api.get_status("a").await.expect("get status"), patched);
}

#[tokio::test]
async fn refusals_are_the_real_status_codes_through_the_kube_client() {
    let server = FakeApiServer::start().await;
    let api: Api<Pod> = Api::namespaced(server.client(), NS);
    let pp = PostParams::default();
    let merge = |v: Value| Patch::Merge(v);
    let stored = api
        .create(&pp, &injected_pod(NS, "a"))
        .await
        .expect("create");

    let absent = injected_pod(NS, "nope");
    let not_found = (404, "NotFound".to_owned());
    assert_eq!(status_of(api.get("nope").await), not_found);
    assert_eq!(
        status_of(api.replace("nope", &pp, &absent).await),
        not_found
    );
    assert_eq!(
        status_of(api.replace_status("nope", &pp, &absent).await),
        not_found
    );
    let empty = merge(json!({}));
    let patch_params = PatchParams::default();
    assert_eq!(
        status_of(api.patch("nope", &patch_params, &empty).await),
        not_found
    );
    assert_eq!(
        status_of(api.patch_status("nope", &patch_params, &empty).await),
        not_found
    );
    assert_eq!(
        status_of(api.delete("nope", &DeleteParams::default()).await),
        not_found
    );

    assert_eq!(
        status_of(api.create(&pp, &injected_pod(NS, "a")).await),
        (409, "AlreadyExists".to_owned())
    );
    let current = api
        .replace("a", &pp, &stored)
        .await
        .expect("the current version");
    assert_eq!(
        status_of(api.replace("a", &pp, &stored).await),
        (409, "Conflict".to_owned()),
        "stored at {}, sent {}",
        rv(&current),
        rv(&stored)
    );
    let stale = merge(json!({ "metadata": { "resourceVersion": rv(&stored).to_string() } }));
    assert_eq!(
        status_of(api.patch_status("a", &patch_params, &stale).await),
        (409, "Conflict".to_owned())
    );

    let strategic = Patch::Strategic(json!({ "status": { "phase": "Failed" } }));
    assert_eq!(
        status_of(api.patch_status("a", &patch_params, &strategic).await),
        (415, "UnsupportedMediaType".to_owned())
    );
    let json_patch: Patch<Value> = Patch::Json(json_patch::Patch(Vec::new()));
    assert_eq!(
        status_of(api.patch("a", &patch_params, &json_patch).await),
        (415, "UnsupportedMediaType".to_owned())
    );

    let elsewhere = injected_pod("other", "b");
    assert_eq!(
        status_of(api.create(&pp, &elsewhere).await),
        (400, "BadRequest".to_owned())
    );
    let renamed = injected_pod(NS, "b");
    assert_eq!(
        status_of(api.replace("a", &pp, &renamed).await),
        (400, "BadRequest".to_owned())
    );
    assert_eq!(
        rv(&api.get("a").await.expect("get")),
        rv(&current),
        "no refused write changed the pod"
    );
}

#[tokio::test]
async fn refusals_are_status_objects_and_bad_json_is_400() {
    let server = FakeApiServer::start().await;
    server.add(injected_pod(NS, "a"));
    let client = server.client();
    let pods = "/api/v1/namespaces/demo/pods";
    let json = Some("application/json");

    let cases = [
        (
            "GET",
            format!("{pods}/nope"),
            None,
            "",
            status_json(404, "NotFound", r#"pods "nope" not found"#),
        ),
        (
            "POST",
            pods.to_owned(),
            json,
            r#"{"metadata":{"name":"a"}}"#,
            status_json(409, "AlreadyExists", r#"pods "a" already exists"#),
        ),
        (
            "PUT",
            format!("{pods}/a"),
            json,
            r#"{"metadata":{"name":"a","resourceVersion":"0"}}"#,
            status_json(
                409,
                "Conflict",
                r#"Operation cannot be fulfilled on pods "a": the object has been modified; please apply your changes to the latest version and try again"#,
            ),
        ),
        (
            "PATCH",
            format!("{pods}/a/status"),
            Some("application/strategic-merge-patch+json"),
            "{}",
            status_json(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json",
            ),
        ),
        (
            "POST",
            "/api/v1/namespaces/other/pods".to_owned(),
            json,
            r#"{"metadata":{"name":"b","namespace":"demo"}}"#,
            status_json(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            ),
        ),
    ];
    for (method, path, content_type, body, expected) in cases {
        let (code, status) = raw(&client, method, &path, content_type, body).await;
        assert_eq!(status, expected, "{method} {path}");
        assert_eq!(Some(u64::from(code)), expected["code"].as_u64());
    }

    // Not JSON, not a Pod, not an object: 400, and the server goes on.
    let bad = [
        ("POST", pods.to_owned(), json, "{not json"),
        (
            "POST",
            pods.to_owned(),
            json,
            r#"{"kind":"Service","metadata":{"name":"x"}}"#,
        ),
        ("POST", pods.to_owned(), None, r#"{"metadata":{"name":7}}"#),
        ("PUT", format!("{pods}/a"), json, "[]"),
        (
            "PATCH",
            format!("{pods}/a"),
            Some("application/merge-patch+json"),
            "{",
        ),
        (
            "PATCH",
            format!("{pods}/a/status"),
            Some("application/merge-patch+json; charset=utf-8"),
            r#"{"status":{"containerStatuses":"none"}}"#,
        ),
    ];
    for (method, path, content_type, body) in bad {
        let (code, status) = raw(&client, method, &path, content_type, body).await;
        assert_eq!(code, 400, "{method} {path} {body}: {status}");
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "BadRequest");
        assert_eq!(status["code"], 400);
    }
    let (code, _) = raw(&client, "POST", pods, Some("application/yaml"), "a: b").await;
    assert_eq!(code, 415);
    let (code, pod) = raw(&client, "GET", &format!("{pods}/a"), None, "").await;
    assert_eq!(code, 200);
    assert_eq!(
        pod["metadata"]["resourceVersion"], "1",
        "nothing was written"
    );
}
