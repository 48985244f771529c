//! `resume: deliver` into a Python grpcio app: pod A is SIGTERMed mid-stream, pod B takes the
//! job over and delivers the rest to `examples/demo-apps/python/resume_sink.py`, which shows
//! that any language can implement `reprise.v1.ResumeSink` in a few lines.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::support::*;

const LONG: Duration = Duration::from_secs(120);

/// Starts resume_sink.py on `port`, recording to `record`, and waits for its port.
fn python_sink(w: &World, port: u16, record: &Path) -> Proc {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/demo-apps/python/resume_sink.py");
    let mut cmd = Command::new(python());
    cmd.arg(&script)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--record")
        .arg(record);
    let p = Proc::spawn("python-sink", &mut cmd, w.path());
    wait_until("python sink listening", Duration::from_secs(60), || {
        p.log_text().contains("listening on")
    });
    wait_port(port, Duration::from_secs(20));
    p
}

#[test]
fn sigterm_hands_the_job_to_another_pod_and_its_python_sink_receives_the_rest() {
    let mut w = World::new();
    w.amqp = true;
    let _server = w.server(&["--users", "30000", "--delay-us", "100"]);
    let (sink_a, sink_b) = (free_port(), free_port());
    let sink_record = w.path().join("python-sink-b.txt");
    let sink_b_proc = python_sink(&w, sink_b, &sink_record);
    let mut a = w.sidecar(&w.deliver_config("pod-a", w.sidecar_port, w.metrics_port, sink_a));
    let _b = w.deliver_pod("pod-b", sink_b, |c| c);

    let (mut app_a, first) = w.admins_streaming("first.txt", 2000);
    a.signal(15);
    let status = a.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "A exits 0:\n{}", a.log_text());
    assert!(
        a.log_text().contains("published job.interrupted"),
        "A hands the job off:\n{}",
        a.log_text()
    );
    app_a.wait_exit(LONG);

    let all = admin_ids(30000);
    let got_a = lines(&first);
    wait_until("the Python sink received the rest", LONG, || {
        lines(&sink_record).len() >= all.len() - got_a.len()
    });
    let job = w.job_ids().pop().expect("job");
    wait_until("job completed", LONG, || {
        w.job_field(&job, "status").as_deref() == Some("completed")
    });
    let got_b = lines(&sink_record);
    assert_eq!(got_a, all[..got_a.len()], "A's app: an in-order prefix");
    assert_eq!(
        got_b,
        all[got_a.len()..],
        "the Python sink: exactly the rest, in order, none twice, none lost:\n{}",
        sink_b_proc.log_text()
    );
    assert_eq!(w.job_field(&job, "owner_pod").as_deref(), Some("pod-b"));
    assert_eq!(w.job_field(&job, "messages"), Some(all.len().to_string()));
    wait_until("the Python sink logged the Start and the End", LONG, || {
        let log = sink_b_proc.log_text();
        log.contains("from pod pod-a") && log.contains("end: code 0")
    });
}
