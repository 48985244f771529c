//! `reprise jobs` run as a process against the real Redis, on jobs the jobs crate wrote.

mod support;

use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use redis::AsyncCommands as _;
use reprise_jobs::{FIELDS, JobRecord, JobStatus, Keys};
use serde_json::Value;
use support::{Fixture, METHOD, ids, parse_table, reprise, with_redis};

const LEASE: Duration = Duration::from_secs(60);
const HEADER: [&str; 11] = [
    "JOB", "SERVICE", "METHOD", "STATUS", "OFFSET", "MESSAGES", "RESUMES", "OWNER", "FENCE",
    "UPDATED", "LEASE",
];

/// Three jobs, oldest first: completed on pod-a; interrupted on pod-a, resumed by pod-b and
/// interrupted again; running on pod-b.
async fn seed_three(f: &Fixture) -> Result<[JobRecord; 3]> {
    let fence = f
        .claim("job-completed", "users-client", "pod-a", LEASE)
        .await?;
    f.checkpoint("job-completed", fence, "99", 99).await?;
    f.finish(
        "job-completed",
        fence,
        JobStatus::Completed,
        Some("100"),
        100,
    )
    .await?;
    let completed = f.settled("job-completed").await?;

    let fence = f
        .claim("job-interrupted", "users-client", "pod-a", LEASE)
        .await?;
    f.checkpoint("job-interrupted", fence, "7", 7).await?;
    f.resumed_after("job-interrupted", fence, "upstream reset")
        .await?;
    f.finish(
        "job-interrupted",
        fence,
        JobStatus::Interrupted,
        Some("9"),
        9,
    )
    .await?;
    let fence = f
        .claim("job-interrupted", "users-client", "pod-b", LEASE)
        .await?;
    f.finish("job-interrupted", fence, JobStatus::Interrupted, None, 9)
        .await?;
    let interrupted = f.settled("job-interrupted").await?;

    let fence = f.claim("job-running", "billing", "pod-b", LEASE).await?;
    f.checkpoint("job-running", fence, "41", 41).await?;
    let running = f.settled("job-running").await?;
    Ok([completed, interrupted, running])
}

fn is_age(cell: &str) -> bool {
    cell.strip_suffix("s ago")
        .is_some_and(|n| n.parse::<u64>().is_ok())
}

