//! Redis loses the jobs while their streams run: a Redis without persistence SIGKILLed and
//! started again empty, a `FLUSHDB`, a copy of the job that is behind (as a replica that had
//! not received the last writes holds it). None of these is another owner taking the job, so
//! the app's stream must go on to its end, every message once, and the job must be in Redis
//! again (written back from the sidecar's own state) with its final status.
//!
//! Each test runs its own `redis-server` on a free port, so it can kill and flush it.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

const LONG: Duration = Duration::from_secs(120);
const N: u64 = 20_000;

/// A private `redis-server` without persistence: it restarts empty, as many caches run.
struct PrivateRedis {
    port: u16,
    proc: Option<Proc>,
}

impl PrivateRedis {
    fn start(w: &World, port: u16) -> PrivateRedis {
        Self::start_with(w, port, &[])
    }

    /// One that starts from the snapshot in `dir` (taken by `SAVE`), as a Redis restarted
    /// from its RDB or from an AOF that had not fsynced the last writes does.
    fn start_from_snapshot(w: &World, port: u16, dir: &std::path::Path) -> PrivateRedis {
        let dir = dir.to_string_lossy();
        Self::start_with(w, port, &["--dir", &dir, "--dbfilename", "dump.rdb"])
    }

    fn start_with(w: &World, port: u16, extra: &[&str]) -> PrivateRedis {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra);
        let proc = Proc::spawn("redis-server", &mut cmd, w.path());
        wait_port(port, Duration::from_secs(20));
        PrivateRedis {
            port,
            proc: Some(proc),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("private redis connection")
    }

    fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// The key of a job under `prefix` (the tests here run one job), if Redis has one.
    fn signal(&self, sig: i32) {
        self.proc.as_ref().expect("redis runs").signal(sig);
    }

    /// Waits until the app recording to `record` has 5,000 admins and its job has a
    /// checkpoint in this Redis, then SIGSTOPs Redis and waits until the sidecar counts it as
    /// down. Returns the job's key.
    fn stall_after_progress(&self, w: &World, record: &std::path::Path) -> String {
        let key = || self.job_key(&w.prefix);
        wait_until("progress checkpointed in redis", LONG, || {
            lines(record).len() >= 5000
                && key().is_some_and(|k| {
                    self.hget(&k, "messages")
                        .and_then(|m| m.parse::<u64>().ok())
                        .is_some_and(|m| m > 0)
                })
        });
        let key = key().expect("job key");
        self.signal(19); // SIGSTOP
        wait_until("the sidecar sees redis stalled", LONG, || {
            w.metric("reprise_store_degraded", &[]) == 1.0
        });
        key
    }

    fn job_key(&self, prefix: &str) -> Option<String> {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:job:*"))
            .query(&mut self.conn())
            .expect("KEYS");
        keys.into_iter().next()
    }

