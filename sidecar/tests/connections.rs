//! `upstream_connections`: calls are spread over that many HTTP/2 connections to the upstream,
//! each call on the one with the fewest in flight; with the default, all share one. And the
//! app's side: silent connections are closed, open ones bounded, accept errors paced.

use std::time::Duration;

use crate::support::*;

/// Established TCP connections to `port` on this host, as the kernel lists them (both ends of a
/// loopback connection are listed; this counts the ends whose remote port is `port`).
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let remote = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // cols: sl, local_address, rem_address, st (01 = ESTABLISHED), ...
            cols.len() > 3 && cols[2].ends_with(&remote) && cols[3] == "01"
        })
        .count()
}

/// Runs `streams` concurrent ListUsers calls through a sidecar configured with `extra`, checks
/// that while they all ran the upstream saw `expected` connections, and returns the sidecar's
/// `reprise_upstream_connects_total` once they ended. Every call must still be exact.
fn concurrent_streams(streams: usize, extra: &str, expected: usize) -> f64 {
    const USERS: usize = 400;
    let w = World::new();
    // 400 users at 5 ms each: every call runs for about two seconds, so all are in flight at
    // once while the connections are counted.
    let _server = w.server(&["--users", &USERS.to_string(), "--delay-us", "5000"]);
    let _sidecar = w.sidecar(&w.config(false, extra));
    let users = USERS.to_string();
    let clients: Vec<(usize, Proc)> = (0..streams)
        .map(|i| {
            let label = format!("call={i}");
            let args = [
                "users",
                "--expect-users",
                users.as_str(),
                "--label",
                label.as_str(),
            ];
            (i, w.client_proc(&args))
        })
        .collect();
    wait_until("every stream in flight", Duration::from_secs(20), || {
        w.metric("reprise_streams_active", &[]) as usize == streams
    });
    wait_until(
        &format!("{expected} upstream connections with {streams} streams in flight"),
        Duration::from_secs(10),
        || connections_to(w.upstream_port) == expected,
    );
    for (i, mut client) in clients {
        let status = client.wait_exit(Duration::from_secs(60));
        assert!(
            status.success(),
            "stream {i} was not exact ({status}):\n{}",
            client.log_text()
        );
    }
    w.metric("reprise_upstream_connects_total", &[])
}

#[test]
fn calls_share_one_upstream_connection_by_default() {
    let connects = concurrent_streams(4, "", 1);
    assert_eq!(connects, 1.0, "reprise_upstream_connects_total");
}

#[test]
fn calls_are_spread_over_upstream_connections() {
    // Five calls over three connections: 2, 2 and 1 in flight; none is opened twice.
    let connects = concurrent_streams(5, "upstream_connections: 3\n", 3);
    assert_eq!(connects, 3.0, "reprise_upstream_connects_total");
}

