//! The acceptor when the process runs out of file descriptors, for real: `RLIMIT_NOFILE` is
//! lowered and the descriptors under it used up, so `accept` fails with `EMFILE` while a client
//! waits in the backlog. Its own test binary, since the limit is the whole process's.

use std::{
    fs::File,
    time::{Duration, Instant},
};

use reprise_jobs::Acceptor;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tokio::net::TcpListener;

const EMFILE: i32 = 24;

#[tokio::test]
async fn out_of_file_descriptors_the_acceptor_backs_off_then_takes_the_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let mut acceptor = Acceptor::new(listener, "test");
    let _client = std::net::TcpStream::connect(addr).expect("connect: the backlog takes it");

    let limit = getrlimit(Resource::Nofile);
    let open = std::fs::read_dir("/proc/self/fd").expect("/proc").count() as u64;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(open + 4),
            maximum: limit.maximum,
        },
    )
    .expect("lower RLIMIT_NOFILE");
    let mut hogs = Vec::new();
    let exhausted = loop {
        match File::open("/dev/null") {
            Ok(f) => hogs.push(f),
            Err(e) => break e,
        }
    };
    assert_eq!(exhausted.raw_os_error(), Some(EMFILE), "{exhausted}");

    // No descriptor for the connection: accept fails over and over, and the acceptor waits
    // 5, 10, 20, 40, 80, 160 ms… between attempts instead of spinning.
    let window = Duration::from_millis(500);
    let started = Instant::now();
    assert!(
        tokio::time::timeout(window, acceptor.accept())
            .await
            .is_err(),
        "accepted without a free descriptor"
    );
    let failures = acceptor.failures();
    assert!(
        (2..=8).contains(&failures),
        "{failures} failed accepts in {:?}",
        started.elapsed()
    );

    drop(hogs);
    let accepted = tokio::time::timeout(Duration::from_secs(5), acceptor.accept()).await;
    setrlimit(Resource::Nofile, limit).expect("restore RLIMIT_NOFILE");
    let (_stream, peer) = accepted.expect("accepted once descriptors are free");
    assert_eq!(peer.ip(), addr.ip());
}