    fn hget(&self, key: &str, field: &str) -> Option<String> {
        redis::cmd("HGET")
            .arg(key)
            .arg(field)
            .query(&mut self.conn())
            .expect("HGET")
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The talk's GetData, 20,000 Values, about 8 s through the sidecar, with Redis at `redis`.
fn start_stream(w: &World, redis: &PrivateRedis) -> (Proc, Proc, Proc, std::path::PathBuf) {
    let n = N.to_string();
    let server = w.server(&["--data", n.as_str(), "--delay-us", "400"]);
    let extra = format!("redis_url: {}\n", redis.url());
    let sidecar = w.sidecar(&w.config_with_streams(false, &World::seed_streams(), &extra));
    let record = w.path().join("values.txt");
    let record_arg = record.to_string_lossy().to_string();
    let client = w.client_proc(&["data", "--expect", &n, "--record", &record_arg]);
    (server, sidecar, client, record)
}

fn wait_recorded(client: &mut Proc, record: &std::path::Path, at_least: usize) {
    wait_until(&format!("{at_least} values recorded"), LONG, || {
        lines(record).len() >= at_least || matches!(client.child.try_wait(), Ok(Some(_)))
    });
}

/// The client got all N values once, in order, with OK; the one job is `completed` in Redis
/// with N messages; the sidecar counted the write-back and never claimed a takeover.
fn assert_whole_stream(
    w: &World,
    redis: &PrivateRedis,
    client: &mut Proc,
    sidecar: &Proc,
    job_key_of: impl Fn(&str) -> String,
) {
    let status = client.wait_exit(LONG);
    let summary = client.summary();
    let log = sidecar.log_text();
    assert!(
        status.success() && summary["ok"] == true && summary["received"] == N,
        "the app's stream did not survive Redis losing its job: {summary}\nsidecar log:\n{log}"
    );
    for count in ["duplicates", "out_of_order", "missing"] {
        assert_eq!(summary[count], 0, "{count}: {summary}");
    }
    assert!(
        !log.contains("another owner"),
        "no other owner exists:\n{log}"
    );
    assert!(
        log.contains("wrote it back from this sidecar's state"),
        "the write-back is logged:\n{log}"
    );
    let ids: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:job:*", w.prefix))
        .query(&mut redis.conn())
        .expect("KEYS");
    assert_eq!(ids.len(), 1, "the job is in Redis again: {ids:?}");
    let id = ids[0].rsplit(':').next().expect("job id").to_owned();
    let key = job_key_of(&id);
    wait_until("job completed in the new Redis", LONG, || {
        redis.hget(&key, "status").as_deref() == Some("completed")
    });
    assert_eq!(redis.hget(&key, "messages"), Some(N.to_string()));
    assert_eq!(redis.hget(&key, "offset"), Some((N - 1).to_string()));
    assert!(
        w.metric("reprise_store_restores_total", &[]) >= 1.0,
        "{}",
        w.metrics()
    );
    assert_eq!(w.metric("reprise_checkpoint_fenced_total", &[]), 0.0);
}

/// Redis SIGKILLed 3,000 values in and started again, empty, 3,000 values later (the probe's
/// case: the app's call ended `UNAVAILABLE … taken over by another owner` after 6–8 k).
#[test]
fn a_redis_restarted_empty_mid_stream_is_written_back_and_the_stream_goes_on() {
    let w = World::new();
    let port = free_port();
    let mut redis = PrivateRedis::start(&w, port);
    let (_server, sidecar, mut client, record) = start_stream(&w, &redis);
    wait_recorded(&mut client, &record, 3000);
    redis.kill9();
    wait_recorded(&mut client, &record, 6000);
    let redis = PrivateRedis::start(&w, port);
    let prefix = w.prefix.clone();
    assert_whole_stream(&w, &redis, &mut client, &sidecar, |id| {
        format!("{prefix}:job:{id}")
    });
}

/// `FLUSHDB` mid-stream, then, once the job is back, a copy of it behind the sidecar: status
/// `completed` under fence 0, as a replica promoted before it got the claim would hold it.
#[test]
fn a_flushed_job_and_a_copy_behind_the_owner_are_written_back() {
    let w = World::new();
    let redis = PrivateRedis::start(&w, free_port());
    let (_server, sidecar, mut client, record) = start_stream(&w, &redis);
    wait_recorded(&mut client, &record, 3000);
    let _: () = redis::cmd("FLUSHDB")
        .query(&mut redis.conn())
        .expect("FLUSHDB");
    let key = |id: &str| format!("{}:job:{id}", w.prefix);
    let job_key = || redis.job_key(&w.prefix);
    wait_until("the job written back after FLUSHDB", LONG, || {
        job_key().is_some() || matches!(client.child.try_wait(), Ok(Some(_)))
    });
    if let Some(k) = job_key() {
        let _: () = redis::cmd("DEL")
            .arg(&k)
            .query(&mut redis.conn())
            .expect("DEL");
        let _: () = redis::cmd("HSET")
            .arg(&k)
            .arg(
                &[
                    "status",
                    "completed",
                    "fence",
                    "0",
                    "offset",
                    "5",
                    "messages",
                    "6",
                ][..],
            )
            .query(&mut redis.conn())
            .expect("HSET");
    }
    assert_whole_stream(&w, &redis, &mut client, &sidecar, key);
    assert!(
        w.metric("reprise_store_restores_total", &[]) >= 2.0,
        "both losses written back:\n{}",
        w.metrics()
    );
}

/// Redis is down when the app calls, so its job is claimed in the in-process store, then Redis
/// comes up. The soak's Redis kills showed what that cost before (docs/reliability.md): such a
/// job stayed in memory for the rest of its call, so it never reached Redis and a sidecar
/// death lost its position. Now the job moves to Redis at the first checkpoint after Redis
/// answers, and after a SIGKILL the app's identical request resumes from there, not from the
/// start.
#[test]
fn a_job_claimed_while_redis_was_down_moves_to_redis_once_it_answers() {
    const USERS: usize = 100_000;
    let w = World::new();
    let port = free_port();
    let users = USERS.to_string();
    let _server = w.server(&["--users", users.as_str(), "--delay-us", "100"]);
    let config = w.config(false, &format!("redis_url: redis://127.0.0.1:{port}\n"));
    let mut sidecar = w.sidecar(&config);
    let first = w.path().join("first.txt");
    let arg = first.to_string_lossy().to_string();
    // A 64 KiB window: the sidecar's death below rewinds the job about 1,300 admins (what the
    // app may hold unread), short of its start.
    let mut client = w.client_proc(&[
        "users", "--role", "admin", "--record", &arg, "--window", "65535",
    ]);
    wait_until("progress with redis down", LONG, || {
        lines(&first).len() >= 300
    });
    assert_eq!(w.metric("reprise_store_degraded", &[]), 1.0);
    let redis = PrivateRedis::start(&w, port);
    let job_key = || redis.job_key(&w.prefix);
    wait_until("the job moved to redis, with its position", LONG, || {
        job_key().is_some_and(|k| {
            redis.hget(&k, "status").as_deref() == Some("running")
                && redis
                    .hget(&k, "messages")
                    .and_then(|m| m.parse::<u64>().ok())
                    .is_some_and(|m| m > 0)
        })
    });
    let key = job_key().expect("job key");
    let log = sidecar.log_text();
    assert!(
        log.contains("job claimed in memory while redis was down is now stored in redis"),
        "{log}"
    );
    assert_eq!(w.metric("reprise_store_adoptions_total", &[]), 1.0);
    wait_until("progress well past one window", LONG, || {
        lines(&first).len() >= 4000
    });
    let recorded = lines(&first).len();
    sidecar.kill9();
    client.wait_exit(LONG);
    assert!(
        lines(&first).len() < admin_ids(USERS).len(),
        "the kill came before the end of the stream"
    );
    let _sidecar = w.sidecar(&config);
    // The restarted sidecar releases what its predecessor left running.
    wait_until("job interrupted", LONG, || {
        redis.hget(&key, "status").as_deref() == Some("interrupted")
    });
    let offset = redis.hget(&key, "offset").expect("offset stored");
    assert!(
        !offset.is_empty(),
        "the job resumes past its start (the killed app had {recorded} admins and more)"
    );
    let (second, status, summary) = crate::restart::admins_again(&w);
    assert!(status.success(), "{summary}");
    crate::restart::assert_resumed_without_a_gap(&lines(&first), &lines(&second), &offset, USERS);
    assert_eq!(redis.hget(&key, "status").as_deref(), Some("completed"));
}

/// Finding 5 of docs/reliability.md (seen once in CI under load, before the soak): a Redis that
/// stops answering for a while (here SIGSTOPped, as a stalled or overloaded Redis is) while the
/// app dies mid-stream. The job's final state, `interrupted`, cannot be written then. Once Redis
/// answers again, the app's identical request must resume that job (one job in Redis, resumed, every
/// admin after what the app recorded), not start a second one from scratch because the first
/// still looks `running` under this sidecar.
#[test]
fn an_app_killed_while_redis_stalls_is_resumed_once_redis_answers() {
    const USERS: usize = 100_000;
    let w = World::new();
    let redis = PrivateRedis::start(&w, free_port());
    let users = USERS.to_string();
    let _server = w.server(&["--users", users.as_str(), "--delay-us", "100"]);
    let config = w.config(false, &format!("redis_url: {}\n", redis.url()));
    let _sidecar = w.sidecar(&config);
    let first = w.path().join("first.txt");
    let arg = first.to_string_lossy().to_string();
    // A 64 KiB window: the app's death rewinds the job about 1,300 admins, well short of
    // the start, so a request that starts afresh shows.
    let window = ["--window", "65535"];
    let mut client = w.client_proc(&[
        "users", "--role", "admin", "--record", &arg, window[0], window[1],
    ]);
    let key = redis.stall_after_progress(&w, &first);
    client.kill9();
    // The sidecar notices the app's death and cannot write the job's final state: it keeps it.
    wait_until("the final state kept for redis", LONG, || {
        w.metric("reprise_store_pending_final_states", &[]) == 1.0
    });
    // The request comes at once, while the sidecar still counts Redis as down (its probe
    // runs once a second): it must ask Redis all the same, for a job it knows is there.
    redis.signal(18); // SIGCONT
    let (second, status, summary) = crate::restart::admins_again_with(&w, &window);
    assert!(status.success(), "{summary}");
    let ids: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:job:*", w.prefix))
        .query(&mut redis.conn())
        .expect("KEYS");
    assert_eq!(
        ids,
        std::slice::from_ref(&key),
        "the identical request must resume the app's job, not start another"
    );
    assert_eq!(redis.hget(&key, "status").as_deref(), Some("completed"));
    let resumes: u64 = redis
        .hget(&key, "resumes")
        .and_then(|r| r.parse().ok())
        .expect("resumes");
    assert!(resumes >= 1, "the job was not resumed");
    let (first, second) = (lines(&first), lines(&second));
    let at = crate::restart::assert_resumed_within(&first, &second, &admin_ids(USERS));
    assert!(
        at > 0,
        "the identical request started from scratch (the app had recorded {})",
        first.len()
    );
    assert_eq!(w.metric("reprise_store_pending_final_states", &[]), 0.0);
}

/// Finding 10 of docs/reliability.md: a `deliver` job claimed in memory while Redis was down
/// died with its sidecar, and the app, whose call had begun, counted on a handoff that nobody
/// knew to make. A deliver-mode call that begins while Redis is down now waits for Redis
/// before its stream starts: the app gets nothing until the job is stored, then the whole
/// stream, and the job is in Redis; with Redis gone for longer than `max_outage` the call
/// ends `UNAVAILABLE` before any message.
#[test]
fn a_deliver_call_begun_while_redis_is_down_waits_until_its_job_is_stored() {
    let w = World::new();
    let port = free_port();
    let _server = w.server(&["--users", "3000", "--delay-us", "100"]);
    let sink_port = free_port();
    let config = w
        .deliver_config("pod-a", w.sidecar_port, w.metrics_port, sink_port)
        .replace(
            &format!("redis_url: {}", redis_url()),
            &format!("redis_url: redis://127.0.0.1:{port}"),
        );
    assert!(config.contains(&format!("127.0.0.1:{port}")), "{config}");
    // A short max_outage for the first call: Redis never comes, the call must end UNAVAILABLE.
    let short = config.replace("resume: deliver\n", "resume: deliver\n    max_outage: 1s\n");
    {
        let _sidecar = w.sidecar(&short);
        let (status, summary) = w.client(&["users", "--role", "admin"]);
        assert!(!status.success(), "{summary}");
        assert_eq!(summary["received"], 0, "{summary}");
        let text = summary.to_string();
        assert!(
            text.contains("UNAVAILABLE") || text.contains("Unavailable"),
            "{summary}"
        );
        assert!(
            text.contains("must be stored before its stream starts"),
            "{summary}"
        );
    }
    let _sidecar = w.sidecar(&config);
    let record = w.path().join("first.txt");
    let arg = record.to_string_lossy().to_string();
    let mut app = w.client_proc(&["users", "--role", "admin", "--record", &arg]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        lines(&record).len(),
        0,
        "the stream began before its job was stored"
    );
    let redis = PrivateRedis::start(&w, port);
    assert!(app.wait_exit(LONG).success(), "{}", app.summary());
    assert_eq!(lines(&record), admin_ids(3000), "the whole stream, once");
    let key = redis.job_key(&w.prefix).expect("the job is in redis");
    assert_eq!(redis.hget(&key, "status").as_deref(), Some("completed"));
}

/// Finding 15 of docs/reliability.md (the short soak, seed 7, `p0-j0036`): Redis was SIGKILLed
/// and, 1.2 s later while it was still away, the sidecar SIGTERMed. The job's final state,
/// `interrupted` at 5,165, was kept for Redis and lost when the sidecar exited; the app's
/// identical request reached the restarted sidecar while Redis was still away, was claimed in
/// memory from the start, and the app got all 5,165 again. Now the shutdown waits (within its
/// deadline) for Redis to take what it kept, and a call that comes while Redis is away waits
/// up to a `lease_ttl` before it claims in memory: the restarted sidecar resumes the job.
#[test]
fn a_sidecar_stopped_while_redis_stalls_leaves_its_job_resumable() {
    const USERS: usize = 100_000;
    let w = World::new();
    let redis = PrivateRedis::start(&w, free_port());
    let users = USERS.to_string();
    let _server = w.server(&["--users", users.as_str(), "--delay-us", "100"]);
    let config = w.config(false, &format!("redis_url: {}\n", redis.url()));
    let mut a = w.sidecar(&config);
    let first = w.path().join("first.txt");
    let arg = first.to_string_lossy().to_string();
    // A 64 KiB window, which the app's library reports on every 32 KiB: the handoff sees it
    // read what it was handed (tonic's 2 MiB reports nothing before about 700 KB, and a
    // handoff then replays the call: README, "Rolling restarts").
    let window = ["--window", "65535"];
    let mut client =
        w.client_proc(&[&["users", "--role", "admin", "--record", &arg][..], &window].concat());
    let key = redis.stall_after_progress(&w, &first);
    a.signal(15);
    client.wait_exit(LONG);
    wait_until(
        "the sidecar waits for redis to take the final state",
        LONG,
        || {
            a.log_text()
                .contains("waiting for it (within shutdown_timeout)")
        },
    );
    redis.signal(18); // SIGCONT
    assert!(a.wait_exit(LONG).success(), "{}", a.log_text());
    assert_eq!(
        redis.hget(&key, "status").as_deref(),
        Some("interrupted"),
        "the job's final state reached Redis before the sidecar exited"
    );

    // Redis stalls again; the sidecar comes back and the app asks again meanwhile.
    redis.signal(19); // SIGSTOP
    let b = w.sidecar(&config);
    let second = w.path().join("second.txt");
    let arg = second.to_string_lossy().to_string();
    let mut again =
        w.client_proc(&[&["users", "--role", "admin", "--record", &arg][..], &window].concat());
    wait_until("the call waits for redis", LONG, || {
        b.log_text()
            .contains("the call waits for it before claiming its job in memory")
    });
    redis.signal(18);
    assert!(again.wait_exit(LONG).success(), "{}", again.log_text());
    let (first, second) = (lines(&first), lines(&second));
    let at = crate::restart::assert_resumed_within(&first, &second, &admin_ids(USERS));
    assert!(
        at > 0,
        "the identical request started from scratch (the app had recorded {})",
        first.len()
    );
    assert_eq!(redis.hget(&key, "status").as_deref(), Some("completed"));
}

/// Finding 21 of docs/reliability.md (the 1,000-fault run of 2026-12-07, seed 20261207,
/// `p0-j0208` and `p2-j0518`): Redis was SIGKILLed and back within 2 s, and the app's
/// identical request, which reached its sidecar meanwhile, started its job afresh in memory:
/// the app got everything again. Two holes did it. A call whose own claim found Redis gone
/// went to memory at once. And a sidecar that had found Redis healthy probed it every 10 s,
/// so the first operation to fail did not make it look again sooner: a call that waited its
/// `lease_ttl` for Redis saw it back only if that probe happened to come in time. Now a call
/// waits for Redis however it finds it gone, and the first failure puts the probe on its
/// outage pace at once.
///
/// The app is killed, its job waits `interrupted` in Redis, Redis dies and comes back from its
/// snapshot while the app's identical request waits for it: the request must resume the job.
/// `new_sidecar`: the pod restarts in between, so the sidecar knows nothing of the job and
/// calls within the 10 s of its first healthy pause (the probe's hole); else the sidecar that
/// left the job in Redis takes the call (the claim's hole).
fn a_call_that_waits_for_a_restarted_redis_resumes_its_job(new_sidecar: bool) {
    const USERS: usize = 30_000;
    let w = World::new();
    let port = free_port();
    let dir = w.path().join("redis-data");
    std::fs::create_dir_all(&dir).expect("redis dir");
    let mut redis = PrivateRedis::start_from_snapshot(&w, port, &dir);
    let users = USERS.to_string();
    let _server = w.server(&["--users", users.as_str(), "--delay-us", "100"]);
    let config = w.config(false, &format!("redis_url: {}\n", redis.url()));
    let mut sidecar = w.sidecar(&config);
    // A 64 KiB window: an app death rewinds its job about 1,300 admins, not to the start.
    let record = |file: &str| {
        let path = w.path().join(file);
        let arg = path.to_string_lossy().to_string();
        let args = [
            "users", "--role", "admin", "--record", &arg, "--window", "65535",
        ];
        (path, w.client_proc(&args))
    };
    let (first, mut client) = record("first.txt");
    wait_until("the app's progress", LONG, || lines(&first).len() >= 3000);
    client.kill9();
    let key = redis.job_key(&w.prefix).expect("the job is in redis");
    wait_until("the job interrupted in redis", LONG, || {
        redis.hget(&key, "status").as_deref() == Some("interrupted")
    });
    let _: () = redis::cmd("SAVE").query(&mut redis.conn()).expect("SAVE");
    if new_sidecar {
        sidecar.kill9();
        sidecar = w.sidecar(&config);
    }
    redis.kill9();
    let (second, mut again) = record("second.txt");
    wait_until("the call waits for redis", LONG, || {
        sidecar
            .log_text()
            .contains("the call waits for it before claiming its job in memory")
    });
    let redis = PrivateRedis::start_from_snapshot(&w, port, &dir);
    assert!(again.wait_exit(LONG).success(), "{}", again.log_text());
    let (first, second) = (lines(&first), lines(&second));
    let at = crate::restart::assert_resumed_within(&first, &second, &admin_ids(USERS));
    assert!(
        at > 0,
        "the identical request started from scratch (the app had recorded {}):\n{}",
        first.len(),
        sidecar.log_text()
    );
    assert_eq!(redis.hget(&key, "status").as_deref(), Some("completed"));
}

#[test]
fn a_call_whose_claim_finds_redis_gone_waits_for_it_and_resumes_its_job() {
    a_call_that_waits_for_a_restarted_redis_resumes_its_job(false);
}

#[test]
fn a_restarted_sidecar_sees_redis_back_in_time_for_a_call_that_waits_for_it() {
    a_call_that_waits_for_a_restarted_redis_resumes_its_job(true);
}

/// Finding 22 of docs/reliability.md (the 1,000-fault run of 2026-12-07, `p1-j0345`): a
/// stream completed while Redis was down, and its final state's write waited on the Redis
/// client's reconnection attempts; the app, which had read every message, waited for its
/// status as long, was killed meanwhile, asked again, and got the whole job afresh. While the
/// sidecar counts Redis as down, a call's final state is now kept at once (and written once
/// Redis answers): no Redis attempt holds the app's status.
#[test]
fn a_stream_that_completes_while_redis_is_down_ends_without_waiting_for_redis() {
    let w = World::new();
    let port = free_port();
    let dir = w.path().join("redis-data");
    std::fs::create_dir_all(&dir).expect("redis dir");
    let mut redis = PrivateRedis::start_from_snapshot(&w, port, &dir);
    let (_server, _sidecar, mut client, record) = start_stream(&w, &redis);
    wait_recorded(&mut client, &record, 3000);
    let key = redis.job_key(&w.prefix).expect("job key");
    let _: () = redis::cmd("SAVE").query(&mut redis.conn()).expect("SAVE");
    redis.kill9();
    wait_until("the sidecar counts redis down", LONG, || {
        w.metric("reprise_store_degraded", &[]) == 1.0
    });
    let status = client.wait_exit(LONG);
    assert!(status.success(), "{}", client.summary());
    assert_eq!(lines(&record).len() as u64, N, "{}", client.summary());
    assert_eq!(
        w.metric("reprise_store_errors_total", &["op=\"finish\""]),
        0.0,
        "the final state waited on a redis that was down:\n{}",
        w.metrics()
    );
    assert_eq!(w.metric("reprise_store_pending_final_states", &[]), 1.0);
    let redis = PrivateRedis::start_from_snapshot(&w, port, &dir);
    wait_until("the kept final state written", LONG, || {
        redis.hget(&key, "status").as_deref() == Some("completed")
    });
    assert_eq!(redis.hget(&key, "messages"), Some(N.to_string()));
}

/// Finding 18 of docs/reliability.md (the CI soak of 2026-12-04, seed 7: one `on_request` job
/// ended `orphaned` though its app had its whole stream): Redis took a job's `completed` and
/// was SIGKILLed before it had that on disk (`appendfsync everysec` loses up to a second).
/// Restarted, it held the job `running` under an owner that had let it go; the lease lapsed,
/// the recoverer orphaned it, and nobody ever asks for a job whose app is done. Here Redis
/// restarts from a snapshot taken mid-stream, which loses the same write for sure. The
/// sidecar sees the server's `run_id` change and writes the final state again.
#[test]
fn a_final_state_a_restarted_redis_lost_is_written_again() {
    let w = World::new();
    let port = free_port();
    let dir = w.path().join("redis-data");
    std::fs::create_dir_all(&dir).expect("redis dir");
    let mut redis = PrivateRedis::start_from_snapshot(&w, port, &dir);
    let (_server, sidecar, mut client, record) = start_stream(&w, &redis);
    wait_recorded(&mut client, &record, 3000);
    wait_until("progress checkpointed in redis", LONG, || {
        redis.job_key(&w.prefix).is_some_and(|k| {
            redis
                .hget(&k, "messages")
                .and_then(|m| m.parse::<u64>().ok())
                .is_some_and(|m| m > 0)
        })
    });
    let key = redis.job_key(&w.prefix).expect("job key");
    let _: () = redis::cmd("SAVE").query(&mut redis.conn()).expect("SAVE");
    let status = client.wait_exit(LONG);
    assert!(status.success(), "{}", client.summary());
    // Killed the moment it has `completed`: well within the sidecar's five seconds.
    wait_until("job completed in redis", LONG, || {
        redis.hget(&key, "status").as_deref() == Some("completed")
    });
    redis.kill9();
    let redis = PrivateRedis::start_from_snapshot(&w, port, &dir);
    wait_until(
        "the final state written again",
        Duration::from_secs(30),
        || redis.hget(&key, "status").as_deref() == Some("completed"),
    );
    assert_eq!(redis.hget(&key, "messages"), Some(N.to_string()));
    assert_eq!(redis.hget(&key, "offset"), Some((N - 1).to_string()));
    assert_eq!(redis.hget(&key, "lease_expires_at").as_deref(), Some(""));
    // Counted only if the restarted Redis took it, so only if it had lost it.
    assert_eq!(
        w.metric("reprise_store_final_states_rewritten_total", &[]),
        1.0,
        "{}",
        w.metrics()
    );
    let log = sidecar.log_text();
    assert!(
        log.contains("redis restarted or failed over"),
        "the restart is logged:\n{log}"
    );
    wait_until("nothing left unconfirmed", LONG, || {
        w.metric("reprise_store_unconfirmed_final_states", &[]) == 0.0
    });
}