/// The HTTP/2 client preface and an empty SETTINGS frame: what a gRPC client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Whether the sidecar closed `conn` (EOF or reset) within `within`.
fn closed_within(conn: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read;
    conn.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // the server's SETTINGS and the like
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Connections that never send a byte were kept forever (500 of them, in the probe): now they
/// are closed after `preface_timeout`, and counted; one that speaks is served.
#[test]
fn connections_that_send_nothing_are_closed_after_the_preface_timeout() {
    let w = World::new();
    let _server = w.server(&["--users", "10"]);
    let _sidecar = w.sidecar(&w.config(false, "preface_timeout: 1s\n"));
    let mut silent: Vec<_> = (0..50)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", w.sidecar_port)).expect("connect"))
        .collect();
    let mut speaking =
        std::net::TcpStream::connect(("127.0.0.1", w.sidecar_port)).expect("connect");
    std::io::Write::write_all(&mut speaking, PREFACE).expect("preface");
    for conn in &mut silent {
        assert!(
            closed_within(conn, Duration::from_secs(30)),
            "a silent connection stays open"
        );
    }
    assert!(
        !closed_within(&mut speaking, Duration::from_millis(1500)),
        "a connection that sent its preface is served, not closed"
    );
    let closed = w.metric(
        "reprise_connections_closed_total",
        &["listener=\"app\"", "reason=\"silent\""],
    );
    assert_eq!(closed, 50.0, "{}", w.metrics());
    let (status, summary) = w.client(&["users"]);
    assert!(status.success(), "{summary}");
}

/// At most `max_app_connections` open at once: one more is closed at once and counted; once
/// one closes, new connections are served again.
#[test]
fn app_connections_are_bounded_and_the_refusals_counted() {
    let w = World::new();
    let _server = w.server(&["--users", "10"]);
    let _sidecar = w.sidecar(&w.config(false, "max_app_connections: 3\n"));
    // The sidecar's own readiness probe (a connection that closes at once) may still hold a
    // place for a moment: a connection refused for that is opened again.
    let mut held = Vec::new();
    wait_until("three connections served", Duration::from_secs(10), || {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", w.sidecar_port)).expect("connect");
        std::io::Write::write_all(&mut c, PREFACE).expect("preface");
        if !closed_within(&mut c, Duration::from_millis(200)) {
            held.push(c);
        }
        held.len() == 3
    });
    let mut extra = std::net::TcpStream::connect(("127.0.0.1", w.sidecar_port)).expect("connect");
    assert!(
        closed_within(&mut extra, Duration::from_secs(10)),
        "the fourth is refused"
    );
    let refused = w.metric(
        "reprise_connections_closed_total",
        &["listener=\"app\"", "reason=\"limit\""],
    );
    assert!(refused >= 1.0, "{}", w.metrics());
    drop(held.pop());
    wait_until(
        "a freed place serves a call",
        Duration::from_secs(30),
        || w.client(&["users"]).0.success(),
    );
}

/// With file descriptors exhausted, both listeners back off instead of spinning (the probe saw
/// 3.5–5.2 million WARN lines in 8 s from the admin listener): a handful of rate-limited lines,
/// and both answer again once descriptors are free.
#[test]
fn exhausted_file_descriptors_back_off_with_rate_limited_warnings() {
    let w = World::new();
    let _server = w.server(&["--users", "10"]);
    let path = w.path().join("fd.yaml");
    std::fs::write(&path, w.config(false, "")).expect("config");
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" --config \"$1\"")
        .arg(bin("reprise-sidecar"))
        .arg(&path)
        .env("RUST_LOG", "info");
    let sidecar = Proc::spawn("reprise-sidecar", &mut cmd, w.path());
    wait_port(w.sidecar_port, Duration::from_secs(30));
    wait_port(w.metrics_port, Duration::from_secs(30));
    let mut held: Vec<_> = (0..120)
        .filter_map(|_| {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", w.sidecar_port)).ok()?;
            std::io::Write::write_all(&mut c, PREFACE).ok()?;
            Some(c)
        })
        .collect();
    // One admin request while no descriptor is left: it waits in the backlog.
    let admin = std::net::TcpStream::connect(("127.0.0.1", w.metrics_port));
    // An observation window, not a synchronisation: how much does the sidecar log in 3 s?
    std::thread::sleep(Duration::from_secs(3));
    let warnings = sidecar
        .log_text()
        .lines()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert!(
        warnings >= 1,
        "descriptors ran out, so accept failed:\n{}",
        sidecar.log_text()
    );
    assert!(
        warnings <= 10,
        "{warnings} warnings in 3 s: not rate-limited"
    );
    drop(admin);
    held.clear();
    wait_until("/readyz answers again", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", w.metrics_port)).is_ok()
            && http_get(w.metrics_port, "/metrics").0 == 200
    });
    assert!(
        w.metric("reprise_accept_errors_total", &[]) >= 1.0,
        "{}",
        w.metrics()
    );
    let (status, summary) = w.client(&["users"]);
    assert!(status.success(), "{summary}");
}
