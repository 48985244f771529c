//! An unmodified Python grpcio app behind the sidecar: no Reprise code in the app, and the
//! upstream is SIGKILLed mid-stream.

use std::time::Duration;

use crate::support::*;

#[test]
fn grpcio_client_sees_one_exact_stream_across_upstream_kills() {
    let w = World::new();
    let args = ["--users", "20000", "--delay-us", "100"];
    let mut server = w.server(&args);
    let _sidecar = w.sidecar(&w.config(true, ""));
    let record = w.path().join("py.txt");
    let mut cmd = python_users(w.sidecar_port);
    cmd.args(["--expect-users", "20000", "--record"])
        .arg(&record);
    let mut client = Proc::spawn("python-client", &mut cmd, w.path());
    for kill in 1..=2 {
        wait_until("python client progress", Duration::from_secs(120), || {
            lines(&record).len() >= kill * 5000
        });
        server.kill9();
        server = w.server(&args);
    }
    let status = client.wait_exit(Duration::from_secs(120));
    let log = client.log_text();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("\"received\": 20000") || log.contains("\"received\":20000"),
        "{log}"
    );
    assert!(w.metric("reprise_resumes_total", &[]) >= 2.0);
}
