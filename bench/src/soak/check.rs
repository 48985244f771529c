//! The soak's independent checker. It knows the upstream's deterministic data (event `seq` of a
//! job carries `PayloadPattern(payload_bytes).for_seq(seq)`, seqs 1..=count), the apps' plans
//! and record files, and the journal of the faults the soak injected; nothing of the sidecar's
//! metrics or of Redis. Per job it counts what was lost, out of order, corrupted and delivered
//! twice, and for every run of duplicates names the fault that explains it.

use std::collections::{BTreeMap, BTreeSet};

use reprise_demo::events::PayloadPattern;
use serde::{Deserialize, Serialize};

use super::app::{Job, fnv1a};

/// One injected fault, as the journal holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fault {
    /// Unix milliseconds when it was injected.
    pub ms: u64,
    pub kind: String,
    /// The process or link it hit.
    pub target: String,
    /// The pods whose streams it can touch.
    pub pods: Vec<String>,
    /// Milliseconds it lasted (0 for a signal).
    #[serde(default)]
    pub lasted_ms: u64,
}

impl Fault {
    /// Whether this fault may make `job`'s stream deliver a run of `messages` again.
    /// Kills of the sidecar, the app or Redis: any run (held to its bound apart, [`dup_bound`]).
    /// A sidecar SIGTERM: a handoff gives the app `handoff_read_wait` to show, by the window
    /// its HTTP/2 library gives back, that it read what it was handed, and writes where it
    /// surely was when it cannot (README, "Rolling restarts"). A slow app may not show it in
    /// time: any run. One that keeps up shows it, unless its library has given nothing back
    /// for the call yet; tonic's h2 gives a stream's window back once the app has read half of
    /// what it may still send, so that is at most half the 2 MiB window: a run of at most
    /// that much of the job's messages.
    pub fn explains(&self, job: &Job, messages: u64) -> bool {
        match self.kind.as_str() {
            "sidecar_sigkill" | "app_sigkill" | "redis_sigkill" => true,
            "sidecar_sigterm" => {
                job.slow_us > 0
                    || messages
                        <= (APP_WINDOW_BYTES / 2).div_ceil(u64::from(job.payload_bytes.max(1)))
            }
            _ => false,
        }
    }
}

/// One received message, as a record line says.
#[derive(Clone, Debug)]
struct Receipt {
    pod: String,
    receiver: String,
    seq: u64,
    hash: u64,
    ms: u64,
}

/// A run of messages delivered again.
#[derive(Clone, Debug, Serialize)]
pub struct DupRun {
    pub topic: String,
    pub messages: u64,
    /// How long the first delivery of these messages took, in milliseconds.
    pub window_ms: u64,
    /// The fault that explains it, or None.
    pub cause: Option<String>,
}

/// What the checker found.
#[derive(Debug, Default, Serialize)]
pub struct Verdict {
    pub jobs: usize,
    pub jobs_complete: usize,
    pub messages: u64,
    pub lost: u64,
    pub out_of_order: u64,
    pub corrupt: u64,
    pub duplicates: u64,
    pub dup_runs: Vec<DupRun>,
    pub unexplained_duplicates: u64,
    pub max_dup_window_messages: u64,
    pub max_dup_window_ms: u64,
    /// The run of duplicates largest against its bound ([`dup_bound`]): messages, bound.
    pub max_dup_against_bound: (u64, u64),
    /// Duplicates in runs larger than their bound, and one line per such run.
    pub over_bound_duplicates: u64,
    pub over_bound: Vec<String>,
    /// Per fault kind: the milliseconds from the fault to the next new message of each job it
    /// touched.
    pub gaps_ms: BTreeMap<String, Vec<u64>>,
    /// One line per problem, for the report.
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn clean(&self) -> bool {
        self.clean_but_for_the_bound() && self.over_bound_duplicates == 0
    }

    /// Clean, counting runs of duplicates over their bound as reported, not failed.
    pub fn clean_but_for_the_bound(&self) -> bool {
        self.lost == 0
            && self.out_of_order == 0
            && self.corrupt == 0
            && self.unexplained_duplicates == 0
            && self.problems.is_empty()
    }
}

