//! The real binaries as processes, for what only a process can show: the crash of
//! `--exit-after`, signals, the descriptors file.

mod support;

use reprise_demo::client::{self, DataOptions, UsersOptions};
use reprise_demo::server::EXIT_AFTER_CODE;
use support::{ServerProcess, connect};

#[tokio::test]
async fn exit_after_crashes_the_process_mid_stream() {
    let mut server = ServerProcess::start(&["--users", "5000", "--exit-after", "1200"]);
    let opts = UsersOptions {
        expect_users: Some(5000),
        ..UsersOptions::default()
    };
    let summary = client::list_users(&connect(server.addr, &[]), &opts)
        .await
        .expect("summary");
    assert_ne!(summary.status, "OK", "{summary:?}");
    assert!(summary.received <= 1200, "{summary:?}");
    assert_eq!(
        summary.duplicates + summary.out_of_order + summary.unexpected,
        0
    );
    assert_eq!(server.wait().code(), Some(EXIT_AFTER_CODE));
}

#[tokio::test]
async fn exit_after_crashes_get_data_too() {
    let mut server = ServerProcess::start(&["--data", "5000", "--exit-after", "1200"]);
    let opts = DataOptions {
        expect: 5000,
        ..DataOptions::default()
    };
    let summary = client::get_data(&connect(server.addr, &[]), &opts)
        .await
        .expect("summary");
    assert_ne!(summary.status, "OK", "{summary:?}");
    assert!(summary.received <= 1200, "{summary:?}");
    assert_eq!(
        summary.duplicates + summary.out_of_order + summary.unexpected,
        0
    );
    assert_eq!(server.wait().code(), Some(EXIT_AFTER_CODE));
}

#[tokio::test]
async fn sigterm_ends_the_stream_with_unavailable_and_exits_zero() {
    let mut server = ServerProcess::start(&["--users", "100000", "--delay-us", "1000"]);
    let conn = connect(server.addr, &[]);
    let record = tempfile::NamedTempFile::new().expect("tempfile");
    let opts = UsersOptions {
        record: Some(record.path().to_owned()),
        ..UsersOptions::default()
    };
    let stream = tokio::spawn(async move { client::list_users(&conn, &opts).await });
    // Signal once the stream is under way: the record file has a line.
    let start = std::time::Instant::now();
    while std::fs::read_to_string(record.path()).map_or(0, |s| s.len()) == 0 {
        assert!(start.elapsed() < support::DEADLINE, "stream never started");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    server.signal("TERM");
    let summary = stream.await.expect("join").expect("summary");
    assert_eq!(summary.status, "UNAVAILABLE", "{summary:?}");
    assert!(server.wait().success());
}

#[test]
fn write_descriptors_writes_the_demo_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("demo.binpb");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_demo-server"))
        .arg("--write-descriptors")
        .arg(&path)
        .status()
        .expect("run demo-server");
    assert!(status.success());
    assert_eq!(
        std::fs::read(&path).expect("descriptors"),
        reprise_proto::DEMO_DESCRIPTOR_SET
    );
}
