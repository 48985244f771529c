//! An upstream that breaks the contract: nothing is dropped silently. Out-of-order messages are
//! dropped and counted; a message without its offset ends the call and fails the job.

use crate::support::*;

#[test]
fn out_of_order_messages_are_dropped_and_counted_never_silently() {
    let w = World::new();
    let _server = w.server(&["--users", "1000"]);
    // created_at grows with the user's index, but users stream in user_id order: as an offset
    // it goes up and down.
    let streams = format!(
        "  - method: {USERS_METHOD}\n    offset_field: created_at\n    resume_field: limit\n"
    );
    let _sidecar = w.sidecar(&w.config_with_streams(true, &streams, ""));
    let (_, summary) = w.client(&["users"]);
    let received = summary["received"].as_u64().expect("received");
    let dropped = w.metric("reprise_messages_dropped_total", &[USERS_METHOD]);
    let out_of_order = w.metric("reprise_messages_dropped_total", &["out_of_order"]);
    let forwarded = w.metric("reprise_messages_forwarded_total", &[USERS_METHOD]);
    assert!(out_of_order > 0.0, "{}", w.metrics());
    assert_eq!(
        out_of_order, dropped,
        "no resume happened, so no drop is a duplicate"
    );
    assert_eq!(forwarded as u64, received);
    assert_eq!(
        forwarded + dropped,
        1000.0,
        "every message is either forwarded or counted"
    );
}

#[test]
fn a_message_without_its_offset_fails_the_job_with_a_clear_status() {
    let w = World::new();
    let _server = w.server(&[]);
    // `settled_at` is a proto3 `optional` (explicit presence) the demo server never sets: not
    // set means no offset. (An implicit field would read as its default instead.)
    let streams = format!(
        "  - method: {LEDGER_METHOD}\n    offset_field: settled_at\n    resume_field: first\n"
    );
    let _sidecar = w.sidecar(&w.config_with_streams(true, &streams, ""));
    let (status, summary) = w.client(&["ledger", "--count", "10"]);
    assert!(!status.success());
    assert_eq!(summary["status"], "INTERNAL", "{summary}");
    assert_eq!(summary["received"], 0);
    let message = summary["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("no offset field settled_at"), "{message}");
    let ids = w.job_ids();
    assert_eq!(ids.len(), 1);
    assert!(
        message.contains(&ids[0]),
        "the status names the job: {message}"
    );
    assert_eq!(w.job_field(&ids[0], "status").as_deref(), Some("failed"));
    let last_error = w.job_field(&ids[0], "last_error").unwrap_or_default();
    assert!(
        last_error.contains("no offset field settled_at"),
        "{last_error}"
    );
    assert_eq!(
        w.metric("reprise_messages_dropped_total", &["missing_offset"]),
        1.0
    );
}

#[test]
fn an_absent_implicit_offset_is_its_default_not_a_missing_one() {
    // The same stream keyed by `payload` (proto3 bytes, implicit presence): with no payload
    // every event's offset is the empty default, so only the first is above nothing; the rest
    // repeat it and are dropped as out of order, counted, and the call completes.
    let w = World::new();
    let _server = w.server(&[]);
    let streams = format!(
        "  - method: {EVENTS_METHOD}\n    offset_field: payload\n    resume_field: topic\n"
    );
    let _sidecar = w.sidecar(&w.config_with_streams(true, &streams, ""));
    // An empty topic: the app sets no resume value of its own (a topic would be one).
    let (_, summary) = w.client(&[
        "events",
        "--count",
        "10",
        "--payload-bytes",
        "0",
        "--topic",
        "",
    ]);
    assert_eq!(summary["status"], "OK", "{summary}");
    assert_eq!(summary["received"], 1, "{summary}");
    assert_eq!(
        w.metric("reprise_messages_dropped_total", &["out_of_order"]),
        9.0
    );
    assert_eq!(
        w.metric("reprise_messages_dropped_total", &["missing_offset"]),
        0.0
    );
}
