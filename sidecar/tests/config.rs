//! Start-up: bad configuration exits 2 naming the key and the valid choices; `--check`
//! validates without serving; `descriptors: reflection` fetches from the upstream.

use std::process::Command;

use crate::support::*;

fn run(w: &World, config: &str, extra: &[&str]) -> (i32, String) {
    let path = w.path().join(format!("c-{}.yaml", unique()));
    std::fs::write(&path, config).expect("write config");
    let out = Command::new(bin("reprise-sidecar"))
        .arg("--config")
        .arg(&path)
        .args(extra)
        .output()
        .expect("run sidecar");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn bad_configs_exit_2_naming_the_key_and_the_choices() {
    let w = World::new();
    let base = w.config(false, "");
    let cases = [
        (
            format!("{base}colour: blue\n"),
            vec!["unknown key `colour`", "valid keys: listen, upstream"],
        ),
        (
            format!("{base}shutdown_timeout: soon\n"),
            vec!["key `shutdown_timeout`", "e.g. 100ms"],
        ),
        (
            base.replace("user_id\n", "id\n"),
            vec![
                "key `streams[0].offset_field`",
                "valid fields: user_id, name",
            ],
        ),
        (
            base.replace("ListUsers", "ListUser"),
            vec![
                "key `streams[0].method`",
                "valid methods: demo.v1.UserService/ListUsers",
            ],
        ),
        (
            base.replace(
                "/demo.v1.EventService/StreamEvents",
                "demo.v1.UserService/GetUser",
            ),
            vec!["is not server-streaming"],
        ),
        (
            base.replace(
                &w.descriptors().display().to_string(),
                "/nonexistent/set.binpb",
            ),
            vec!["key `descriptors`", "cannot read"],
        ),
        (
            format!("{base}    resume: later\n"),
            vec!["key `streams[1].resume`", "valid: on_request, deliver"],
        ),
        (
            format!("{base}redis_url: http://x\n"),
            vec!["key `redis_url`", "valid schemes: redis"],
        ),
        (
            format!("{base}upstream_connections: 0\n"),
            vec!["key `upstream_connections`", "from 1 to 64"],
        ),
        ("streams: 3\n".to_owned(), vec!["key `streams`"]),
    ];
    for (config, needles) in cases {
        let (code, text) = run(&w, &config, &[]);
        assert_eq!(code, 2, "exit code for:\n{config}\noutput:\n{text}");
        for n in needles {
            assert!(text.contains(n), "{n:?} missing from:\n{text}");
        }
    }
    // Two problems at once: both reported.
    let (code, text) = run(&w, &format!("{base}colour: blue\nmax_outage: never\n"), &[]);
    assert_eq!(code, 2);
    assert!(
        text.contains("colour") && text.contains("max_outage"),
        "{text}"
    );
    // Env overrides are checked the same way.
    let path = w.path().join("ok.yaml");
    std::fs::write(&path, &base).expect("write");
    let out = Command::new(bin("reprise-sidecar"))
        .args(["--check", "--config"])
        .arg(&path)
        .env("REPRISE_SHUTDOWN_TIMEOUT", "forever")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key `shutdown_timeout`"));
}

/// Every key is checked before any I/O, as linkerd2-proxy loads its configuration "without
/// binding ports": a broker URL that cannot be parsed exits 2 under `--check` too, and a real
/// start exits 2 before it has written anything to Redis (no instance registered, no key).
#[test]
fn a_bad_amqp_url_exits_2_before_any_io_and_under_check() {
    let w = World::new();
    let base = w.config(true, "");
    for (url, problem) in [
        ("amqp://guest:guest@127.0.0.1:notaport/%2f", "port"),
        ("amqps://guest:guest@127.0.0.1:5671/%2f", "TLS"),
    ] {
        let config = format!("{base}amqp_url: {url}\n");
        for extra in [&["--check"][..], &[]] {
            let (code, text) = run(&w, &config, extra);
            assert_eq!(code, 2, "{url} {extra:?}: {text}");
            assert!(text.contains("key `amqp_url`"), "{url} {extra:?}: {text}");
            assert!(text.contains(problem), "{url} {extra:?}: {text}");
            assert!(
                !text.contains("guest:guest"),
                "the password is masked: {text}"
            );
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", w.prefix))
                .query(&mut w.redis())
                .expect("KEYS");
            assert!(
                keys.is_empty(),
                "{url} {extra:?}: Redis was written: {keys:?}"
            );
        }
    }
}

/// A Redis URL the client cannot parse is a configuration error too, not a start-up failure.
#[test]
fn a_bad_redis_url_exits_2_under_check() {
    let w = World::new();
    let base = w.config(false, "");
    let (code, text) = run(
        &w,
        &format!("{base}redis_url: redis://:pw@127.0.0.1:99999/0\n"),
        &["--check"],
    );
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("key `redis_url`"), "{text}");
    assert!(!text.contains(":pw@"), "the password is masked: {text}");
}

