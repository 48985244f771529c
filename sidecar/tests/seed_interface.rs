//! Offsets at their proto3 default: a scalar field without `optional` holding 0 is not on the
//! wire, so a reader must take an absent offset as 0, and a resume at offset 0 must write the
//! 0 explicitly into a resume field that has presence. Two streams prove it end to end, with
//! real processes, real SIGKILLs and real Redis:
//!
//! - the conference talk's own interface, `pb.Server/GetData`, whose `Value` counts from 0 (its
//!   first message has no `Value` bytes at all) and whose `Offset` means "from, inclusive";
//! - a ledger of signed positions crossing 0, resumed through the proto3 `optional`
//!   `after_position` ("strictly after", so "after 0" is not "from the start").

use std::time::Duration;

use crate::support::*;

const LONG: Duration = Duration::from_secs(120);

/// The client ended exactly right: OK, every key once, in order, from `first` to `last`.
fn assert_exact(summary: &serde_json::Value, received: u64, first: &str, last: &str) {
    assert_summary_exact(summary, received);
    assert_eq!(summary["first"], first, "client summary: {summary}");
    assert_eq!(summary["last"], last, "client summary: {summary}");
}

/// Waits until the client has recorded `at_least` keys; false if it ended first (its summary
/// then says why, and the test goes straight to checking it) or `wrong` came true (the test
/// then says why).
fn recorded(
    client: &mut Proc,
    record: &std::path::Path,
    at_least: usize,
    mut wrong: impl FnMut() -> bool,
) -> bool {
    let mut stop = false;
    wait_until(
        &format!("{at_least} keys recorded by the client"),
        LONG,
        || {
            stop = matches!(client.child.try_wait(), Ok(Some(_))) || wrong();
            stop || lines(record).len() >= at_least
        },
    );
    !stop
}

/// The one job of the world, once it is `completed`, with `messages` and `offset` as given.
fn assert_job_completed(w: &World, messages: u64, offset: &str) {
    let ids = w.job_ids();
    assert_eq!(ids.len(), 1, "one logical call, one job: {ids:?}");
    wait_until("job completed", LONG, || {
        w.job_field(&ids[0], "status").as_deref() == Some("completed")
    });
    assert_eq!(
        w.job_field(&ids[0], "messages"),
        Some(messages.to_string()),
        "job messages"
    );
    assert_eq!(
        w.job_field(&ids[0], "offset").as_deref(),
        Some(offset),
        "job offset"
    );
}

/// GetData from Value 0 (no Value bytes on the wire) through the sidecar while the upstream is
/// SIGKILLed and restarted three times: the app gets Values 0..N-1 exactly once, in order.
#[test]
fn talk_get_data_from_value_zero_survives_sigkills_exactly_once() {
    const N: u64 = 20_000;
    const KILLS: usize = 3;
    let w = World::new();
    let n = N.to_string();
    let server_args = ["--data", n.as_str(), "--delay-us", "100"];
    let mut server = w.server(&server_args);
    let sidecar = w.sidecar(&w.config_with_streams(true, &World::seed_streams(), ""));
    let record = w.path().join("values.txt");
    let record_arg = record.to_string_lossy().to_string();
    let mut client = w.client_proc(&["data", "--expect", &n, "--record", &record_arg]);
    let mut kills = 0;
    for kill in 1..=KILLS {
        if !recorded(&mut client, &record, kill * 4000, || false) {
            break;
        }
        server.kill9();
        server = w.server(&server_args);
        kills += 1;
    }
    let status = client.wait_exit(LONG);
    let summary = client.summary();
    assert!(
        status.success(),
        "client failed after {kills} kills: {summary}\nsidecar log:\n{}",
        sidecar.log_text()
    );
    assert_eq!(
        kills, KILLS,
        "the stream ended before every kill: {summary}"
    );
    assert_exact(&summary, N, "0", &(N - 1).to_string());
    assert_job_completed(&w, N, &(N - 1).to_string());

    // Offset is "from, inclusive": each resume got the last forwarded Value again, which the
    // sidecar dropped and counted, once per kill.
    assert!(
        w.metric("reprise_resumes_total", &[DATA_METHOD]) >= KILLS as f64,
        "{}",
        w.metrics()
    );
    let duplicates = w.metric(
        "reprise_messages_dropped_total",
        &["duplicate", DATA_METHOD],
    );
    assert_eq!(
        duplicates,
        KILLS as f64,
        "one repeat per resume:\n{}",
        w.metrics()
    );
}

