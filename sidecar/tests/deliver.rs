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
