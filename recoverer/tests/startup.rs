//! Start-up errors of the real binary: exit code 2, a message naming the key, and no secret
//! on stdout or stderr.

use std::{
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "s3cr3t-pw";

/// The recoverer with a clean environment (nothing of the caller's `REPRISE_*` leaks in),
/// without Kubernetes, and `vars` set.
fn command(args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reprise-recoverer"));
    cmd.args(args)
        .env_clear()
        .env("REPRISE_KUBE", "false")
        .env("RUST_LOG", "info")
        .envs(vars.iter().copied())
        .stdin(Stdio::null());
    cmd
}

/// Runs the recoverer to its exit (bounded by [`WAIT`]).
fn recoverer(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut child = command(args, vars)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn reprise-recoverer");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("reprise-recoverer {args:?} {vars:?} still running after {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn a_url_with_a_bad_scheme_is_exit_2_naming_the_key_without_its_password() {
    let cases = [
        ("REPRISE_REDIS_URL", "foo://u:s3cr3t-pw@h:6379", "redis_url"),
        (
            "REPRISE_REDIS_URL",
            "foo://h:6379/0?password=s3cr3t-pw",
            "redis_url",
        ),
        (
            "REPRISE_AMQP_URL",
            "foo://u:s3cr3t-pw@h:5672/%2f",
            "amqp_url",
        ),
    ];
    for (var, url, key) in cases {
        // The real start-up path, and the config-check path.
        for args in [&[][..], &["--check"]] {
            let output = recoverer(args, &[(var, url)]);
            let all = text(&output);
            assert_eq!(output.status.code(), Some(2), "{var}={url} {args:?}: {all}");
            assert!(all.contains(&format!("`{key}`")), "names {key}: {all}");
            assert!(!all.contains(SECRET), "{var}={url} {args:?} leaks: {all}");
        }
    }
}

/// A running recoverer, its stderr in a file; killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_log(log: &Path, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} within {WAIT:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Valid URLs whose servers do not answer: the recoverer keeps retrying and says so, naming
/// each URL with its password masked.
#[test]
fn unreachable_servers_are_logged_without_their_passwords() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let cases = [
        (
            vec![(
                "REPRISE_REDIS_URL",
                "redis://u:s3cr3t-pw@127.0.0.1:1/0".to_owned(),
            )],
            "redis unreachable",
        ),
        (
            vec![
                ("REPRISE_REDIS_URL", redis),
                (
                    "REPRISE_AMQP_URL",
                    "amqp://u:s3cr3t-pw@127.0.0.1:1/%2f".to_owned(),
                ),
            ],
            "cannot connect to RabbitMQ",
        ),
    ];
    for (i, (vars, needle)) in cases.into_iter().enumerate() {
        let log = dir.path().join(format!("recoverer-{i}.log"));
        let mut vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        vars.push(("REPRISE_METRICS_LISTEN", "127.0.0.1:0"));
        vars.push(("REPRISE_KEY_PREFIX", "test-recoverer-startup"));
        let child = command(&[], &vars)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn reprise-recoverer");
        let _running = Running(child);
        let text = wait_for_log(&log, needle);
        assert!(text.contains("u:***@127.0.0.1:1"), "{text}");
        assert!(!text.contains(SECRET), "leaks: {text}");
    }
}

#[test]
fn a_busy_metrics_listen_port_is_exit_2_naming_the_key() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let addr = holder.local_addr().expect("local addr").to_string();
    let output = recoverer(&[], &[("REPRISE_METRICS_LISTEN", &addr)]);
    let all = text(&output);
    assert_eq!(output.status.code(), Some(2), "{all}");
    assert!(all.contains("`metrics_listen`"), "{all}");
    assert!(all.contains(&addr), "{all}");
}
