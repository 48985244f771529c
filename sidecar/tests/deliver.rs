//! `resume: deliver` over a real RabbitMQ: the pod that receives the handoff event claims the
//! job, resumes the upstream stream itself and delivers the rest to its app's ResumeSink.

use std::time::Duration;

use crate::support::*;

const LONG: Duration = Duration::from_secs(120);

#[test]
fn sigterm_hands_the_job_to_another_pod_and_its_sink_receives_the_rest() {
    let mut w = World::new();
    w.amqp = true;
    let _server = w.server(&["--users", "30000", "--delay-us", "100"]);
    let (sink_a, sink_b) = (free_port(), free_port());
    let sink_record = w.path().join("sink-b.txt");
    let _sink_b = w.sink(sink_b, &sink_record);
    let mut a = w.sidecar(&w.deliver_config("pod-a", w.sidecar_port, w.metrics_port, sink_a));
    let _b = w.deliver_pod("pod-b", sink_b, |c| c);

    let (mut app_a, first) = w.admins_streaming("first.txt", 2000);
    let signalled = std::time::Instant::now();
    a.signal(15);
    let status = a.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "A exits 0:\n{}", a.log_text());
    let log = a.log_text();
    for step in [
        "shutdown 1/5",
        "shutdown 2/5",
        "shutdown 3/5",
        "published job.interrupted",
        "shutdown 4/5",
        "shutdown 5/5",
    ] {
        assert!(log.contains(step), "{step} missing:\n{log}");
    }
    app_a.wait_exit(LONG);

    let all = admin_ids(30000);
    let got_a = lines(&first);
    wait_until("B's sink received the rest", LONG, || {
        lines(&sink_record).len() >= all.len() - got_a.len()
    });
    eprintln!(
        "SIGTERM on A → B's sink has everything: {:?}",
        signalled.elapsed()
    );
    let got_b = lines(&sink_record);
    assert_eq!(got_a, all[..got_a.len()], "A's app: an in-order prefix");
    assert_eq!(
        got_b,
        all[got_a.len()..],
        "B's sink: exactly the rest, none twice, none lost"
    );
    let job = w.job_ids().pop().expect("job");
    wait_until("job completed", LONG, || {
        w.job_field(&job, "status").as_deref() == Some("completed")
    });
    assert_eq!(w.job_field(&job, "owner_pod").as_deref(), Some("pod-b"));
    assert_eq!(w.job_field(&job, "messages"), Some(all.len().to_string()));
}

/// The ResumeSink dies in the middle of a delivery (the soak's `p1-j0107`: its app was
/// SIGKILLed 0.4 s after the takeover) and comes back. Before, the job stayed `interrupted` at
/// the last acknowledged offset for good: the handoff event had been consumed and nobody
/// asked for the job again. Now the job is offered to the service again a moment later and
/// the sink that came back gets the rest.
#[test]
fn a_sink_that_dies_mid_delivery_gets_the_rest_when_it_comes_back() {
    const USERS: usize = 100_000;
    let mut w = World::new();
    w.amqp = true;
    let users = USERS.to_string();
    let _server = w.server(&["--users", users.as_str(), "--delay-us", "100"]);
    let (sink_a, sink_b) = (free_port(), free_port());
    let (record_1, record_2) = (w.path().join("sink-b1.txt"), w.path().join("sink-b2.txt"));
    let mut sink = w.sink(sink_b, &record_1);
    let mut a = w.sidecar(&w.deliver_config("pod-a", w.sidecar_port, w.metrics_port, sink_a));
    let b = w.deliver_pod("pod-b", sink_b, |c| c);

    let (mut app_a, first) = w.admins_streaming("first.txt", 1000);
    a.signal(15);
    assert!(
        a.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        a.log_text()
    );
    app_a.wait_exit(LONG);
    wait_until("B's first sink has some", LONG, || {
        lines(&record_1).len() >= 300
    });
    sink.kill9();
    let all = admin_ids(USERS);
    let (got_a, got_1) = (lines(&first), lines(&record_1));
    assert!(
        got_a.len() + got_1.len() < all.len(),
        "the sink died before the end"
    );
    wait_until("B's delivery stopped", LONG, || {
        b.log_text()
            .contains("delivery to the app's ResumeSink stopped")
    });
    let _sink = w.sink(sink_b, &record_2);
    wait_until("the sink that came back has the rest", LONG, || {
        lines(&record_2).last() == all.last()
    });
    let got_2 = lines(&record_2);
    let from = all
        .iter()
        .position(|id| Some(id) == got_2.first())
        .expect("a real admin");
    assert_eq!(got_a, all[..got_a.len()], "A's app: an in-order prefix");
    assert_eq!(
        got_1,
        all[got_a.len()..got_a.len() + got_1.len()],
        "the first sink: what followed"
    );
    assert!(
        from <= got_a.len() + got_1.len(),
        "resumed at admin {from}, but the sinks had only {}: a gap",
        got_a.len() + got_1.len()
    );
    assert_eq!(
        got_2,
        all[from..],
        "the second sink: everything from the checkpoint on"
    );
    let job = w.job_ids().pop().expect("job");
    wait_until("job completed", LONG, || {
        w.job_field(&job, "status").as_deref() == Some("completed")
    });
}
