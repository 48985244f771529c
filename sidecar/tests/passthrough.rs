//! Every call that is not resumable passes through unchanged: unary, bidi, metadata, trailers,
//! error statuses with details. And `grpc-timeout` is honoured across a resumable call's resumes.

use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use prost::Message;
use reprise_proto::demo::v1::ListUsersRequest;

/// Runs a demo-client command directly against the server and through the sidecar.
fn both(w: &World, args: &[&str]) -> (serde_json::Value, serde_json::Value) {
    let direct = std::process::Command::new(bin("demo-client"))
        .arg("--target")
        .arg(format!("http://127.0.0.1:{}", w.upstream_port))
        .args(args)
        .output()
        .expect("demo-client");
    let (_, direct) = summary(direct.status, &direct.stdout, &direct.stderr);
    let (_, proxied) = w.client(args);
    (direct, proxied)
}

/// Drops what differs between any two calls: elapsed time and the server's `date` header
/// (second resolution, so two calls may straddle a second).
fn without_timing(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(m) = v.as_object_mut() {
        m.remove("elapsed_ms");
        for key in ["headers", "metadata"] {
            if let Some(h) = m.get_mut(key).and_then(|h| h.as_object_mut()) {
                h.remove("date");
            }
        }
    }
    v
}

#[test]
fn unary_and_bidi_calls_pass_through_unchanged() {
    let w = World::new();
    let _server = w.server(&["--users", "100"]);
    let _sidecar = w.sidecar(&w.config(true, ""));
    let known = reprise_demo::users::demo_users(100)[7].user_id.clone();
    let cases: Vec<Vec<&str>> = vec![
        vec!["--metadata", "x-echo-tenant=acme", "get", "--id", &known],
        // NOT_FOUND with metadata in the trailers and grpc-status-details-bin.
        vec![
            "--metadata",
            "x-echo-tenant=acme",
            "--metadata",
            "x-echo-n=7",
            "get",
            "--id",
            "nope",
        ],
        vec!["--metadata", "x-echo-a=b", "chat", "--count", "50"],
        // INVALID_ARGUMENT from the middle of a bidi stream, with trailers.
        vec![
            "--metadata",
            "x-echo-a=b",
            "chat",
            "--count",
            "20",
            "--fail-at",
            "5",
        ],
    ];
    for args in cases {
        let (direct, proxied) = both(&w, &args);
        assert_eq!(
            without_timing(direct.clone()),
            without_timing(proxied),
            "through the sidecar differs for {args:?}"
        );
        let text = direct.to_string();
        if args.contains(&"nope") {
            assert!(
                text.contains("NOT_FOUND") && text.contains("acme"),
                "{text}"
            );
        }
    }
    assert!(w.metric("reprise_calls_total", &["passthrough"]) >= 4.0);
}

#[test]
fn upstream_down_gives_pass_through_calls_unavailable_not_a_hang() {
    let w = World::new();
    let _sidecar = w.sidecar(&w.config(true, ""));
    let (status, summary) = w.client(&["get", "--id", "x"]);
    assert!(!status.success());
    assert_eq!(summary["status"], "UNAVAILABLE", "{summary}");
    assert!(
        summary["message"]
            .as_str()
            .unwrap_or_default()
            .contains("reprise: upstream")
    );
}

/// A raw HTTP/2 call with `grpc-timeout` and no client-side timer: only the sidecar can end it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_honoured_across_resumes() {
    let w = World::new();
    let _sidecar = w.sidecar(&w.config(true, ""));
    // No upstream at all: the sidecar keeps reconnecting (max_outage 30s) until the deadline.
    let started = std::time::Instant::now();
    let (status, message) = raw_call(&w, users_request("admin"), &[("grpc-timeout", "800m")]).await;
    assert_eq!(status, "4", "{message}");
    assert!(message.contains("deadline"), "{message}");
    eprintln!(
        "deadline of 800ms ended the call after {:?}",
        started.elapsed()
    );
    // The deadline is the app's own choice (`on_app_cancel: restart` by default): the job
    // ends `failed`, so the app's next identical request starts from the beginning.
    let ids = w.job_ids();
    assert_eq!(ids.len(), 1);
    assert_eq!(w.job_field(&ids[0], "status").as_deref(), Some("failed"));
    let error = w.job_field(&ids[0], "last_error").unwrap_or_default();
    assert!(error.contains("deadline"), "{error}");
}