#[tokio::test]
async fn ls_prints_one_row_per_job_newest_first() -> Result<()> {
    with_redis(|f| async move {
        let [completed, interrupted, running] = seed_three(&f).await?;
        let run = f.reprise(&["jobs", "ls"]).await?;
        assert_eq!(run.code, Some(0), "{run:?}");
        assert_eq!(run.stderr, "");

        let header: Vec<&str> = run
            .stdout
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        assert_eq!(header, HEADER);
        assert!(
            run.stdout.lines().all(|l| l == l.trim_end()),
            "trailing blanks"
        );
        let rows = parse_table(&run.stdout)?;
        let got: Vec<&str> = rows.iter().map(|r| r["JOB"].as_str()).collect();
        assert_eq!(got, ["job-running", "job-interrupted", "job-completed"]);

        let expect = |row: &std::collections::BTreeMap<String, String>,
                      record: &JobRecord,
                      cells: [(&str, &str); 7]| {
            for (column, value) in cells {
                assert_eq!(row[column], value, "{column} of {}", record.job_id);
            }
            assert_eq!(row["METHOD"], "Feed/Subscribe");
            assert_eq!(row["STATUS"], record.status.as_str());
            assert_eq!(row["FENCE"], record.fence.to_string());
            assert!(is_age(&row["UPDATED"]), "UPDATED {:?}", row["UPDATED"]);
        };
        expect(
            &rows[0],
            &running,
            [
                ("SERVICE", "billing"),
                ("OFFSET", "41"),
                ("MESSAGES", "41"),
                ("RESUMES", "0"),
                ("OWNER", "pod-b"),
                ("FENCE", "1"),
                ("STATUS", "running"),
            ],
        );
        // A break noted by the owner, then a takeover: two resumes, a second fence.
        expect(
            &rows[1],
            &interrupted,
            [
                ("SERVICE", "users-client"),
                ("OFFSET", "9"),
                ("MESSAGES", "9"),
                ("RESUMES", "2"),
                ("OWNER", "pod-b"),
                ("FENCE", "2"),
                ("LEASE", "-"),
            ],
        );
        expect(
            &rows[2],
            &completed,
            [
                ("SERVICE", "users-client"),
                ("OFFSET", "100"),
                ("MESSAGES", "100"),
                ("RESUMES", "0"),
                ("OWNER", "pod-a"),
                ("FENCE", "1"),
                ("LEASE", "-"),
            ],
        );
        // A live 60 s lease, counted on the Redis clock.
        let lease = rows[0]["LEASE"]
            .strip_suffix('s')
            .and_then(|n| n.parse::<u64>().ok());
        ensure!(
            lease.is_some_and(|s| (1..=60).contains(&s)),
            "LEASE {:?}",
            rows[0]["LEASE"]
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn ls_filters_by_status_service_pod_and_limit() -> Result<()> {
    with_redis(|f| async move {
        seed_three(&f).await?;
        let cases: [(&[&str], &[&str]); 6] = [
            (&["--status", "interrupted"], &["job-interrupted"]),
            (&["--status", "running"], &["job-running"]),
            (
                &["--service", "users-client"],
                &["job-interrupted", "job-completed"],
            ),
            (&["--pod", "pod-a"], &["job-completed"]),
            (&["--pod", "pod-b", "--limit", "1"], &["job-running"]),
            (&["--limit", "2"], &["job-running", "job-interrupted"]),
        ];
        for (filters, expected) in cases {
            let mut args = vec!["jobs", "ls"];
            args.extend_from_slice(filters);
            let run = f.reprise(&args).await?;
            assert_eq!(run.code, Some(0), "{filters:?}: {run:?}");
            assert_eq!(ids(&run.stdout)?, expected, "{filters:?}");
        }

        let run = f
            .reprise(&["jobs", "ls", "--status", "failed", "--service", "billing"])
            .await?;
        assert_eq!(run.code, Some(0), "{run:?}");
        assert_eq!(run.stdout.lines().count(), 1, "header only: {run:?}");
        assert_eq!(
            run.stderr,
            format!(
                "reprise: no jobs under prefix {} match the filters\n",
                f.prefix
            )
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn an_empty_prefix_prints_a_header_and_a_note() -> Result<()> {
    with_redis(|f| async move {
        let run = f.reprise(&["jobs", "ls"]).await?;
        assert_eq!(run.code, Some(0), "{run:?}");
        assert_eq!(run.stdout.split_whitespace().collect::<Vec<_>>(), HEADER);
        assert_eq!(
            run.stderr,
            format!("reprise: no jobs under prefix {}\n", f.prefix)
        );

        let run = f.reprise(&["jobs", "ls", "--output", "json"]).await?;
        assert_eq!(run.code, Some(0), "{run:?}");
        assert_eq!(
            serde_json::from_str::<Value>(&run.stdout)?,
            Value::Array(vec![])
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn an_expired_lease_reads_expired() -> Result<()> {
    with_redis(|f| async move {
        f.claim(
            "job-dead",
            "users-client",
            "pod-gone",
            Duration::from_millis(100),
        )
        .await?;
        let record = f.record("job-dead").await?;
        let until = record
            .lease_expires_at_ms
            .context("a running job has a lease")?;
        f.wait_past(until).await?;

        let run = f.reprise(&["jobs", "ls"]).await?;
        assert_eq!(run.code, Some(0), "{run:?}");
        let rows = parse_table(&run.stdout)?;
        assert_eq!(rows[0]["STATUS"], "running");
        assert_eq!(rows[0]["LEASE"], "expired");

        let run = f.reprise(&["jobs", "show", "job-dead"]).await?;
        let line = run
            .stdout
            .lines()
            .find(|l| l.starts_with("lease_expires_at: "));
        ensure!(
            line.is_some_and(|l| l.starts_with(&format!("lease_expires_at: {until} ("))
                && l.contains(", expired ")),
            "{run:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn long_offsets_are_cut_in_the_table_but_whole_in_show() -> Result<()> {
    with_redis(|f| async move {
        let offset = "0123456789abcdef".repeat(4);
        let fence = f.claim("job-bytes", "users-client", "pod-a", LEASE).await?;
        f.checkpoint("job-bytes", fence, &offset, 3).await?;

        let run = f.reprise(&["jobs", "ls"]).await?;
        let cell = parse_table(&run.stdout)?[0]["OFFSET"].clone();
        let kept = cell.strip_suffix('…').context("cut with an ellipsis")?;
        assert!(
            offset.starts_with(kept) && kept.len() < offset.len(),
            "{cell}"
        );

        let run = f.reprise(&["jobs", "show", "job-bytes"]).await?;
        assert!(
            run.stdout.contains(&format!("\noffset: {offset}\n")),
            "{run:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn show_prints_every_field_one_per_line() -> Result<()> {
    with_redis(|f| async move {
        let [completed, ..] = seed_three(&f).await?;
        let run = f.reprise(&["jobs", "show", "job-completed"]).await?;
        assert_eq!(run.code, Some(0), "{run:?}");
        assert_eq!(run.stderr, "");

        let (fields, request) = run
            .stdout
            .split_once("request_json:")
            .context("request_json")?;
        let lines: Vec<(&str, &str)> = fields
            .lines()
            .map(|l| l.split_once(": ").context("field: value"))
            .collect::<Result<_>>()?;
        let mut names: Vec<&str> = lines.iter().map(|(name, _)| *name).collect();
        names.push("request_json");
        let mut expected = vec!["job_id"];
        expected.extend(FIELDS);
        names.sort_unstable();
        expected.sort_unstable();
        assert_eq!(names, expected);

        let value = |name: &str| lines.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        assert_eq!(value("job_id"), Some("job-completed"));
        assert_eq!(value("method"), Some(METHOD));
        assert_eq!(value("status"), Some("completed"));
        assert_eq!(value("offset"), Some("100"));
        assert_eq!(value("owner_instance"), Some("pod-a-instance"));
        assert_eq!(value("lease_expires_at"), Some("<none>"));
        assert_eq!(value("last_error"), Some("<none>"));
        for (name, ms) in [
            ("started_at", completed.started_at_ms),
            ("updated_at", completed.updated_at_ms),
            ("finished_at", completed.finished_at_ms.context("finished")?),
        ] {
            let rfc3339 = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms));
            let shown = value(name).unwrap_or_default();
            assert!(
                shown.starts_with(&format!("{ms} ({rfc3339}, ")),
                "{name}: {shown}"
            );
            assert!(shown.ends_with(" ago)"), "{name}: {shown}");
        }
        // Pretty-printed, in the order the sidecar wrote it.
        assert_eq!(
            request,
            "\n  {\n    \"topic\": \"topic\",\n    \"fromOffset\": \"0\"\n  }\n"
        );

        let run = f.reprise(&["jobs", "show", "job-interrupted"]).await?;
        assert!(
            run.stdout.contains("\nlast_error: upstream reset\n"),
            "{run:?}"
        );
        assert!(run.stdout.contains("\nresumes: 2\n"), "{run:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn json_output_has_every_field_typed() -> Result<()> {
    with_redis(|f| async move {
        let [completed, interrupted, running] = seed_three(&f).await?;
        let run = f.reprise(&["jobs", "ls", "--output", "json"]).await?;
        assert_eq!(run.code, Some(0), "{run:?}");
        let all: Vec<Value> = serde_json::from_str(&run.stdout)?;
        let got: Vec<&str> = all.iter().filter_map(|j| j["job_id"].as_str()).collect();
        assert_eq!(got, ["job-running", "job-interrupted", "job-completed"]);

        for (json, record) in all.iter().zip([&running, &interrupted, &completed]) {
            let mut keys: Vec<&str> = json
                .as_object()
                .context("object")?
                .keys()
                .map(String::as_str)
                .collect();
            let mut expected = vec!["job_id"];
            expected.extend(FIELDS);
            keys.sort_unstable();
            expected.sort_unstable();
            assert_eq!(keys, expected);
            assert_eq!(json["service"], record.service.as_str());
            assert_eq!(json["method"], METHOD);
            assert_eq!(json["status"], record.status.as_str());
            assert_eq!(json["offset"].as_str(), record.offset.as_deref());
            assert_eq!(json["owner_pod"], record.owner.pod.as_str());
            assert_eq!(json["fence"], record.fence);
            assert_eq!(json["messages"], record.messages);
            assert_eq!(json["resumes"], record.resumes);
            assert_eq!(json["updated_at"], record.updated_at_ms);
            assert_eq!(json["finished_at"].as_u64(), record.finished_at_ms);
            assert_eq!(
                json["lease_expires_at"].as_u64(),
                record.lease_expires_at_ms
            );
            assert_eq!(json["last_error"].as_str(), record.last_error.as_deref());
            assert_eq!(json["request"], "CgV0b3BpYw==");
            assert_eq!(json["request_json"]["topic"], "topic");
        }
        assert!(all[0]["finished_at"].is_null() && all[2]["finished_at"].is_u64());

        let run = f
            .reprise(&["-o", "json", "jobs", "show", "job-interrupted"])
            .await?;
        assert_eq!(run.code, Some(0), "{run:?}");
        let one: Value = serde_json::from_str(&run.stdout)?;
        assert_eq!(one, all[1]);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn an_unknown_job_exits_1() -> Result<()> {
    with_redis(|f| async move {
        let run = f.reprise(&["jobs", "show", "no-such-job"]).await?;
        assert_eq!(run.code, Some(1), "{run:?}");
        assert_eq!(run.stdout, "");
        assert_eq!(
            run.stderr,
            format!(
                "reprise: no job \"no-such-job\" under prefix {}\n",
                f.prefix
            )
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_corrupt_job_is_named_with_its_field() -> Result<()> {
    with_redis(|mut f| async move {
        let fence = f.claim("job-good", "users-client", "pod-a", LEASE).await?;
        f.checkpoint("job-good", fence, "5", 5).await?;
        f.claim("job-bad", "users-client", "pod-a", LEASE).await?;
        let () = f
            .raw
            .hset(Keys::new(&f.prefix).job("job-bad"), "status", "zombie")
            .await?;

        let run = f.reprise(&["jobs", "show", "job-bad"]).await?;
        assert_eq!(run.code, Some(1), "{run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
        for part in ["job job-bad", "`status`", "zombie"] {
            assert!(run.stderr.contains(part), "{part:?} in {run:?}");
        }
        assert!(!run.stderr.contains("panicked"), "{run:?}");

        // The listing still shows every job it can read, and fails.
        let run = f.reprise(&["jobs", "ls"]).await?;
        assert_eq!(run.code, Some(1), "{run:?}");
        assert_eq!(ids(&run.stdout)?, ["job-good"]);
        assert!(
            run.stderr.contains("job job-bad: field `status`"),
            "{run:?}"
        );
        let run = f.reprise(&["jobs", "ls", "-o", "json"]).await?;
        assert_eq!(run.code, Some(1), "{run:?}");
        assert_eq!(serde_json::from_str::<Vec<Value>>(&run.stdout)?.len(), 1);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn redis_url_and_prefix_default_from_the_environment() -> Result<()> {
    with_redis(|f| async move {
        f.claim("job-env", "users-client", "pod-a", LEASE).await?;
        let env = [
            ("REPRISE_REDIS_URL", f.url.as_str()),
            ("REPRISE_KEY_PREFIX", f.prefix.as_str()),
        ];
        let run = reprise(&["jobs", "ls"], &env).await?;
        assert_eq!(run.code, Some(0), "{run:?}");
        assert_eq!(ids(&run.stdout)?, ["job-env"]);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn unreachable_redis_is_one_line_naming_the_url() -> Result<()> {
    // Port 1: nothing listens there, so the connection is refused at once.
    let url = "redis://reprise:s3cret@127.0.0.1:1/0";
    for command in [&["jobs", "ls"][..], &["jobs", "show", "some-job"][..]] {
        let mut args = vec!["--redis-url", url];
        args.extend_from_slice(command);
        let run = reprise(&args, &[]).await?;
        assert_eq!(run.code, Some(1), "{run:?}");
        assert_eq!(run.stdout, "");
        assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
        assert!(
            run.stderr.starts_with(
                "reprise: cannot connect to Redis at redis://reprise:***@127.0.0.1:1/0: "
            ),
            "{run:?}"
        );
        assert!(!run.stderr.contains("s3cret"), "{run:?}");
    }
    Ok(())
}

#[tokio::test]
async fn bad_usage_exits_2() -> Result<()> {
    for args in [
        &["jobs", "ls", "--status", "zombie"][..],
        &["jobs", "ls", "--limit", "0"][..],
        &["jobs", "show"][..],
        &["jobs", "frobnicate"][..],
        &["--output", "yaml", "jobs", "ls"][..],
        &[][..],
    ] {
        let run = reprise(args, &[]).await?;
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(!run.stderr.is_empty(), "{args:?}");
    }
    Ok(())
}
