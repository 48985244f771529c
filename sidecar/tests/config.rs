//! Start-up: bad configuration exits 2 naming the key and the valid choices; `--check`
//! validates without serving; `descriptors: reflection` fetches from the upstream.

mod support;

use std::process::Command;

use support::*;

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
