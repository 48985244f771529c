//! Volume: a stream of 1,000,000 small messages through the sidecar (the h2 small-frame
//! pitfall, RUSTSEC-2026-0258), and a slow app whose stream the sidecar must not buffer.

use std::time::Duration;

use crate::support::*;

#[test]
fn a_million_small_messages_arrive_exactly_once() {
    let w = World::new();
    let _server = w.server(&[]);
    let _sidecar = w.sidecar(&w.config(true, ""));
    let (status, summary) = w.client(&["events", "--count", "1000000", "--payload-bytes", "60"]);
    assert!(status.success(), "{summary}");
    assert_eq!(summary["received"], 1_000_000);
    assert_eq!(summary["duplicates"], 0);
    assert_eq!(summary["out_of_order"], 0);
    assert_eq!(
        w.metric("reprise_messages_forwarded_total", &[EVENTS_METHOD]),
        1e6
    );
}

#[test]
fn a_slow_app_does_not_make_the_sidecar_buffer_the_stream() {
    let w = World::new();
    let _server = w.server(&[]);
    let sidecar = w.sidecar(&w.config(true, ""));
    // 3,000 events of 64 KiB: ~190 MiB that a proxy without flow control would pile up.
    let mut client = w.client_proc(&[
        "events",
        "--count",
        "3000",
        "--payload-bytes",
        "65536",
        "--slow-us",
        "1000",
    ]);
    let mut peak = 0;
    while client.child.try_wait().expect("try_wait").is_none() {
        peak = peak.max(sidecar.rss_kib().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = client.log_text();
    assert!(log.contains("\"received\":3000"), "{log}");
    assert!(log.contains("\"ok\":true"), "{log}");
    eprintln!("sidecar peak RSS with a slow app: {} KiB", peak);
    assert!(
        peak < 48 * 1024,
        "sidecar RSS peaked at {peak} KiB: the stream was buffered"
    );
}
