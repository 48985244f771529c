//! The demo server and client against each other over loopback, in one process.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use reprise_demo::client::{
    self, ChatOptions, DataOptions, EventsOptions, LedgerOptions, UsersOptions,
};
use reprise_demo::server::Config;
use reprise_demo::users::{demo_users, expected_user_ids};
use support::{InProcess, connect};

fn config(users: usize) -> Config {
    Config {
        users,
        ..Config::default()
    }
}

fn expect(n: usize) -> UsersOptions {
    UsersOptions {
        expect_users: Some(n),
        ..UsersOptions::default()
    }
}

#[tokio::test]
async fn users_arrive_exactly_with_every_filter() {
    let server = InProcess::start(config(1000)).await;
    let db = demo_users(1000);
    let all = client::list_users(&server.conn(), &expect(1000))
        .await
        .expect("summary");
    assert!(all.ok, "{all:?}");
    assert_eq!(all.received, 1000);
    assert_eq!(all.first, db[0].user_id);
    assert_eq!(all.last, db[999].user_id);

    let filtered = UsersOptions {
        role: "member".into(),
        after: db[100].user_id.clone(),
        limit: 50,
        labels: vec![("team".into(), "a".into())],
        ..expect(1000)
    };
    let summary = client::list_users(&server.conn(), &filtered)
        .await
        .expect("summary");
    assert!(summary.ok, "{summary:?}");
    assert_eq!(summary.received, 50);

    // Checking against the wrong database must fail: the check is not vacuous.
    let wrong = client::list_users(&server.conn(), &expect(999))
        .await
        .expect("summary");
    assert!(!wrong.ok);
    assert_eq!(wrong.unexpected, 1);
}