/// The window the README promises for what is delivered twice after a kill ("How much is
/// delivered twice"): the app's HTTP/2 window of the stream (the soak's apps keep hyper's
/// client default, 2 MiB, which tonic does not change), plus what the upstream sends during one
/// `checkpoint_interval` and the second of writes a Redis on `appendfsync everysec` may lose
/// (which also covers a checkpoint flusher a loaded machine starves for up to a second).
const APP_WINDOW_BYTES: u64 = 2 * 1024 * 1024;
/// The soak's upstream pace (`--delay-us 2000`): messages per second per stream, at most.
const PACE_PER_S: u64 = 500;
const REDIS_LOSS_MS: u64 = 1_000;

/// The most messages one run of duplicates of a job may hold: its app window in messages of
/// the job's payload size (the gRPC framing makes each message larger, so this rounds up),
/// plus the checkpoint part.
pub fn dup_bound(payload_bytes: u32, checkpoint_ms: u64) -> u64 {
    APP_WINDOW_BYTES.div_ceil(u64::from(payload_bytes.max(1)))
        + (checkpoint_ms + REDIS_LOSS_MS) * PACE_PER_S / 1000
}

/// How far back a duplicate's cause may lie: a resume after a sidecar kill waits for the lease
/// (the soak's `lease_ttl`) and the recoverer's reconcile, a few seconds.
const CAUSE_HORIZON_MS: u64 = 60_000;

/// Checks the jobs of `plans` (pod → its jobs) against the record files under each pod's
/// directory `dirs[pod]/rec`.
/// `checkpoint_ms`: the sidecars' `checkpoint_interval`, for the duplicates' bound.
pub fn check(
    plans: &BTreeMap<String, Vec<Job>>,
    dirs: &BTreeMap<String, std::path::PathBuf>,
    started: &BTreeSet<String>,
    faults: &[Fault],
    checkpoint_ms: u64,
) -> Verdict {
    let mut v = Verdict::default();
    let receipts = read_receipts(dirs, &mut v);
    for (pod, jobs) in plans {
        for job in jobs {
            if !started.contains(&job.topic) {
                continue;
            }
            v.jobs += 1;
            let got = receipts.get(&job.topic).map_or(&[][..], Vec::as_slice);
            check_job(pod, job, got, faults, checkpoint_ms, &mut v);
        }
    }
    v
}

/// What the settling watches, cheaply (the full check reads every line of every file, minutes
/// for a long run): how many started jobs some app has the last message of, judged by the last
/// line of each of the job's record files, and how many bytes the record files hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub jobs: usize,
    pub ended: usize,
    pub bytes: u64,
}

pub fn progress(
    plans: &BTreeMap<String, Vec<Job>>,
    dirs: &BTreeMap<String, std::path::PathBuf>,
    started: &BTreeSet<String>,
) -> Progress {
    let mut p = Progress {
        jobs: 0,
        ended: 0,
        bytes: 0,
    };
    let last_seq = |path: &std::path::Path, bytes: &mut u64| -> Option<u64> {
        use std::io::{Read as _, Seek as _, SeekFrom};
        let mut file = std::fs::File::open(path).ok()?;
        let len = file.metadata().ok()?.len();
        *bytes += len;
        file.seek(SeekFrom::Start(len.saturating_sub(256))).ok()?;
        let mut tail = String::new();
        file.read_to_string(&mut tail).ok()?;
        let line = tail.strip_suffix('\n')?.rsplit('\n').next()?;
        line.split(' ').nth(1)?.parse().ok()
    };
    for jobs in plans.values() {
        for job in jobs.iter().filter(|j| started.contains(&j.topic)) {
            p.jobs += 1;
            let mut ended = false;
            for dir in dirs.values() {
                let path = dir.join("rec").join(format!("{}.txt", job.topic));
                ended |= last_seq(&path, &mut p.bytes) == Some(job.count);
            }
            p.ended += usize::from(ended);
        }
    }
    p
}

fn read_receipts(
    dirs: &BTreeMap<String, std::path::PathBuf>,
    v: &mut Verdict,
) -> BTreeMap<String, Vec<Receipt>> {
    let mut out: BTreeMap<String, Vec<Receipt>> = BTreeMap::new();
    for (pod, dir) in dirs {
        let Ok(entries) = std::fs::read_dir(dir.join("rec")) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(topic) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for (n, line) in text.lines().enumerate() {
                match parse_line(pod, line) {
                    Some(r) => out.entry(topic.clone()).or_default().push(r),
                    // A SIGKILL can cut the last line of a file short: only that one may be.
                    None if n + 1 == text.lines().count() && !text.ends_with('\n') => {}
                    None => v.problems.push(format!(
                        "{}: unreadable line {}: `{line}`",
                        path.display(),
                        n + 1
                    )),
                }
            }
        }
    }
    out
}

