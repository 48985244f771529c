//! Every call that is not resumable passes through unchanged: unary, bidi, metadata, trailers,
//! error statuses with details. And `grpc-timeout` is honoured across a resumable call's resumes.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use prost::Message;
use reprise_proto::demo::v1::ListUsersRequest;
use support::*;

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
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let mut msg = vec![0u8; 5];
    let req = ListUsersRequest {
        role: "admin".into(),
        ..Default::default()
    }
    .encode_to_vec();
    msg[1..5].copy_from_slice(&(req.len() as u32).to_be_bytes());
    msg.extend_from_slice(&req);
    let request = http::Request::post(format!("{}/{USERS_METHOD}", w.target()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "800m")
        .body(Full::new(Bytes::from(msg)))
        .expect("request");
    let started = std::time::Instant::now();
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
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"4"[..])
    );
    let message = String::from_utf8_lossy(
        trailers
            .get("grpc-message")
            .map(|v| v.as_bytes())
            .unwrap_or_default(),
    )
    .to_string();
    assert!(message.contains("deadline"), "{message}");
    eprintln!(
        "deadline of 800ms ended the call after {:?}",
        started.elapsed()
    );
    let ids = w.job_ids();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        w.job_field(&ids[0], "status").as_deref(),
        Some("interrupted")
    );
}