#[test]
fn check_validates_and_exits_0_without_serving() {
    let w = World::new();
    let (code, text) = run(&w, &w.config(false, ""), &["--check"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("2 resumable method(s)"), "{text}");
    assert!(
        text.contains(
            "demo.v1.EventService/StreamEvents (offset cursor.seq, resume start.after_seq)"
        )
    );
}

#[test]
fn descriptors_from_server_reflection() {
    let w = World::new();
    let _server = w.server(&["--users", "3000", "--unavailable-after", "1000"]);
    let config = w
        .config(true, "")
        .replace(&w.descriptors().display().to_string(), "reflection");
    let (code, text) = run(&w, &config, &["--check"]);
    assert_eq!(code, 0, "{text}");
    let _sidecar = w.sidecar(&config);
    let (status, summary) = w.client(&["users", "--expect-users", "3000"]);
    assert!(status.success(), "{summary}");
    assert_eq!(summary["received"], 3000);
}

/// An edition-2024 FileDescriptorSet, compiled by the vendored protoc from the test data.
fn editions_descriptors(w: &World) -> std::path::PathBuf {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/editions");
    let out = w.path().join("feed2024.binpb");
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    let status = Command::new(protoc)
        .arg("-I")
        .arg(&data)
        .arg("--include_imports")
        .arg("--descriptor_set_out")
        .arg(&out)
        .arg(data.join("feed2024.proto"))
        .status()
        .expect("run protoc");
    assert!(status.success(), "protoc failed");
    out
}

#[test]
fn editions_descriptors_load_with_presence_from_their_features() {
    // prost-reflect cannot load editions files (it panicked on them); the sidecar lowers them
    // first. `seq` is IMPLICIT (the file default), `topic` EXPLICIT (a field override).
    let w = World::new();
    let set = editions_descriptors(&w);
    let config = format!(
        "descriptors: {}\nstreams:\n  - method: reprise.editions.v2.Feed/Tail\n    offset_field: seq\n    resume_field: seq\n",
        set.display()
    );
    let (code, text) = run(&w, &config, &["--check"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("offset: uint64, implicit presence (absent reads as 0); resume: uint64, implicit presence"),
        "{text}"
    );
    let explicit = config.replace(
        "offset_field: seq\n    resume_field: seq",
        "offset_field: topic\n    resume_field: topic",
    );
    let (code, text) = run(&w, &explicit, &["--check"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("offset: string, explicit presence (a message without it ends the call); resume: string, explicit presence (0 is written)"),
        "{text}"
    );
}

#[test]
fn resume_inclusive_is_checked_and_reported() {
    let w = World::new();
    let streams = "  - method: pb.Server/GetData\n    offset_field: Value\n    resume_field: Offset\n    resume_inclusive: true\n";
    let (code, text) = run(&w, &w.config_with_streams(false, streams, ""), &["--check"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("offset: int32, implicit presence (absent reads as 0); resume: int32, implicit presence, meaning from, inclusive"),
        "{text}"
    );
    let bad = streams.replace("resume_inclusive: true", "resume_inclusive: sometimes");
    let (code, text) = run(&w, &w.config_with_streams(false, &bad, ""), &[]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("key `streams[0].resume_inclusive`: \"sometimes\" is not valid; valid: true"),
        "{text}"
    );
}

#[test]
fn descriptor_sets_that_crashed_the_descriptor_library_exit_2() {
    // Found by fuzzing (docs/fuzzing.md): prost-reflect 0.16.5 overflowed its stack on a
    // public import cycle (the sidecar aborted, exit 134) and panicked on an unknown syntax.
    let w = World::new();
    let cases: [(&[u8], &str); 2] = [
        (
            &[0x0a, 0x08, 0x0a, 0x01, 0x61, 0x1a, 0x01, 0x61, 0x50, 0x00],
            "files import each other publicly in a cycle: a → a",
        ),
        (
            &[0x0a, 0x03, 0x62, 0x01, 0x78],
            "has syntax \"x\"; valid: proto2, proto3, editions",
        ),
    ];
    for (i, (set, needle)) in cases.into_iter().enumerate() {
        let path = w.path().join(format!("bad-{i}.binpb"));
        std::fs::write(&path, set).expect("write");
        let config = format!(
            "descriptors: {}\nstreams:\n  - method: a.B/C\n    offset_field: x\n    resume_field: y\n",
            path.display()
        );
        let (code, text) = run(&w, &config, &["--check"]);
        assert_eq!(code, 2, "{text}");
        assert!(
            text.contains("key `descriptors`") && text.contains(needle),
            "{text}"
        );
    }
}

/// A port in use is a configuration error like any other: exit 2, naming the key (it exited 1
/// with "Address already in use" and no key, after connecting to Redis).
#[test]
fn a_busy_port_exits_2_naming_its_key() {
    let w = World::new();
    let _upstream = w.server(&[]);
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = held.local_addr().expect("addr").port();
    let cases = [
        (
            w.config_as(
                "pod-a",
                busy,
                w.metrics_port,
                true,
                &World::demo_streams(),
                "",
            ),
            "key `listen`",
        ),
        (
            w.config_as(
                "pod-a",
                w.sidecar_port,
                busy,
                true,
                &World::demo_streams(),
                "",
            ),
            "key `metrics_listen`",
        ),
        (
            w.config_as(
                "pod-a",
                w.sidecar_port,
                w.sidecar_port,
                true,
                &World::demo_streams(),
                "",
            ),
            "keys `listen` and `metrics_listen`",
        ),
    ];
    for (config, needle) in cases {
        let (code, text) = run(&w, &config, &[]);
        assert_eq!(code, 2, "exit code; output:\n{text}");
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    // `--check` binds nothing, so it does not see a busy port, only two equal ones.
    let config = w.config_as(
        "pod-a",
        busy,
        w.metrics_port,
        false,
        &World::demo_streams(),
        "",
    );
    assert_eq!(run(&w, &config, &["--check"]).0, 0);
}

/// The size keys have bounds: `max_message_bytes` took 10 GiB; `max_metadata_bytes` is new.
#[test]
fn size_keys_are_bounded() {
    let w = World::new();
    let base = w.config(false, "");
    for (line, needle) in [
        ("max_message_bytes: 10737418240", "key `max_message_bytes`"),
        ("max_metadata_bytes: 1000", "from 16384 to 16777216"),
        (
            "max_metadata_bytes: 99999999999",
            "key `max_metadata_bytes`",
        ),
        ("max_app_connections: 0", "key `max_app_connections`"),
        ("preface_timeout: soon", "key `preface_timeout`"),
    ] {
        let (code, text) = run(&w, &format!("{base}{line}\n"), &["--check"]);
        assert_eq!(code, 2, "{line}: {text}");
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    let ok = format!("{base}max_message_bytes: 2147483647\nmax_metadata_bytes: 65536\n");
    assert_eq!(run(&w, &ok, &["--check"]).0, 0);
}

/// An empty config file starts on defaults, with a warning; an upstream URL with a path is
/// refused (the path was dropped silently).
#[test]
fn an_empty_file_warns_and_an_upstream_path_is_refused() {
    let w = World::new();
    let (code, text) = run(&w, "", &["--check"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("is empty: running on defaults"), "{text}");
    let path = w.path().join("empty.yaml");
    std::fs::write(&path, "# nothing yet\n").expect("write");
    let port = free_port();
    let metrics = free_port();
    let mut cmd = Command::new(bin("reprise-sidecar"));
    cmd.arg("--config")
        .arg(&path)
        .env("REPRISE_LISTEN", format!("127.0.0.1:{port}"))
        .env("REPRISE_METRICS_LISTEN", format!("127.0.0.1:{metrics}"));
    let sidecar = Proc::spawn("reprise-sidecar", &mut cmd, w.path());
    wait_until("the warning", std::time::Duration::from_secs(30), || {
        sidecar.log_text().contains("is empty: running on defaults")
    });
    drop(sidecar);
    let base = w.config(false, "");
    let config = base.replace(
        &format!("upstream: http://127.0.0.1:{}", w.upstream_port),
        &format!("upstream: http://127.0.0.1:{}/prefix", w.upstream_port),
    );
    let (code, text) = run(&w, &config, &["--check"]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("key `upstream`") && text.contains("has a path"),
        "{text}"
    );
    let slash = base.replace(
        &format!("upstream: http://127.0.0.1:{}", w.upstream_port),
        &format!("upstream: http://127.0.0.1:{}/", w.upstream_port),
    );
    assert_eq!(run(&w, &slash, &["--check"]).0, 0);
}
