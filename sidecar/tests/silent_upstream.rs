//! An upstream that takes the connection and says nothing. `max_outage` bounds the wait for
//! response headers as it bounds reconnecting, unless the upstream shows it is alive (it
//! answers a health probe on the same connection), as a server that holds its headers back
//! until its first message does.

use std::{convert::Infallible, io::Read, net::TcpListener, time::Duration};

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use reprise_proto::demo::v1::User;

fn streams_with_outage(outage: &str) -> String {
    format!(
        "  - method: {USERS_METHOD}\n    offset_field: user_id\n    resume_field: after_user_id\n    max_outage: {outage}\n"
    )
}

/// The probe's case: the port accepts TCP and never writes a byte. With `max_outage: 3s` the
/// call ended only when the app gave up (never, without a deadline).
#[test]
fn an_upstream_that_never_speaks_http2_ends_the_call_once_max_outage_is_spent() {
    let w = World::new();
    let listener = TcpListener::bind(("127.0.0.1", w.upstream_port)).expect("bind");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut conn in listener.incoming().flatten() {
            let mut sink = [0u8; 4096];
            let _ = conn.set_nonblocking(true);
            let _ = conn.read(&mut sink);
            held.push(conn);
        }
    });
    let sidecar = w.sidecar(&w.config_with_streams(true, &streams_with_outage("3s"), ""));
    let mut client = w.client_proc(&["users"]);
    // A guard against a hang, not a timing: the call must end by itself.
    let status = client.wait_exit(Duration::from_secs(60));
    let summary = client.summary();
    assert!(!status.success(), "{summary}");
    assert_eq!(summary["status"], "UNAVAILABLE", "{summary}");
    let message = summary["message"].as_str().unwrap_or_default();
    assert!(message.contains("no response headers"), "{summary}");
    let log = sidecar.log_text();
    assert!(
        log.contains("upstream silent; counting it as an outage"),
        "the wait is logged:\n{log}"
    );
}

/// A live upstream whose response headers come 5 s late (its first message is slow, and it
/// sends its headers with it): with `max_outage: 2s` the call still succeeds, because the
/// upstream answers the health probe at once.
#[test]
fn late_response_headers_from_a_live_upstream_are_waited_for() {
    let w = World::new();
    let port = w.upstream_port;
    let (ready, listening) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("bind");
            let _ = ready.send(());
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        Ok::<_, Infallible>(late_server(req).await)
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    listening.recv().expect("the late server listens");
    let sidecar = w.sidecar(&w.config_with_streams(true, &streams_with_outage("2s"), ""));
    let (status, summary) = w.client(&["users"]);
    assert!(
        status.success(),
        "{summary}\nsidecar log:\n{}",
        sidecar.log_text()
    );
    assert_eq!(summary["received"], 1, "{summary}");
    assert_eq!(
        w.metric("reprise_resumes_total", &[]),
        0.0,
        "waiting on a live upstream is no outage"
    );
}

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// Health checks answered at once (UNIMPLEMENTED, trailers-only); ListUsers answered 5 s late,
/// headers and its one message together.
async fn late_server(req: Request<Incoming>) -> Response<Body> {
    let grpc = |status: &'static str| {
        let mut res = Response::new(Full::new(Bytes::new()).boxed_unsync());
        res.headers_mut()
            .insert("content-type", "application/grpc".parse().expect("header"));
        res.headers_mut()
            .insert("grpc-status", status.parse().expect("header"));
        res
    };
    if req.uri().path() != format!("/{USERS_METHOD}") {
        return grpc("12");
    }
    let _ = req.into_body().collect().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let user = User {
        user_id: "u-0001".into(),
        name: "late".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(user.len() as u32).to_be_bytes());
    framed.extend_from_slice(&user);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().expect("header"));
    let frames = futures::stream::iter([
        Ok::<_, Infallible>(Frame::data(Bytes::from(framed))),
        Ok(Frame::trailers(trailers)),
    ]);
    let mut res = Response::new(StreamBody::new(frames).boxed_unsync());
    res.headers_mut()
        .insert("content-type", "application/grpc".parse().expect("header"));
    res
}