#[tokio::test]
async fn record_file_holds_every_received_id() {
    let server = InProcess::start(config(200)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ids.txt");
    let opts = UsersOptions {
        record: Some(path.clone()),
        ..expect(200)
    };
    let summary = client::list_users(&server.conn(), &opts)
        .await
        .expect("summary");
    assert!(summary.ok, "{summary:?}");
    let recorded = std::fs::read_to_string(&path).expect("record file");
    let expected = expected_user_ids(&demo_users(200), "", "", 0, &HashSet::new());
    assert_eq!(recorded.lines().collect::<Vec<_>>(), expected);
}

#[tokio::test]
async fn a_panicking_user_is_skipped_and_the_stream_goes_on() {
    let db = demo_users(300);
    let bad: HashSet<String> = [db[10].user_id.clone(), db[200].user_id.clone()].into();
    let server = InProcess::start(Config {
        panic_on: bad.clone(),
        ..config(300)
    })
    .await;
    let naive = client::list_users(&server.conn(), &expect(300))
        .await
        .expect("summary");
    assert_eq!(naive.status, "OK");
    assert_eq!((naive.received, naive.missing), (298, 2));

    let opts = UsersOptions {
        skip: bad,
        ..expect(300)
    };
    let summary = client::list_users(&server.conn(), &opts)
        .await
        .expect("summary");
    assert!(summary.ok, "{summary:?}");
}

#[tokio::test]
async fn unavailable_after_cuts_long_streams_only() {
    let server = InProcess::start(Config {
        unavailable_after: Some(40),
        ..config(100)
    })
    .await;
    let cut = client::list_users(&server.conn(), &expect(100))
        .await
        .expect("summary");
    assert_eq!(cut.status, "UNAVAILABLE");
    assert_eq!((cut.received, cut.missing), (40, 60));

    // What a resume asks for: the rest after the last id, again cut after 40.
    let db = demo_users(100);
    let resumed = UsersOptions {
        after: db[79].user_id.clone(),
        ..expect(100)
    };
    let tail = client::list_users(&server.conn(), &resumed)
        .await
        .expect("summary");
    assert!(
        tail.ok,
        "a stream with fewer messages left ends OK: {tail:?}"
    );

    let events = EventsOptions {
        count: 100,
        after: 30,
        ..EventsOptions::default()
    };
    let summary = client::stream_events(&server.conn(), &events).await;
    assert_eq!(summary.status, "UNAVAILABLE");
    assert_eq!(
        (summary.first.as_str(), summary.last.as_str()),
        ("31", "70")
    );
}

#[tokio::test]
async fn inclusive_resends_the_resume_point() {
    let server = InProcess::start(Config {
        inclusive: true,
        ..config(50)
    })
    .await;
    let db = demo_users(50);
    let opts = UsersOptions {
        after: db[9].user_id.clone(),
        ..expect(50)
    };
    let summary = client::list_users(&server.conn(), &opts)
        .await
        .expect("summary");
    assert_eq!(summary.first, db[9].user_id);
    assert_eq!((summary.received, summary.unexpected), (41, 1));

    let events = EventsOptions {
        count: 10,
        after: 4,
        ..EventsOptions::default()
    };
    let summary = client::stream_events(&server.conn(), &events).await;
    assert_eq!(summary.first, "4");
    assert_eq!(summary.unexpected, 1);
}

#[tokio::test]
async fn events_arrive_exactly_with_payload_and_topic() {
    let server = InProcess::start(config(0)).await;
    let opts = EventsOptions {
        count: 20_000,
        payload_bytes: 100,
        topic: "orders".into(),
        after: 500,
        ..EventsOptions::default()
    };
    let summary = client::stream_events(&server.conn(), &opts).await;
    assert!(summary.ok, "{summary:?}");
    assert_eq!(summary.received, 19_500);
    assert_eq!(
        (summary.first.as_str(), summary.last.as_str()),
        ("501", "20000")
    );

    let too_big = EventsOptions {
        payload_bytes: u32::MAX,
        ..opts
    };
    let summary = client::stream_events(&server.conn(), &too_big).await;
    assert_eq!(summary.status, "INVALID_ARGUMENT");
}

fn data(expect: u32, offset: i32) -> DataOptions {
    DataOptions {
        expect,
        offset,
        ..DataOptions::default()
    }
}

fn ledger(first: i64, count: u64, after: Option<i64>) -> LedgerOptions {
    LedgerOptions {
        first,
        count,
        after,
        ..LedgerOptions::default()
    }
}

#[tokio::test]
async fn get_data_counts_from_zero_and_offset_is_inclusive() {
    let server = InProcess::start(Config {
        data: 300,
        ..config(0)
    })
    .await;
    let conn = server.conn();
    let all = client::get_data(&conn, &data(300, 0))
        .await
        .expect("summary");
    assert!(all.ok, "{all:?}");
    assert_eq!(all.received, 300);
    assert_eq!((all.first.as_str(), all.last.as_str()), ("0", "299"));

    // "From this Value, inclusive": Offset 120 starts at 120 itself.
    let from = client::get_data(&conn, &data(300, 120))
        .await
        .expect("summary");
    assert!(from.ok, "{from:?}");
    assert_eq!(from.received, 180);
    assert_eq!(from.first, "120");

    let negative = client::get_data(&conn, &data(300, -5))
        .await
        .expect("summary");
    assert!(negative.ok, "{negative:?}");
    assert_eq!((negative.received, negative.first.as_str()), (300, "0"));

    let past_the_end = client::get_data(&conn, &data(300, 300))
        .await
        .expect("summary");
    assert!(past_the_end.ok, "{past_the_end:?}");
    assert_eq!(past_the_end.received, 0);

    // The check is not vacuous: against the wrong total it fails both ways.
    let short = client::get_data(&conn, &data(299, 0))
        .await
        .expect("summary");
    assert_eq!((short.ok, short.unexpected), (false, 1));
    let long = client::get_data(&conn, &data(301, 0))
        .await
        .expect("summary");
    assert_eq!((long.ok, long.missing), (false, 1));
}

#[tokio::test]
async fn ledger_crosses_zero_and_after_position_is_strictly_after_when_set() {
    let server = InProcess::start(config(0)).await;
    let conn = server.conn();
    let all = client::stream_entries(&conn, &ledger(-1000, 2001, None))
        .await
        .expect("summary");
    assert!(all.ok, "{all:?}");
    assert_eq!(all.received, 2001);
    assert_eq!((all.first.as_str(), all.last.as_str()), ("-1000", "1000"));

    // Set to 0, the field is on the wire: strictly after 0, not from `first`.
    let after_zero = client::stream_entries(&conn, &ledger(-1000, 2001, Some(0)))
        .await
        .expect("summary");
    assert!(after_zero.ok, "{after_zero:?}");
    assert_eq!(after_zero.received, 1000);
    assert_eq!(
        (after_zero.first.as_str(), after_zero.last.as_str()),
        ("1", "1000")
    );

    let after_minus_one = client::stream_entries(&conn, &ledger(-1000, 2001, Some(-1)))
        .await
        .expect("summary");
    assert!(after_minus_one.ok, "{after_minus_one:?}");
    assert_eq!(
        (after_minus_one.received, after_minus_one.first.as_str()),
        (1001, "0")
    );

    // Before the ledger's start, or past its end.
    let before = client::stream_entries(&conn, &ledger(-1000, 2001, Some(-5000)))
        .await
        .expect("summary");
    assert_eq!((before.ok, before.received), (true, 2001));
    let past = client::stream_entries(&conn, &ledger(-1000, 2001, Some(1000)))
        .await
        .expect("summary");
    assert_eq!((past.ok, past.received), (true, 0));

    // Entirely negative, and a ledger that does not fit a sint64.
    let negative = client::stream_entries(&conn, &ledger(-50, 20, Some(-40)))
        .await
        .expect("summary");
    assert!(negative.ok, "{negative:?}");
    assert_eq!(
        (negative.first.as_str(), negative.last.as_str()),
        ("-39", "-31")
    );
    let too_far = client::stream_entries(&conn, &ledger(i64::MAX, 2, None))
        .await
        .expect("summary");
    assert_eq!(too_far.status, "INVALID_ARGUMENT");
    assert!(
        too_far.ok,
        "the refusal is what a correct server does: {too_far:?}"
    );
}

#[tokio::test]
async fn inclusive_ledger_resends_the_resume_position_even_at_zero() {
    let server = InProcess::start(Config {
        inclusive: true,
        ..config(0)
    })
    .await;
    let summary = client::stream_entries(&server.conn(), &ledger(-10, 21, Some(0)))
        .await
        .expect("summary");
    assert_eq!(summary.first, "0");
    assert_eq!((summary.received, summary.unexpected), (11, 1));
}

#[tokio::test]
async fn faults_apply_to_get_data_and_the_ledger() {
    let server = InProcess::start(Config {
        data: 100,
        unavailable_after: Some(40),
        ..config(0)
    })
    .await;
    let conn = server.conn();
    let cut = client::get_data(&conn, &data(100, 0))
        .await
        .expect("summary");
    assert_eq!(cut.status, "UNAVAILABLE", "{cut:?}");
    assert_eq!(cut.message, "injected fault after 40 messages");
    assert_eq!((cut.first.as_str(), cut.last.as_str()), ("0", "39"));
    assert_eq!((cut.received, cut.missing), (40, 60));
    // An inclusive resume at the last Value: 39 again, then the rest, cut after 40 more.
    let resumed = client::get_data(&conn, &data(100, 39))
        .await
        .expect("summary");
    assert_eq!(resumed.status, "UNAVAILABLE", "{resumed:?}");
    assert_eq!(
        (resumed.first.as_str(), resumed.last.as_str()),
        ("39", "78")
    );
    let tail = client::get_data(&conn, &data(100, 78))
        .await
        .expect("summary");
    assert!(tail.ok, "{tail:?}");

    // The first attempt ends right after position 0: what the sidecar's tests resume from.
    let cut = client::stream_entries(&conn, &ledger(-40, 100, None))
        .await
        .expect("summary");
    assert_eq!(cut.status, "UNAVAILABLE", "{cut:?}");
    assert_eq!((cut.first.as_str(), cut.last.as_str()), ("-40", "-1"));
    let cut = client::stream_entries(&conn, &ledger(-39, 100, None))
        .await
        .expect("summary");
    assert_eq!(cut.last, "0");
    let resumed = client::stream_entries(&conn, &ledger(-39, 100, Some(0)))
        .await
        .expect("summary");
    assert_eq!((resumed.first.as_str(), resumed.last.as_str()), ("1", "40"));
}

#[tokio::test]
async fn echo_metadata_come_back_in_headers_and_error_trailers() {
    let server = InProcess::start(config(10)).await;
    let conn = connect(server.addr, &[("x-echo-trace", "t1"), ("other", "no")]);
    let summary = client::list_users(&conn, &expect(10))
        .await
        .expect("summary");
    assert_eq!(
        summary.headers.get("x-echo-trace").map(String::as_str),
        Some("t1")
    );
    assert!(!summary.headers.contains_key("other"));

    let known = client::get_user(&conn, &demo_users(10)[3].user_id).await;
    assert!(known.ok);
    assert_eq!(
        known.metadata.get("x-echo-trace").map(String::as_str),
        Some("t1")
    );

    let conn = connect(
        server.addr,
        &[("x-echo-trace", "t2"), ("x-echo-blob-bin", "hi")],
    );
    let unknown = client::get_user(&conn, "no-such-user").await;
    assert_eq!(unknown.status, "NOT_FOUND");
    assert_eq!(
        unknown.metadata.get("x-echo-trace").map(String::as_str),
        Some("t2")
    );
    assert_eq!(
        unknown.metadata.get("x-echo-blob-bin").map(String::as_str),
        Some("6869")
    );
    let details = unknown.details_status.expect("grpc-status-details-bin");
    assert_eq!(details.code, tonic::Code::NotFound as i32);
}

#[tokio::test]
async fn chat_echoes_one_at_a_time_and_fails_on_request() {
    let server = InProcess::start(config(0)).await;
    let conn = connect(server.addr, &[("x-echo-room", "r")]);
    let summary = client::chat(
        &conn,
        &ChatOptions {
            count: 25,
            fail_at: None,
        },
    )
    .await;
    assert!(summary.ok, "{summary:?}");
    assert_eq!(summary.received, 25);

    let failed = client::chat(
        &conn,
        &ChatOptions {
            count: 25,
            fail_at: Some(7),
        },
    )
    .await;
    assert!(failed.ok, "{failed:?}");
    assert_eq!(failed.status, "INVALID_ARGUMENT");
    assert_eq!(failed.received, 6);
    assert_eq!(
        failed.trailers.get("x-echo-room").map(String::as_str),
        Some("r")
    );
}

#[tokio::test]
async fn shutdown_ends_streams_with_unavailable() {
    let server = InProcess::start(Config {
        delay: Duration::from_millis(1),
        ..config(100_000)
    })
    .await;
    let conn = server.conn();
    let record = tempfile::NamedTempFile::new().expect("tempfile");
    let opts = UsersOptions {
        record: Some(record.path().to_owned()),
        ..expect(100_000)
    };
    let stream = tokio::spawn(async move { client::list_users(&conn, &opts).await });
    // Shut down once the stream is under way: the record file has a line.
    let start = std::time::Instant::now();
    while std::fs::read_to_string(record.path()).map_or(0, |s| s.len()) == 0 {
        assert!(start.elapsed() < support::DEADLINE, "stream never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.shutdown.cancel();
    let summary = stream.await.expect("join").expect("summary");
    assert_eq!(summary.status, "UNAVAILABLE", "{summary:?}");
    assert_eq!(summary.message, "server shutting down");
    assert!(summary.received < 100_000);
    tokio::time::timeout(support::DEADLINE, server.task)
        .await
        .expect("server stops")
        .expect("join")
        .expect("serve");
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = InProcess::start(config(1)).await;
    let channel = server.conn().channel();
    for service in [
        "demo.v1.UserService",
        "demo.v1.EventService",
        "demo.v1.LedgerService",
        "pb.Server",
    ] {
        let health = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(
            health.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("reflection reply")
        .expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection reply {response:?}");
    };
    let names: HashSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in [
        "demo.v1.UserService",
        "demo.v1.EventService",
        "demo.v1.LedgerService",
        "pb.Server",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
}

/// `--faults-on-signal`'s two faults, raised as its signal handlers raise them: the streams in
/// flight end with UNAVAILABLE, or are reset (RST_STREAM); a stream that starts afterwards is
/// untouched.
#[tokio::test]
async fn injected_unavailable_and_reset_break_only_the_streams_in_flight() {
    use reprise_proto::demo::v1::{StreamEventsRequest, event_service_client::EventServiceClient};
    let faults = std::sync::Arc::new(reprise_demo::server::faults::SignalFaults::default());
    let server = InProcess::start(Config {
        delay: Duration::from_millis(2),
        faults: std::sync::Arc::clone(&faults),
        ..config(10)
    })
    .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let request = |topic: &str| StreamEventsRequest {
        start: None,
        topic: topic.to_owned(),
        count: 100_000,
        payload_bytes: 10,
    };
    for (inject, code, words) in [
        (
            (|f: &reprise_demo::server::faults::SignalFaults| f.inject_unavailable())
                as fn(&reprise_demo::server::faults::SignalFaults),
            tonic::Code::Unavailable,
            "injected fault (SIGUSR1)",
        ),
        (
            |f: &reprise_demo::server::faults::SignalFaults| f.inject_reset(),
            tonic::Code::Internal,
            // hyper's account of the RST_STREAM the server sent.
            "INTERNAL_ERROR, Remote",
        ),
    ] {
        let mut client = EventServiceClient::new(channel.clone());
        let mut stream = client
            .stream_events(request("t"))
            .await
            .expect("stream starts")
            .into_inner();
        for _ in 0..5 {
            stream
                .message()
                .await
                .expect("a message")
                .expect("not the end");
        }
        inject(&faults);
        let err = loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the stream ended OK"),
                Err(status) => break status,
            }
        };
        assert_eq!(err.code(), code, "{err:?}");
        assert!(format!("{err:?}").contains(words), "{err:?}");
        // A stream that begins after the fault streams on.
        let mut later = client
            .stream_events(request("u"))
            .await
            .expect("stream starts")
            .into_inner();
        for _ in 0..20 {
            later
                .message()
                .await
                .expect("a message")
                .expect("not the end");
        }
    }
    server.shutdown.cancel();
}