fn parse_line(pod: &str, line: &str) -> Option<Receipt> {
    let mut f = line.split(' ');
    let r = Receipt {
        pod: pod.to_owned(),
        receiver: f.next()?.to_owned(),
        seq: f.next()?.parse().ok()?,
        hash: u64::from_str_radix(f.next()?, 16).ok()?,
        ms: f.next()?.parse().ok()?,
    };
    f.next().is_none().then_some(r)
}

fn check_job(
    pod: &str,
    job: &Job,
    got: &[Receipt],
    faults: &[Fault],
    checkpoint_ms: u64,
    v: &mut Verdict,
) {
    let bound = dup_bound(job.payload_bytes, checkpoint_ms);
    let pattern = PayloadPattern::new(job.payload_bytes as usize);
    // Receivers (calls and deliveries) in the order they began.
    let mut receivers: Vec<(String, String)> = Vec::new();
    let mut by_receiver: BTreeMap<(String, String), Vec<&Receipt>> = BTreeMap::new();
    for r in got {
        let key = (r.pod.clone(), r.receiver.clone());
        if !by_receiver.contains_key(&key) {
            receivers.push(key.clone());
        }
        by_receiver.entry(key).or_default().push(r);
    }
    receivers.sort_by_key(|k| by_receiver[k].first().map_or(0, |r| r.ms));
    let mut first_seen: BTreeMap<u64, u64> = BTreeMap::new();
    for key in &receivers {
        let rs = &by_receiver[key];
        let mut last: Option<u64> = None;
        let mut dup_seqs = Vec::new();
        for r in rs {
            v.messages += 1;
            if r.seq == 0 || r.seq > job.count {
                v.corrupt += 1;
                v.problems.push(format!(
                    "{}: seq {} outside 1..={}",
                    job.topic, r.seq, job.count
                ));
                continue;
            }
            if r.hash != fnv1a(pattern.for_seq(r.seq)) {
                v.corrupt += 1;
                v.problems.push(format!(
                    "{}: seq {} in {}/{} is not what the upstream sent",
                    job.topic, r.seq, key.0, key.1
                ));
            }
            match last {
                Some(l) if r.seq <= l => {
                    v.out_of_order += 1;
                    v.problems.push(format!(
                        "{}: seq {} after {l} in {}/{}",
                        job.topic, r.seq, key.0, key.1
                    ));
                }
                // A gap inside one receiver: the messages between were skipped (they may still
                // have arrived elsewhere, so it counts as lost only if they never did).
                _ => {}
            }
            last = Some(last.map_or(r.seq, |l| l.max(r.seq)));
            match first_seen.entry(r.seq) {
                std::collections::btree_map::Entry::Occupied(_) => dup_seqs.push(r.seq),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(r.ms);
                }
            }
        }
        if !dup_seqs.is_empty() {
            let n = dup_seqs.len() as u64;
            v.duplicates += n;
            let times: Vec<u64> = dup_seqs
                .iter()
                .filter_map(|s| first_seen.get(s))
                .copied()
                .collect();
            let window_ms = times.iter().max().unwrap_or(&0) - times.iter().min().unwrap_or(&0);
            let began = rs.first().map_or(0, |r| r.ms);
            let earlier_pods: BTreeSet<&str> = std::iter::once(pod)
                .chain(receivers.iter().map(|k| k.0.as_str()))
                .collect();
            let cause = faults
                .iter()
                .rev()
                .filter(|f| f.ms <= began && began - f.ms <= CAUSE_HORIZON_MS)
                .filter(|f| f.explains(job, n))
                .find(|f| {
                    f.kind == "redis_sigkill"
                        || f.pods.iter().any(|p| earlier_pods.contains(p.as_str()))
                })
                .map(|f| format!("{} {} at {}", f.kind, f.target, f.ms));
            if cause.is_none() {
                v.unexplained_duplicates += n;
                v.problems.push(format!(
                    "{}: {n} message(s) delivered again in {}/{} with no fault to explain it",
                    job.topic, key.0, key.1
                ));
            }
            if n > bound {
                v.over_bound_duplicates += n;
                v.over_bound.push(format!(
                    "{}: {n} message(s) delivered again in {}/{}, more than the {bound} one \
                     app window and checkpoint interval allow ({})",
                    job.topic,
                    key.0,
                    key.1,
                    cause.as_deref().unwrap_or("no cause")
                ));
            }
            let (worst, worst_bound) = v.max_dup_against_bound;
            if worst == 0 || n * worst_bound > worst * bound {
                v.max_dup_against_bound = (n, bound);
            }
            v.max_dup_window_messages = v.max_dup_window_messages.max(n);
            v.max_dup_window_ms = v.max_dup_window_ms.max(window_ms);
            v.dup_runs.push(DupRun {
                topic: job.topic.clone(),
                messages: n,
                window_ms,
                cause,
            });
        }
    }
    let lost = job.count - first_seen.len() as u64;
    if lost > 0 {
        v.lost += lost;
        let missing: Vec<u64> = (1..=job.count)
            .filter(|s| !first_seen.contains_key(s))
            .take(5)
            .collect();
        v.problems.push(format!(
            "{} (pod {pod}): {lost} of {} lost, first missing {missing:?}",
            job.topic, job.count
        ));
    } else {
        v.jobs_complete += 1;
    }
    // Resume gaps: from each fault that touched this job while it streamed to its next new
    // message.
    for f in faults {
        let before: Vec<&u64> = first_seen.values().filter(|&&ms| ms <= f.ms).collect();
        let active =
            before.iter().any(|&&ms| f.ms - ms <= 1_000) && before.len() < job.count as usize;
        let touches = f.kind.starts_with("redis")
            || f.kind.starts_with("rabbitmq")
            || f.pods
                .iter()
                .any(|p| p == pod || by_receiver.keys().any(|k| &k.0 == p));
        if !active || !touches {
            continue;
        }
        if let Some(next) = first_seen.values().filter(|&&ms| ms > f.ms).min() {
            v.gaps_ms
                .entry(f.kind.clone())
                .or_default()
                .push(next - f.ms);
        }
    }
}

