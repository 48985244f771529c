//! An unmodified Python grpcio app behind the sidecar: no Reprise code in the app, and the
//! upstream is SIGKILLed mid-stream.

mod support;

use std::{path::PathBuf, process::Command, time::Duration};

use support::*;

fn python() -> PathBuf {
    let from_env = std::env::var_os("REPRISE_PYTHON").map(PathBuf::from);
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    from_env
        .or_else(|| venv.exists().then_some(venv))
        .expect("the grpcio venv: run scripts/test (or scripts/python-env and set REPRISE_PYTHON)")
}

#[test]
fn grpcio_client_sees_one_exact_stream_across_upstream_kills() {
    let w = World::new();
    let args = ["--users", "20000", "--delay-us", "100"];
    let mut server = w.server(&args);
    let _sidecar = w.sidecar(&w.config(true, ""));
    let record = w.path().join("py.txt");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/demo-apps/python/demo_client.py");
    let mut cmd = Command::new(python());
    cmd.arg(&script)
        .args([
            "users",
            "--target",
            &format!("127.0.0.1:{}", w.sidecar_port),
        ])
        .args(["--expect-users", "20000", "--record"])
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
