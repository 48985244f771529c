//! The upstream breaks while the sidecar lives: the app must see one stream, every message
//! exactly once, in order. Real processes, real SIGKILL, real Redis.

use std::time::Duration;

use crate::support::*;
use reprise_demo::users::demo_users;

const LONG: Duration = Duration::from_secs(120);

fn assert_exact(summary: &serde_json::Value, received: u64) {
    assert_eq!(summary["ok"], true, "client summary: {summary}");
    assert_eq!(summary["received"], received, "client summary: {summary}");
    assert_eq!(summary["duplicates"], 0, "client summary: {summary}");
    assert_eq!(summary["out_of_order"], 0, "client summary: {summary}");
    assert_eq!(summary["missing"], 0, "client summary: {summary}");
}

#[test]
fn upstream_sigkilled_and_restarted_three_times_mid_stream() {
    let w = World::new();
    let server_args = ["--users", "20000", "--delay-us", "100"];
    let mut server = w.server(&server_args);
    let sidecar = w.sidecar(&w.config(true, ""));
    let record = w.path().join("ids.txt");
    let record_arg = record.to_string_lossy().to_string();
    let mut client = w.client_proc(&["users", "--expect-users", "20000", "--record", &record_arg]);
    for kill in 1..=3 {
        wait_until("client progress", LONG, || {
            lines(&record).len() >= kill * 4000
        });
        server.kill9();
        server = w.server(&server_args);
    }
    let status = client.wait_exit(LONG);
    let summary = client.summary();
    assert!(
        status.success(),
        "client failed: {summary}\nsidecar log:\n{}",
        sidecar.log_text()
    );
    assert_exact(&summary, 20000);
    assert!(
        w.metric("reprise_resumes_total", &[]) >= 3.0,
        "{}",
        w.metrics()
    );

    let ids = w.job_ids();
    assert_eq!(ids.len(), 1, "one logical call, one job: {ids:?}");
    wait_until("job completed", LONG, || {
        w.job_field(&ids[0], "status").as_deref() == Some("completed")
    });
    assert_eq!(w.job_field(&ids[0], "messages").as_deref(), Some("20000"));
    let last = demo_users(20000).last().map(|u| u.user_id.clone());
    assert_eq!(w.job_field(&ids[0], "offset"), last);
    let resumes: u64 = w
        .job_field(&ids[0], "resumes")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    assert!(resumes >= 3, "resumes recorded in the job: {resumes}");
}

#[test]
fn unavailable_mid_stream_resumes_with_other_fields_unchanged() {
    let w = World::new();
    let _server = w.server(&["--users", "9000", "--unavailable-after", "700"]);
    let _sidecar = w.sidecar(&w.config(true, ""));
    // The role filter must survive every resume: a dropped filter would send other roles,
    // which the client counts as corrupt.
    let (status, summary) = w.client(&[
        "users",
        "--expect-users",
        "9000",
        "--role",
        "member",
        "--label",
        "team=a",
        "--label",
        "env=test",
    ]);
    assert!(status.success(), "{summary}");
    assert_exact(&summary, 3000);
    assert_eq!(summary["corrupt"], 0);
    assert!(
        w.metric("reprise_resumes_total", &["status_unavailable"]) >= 3.0,
        "{}",
        w.metrics()
    );
}

#[test]
fn server_panic_on_items_is_recovered_and_the_stream_stays_exact() {
    let w = World::new();
    let users = demo_users(5000);
    let (p1, p2) = (users[10].user_id.clone(), users[3333].user_id.clone());
    let _server = w.server(&[
        "--users",
        "5000",
        "--panic-on",
        &p1,
        "--panic-on",
        &p2,
        "--unavailable-after",
        "1200",
    ]);
    let _sidecar = w.sidecar(&w.config(true, ""));
    let (status, summary) = w.client(&[
        "users",
        "--expect-users",
        "5000",
        "--skip",
        &p1,
        "--skip",
        &p2,
    ]);
    assert!(status.success(), "{summary}");
    assert_exact(&summary, 4998);
}

#[test]
fn nested_integer_offsets_resume_exactly() {
    let w = World::new();
    let _server = w.server(&["--unavailable-after", "7000"]);
    let _sidecar = w.sidecar(&w.config(true, ""));
    let (status, summary) = w.client(&["events", "--count", "50000", "--payload-bytes", "40"]);
    assert!(status.success(), "{summary}");
    assert_exact(&summary, 50000);
    assert!(w.metric("reprise_resumes_total", &[EVENTS_METHOD]) >= 7.0);
}

#[test]
fn inclusive_offset_server_repeats_are_dropped_and_counted() {
    let w = World::new();
    let _server = w.server(&[
        "--users",
        "5000",
        "--inclusive",
        "--unavailable-after",
        "1000",
    ]);
    let _sidecar = w.sidecar(&w.config(true, ""));
    let (status, summary) = w.client(&["users", "--expect-users", "5000"]);
    assert!(status.success(), "{summary}");
    assert_exact(&summary, 5000);
    // Every resume re-sends the last forwarded user once ("from, inclusive").
    let dropped = w.metric(
        "reprise_messages_dropped_total",
        &["duplicate", USERS_METHOD],
    );
    let resumes = w.metric("reprise_resumes_total", &[USERS_METHOD]);
    assert!(resumes >= 4.0, "{}", w.metrics());
    assert_eq!(
        dropped,
        resumes,
        "one duplicate per resume:\n{}",
        w.metrics()
    );
}

#[test]
fn outage_longer_than_max_outage_ends_the_call_and_leaves_the_job_interrupted() {
    let w = World::new();
    let mut server = w.server(&["--users", "50000", "--delay-us", "200"]);
    let _sidecar = w.sidecar(&w.config(true, "max_outage: 1s\n"));
    let record = w.path().join("ids.txt");
    let record_arg = record.to_string_lossy().to_string();
    let mut client = w.client_proc(&["users", "--record", &record_arg]);
    wait_until("client progress", LONG, || lines(&record).len() >= 1000);
    server.kill9();
    client.wait_exit(LONG);
    let summary = client.summary();
    assert_eq!(summary["status"], "UNAVAILABLE", "{summary}");
    let ids = w.job_ids();
    assert_eq!(ids.len(), 1);
    let message = summary["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&ids[0]),
        "the status names the job: {message}"
    );
    assert_eq!(
        w.job_field(&ids[0], "status").as_deref(),
        Some("interrupted")
    );
    // The stored offset is exactly the last message the app holds.
    let got = lines(&record);
    assert_eq!(w.job_field(&ids[0], "offset").as_ref(), got.last());
    assert_eq!(
        w.job_field(&ids[0], "messages"),
        Some(got.len().to_string())
    );
}
