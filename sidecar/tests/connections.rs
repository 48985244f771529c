//! `upstream_connections`: calls are spread over that many HTTP/2 connections to the upstream,
//! each call on the one with the fewest in flight; with the default, all share one.

mod support;

use std::time::Duration;

use support::*;

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
