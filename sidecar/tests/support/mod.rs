//! Shared test support: real processes (demo server, sidecar, demo clients) on loopback ports,
//! a real Redis isolated by key prefix, and waits on conditions with deadlines.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

pub const USERS_METHOD: &str = "demo.v1.UserService/ListUsers";
pub const EVENTS_METHOD: &str = "demo.v1.EventService/StreamEvents";
/// The conference talk's own interface: int32 `Value` from 0, inclusive `Offset`.
pub const DATA_METHOD: &str = "pb.Server/GetData";
/// Signed positions, resumed through the proto3 `optional` `after_position`.
pub const LEDGER_METHOD: &str = "demo.v1.LedgerService/StreamEntries";

/// The Python of the grpcio venv (`scripts/python-env`), for the unmodified Python apps.
pub fn python() -> PathBuf {
    let from_env = std::env::var_os("REPRISE_PYTHON").map(PathBuf::from);
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    from_env
        .or_else(|| venv.exists().then_some(venv))
        .expect("the grpcio venv: run scripts/test (or scripts/python-env and set REPRISE_PYTHON)")
}

/// The unmodified Python grpcio app (`demo_client.py users`), aimed at the sidecar on `port`;
/// the caller adds its flags.
pub fn python_users(port: u16) -> Command {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/demo-apps/python/demo_client.py");
    let mut cmd = Command::new(python());
    cmd.arg(script)
        .args(["users", "--target", &format!("127.0.0.1:{port}")]);
    cmd
}

/// The demo apps in other languages than Rust, each an unmodified gRPC app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Go,
    Node,
    Python,
    Rust,
}

impl Lang {
    pub fn name(self) -> &'static str {
        match self {
            Lang::Go => "go",
            Lang::Node => "node",
            Lang::Python => "python",
            Lang::Rust => "rust",
        }
    }

    /// This language's demo client, `users` against `127.0.0.1:{port}`; the caller adds the
    /// `users` flags (every client takes the same ones and prints the same summary line).
    pub fn users_client(self, port: u16) -> Command {
        let target = format!("127.0.0.1:{port}");
        match self {
            Lang::Go => {
                let mut cmd = Command::new(go_bin("service-b"));
                cmd.args(["--target", &target, "users"]);
                cmd
            }
            Lang::Node => {
                let dir = node_app_dir();
                let mut cmd =
                    Command::new(std::env::var_os("REPRISE_NODE").unwrap_or("node".into()));
                cmd.arg(dir.join("demo_client.js"))
                    .args(["users", "--target", &target]);
                cmd
            }
            Lang::Python => python_users(port),
            Lang::Rust => {
                let mut cmd = Command::new(bin("demo-client"));
                cmd.args(["--target", &format!("http://{target}"), "users"]);
                cmd
            }
        }
    }

    /// This language's demo server (`UserService` with the demo-server's flags) on `port`.
    /// Only Go and Rust have one.
    pub fn server(self, port: u16) -> Command {
        let mut cmd = match self {
            Lang::Go => Command::new(go_bin("service-a")),
            Lang::Rust => Command::new(bin("demo-server")),
            other => panic!("no {} demo server", other.name()),
        };
        cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
        cmd
    }
}

/// A binary of the Go demo apps (`scripts/demo-apps go` builds them into target/demo-go/bin;
/// `REPRISE_GO_BIN` names another directory).
pub fn go_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("REPRISE_GO_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/demo-go/bin"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the Go demo apps first (`scripts/demo-apps go`, as scripts/test does)",
        path.display()
    );
    path
}

/// The Node demo app's directory, its packages installed (`scripts/demo-apps node`).
pub fn node_app_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/demo-apps/node");
    assert!(
        dir.join("node_modules/@grpc/grpc-js").exists(),
        "{}/node_modules is missing: install the Node demo app's packages first (`scripts/demo-apps node`, as scripts/test does)",
        dir.display()
    );
    dir
}

/// A built binary of the workspace (the test binary lives in target/<profile>/deps).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build every binary first (`cargo build --workspace --bins`, as scripts/test does)",
        path.display()
    );
    path
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A port nothing listens on, never the same twice in this process: the kernel may hand a
/// just-released port out again, and two processes of one test must not both get it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Polls `cond` until it holds or `within` passes; panics with `what` on timeout.
pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_port(port: u16, within: Duration) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_until(&format!("port {port}"), within, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    });
}

