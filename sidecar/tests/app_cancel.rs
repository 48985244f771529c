//! An app that ends its own call (its deadline fires, it cancels) on a connection that stays
//! open made its own choice: by default its next identical request starts from the beginning
//! and gets the whole stream (the probe's Node and Go clients got only the tail, with OK).
//! `on_app_cancel: resume` keeps the old behaviour. Driven by the unmodified Python grpcio
//! client, whose deadline both sends `grpc-timeout` and cancels the stream when it fires.

use std::time::Duration;

use crate::support::*;

const USERS: usize = 20_000;
const LONG: Duration = Duration::from_secs(120);

/// One run of the Python client through the sidecar; its JSON summary.
fn python_run(w: &World, extra: &[&str]) -> serde_json::Value {
    let out = python_users(w.sidecar_port)
        .args(extra)
        .output()
        .expect("python client");
    let (_, summary) = summary(out.status, &out.stdout, &out.stderr);
    summary
}

fn streams(policy: &str) -> String {
    format!(
        "  - method: {USERS_METHOD}\n    offset_field: user_id\n    resume_field: after_user_id\n{policy}"
    )
}

fn only_job(w: &World) -> String {
    let ids = w.job_ids();
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0].clone()
}

#[test]
fn an_app_that_gives_up_and_asks_again_gets_the_whole_stream_by_default() {
    let w = World::new();
    let _server = w.server(&["--users", &USERS.to_string(), "--delay-us", "200"]);
    let _sidecar = w.sidecar(&w.config_with_streams(true, &streams(""), ""));
    let first = python_run(&w, &["--timeout", "1.5"]);
    assert_eq!(first["status"], "DEADLINE_EXCEEDED", "{first}");
    let got = first["received"].as_u64().expect("received");
    assert!(got > 0 && got < USERS as u64, "{first}");
    let id = only_job(&w);
    wait_until("the job ends failed", LONG, || {
        w.job_field(&id, "status").as_deref() == Some("failed")
    });
    let error = w.job_field(&id, "last_error").unwrap_or_default();
    assert!(
        error.contains("ended by the app") && error.contains("restart"),
        "{error}"
    );

    let again = python_run(&w, &["--expect-users", &USERS.to_string()]);
    assert_eq!(
        again["ok"], true,
        "the whole stream, from the start: {again}"
    );
    assert_eq!(again["received"], USERS as u64, "{again}");
    wait_until("the job completes", LONG, || {
        w.job_field(&id, "status").as_deref() == Some("completed")
    });
}

#[test]
fn on_app_cancel_resume_continues_after_what_the_app_took() {
    let w = World::new();
    let _server = w.server(&["--users", &USERS.to_string(), "--delay-us", "200"]);
    let policy = "    on_app_cancel: resume\n";
    let _sidecar = w.sidecar(&w.config_with_streams(true, &streams(policy), ""));
    let first = python_run(&w, &["--timeout", "1.5"]);
    assert_eq!(first["status"], "DEADLINE_EXCEEDED", "{first}");
    let got = first["received"].as_u64().expect("received");
    let id = only_job(&w);
    wait_until("the job is interrupted", LONG, || {
        w.job_field(&id, "status").as_deref() == Some("interrupted")
    });
    let again = python_run(&w, &[]);
    assert_eq!(again["status"], "OK", "{again}");
    let rest = again["received"].as_u64().expect("received");
    assert!(rest < USERS as u64, "only the tail: {again}");
    // What the app's connection took but the app never read is not sent again.
    assert!(
        got + rest <= USERS as u64,
        "no message twice: {got} + {rest}"
    );
    assert!(
        got + rest + 1000 >= USERS as u64,
        "at most a window lost: {got} + {rest}"
    );
}

/// An app that dies (SIGKILL: its connection closes) is not an app that cancelled: the job is
/// resumable under the default policy, and the identical request gets the rest.
#[test]
fn an_app_that_dies_leaves_its_job_resumable_under_the_default_policy() {
    let w = World::new();
    let _server = w.server(&["--users", &USERS.to_string(), "--delay-us", "200"]);
    let _sidecar = w.sidecar(&w.config_with_streams(true, &streams(""), ""));
    let record = w.path().join("py.txt");
    let mut cmd = python_users(w.sidecar_port);
    cmd.arg("--record").arg(&record);
    let mut client = Proc::spawn("python-client", &mut cmd, w.path());
    wait_until("python client progress", LONG, || {
        lines(&record).len() >= 3000
    });
    client.kill9();
    let id = only_job(&w);
    wait_until("the job is interrupted", LONG, || {
        w.job_field(&id, "status").as_deref() == Some("interrupted")
    });
    let error = w.job_field(&id, "last_error").unwrap_or_default();
    assert!(error.contains("connection closed"), "{error}");
    let recorded = lines(&record).len() as u64;
    let again = python_run(&w, &[]);
    assert_eq!(again["status"], "OK", "{again}");
    // Resumed from no later than what the dead app had read: the sidecar goes back at least
    // the app's HTTP/2 window, which grpcio's BDP estimator grows to megabytes, more than this
    // whole stream, so here it starts again from the beginning (`restart.rs` shows a resume
    // past the start with a stream longer than its client's window).
    let received = again["received"].as_u64().unwrap_or(0);
    assert!(
        received + recorded >= USERS as u64,
        "a gap: {again}, recorded {recorded}"
    );
}