/// The ledger from -1000 through 0 to 5000. `--unavailable-after 1001` ends the first attempt
/// right after position 0, so the sidecar must resume with `after_position` explicitly 0 (on
/// the wire, as proto3 `optional` allows): a request without it would start the ledger again
/// at -1000. Then two SIGKILLs. The server is strictly-after, so a correct resume never gets a
/// message twice: the sidecar drops no duplicate at all.
#[test]
fn ledger_resumes_after_position_zero_through_the_optional_field() {
    const FIRST: i64 = -1000;
    const COUNT: u64 = 6001;
    const KILL_AT: [usize; 2] = [2500, 4000];
    let last = FIRST + COUNT as i64 - 1;
    let w = World::new();
    let server_args = ["--unavailable-after", "1001", "--delay-us", "100"];
    let mut server = w.server(&server_args);
    let sidecar = w.sidecar(&w.config_with_streams(true, &World::seed_streams(), ""));
    let record = w.path().join("positions.txt");
    let record_arg = record.to_string_lossy().to_string();
    let (first, count) = (FIRST.to_string(), COUNT.to_string());
    let mut client = w.client_proc(&[
        "ledger",
        "--first",
        &first,
        "--count",
        &count,
        "--record",
        &record_arg,
    ]);
    let duplicates = || {
        w.metric(
            "reprise_messages_dropped_total",
            &["duplicate", LEDGER_METHOD],
        )
    };
    let mut killed = Vec::new();
    for at in KILL_AT {
        // A resume that lost the explicit 0 shows as soon as the ledger comes again from
        // -1000 (the sidecar drops the repeats, and with every attempt cut at 0 the stream
        // would go nowhere until max_outage): fail then, saying so.
        let progressed = recorded(&mut client, &record, at, || duplicates() > 0.0);
        let dropped = duplicates();
        assert_eq!(
            dropped, 0.0,
            "the sidecar dropped {dropped} duplicates: the resume after position 0 did not reach \
             the server as after_position = 0, so the ledger came again from {FIRST}"
        );
        if !progressed {
            break;
        }
        server.kill9();
        killed.push(server);
        server = w.server(&server_args);
    }
    let status = client.wait_exit(LONG);
    let summary = client.summary();
    assert!(
        status.success(),
        "client failed after {} kills: {summary}\nsidecar log:\n{}",
        killed.len(),
        sidecar.log_text()
    );
    assert_eq!(
        killed.len(),
        KILL_AT.len(),
        "the stream ended before every kill: {summary}"
    );
    assert_exact(&summary, COUNT, &first, &last.to_string());
    assert_job_completed(&w, COUNT, &last.to_string());

    // The first server saw the whole story: the fresh request without the field, then the
    // resume after position 0 with the field present.
    let log = killed[0].log_text();
    let requests: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("StreamEntries after="))
        .collect();
    assert!(
        requests.len() >= 2
            && requests[0].contains("after=None")
            && requests[1].contains("after=Some(0)"),
        "the first server's requests: {requests:#?}"
    );
    assert!(
        w.metric("reprise_resumes_total", &[LEDGER_METHOD]) >= 3.0,
        "{}",
        w.metrics()
    );
    assert_eq!(
        duplicates(),
        0.0,
        "a strictly-after server repeats nothing:\n{}",
        w.metrics()
    );
}

/// The talk's app asks for Values from 500 itself (`Offset` is "from, inclusive", and the
/// stream is configured `resume_inclusive: true`): it must get 500 too, then every later Value
/// once, through a SIGKILL of the upstream. Read as "strictly after", the app's own 500 would
/// have been dropped as a duplicate.
#[test]
fn the_apps_own_inclusive_offset_is_where_the_job_starts() {
    let w = World::new();
    let server_args = ["--data", "6000", "--delay-us", "100"];
    let mut server = w.server(&server_args);
    let sidecar = w.sidecar(&w.config_with_streams(true, &World::seed_streams(), ""));
    let record = w.path().join("values.txt");
    let record_arg = record.to_string_lossy().to_string();
    let mut client = w.client_proc(&[
        "data",
        "--offset",
        "500",
        "--expect",
        "6000",
        "--record",
        &record_arg,
    ]);
    if recorded(&mut client, &record, 2000, || false) {
        server.kill9();
        server = w.server(&server_args);
    }
    let status = client.wait_exit(LONG);
    let summary = client.summary();
    assert!(
        status.success(),
        "{summary}\nsidecar log:\n{}",
        sidecar.log_text()
    );
    assert_exact(&summary, 5500, "500", "5999");
    assert_job_completed(&w, 5500, "5999");
    drop(server);
}

/// An app that sets the optional `after_position` itself starts its job there, and that start
/// is the job's offset at the first checkpoint, before the (slow) server sends anything: a
/// sidecar or pod that dies now leaves a job that continues after 5, not from the beginning.
#[test]
fn the_apps_own_resume_value_is_stored_as_the_jobs_first_offset() {
    let w = World::new();
    // A minute before each entry: the job's offset can only come from the request.
    let _server = w.server(&["--delay-us", "60000000"]);
    let _sidecar = w.sidecar(&w.config_with_streams(true, &World::seed_streams(), ""));
    let mut client = w.client_proc(&["ledger", "--first", "-10", "--count", "30", "--after", "5"]);
    wait_until("the job in Redis", LONG, || w.job_ids().len() == 1);
    let id = w.job_ids().remove(0);
    wait_until(
        "the app's start stored as the job's offset",
        Duration::from_secs(30),
        || w.job_field(&id, "offset").as_deref() == Some("5"),
    );
    assert_eq!(w.job_field(&id, "messages").as_deref(), Some("0"));
    client.kill9();
}