/// A child process whose output goes to a log file; killed (SIGKILL) when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}-{}.log", unique()));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            name: name.into(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        let rc = send_signal(self.pid(), sig);
        assert!(rc, "kill -{sig} {} ({})", self.name, self.pid());
    }

    pub fn kill9(&mut self) {
        self.signal(9);
        let _ = self.child.wait();
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}; log:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A demo client's summary from its log (it prints one JSON line last).
    pub fn summary(&self) -> serde_json::Value {
        let log = self.log_text();
        let line = log
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("no summary in client log:\n{log}"));
        serde_json::from_str(line).expect("summary JSON")
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test failed: show what each process said last.
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            eprintln!(
                "--- last lines of {} ({}) ---",
                self.name,
                self.log.display()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `kill(2)` through the `kill` command, keeping the tests free of unsafe code.
pub fn send_signal(pid: i32, sig: i32) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// One test's world: a temp dir, a key prefix, ports.
pub struct World {
    /// Set by tests that use RabbitMQ, so the queue and exchange are deleted afterwards.
    pub amqp: bool,
    pub dir: tempfile::TempDir,
    pub prefix: String,
    pub upstream_port: u16,
    pub sidecar_port: u16,
    pub metrics_port: u16,
}

impl World {
    pub fn new() -> World {
        let w = World {
            amqp: false,
            dir: tempfile::tempdir().expect("tempdir"),
            prefix: format!("test-{}", unique()),
            upstream_port: free_port(),
            sidecar_port: free_port(),
            metrics_port: free_port(),
        };
        std::fs::write(w.descriptors(), reprise_proto::DEMO_DESCRIPTOR_SET).expect("descriptors");
        w
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn descriptors(&self) -> PathBuf {
        self.dir.path().join("demo.binpb")
    }

    pub fn target(&self) -> String {
        format!("http://127.0.0.1:{}", self.sidecar_port)
    }

    /// Starts the demo server with extra flags and waits for its port.
    pub fn server(&self, args: &[&str]) -> Proc {
        let mut cmd = Command::new(bin("demo-server"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{}", self.upstream_port))
            .args(args);
        let p = Proc::spawn("demo-server", &mut cmd, self.path());
        wait_port(self.upstream_port, Duration::from_secs(20));
        p
    }

    /// A config with both demo methods resumable; `extra` lines are appended verbatim.
    pub fn config(&self, redis: bool, extra: &str) -> String {
        self.config_with_streams(redis, &Self::demo_streams(), extra)
    }

    /// A config with the given `streams:` entries (YAML list items).
    pub fn config_with_streams(&self, redis: bool, streams: &str, extra: &str) -> String {
        self.config_as(
            "pod-a",
            self.sidecar_port,
            self.metrics_port,
            redis,
            streams,
            extra,
        )
    }

    /// The config of one sidecar of the service `e2e`: its pod name and ports.
    pub fn config_as(
        &self,
        pod: &str,
        port: u16,
        metrics_port: u16,
        redis: bool,
        streams: &str,
        extra: &str,
    ) -> String {
        let redis_line = if redis {
            format!("redis_url: {}\n", redis_url())
        } else {
            String::new()
        };
        format!(
            "listen: 127.0.0.1:{port}\nupstream: http://127.0.0.1:{up}\ndescriptors: {desc}\n{redis_line}key_prefix: {prefix}\nservice: e2e\npod_name: {pod}\nmetrics_listen: 127.0.0.1:{metrics_port}\ncheckpoint_interval: 50ms\nlease_ttl: 2s\nreconnect_backoff: 20ms\nreconnect_backoff_max: 200ms\nstreams:\n{streams}{extra}",
            up = self.upstream_port,
            desc = self.descriptors().display(),
            prefix = self.prefix,
        )
    }

    /// The config of a sidecar of `pod` with ListUsers under `resume: deliver`: Redis, the
    /// broker, and the app's ResumeSink on `sink_port`.
    pub fn deliver_config(
        &self,
        pod: &str,
        port: u16,
        metrics_port: u16,
        sink_port: u16,
    ) -> String {
        self.config_as(
            pod,
            port,
            metrics_port,
            true,
            &Self::deliver_streams(),
            &deliver_extra(sink_port),
        )
    }

    /// Starts another pod's deliver-mode sidecar on fresh ports (its config passed through
    /// `edit`), delivering to the ResumeSink on `sink_port`; returns once it takes handoffs.
    pub fn deliver_pod(
        &self,
        pod: &str,
        sink_port: u16,
        edit: impl FnOnce(String) -> String,
    ) -> Proc {
        let (port, metrics_port) = (free_port(), free_port());
        let p = self.sidecar_on(
            port,
            &edit(self.deliver_config(pod, port, metrics_port, sink_port)),
        );
        wait_until(
            &format!("{pod} consumes handoffs"),
            Duration::from_secs(120),
            || p.log_text().contains("taking handoffs"),
        );
        p
    }

    /// Starts `demo-client users --role admin` through the world's sidecar, recording to
    /// `file` in the scratch directory, and returns once `at_least` admins are recorded.
    /// The client announces a 64 KiB HTTP/2 stream window, as grpc-go, grpc-js and grpcio do:
    /// its library then reports its reading every 32 KiB, which is what lets a SIGTERM
    /// handoff see that it read what it was handed (tonic's 2 MiB window reports nothing
    /// before about 700 KB: `handoff::a_sigterm_before_the_app_ever_gave_window_back_replays_its_call`).
    pub fn admins_streaming(&self, file: &str, at_least: usize) -> (Proc, PathBuf) {
        self.admins_streaming_with(file, at_least, &["--window", "65535"])
    }

    /// The same with other client flags (none: tonic's own windows).
    pub fn admins_streaming_with(
        &self,
        file: &str,
        at_least: usize,
        flags: &[&str],
    ) -> (Proc, PathBuf) {
        let record = self.path().join(file);
        let arg = record.to_string_lossy().to_string();
        let mut args = vec!["users", "--role", "admin", "--record", &arg];
        args.extend_from_slice(flags);
        let app = self.client_proc(&args);
        wait_until(
            &format!("{at_least} admins recorded in {file}"),
            Duration::from_secs(120),
            || lines(&record).len() >= at_least,
        );
        (app, record)
    }

    /// ListUsers with `resume: deliver`.
    pub fn deliver_streams() -> String {
        format!(
            "  - method: {USERS_METHOD}\n    offset_field: user_id\n    resume_field: after_user_id\n    resume: deliver\n"
        )
    }

    /// Starts a demo-sink (the app side of deliver mode) recording to `record`.
    pub fn sink(&self, port: u16, record: &Path) -> Proc {
        let mut cmd = Command::new(bin("demo-sink"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--record")
            .arg(record);
        let p = Proc::spawn("demo-sink", &mut cmd, self.path());
        wait_port(port, Duration::from_secs(20));
        p
    }

    /// Both demo methods as resumable `streams:` entries.
    pub fn demo_streams() -> String {
        format!(
            "  - method: {USERS_METHOD}\n    offset_field: user_id\n    resume_field: after_user_id\n  - method: /{EVENTS_METHOD}\n    offset_field: cursor.seq\n    resume_field: start.after_seq\n"
        )
    }

    /// The talk's GetData and the signed ledger as resumable `streams:` entries.
    pub fn seed_streams() -> String {
        format!(
            "  - method: {DATA_METHOD}\n    offset_field: Value\n    resume_field: Offset\n    resume_inclusive: true\n  - method: {LEDGER_METHOD}\n    offset_field: position\n    resume_field: after_position\n"
        )
    }

    /// Starts the sidecar with `config` and waits until it accepts connections.
    pub fn sidecar(&self, config: &str) -> Proc {
        self.sidecar_on(self.sidecar_port, config)
    }

    /// Starts a sidecar listening on `port` (as its `config` says).
    pub fn sidecar_on(&self, port: u16, config: &str) -> Proc {
        let path = self.path().join(format!("sidecar-{}.yaml", unique()));
        std::fs::write(&path, config).expect("config");
        let mut cmd = Command::new(bin("reprise-sidecar"));
        cmd.arg("--config").arg(&path).env("RUST_LOG", "info");
        let mut p = Proc::spawn("reprise-sidecar", &mut cmd, self.path());
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!(
                    "sidecar exited with {status} before listening:\n{}",
                    p.log_text()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sidecar not listening on {port} after 30s:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    /// Runs a demo-client subcommand to completion; returns its exit status and JSON summary.
    pub fn client(&self, args: &[&str]) -> (ExitStatus, serde_json::Value) {
        let out = Command::new(bin("demo-client"))
            .arg("--target")
            .arg(self.target())
            .args(args)
            .output()
            .expect("run demo-client");
        summary(out.status, &out.stdout, &out.stderr)
    }

    /// Starts a demo-client in the background (for killing it mid-stream).
    pub fn client_proc(&self, args: &[&str]) -> Proc {
        self.client_proc_at(self.sidecar_port, args)
    }

    /// A background demo-client whose target is the sidecar on `port`.
    pub fn client_proc_at(&self, port: u16, args: &[&str]) -> Proc {
        let mut cmd = Command::new(bin("demo-client"));
        cmd.arg("--target")
            .arg(format!("http://127.0.0.1:{port}"))
            .args(args);
        Proc::spawn("demo-client", &mut cmd, self.path())
    }

    /// Runs a demo-client against the sidecar on `port`.
    pub fn client_at(&self, port: u16, args: &[&str]) -> (ExitStatus, serde_json::Value) {
        let out = Command::new(bin("demo-client"))
            .arg("--target")
            .arg(format!("http://127.0.0.1:{port}"))
            .args(args)
            .output()
            .expect("run demo-client");
        summary(out.status, &out.stdout, &out.stderr)
    }

    pub fn redis(&self) -> redis::Connection {
        redis::Client::open(redis_url())
            .and_then(|c| c.get_connection())
            .expect("redis connection")
    }

    pub fn job_key(&self, id: &str) -> String {
        format!("{}:job:{id}", self.prefix)
    }

    /// Every job id under this world's prefix.
    pub fn job_ids(&self) -> Vec<String> {
        let mut con = self.redis();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:job:*", self.prefix))
            .query(&mut con)
            .expect("KEYS");
        let strip = format!("{}:job:", self.prefix);
        keys.into_iter()
            .map(|k| k[strip.len()..].to_owned())
            .collect()
    }

    pub fn job_field(&self, id: &str, field: &str) -> Option<String> {
        let mut con = self.redis();
        redis::cmd("HGET")
            .arg(self.job_key(id))
            .arg(field)
            .query(&mut con)
            .expect("HGET")
    }

    pub fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics").1
    }

    /// The sum of a metric's samples whose line contains every `filters` string.
    pub fn metric(&self, name: &str, filters: &[&str]) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(name) && filters.iter().all(|f| l.contains(f)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// A demo client's summary of a call that got exactly `received` keys: OK, every count 0.
pub fn assert_summary_exact(summary: &serde_json::Value, received: u64) {
    assert_eq!(summary["ok"], true, "client summary: {summary}");
    assert_eq!(summary["status"], "OK", "client summary: {summary}");
    assert_eq!(summary["received"], received, "client summary: {summary}");
    for count in [
        "duplicates",
        "out_of_order",
        "missing",
        "unexpected",
        "corrupt",
    ] {
        assert_eq!(summary[count], 0, "{count}; client summary: {summary}");
    }
}

/// The demo's admin users in stream order: what `users --role admin` must deliver.
pub fn admin_ids(users: usize) -> Vec<String> {
    reprise_demo::users::demo_users(users)
        .into_iter()
        .filter(|u| u.role == "admin")
        .map(|u| u.user_id)
        .collect()
}

/// The sidecar config lines of deliver mode: the broker, and the app's ResumeSink port.
pub fn deliver_extra(sink_port: u16) -> String {
    format!(
        "amqp_url: {}\nresume_sink: http://127.0.0.1:{sink_port}\n",
        amqp_url()
    )
}

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Empties the service `e2e`'s resume queue of `prefix`, as a broker that lost its messages
/// would; returns how many events were in it.
pub fn purge_resume_queue(prefix: &str) -> u32 {
    use lapin::{Connection, ConnectionProperties, options::*};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ");
        let ch = conn.create_channel().await.expect("channel");
        let purged = ch
            .queue_purge(
                format!("{prefix}.e2e.resume").into(),
                QueuePurgeOptions::default(),
            )
            .await
            .expect("queue.purge");
        let _ = conn.close(200, "OK".into()).await;
        purged
    })
}

/// Deletes the RabbitMQ objects of `prefix` (the service `e2e`'s resume queue, the exchange).
fn delete_amqp(prefix: &str) {
    use lapin::{Connection, ConnectionProperties, options::*};
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await
        else {
            return;
        };
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch
                .queue_delete(
                    format!("{prefix}.e2e.resume").into(),
                    QueueDeleteOptions::default(),
                )
                .await;
            let _ = ch
                .exchange_delete(
                    format!("{prefix}.events").into(),
                    ExchangeDeleteOptions::default(),
                )
                .await;
        }
        let _ = conn.close(200, "OK".into()).await;
    });
}

impl Drop for World {
    fn drop(&mut self) {
        if self.amqp {
            delete_amqp(&self.prefix);
        }
        if let Ok(mut con) = redis::Client::open(redis_url()).and_then(|c| c.get_connection()) {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.prefix))
                .query(&mut con)
                .unwrap_or_default();
            for k in keys {
                let _: Result<(), _> = redis::cmd("DEL").arg(k).query(&mut con);
            }
        }
    }
}

/// A plain HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Parses the one-line JSON summary a demo client prints last.
pub fn summary(
    status: ExitStatus,
    stdout: &[u8],
    stderr: &[u8],
) -> (ExitStatus, serde_json::Value) {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().rev().find(|l| l.trim_start().starts_with('{'));
    let value = line
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no JSON summary from the client (exit {status}); stdout:\n{text}\nstderr:\n{}",
                String::from_utf8_lossy(stderr)
            )
        });
    (status, value)
}

/// Lines of a file, e.g. a client's `--record` file.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::File::open(path)
        .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect())
        .unwrap_or_default()
}