/// Response headers far past hyper's 16 KiB default (and past the 64 KiB at which h2 tears down
/// the whole connection): a pass-through call gets them as the upstream sent them, and one over
/// `max_metadata_bytes` fails alone with `RESOURCE_EXHAUSTED`, while a resumable stream on the
/// same upstream connection runs on without a resume.
#[test]
fn large_response_metadata_passes_and_an_oversized_block_fails_only_its_own_call() {
    const PAD: usize = 100_000;
    let w = World::new();
    let pad = PAD.to_string();
    let _server = w.server(&[
        "--users",
        "5000",
        "--delay-us",
        "1000",
        "--metadata-bytes",
        &pad,
    ]);
    let known = reprise_demo::users::demo_users(5000)[7].user_id.clone();

    // Default limit (1 MiB): the call succeeds, exactly as straight to the upstream.
    let _sidecar = w.sidecar(&w.config(true, ""));
    let (direct, proxied) = both(&w, &["get", "--id", &known]);
    assert_eq!(direct["status"], "OK", "{direct}");
    assert_eq!(without_timing(direct), without_timing(proxied));

    // A sidecar held to 32 KiB, with a resumable stream in flight on its one connection.
    let (port, metrics_port) = (free_port(), free_port());
    let small = w.config_as(
        "pod-b",
        port,
        metrics_port,
        true,
        &World::demo_streams(),
        "max_metadata_bytes: 32768\n",
    );
    let _small = w.sidecar_on(port, &small);
    let record = w.path().join("users.txt");
    let record_arg = record.to_string_lossy().to_string();
    let mut stream = w.client_proc_at(
        port,
        &["users", "--expect-users", "5000", "--record", &record_arg],
    );
    wait_until("the stream is under way", Duration::from_secs(60), || {
        lines(&record).len() >= 100
    });
    for _ in 0..5 {
        let (status, summary) = w.client_at(port, &["get", "--id", &known]);
        assert!(!status.success());
        assert_eq!(summary["status"], "RESOURCE_EXHAUSTED", "{summary}");
        let message = summary["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("upstream response metadata")
                && message.contains("max_metadata_bytes (32768)"),
            "{summary}"
        );
    }
    // The app's own oversized request metadata fails its call the same way.
    let big = format!("x-echo-big={}", "q".repeat(40_000));
    let (_, summary) = w.client_at(port, &["--metadata", &big, "get", "--id", &known]);
    assert_eq!(summary["status"], "RESOURCE_EXHAUSTED", "{summary}");
    assert!(
        summary["message"]
            .as_str()
            .unwrap_or_default()
            .contains("request metadata"),
        "{summary}"
    );

    let status = stream.wait_exit(Duration::from_secs(120));
    let summary = stream.summary();
    assert!(status.success() && summary["ok"] == true, "{summary}");
    let metrics = http_get(metrics_port, "/metrics").1;
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        metric("reprise_resumes_total"),
        0.0,
        "no stream resumed:\n{metrics}"
    );
    assert_eq!(
        metric("reprise_upstream_connects_total"),
        1.0,
        "one upstream connection throughout:\n{metrics}"
    );
}

/// A framed ListUsersRequest for `role`.
fn users_request(role: &str) -> Vec<u8> {
    let req = ListUsersRequest {
        role: role.into(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut msg = vec![0u8; 5];
    msg[1..5].copy_from_slice(&(req.len() as u32).to_be_bytes());
    msg.extend_from_slice(&req);
    msg
}

/// Sends `body` as a ListUsers request (raw HTTP/2, no client-side timer, `headers` added) and
/// returns grpc-status and grpc-message.
async fn raw_call(w: &World, body: Vec<u8>, headers: &[(&str, &str)]) -> (String, String) {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let mut request = http::Request::post(format!("{}/{USERS_METHOD}", w.target()))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body))).expect("request");
    let res = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .expect("the sidecar answers before our own safety timeout")
        .expect("response");
    let headers = res.headers().clone();
    let trailers = res
        .into_body()
        .collect()
        .await
        .expect("body")
        .trailers()
        .cloned()
        .unwrap_or(headers);
    let text = |name: &str| {
        String::from_utf8_lossy(trailers.get(name).map(|v| v.as_bytes()).unwrap_or_default())
            .to_string()
    };
    (text("grpc-status"), text("grpc-message"))
}

/// The gRPC spec: a message flagged compressed in a call without `grpc-encoding` is INTERNAL
/// (it was UNIMPLEMENTED); a request cut inside its frame says so (it said "got 0").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_frames_get_the_status_the_grpc_spec_names() {
    let w = World::new();
    let _sidecar = w.sidecar(&w.config(false, ""));
    let mut flagged = users_request("");
    flagged[0] = 1;
    let (status, message) = raw_call(&w, flagged, &[]).await;
    assert_eq!(status, "13", "{message}");
    assert!(message.contains("no grpc-encoding"), "{message}");

    let truncated = vec![0u8, 0, 0, 0, 10, 1, 2, 3];
    let (status, message) = raw_call(&w, truncated, &[]).await;
    assert_eq!(status, "3", "{message}");
    assert!(
        message.contains("ended inside a message frame (8 bytes"),
        "{message}"
    );
}
