//! The app or the sidecar dies mid-stream: the job waits `interrupted` in Redis and the app's
//! identical request resumes it from the stored offset. Also: Redis unreachable.

use std::time::Duration;

use crate::support::*;

const LONG: Duration = Duration::from_secs(120);

/// Runs a client until it has recorded `at_least` users, then SIGKILLs it.
fn kill_client_midway(w: &World, record: &std::path::Path, at_least: usize) {
    let arg = record.to_string_lossy().to_string();
    let mut client = w.client_proc(&["users", "--role", "admin", "--record", &arg]);
    wait_until("first client progress", LONG, || {
        lines(record).len() >= at_least
    });
    client.kill9();
}

fn only_job(w: &World) -> String {
    let ids = w.job_ids();
    assert_eq!(ids.len(), 1, "jobs: {ids:?}");
    ids[0].clone()
}

/// Checks the second run got exactly the users after the stored offset, and the first run a
/// prefix up to it: together every admin user, none twice.
fn assert_resumed_exactly(first: &[String], second: &[String], offset: &str, users: usize) {
    let admins = admin_ids(users);
    let cut = admins
        .iter()
        .position(|id| id == offset)
        .expect("offset is a real user")
        + 1;
    assert_eq!(
        second,
        &admins[cut..],
        "second run: exactly the users after the offset"
    );
    assert_eq!(
        first,
        &admins[..first.len()],
        "first run: an in-order prefix"
    );
    assert!(
        first.len() <= cut,
        "the offset never runs behind what the app received"
    );
    // What the sidecar had forwarded but the killed app had not yet read (HTTP/2 buffers).
    eprintln!("in flight to the killed app: {} users", cut - first.len());
}

#[test]
fn app_killed_and_restarted_resumes_from_the_stored_offset() {
    let w = World::new();
    let _server = w.server(&["--users", "30000", "--delay-us", "100"]);
    let sidecar = w.sidecar(&w.config(true, ""));
    let first = w.path().join("first.txt");
    kill_client_midway(&w, &first, 2000);
    let job = only_job(&w);
    wait_until("job interrupted", LONG, || {
        w.job_field(&job, "status").as_deref() == Some("interrupted")
    });
    let offset = w.job_field(&job, "offset").expect("offset stored");

    let second = w.path().join("second.txt");
    let arg = second.to_string_lossy().to_string();
    let (status, summary) = w.client(&["users", "--role", "admin", "--record", &arg]);
    assert!(status.success(), "{summary}\n{}", sidecar.log_text());
    assert_resumed_exactly(&lines(&first), &lines(&second), &offset, 30000);
    assert_eq!(
        only_job(&w),
        job,
        "the re-sent request continued the same job"
    );
    assert_eq!(w.job_field(&job, "status").as_deref(), Some("completed"));
    assert_eq!(w.job_field(&job, "messages"), Some("10000".into()));
    // A completed job's identical request starts a fresh run from the beginning.
    let (status, summary) = w.client(&["users", "--role", "admin"]);
    assert!(status.success(), "{summary}");
    assert_eq!(summary["received"], 10000);
}

#[test]
fn sidecar_sigkilled_and_restarted_while_a_job_is_interrupted() {
    let w = World::new();
    let _server = w.server(&["--users", "30000", "--delay-us", "100"]);
    let config = w.config(true, "");
    let mut sidecar = w.sidecar(&config);
    let first = w.path().join("first.txt");
    kill_client_midway(&w, &first, 2000);
    let job = only_job(&w);
    wait_until("job interrupted", LONG, || {
        w.job_field(&job, "status").as_deref() == Some("interrupted")
    });
    let offset = w.job_field(&job, "offset").expect("offset stored");
    let fence_before: u64 = w
        .job_field(&job, "fence")
        .and_then(|f| f.parse().ok())
        .expect("fence");

    sidecar.kill9();
    let _sidecar = w.sidecar(&config);
    let second = w.path().join("second.txt");
    let arg = second.to_string_lossy().to_string();
    let (status, summary) = w.client(&["users", "--role", "admin", "--record", &arg]);
    assert!(status.success(), "{summary}");
    assert_resumed_exactly(&lines(&first), &lines(&second), &offset, 30000);
    let fence_after: u64 = w
        .job_field(&job, "fence")
        .and_then(|f| f.parse().ok())
        .expect("fence");
    assert!(fence_after > fence_before, "a new owner bumps the fence");
}

#[test]
fn redis_unreachable_keeps_proxying_with_in_memory_offsets() {
    let w = World::new();
    let _server = w.server(&["--users", "6000", "--unavailable-after", "1000"]);
    let dead_redis = format!("redis_url: redis://127.0.0.1:{}\n", free_port());
    let _sidecar = w.sidecar(&w.config(false, &dead_redis));
    let (status, body) = http_get(w.metrics_port, "/readyz");
    assert_eq!(status, 503, "not ready while redis is down: {body}");
    assert!(body.contains("redis"), "{body}");
    assert_eq!(http_get(w.metrics_port, "/healthz").0, 200);
    let (status, summary) = w.client(&["users", "--expect-users", "6000"]);
    assert!(status.success(), "{summary}");
    assert_eq!(summary["received"], 6000);
    assert_eq!(summary["duplicates"], 0);
    assert_eq!(w.metric("reprise_store_degraded", &[]), 1.0);
    assert!(w.metric("reprise_resumes_total", &[]) >= 5.0);
}

#[test]
fn without_redis_the_in_process_store_resumes_an_interrupted_job() {
    let w = World::new();
    let _server = w.server(&["--users", "30000", "--delay-us", "100"]);
    let _sidecar = w.sidecar(&w.config(false, ""));
    let first = w.path().join("first.txt");
    kill_client_midway(&w, &first, 2000);
    let second = w.path().join("second.txt");
    let arg = second.to_string_lossy().to_string();
    let (status, summary) = w.client(&["users", "--role", "admin", "--record", &arg]);
    assert!(status.success(), "{summary}");
    let (first, second) = (lines(&first), lines(&second));
    let next = second.first().expect("second run got users");
    let admins = admin_ids(30000);
    let at = admins.iter().position(|id| id == next).expect("real user");
    assert!(at >= first.len() && at > 0, "resumed, not restarted");
    assert_eq!(&second[..], &admins[at..]);
    assert!(
        w.job_ids().is_empty(),
        "nothing written to redis without redis_url"
    );
}