/// Percentile `p` (0..=100) of `values`, nearest rank.
pub fn percentile(values: &[u64], p: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(count: u64) -> Job {
        sized_job(count, 100)
    }

    fn sized_job(count: u64, payload_bytes: u32) -> Job {
        Job {
            topic: "t-1".into(),
            count,
            payload_bytes,
            slow_us: 0,
        }
    }

    fn line(receiver: &str, seq: u64, ms: u64) -> String {
        sized_line(receiver, seq, ms, 100)
    }

    fn sized_line(receiver: &str, seq: u64, ms: u64, payload_bytes: u32) -> String {
        let hash = fnv1a(PayloadPattern::new(payload_bytes as usize).for_seq(seq));
        format!("{receiver} {seq} {hash:016x} {ms}\n")
    }

    /// A signal of `kind` to `target` on pod p0 at `ms`.
    fn fault(ms: u64, kind: &str, target: &str) -> Fault {
        Fault {
            ms,
            kind: kind.into(),
            target: target.into(),
            pods: vec!["p0".into()],
            lasted_ms: 0,
        }
    }

    /// Seqs 1-3 in one receiver, then 2-5 in the next: 2 and 3 delivered twice.
    fn two_again() -> String {
        [1, 2, 3, 2, 3, 4, 5]
            .iter()
            .enumerate()
            .map(|(i, &s)| line(if i < 3 { "c0.0" } else { "c1.0" }, s, 1000 + i as u64 * 10))
            .collect()
    }

    fn run(text: &str, faults: &[Fault]) -> Verdict {
        run_job(job(5), text, faults)
    }

    fn run_job(job: Job, text: &str, faults: &[Fault]) -> Verdict {
        let dir = tempfile::tempdir().expect("a scratch directory");
        std::fs::create_dir_all(dir.path().join("p0/rec")).expect("mkdir");
        std::fs::write(dir.path().join("p0/rec/t-1.txt"), text).expect("write the record");
        let plans = BTreeMap::from([("p0".to_owned(), vec![job])]);
        let dirs = BTreeMap::from([("p0".to_owned(), dir.path().join("p0"))]);
        let started = BTreeSet::from(["t-1".to_owned()]);
        check(&plans, &dirs, &started, faults, 100)
    }

    /// A run of duplicates is allowed one app window (2 MiB: 32 messages of 64 KiB) and what
    /// the upstream sends in a checkpoint interval and a lost Redis second (550 at 500/s); a
    /// restart from the beginning of a 1,200-message job is more than that, whatever its cause.
    #[test]
    fn a_run_of_duplicates_is_held_to_one_window_for_its_size() {
        const KIB64: u32 = 64 * 1024;
        assert_eq!(dup_bound(KIB64, 100), 32 + 550);
        assert_eq!(dup_bound(100, 100), 20_972 + 550);
        let kill = fault(5_000, "app_sigkill", "app p0");
        let replay = |from: u64| -> String {
            let first = (1..=1200).map(|s| sized_line("c0.0", s, 1000 + s, KIB64));
            let again = (from..=1200).map(|s| sized_line("c1.0", s, 6000 + s, KIB64));
            first.chain(again).collect()
        };
        let v = run_job(
            sized_job(1200, KIB64),
            &replay(619),
            std::slice::from_ref(&kill),
        );
        assert!(v.clean(), "{:?}", v.problems);
        assert_eq!(v.max_dup_against_bound, (582, 582));
        let v = run_job(sized_job(1200, KIB64), &replay(1), &[kill]);
        assert!(!v.clean());
        assert!(v.clean_but_for_the_bound(), "{:?}", v.problems);
        assert_eq!(v.over_bound_duplicates, 1200);
        assert!(
            v.over_bound[0].contains("more than the 582"),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn an_exact_job_is_clean() {
        let text: String = (1..=5).map(|s| line("c0.0", s, 1000 + s)).collect();
        let v = run(&text, &[]);
        assert!(v.clean(), "{:?}", v.problems);
        assert_eq!(
            (v.messages, v.lost, v.duplicates, v.jobs_complete),
            (5, 0, 0, 1)
        );
    }

    #[test]
    fn lost_disordered_corrupt_and_unexplained_are_found() {
        let mut text: String = [1, 2, 4]
            .iter()
            .map(|&s| line("c0.0", s, 1000 + s))
            .collect();
        text.push_str(&line("c0.0", 3, 1010));
        text.push_str("c0.0 5 0000000000000000 1011\n");
        let v = run(&text, &[]);
        assert_eq!(v.out_of_order, 1);
        assert_eq!(v.corrupt, 1);
        assert_eq!(v.lost, 0);
        assert!(!v.clean());
        let text: String = [1, 2, 3]
            .iter()
            .map(|&s| line("c0.0", s, 1000 + s))
            .collect();
        let v = run(&text, &[]);
        assert_eq!(v.lost, 2);
        let text = two_again();
        let v = run(&text, &[]);
        assert_eq!((v.duplicates, v.unexplained_duplicates), (2, 2));
        let kill = fault(1025, "app_sigkill", "app p0");
        let v = run(&text, &[kill]);
        assert!(v.clean(), "{:?}", v.problems);
        assert_eq!(
            (v.duplicates, v.max_dup_window_messages, v.max_dup_window_ms),
            (2, 2, 10)
        );
    }

    /// A handoff that could not see a slow app read its window delivers it again; one whose
    /// app keeps up may deliver again only what its library had not yet reported on: at most
    /// half its window.
    #[test]
    fn a_sidecar_sigterm_explains_any_run_for_a_slow_app_and_half_a_window_for_others() {
        let term = fault(1025, "sidecar_sigterm", "sidecar p0");
        // 64 KiB messages: half the 2 MiB window is 16 of them.
        let again = |n: u64| -> String {
            let first: String = (1..=20)
                .map(|s| sized_line("c0.0", s, 1000 + s, 65536))
                .collect();
            let second: String = (21 - n..=20)
                .map(|s| sized_line("c1.0", s, 1100 + s, 65536))
                .collect();
            first + &second
        };
        let fast = sized_job(20, 65536);
        let v = run_job(fast.clone(), &again(16), std::slice::from_ref(&term));
        assert!(v.clean(), "{:?}", v.problems);
        let v = run_job(fast.clone(), &again(17), std::slice::from_ref(&term));
        assert_eq!(
            v.unexplained_duplicates, 17,
            "more than half a window, kept up"
        );
        let slow = Job {
            slow_us: 2_000,
            ..fast
        };
        let v = run_job(slow, &again(17), &[term]);
        assert!(v.clean(), "{:?}", v.problems);
    }

    #[test]
    fn a_line_cut_short_by_a_kill_is_not_a_problem_but_one_in_the_middle_is() {
        let text: String = (1..=5).map(|s| line("c0.0", s, 1000 + s)).collect();
        let v = run(&format!("{text}c1.0 3 00"), &[]);
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        let v = run(&format!("c1.0 3 00\n{text}"), &[]);
        assert_eq!(v.problems.len(), 1);
    }
}
