//! The broker goes away during a handoff (a real `rabbitmqctl stop_app`): the event waits in
//! the Redis outbox, or in the durable queue, and the handoff completes once the broker is
//! back. Nothing is lost. These tests stop the shared broker, so they run one at a time.

mod support;

use std::{process::Command, sync::Mutex, time::Duration};

use support::*;

const LONG: Duration = Duration::from_secs(120);
static BROKER: Mutex<()> = Mutex::new(());

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl (RabbitMQ's CLI) must be installed");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the broker's app again and waits until it accepts AMQP connections.
fn broker_back() {
    rabbitmqctl(&["start_app"]);
    wait_port(5672, Duration::from_secs(60));
}

/// Puts the broker back even when an assertion failed, so later tests have one.
struct Restore;
impl Drop for Restore {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
    }
}

fn outbox_len(w: &World) -> usize {
    let mut con = w.redis();
    redis::cmd("LLEN")
        .arg(format!("{}:outbox", w.prefix))
        .query(&mut con)
        .expect("LLEN")
}

/// Streams on A until its app holds 2,000 users, then SIGTERMs A; returns what A's app got.
fn stream_on_a_then_sigterm(w: &World, a: &mut Proc) -> Vec<String> {
    let (mut app, first) = w.admins_streaming("first.txt", 2000);
    a.signal(15);
    let status = a.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "A exits 0:\n{}", a.log_text());
    app.wait_exit(LONG);
    lines(&first)
}

#[test]
fn broker_down_during_sigterm_the_event_waits_in_the_outbox_then_b_takes_over() {
    let _serial = BROKER.lock().unwrap_or_else(|p| p.into_inner());
    let mut w = World::new();
    w.amqp = true;
    let _server = w.server(&["--users", "30000", "--delay-us", "100"]);
    let (sink_a, sink_b) = (free_port(), free_port());
    let sink_record = w.path().join("sink-b.txt");
    let _sink_b = w.sink(sink_b, &sink_record);
    let mut a = w.sidecar(&w.deliver_config("pod-a", w.sidecar_port, w.metrics_port, sink_a));
    let _b = w.deliver_pod("pod-b", sink_b, |c| c);

    let _restore = Restore;
    rabbitmqctl(&["stop_app"]);
    let got_a = stream_on_a_then_sigterm(&w, &mut a);
    assert!(
        a.log_text().contains("job.interrupted is in the outbox"),
        "{}",
        a.log_text()
    );
    let job = w.job_ids().pop().expect("job");
    assert_eq!(w.job_field(&job, "status").as_deref(), Some("interrupted"));
    assert_eq!(outbox_len(&w), 1, "the event waits in the outbox");

    broker_back();
    let all = admin_ids(30000);
    wait_until("B's sink received the rest", LONG, || {
        lines(&sink_record).len() >= all.len() - got_a.len()
    });
    assert_eq!(lines(&sink_record), all[got_a.len()..]);
    wait_until("outbox drained", LONG, || outbox_len(&w) == 0);
}

#[test]
fn broker_restarted_in_the_middle_of_a_handoff_loses_nothing() {
    let _serial = BROKER.lock().unwrap_or_else(|p| p.into_inner());
    let mut w = World::new();
    w.amqp = true;
    let _server = w.server(&["--users", "30000", "--delay-us", "100"]);
    let (sink_a, sink_b) = (free_port(), free_port());
    let mut a = w.sidecar(&w.deliver_config("pod-a", w.sidecar_port, w.metrics_port, sink_a));

    // A hands off (the event is confirmed: it sits in the durable quorum queue); the broker
    // restarts before any pod of the service has taken it; B starts afterwards.
    let got_a = stream_on_a_then_sigterm(&w, &mut a);
    assert!(
        a.log_text()
            .contains("published job.interrupted (confirmed)"),
        "{}",
        a.log_text()
    );
    let _restore = Restore;
    rabbitmqctl(&["stop_app"]);
    broker_back();

    let sink_record = w.path().join("sink-b.txt");
    let _sink_b = w.sink(sink_b, &sink_record);
    let _b = w.deliver_pod("pod-b", sink_b, |c| c);
    let all = admin_ids(30000);
    wait_until("B's sink received the rest", LONG, || {
        lines(&sink_record).len() >= all.len() - got_a.len()
    });
    assert_eq!(lines(&sink_record), all[got_a.len()..]);
    let job = w.job_ids().pop().expect("job");
    wait_until("job completed", LONG, || {
        w.job_field(&job, "status").as_deref() == Some("completed")
    });
}
