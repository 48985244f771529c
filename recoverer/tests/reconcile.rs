//! The reconciler against real Redis and the real pod watch (the kube client against the
//! in-process API server): which jobs a pod event or a reconcile pass may orphan.
//!
//! Signals are taken from the watch and handed to the reconciler by the test, one at a time,
//! so every assertion follows exactly one signal.

mod support;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use reprise_jobs::{Checkpoint, JobStatus, JobStore as _, Owner, RedisStore, Write};
use reprise_kube_fake::{
    FakeApiServer,
    pods::{injected_pod, sidecar_restarted, terminated},
};
use reprise_recoverer::{
    admin::Metrics,
    config::Config,
    kube_view,
    reconcile::{Reconciler, Signal},
};
use support::jobs::{Prefix, new_job, record};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);
const LONG_LEASE: Duration = Duration::from_secs(60);

struct Harness {
    api: FakeApiServer,
    reconciler: Reconciler,
    metrics: Arc<Metrics>,
    signals: mpsc::UnboundedReceiver<Signal>,
    store: RedisStore,
    shutdown: CancellationToken,
    _prefix: Prefix,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An API server holding `pods`, a recoverer configured by `yaml` (on top of `kube: true`)
/// whose pod store has synced, and an empty key prefix.
async fn start(pods: Vec<Pod>, yaml: &str) -> Harness {
    let api = FakeApiServer::start().await;
    for pod in pods {
        api.add(pod);
    }
    let prefix = Prefix::new();
    let store = prefix.store().await;
    let config = Config::parse(&format!("kube: true\n{yaml}"), &BTreeMap::new())
        .expect("valid recoverer config");
    let metrics = Arc::new(Metrics::default());
    let shutdown = CancellationToken::new();
    let (tx, signals) = mpsc::unbounded_channel();
    let view = kube_view::watch(api.client(), &config, tx, metrics.clone(), shutdown.clone());
    let deadline = tokio::time::Instant::now() + WAIT;
    while !view.synced() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod store not synced within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // These tests judge leases at once; the grace has its own tests below.
    let reconciler = Reconciler::new(store.clone(), None, Some(view), metrics.clone())
        .with_lease_grace(Duration::ZERO);
    Harness {
        api,
        reconciler,
        metrics,
        signals,
        store,
        shutdown,
        _prefix: prefix,
    }
}

impl Harness {
    /// The sidecar `instance` of the pod `namespace/name` as the downward API describes it.
    fn owner(&self, namespace: &str, name: &str, instance: &str) -> Owner {
        let uid = self
            .api
            .pod(namespace, name)
            .and_then(|p| p.metadata.uid)
            .expect("the pod exists");
        Owner::new(name, instance)
            .in_namespace(namespace)
            .with_uid(uid)
    }

    async fn claim(&self, job_id: &str, owner: &Owner) {
        self.claim_for(job_id, owner, LONG_LEASE).await;
    }

    async fn claim_for(&self, job_id: &str, owner: &Owner, lease: Duration) {
        let claim = self
            .store
            .claim(&new_job(job_id, owner, lease))
            .await
            .expect("claim");
        assert!(claim.fence().is_some(), "{job_id}: {claim:?}");
    }

    async fn next_signal(&mut self) -> Signal {
        tokio::time::timeout(WAIT, self.signals.recv())
            .await
            .expect("a pod signal in time")
            .expect("the watch runs")
    }

    /// Deletes the pod and hands the reconciler the signal that follows.
    async fn delete(&mut self, namespace: &str, name: &str) -> usize {
        self.api.delete(namespace, name);
        let signal = self.next_signal().await;
        assert!(
            matches!(&signal, Signal::PodDead { namespace: ns, pod, .. } if ns == namespace && pod == name),
            "{signal:?}"
        );
        self.reconciler
            .on_signal(&signal)
            .await
            .expect("Redis answers")
    }

    async fn status(&self, job_id: &str) -> JobStatus {
        record(&self.store, job_id).await.status
    }
}

/// `namespaces: []` (every namespace, one key prefix): StatefulSet names such as `users-0`
/// repeat across namespaces, and deleting one must not touch its namesake's jobs.
#[tokio::test]
async fn deleting_a_pod_spares_the_jobs_of_its_namesake_in_another_namespace() {
    let mut h = start(
        vec![
            injected_pod("demo", "users-a"),
            injected_pod("staging", "users-a"),
        ],
        "namespaces: []\n",
    )
    .await;
    h.claim("j-demo", &h.owner("demo", "users-a", "i-demo"))
        .await;
    h.claim("j-staging", &h.owner("staging", "users-a", "i-staging"))
        .await;

    assert_eq!(h.delete("staging", "users-a").await, 1);
    let demo = record(&h.store, "j-demo").await;
    assert_eq!(
        demo.status,
        JobStatus::Running,
        "the live pod demo/users-a lost its job: {:?}",
        demo.last_error
    );
    let staging = record(&h.store, "j-staging").await;
    assert_eq!(staging.status, JobStatus::Orphaned);
    assert_eq!(
        staging.last_error.as_deref(),
        Some("pod staging/users-a: deleted")
    );
}

/// A sidecar without `POD_NAMESPACE` (an older one) records the bare pod name. While a pod of
/// that name lives in another namespace, a deletion cannot tell whose job it is: the lease
/// decides. With no namesake left, such a job is orphaned at once, as before.
#[tokio::test]
async fn a_job_without_a_namespace_is_left_to_its_lease_while_a_namesake_lives() {
    let mut h = start(
        vec![
            injected_pod("demo", "users-a"),
            injected_pod("staging", "users-a"),
        ],
        "namespaces: []\n",
    )
    .await;
    h.claim("j-1", &Owner::new("users-a", "i-1")).await;
    h.claim("j-2", &Owner::new("users-a", "i-2")).await;

    assert_eq!(h.delete("staging", "users-a").await, 0);
    assert_eq!(h.status("j-1").await, JobStatus::Running);
    assert_eq!(h.status("j-2").await, JobStatus::Running);

    assert_eq!(h.delete("demo", "users-a").await, 2, "no namesake left");
    assert_eq!(h.status("j-1").await, JobStatus::Orphaned);
}

/// A StatefulSet pod deleted and recreated under the same name: the old incarnation's death
/// reaches its own jobs, not those the new one has already claimed.
#[tokio::test]
async fn a_recreated_pod_keeps_the_jobs_of_its_new_incarnation() {
    let mut h = start(
        vec![injected_pod("demo", "users-0")],
        "namespaces: [demo]\n",
    )
    .await;
    h.claim("j-old", &h.owner("demo", "users-0", "i-old")).await;
    let old_uid = h.api.pod("demo", "users-0").and_then(|p| p.metadata.uid);
    let new = h.api.batch(|c| {
        c.delete("demo", "users-0");
        c.add(injected_pod("demo", "users-0"))
    });
    assert_ne!(new.metadata.uid, old_uid);
    h.claim("j-new", &h.owner("demo", "users-0", "i-new")).await;

    let signal = h.next_signal().await;
    assert!(
        matches!(&signal, Signal::PodDead { uid, .. } if *uid == old_uid),
        "{signal:?}"
    );
    assert_eq!(h.reconciler.on_signal(&signal).await.expect("Redis"), 1);
    assert_eq!(h.status("j-old").await, JobStatus::Orphaned);
    assert_eq!(h.status("j-new").await, JobStatus::Running);
}

/// A killed sidecar container restarts in its pod and registers again; a namesake in another
/// namespace registering after it must not make the recoverer take the restarted instance
/// for a dead one.
#[tokio::test]
async fn a_sidecar_kill_spares_the_restarted_instance_whatever_its_namesakes_do() {
    let mut h = start(
        vec![
            injected_pod("demo", "users-a"),
            injected_pod("staging", "users-a"),
        ],
        "namespaces: []\n",
    )
    .await;
    let killed = h.owner("demo", "users-a", "i-killed");
    h.claim("j-killed", &killed).await;
    let restarted = h.owner("demo", "users-a", "i-restarted");
    let namesake = h.owner("staging", "users-a", "i-namesake");
    for owner in [&restarted, &namesake] {
        h.store.register_sidecar(owner).await.expect("register");
    }
    h.claim("j-restarted", &restarted).await;
    h.claim("j-namesake", &namesake).await;

    let a_minute_ago = (k8s_openapi::jiff::Timestamp::now()
        - k8s_openapi::jiff::SignedDuration::from_secs(60))
    .to_string();
    h.api.update("demo", "users-a", |p| {
        *p = sidecar_restarted(p.clone(), terminated(137, "OOMKilled", None, &a_minute_ago))
    });
    let signal = h.next_signal().await;
    assert!(
        matches!(&signal, Signal::SidecarKilled { namespace, .. } if namespace == "demo"),
        "{signal:?}"
    );
    assert_eq!(h.reconciler.on_signal(&signal).await.expect("Redis"), 1);
    assert_eq!(h.status("j-killed").await, JobStatus::Orphaned);
    assert_eq!(h.status("j-restarted").await, JobStatus::Running);
    assert_eq!(h.status("j-namesake").await, JobStatus::Running);
}

/// A sidecar whose pod is not in the recoverer's store (label missing, namespace not watched,
/// or a `pod_name` that fell back to a hostname that is not the pod's name) but that renews
/// its lease keeps its job; once it stops renewing, the lease decides as for any owner.
#[tokio::test]
async fn reconcile_leaves_an_owner_it_cannot_see_to_its_lease() {
    let h = start(vec![injected_pod("demo", "users-0")], "namespaces: []\n").await;
    let lease = Duration::from_millis(1500);
    let unseen = Owner::new("users-0.users.demo.svc", "i-1").in_namespace("demo");
    h.claim_for("j1", &unseen, lease).await;

    // Renew for two whole leases, reconciling between renewals.
    let until = tokio::time::Instant::now() + 2 * lease;
    let mut messages = 0;
    while tokio::time::Instant::now() < until {
        assert_eq!(h.reconciler.reconcile().await.expect("Redis"), 0);
        messages += 1;
        let renewal = Checkpoint {
            job_id: "j1".into(),
            fence: 1,
            offset: Some(messages.to_string()),
            messages,
            lease_ttl: lease,
            replay: None,
        };
        assert_eq!(
            h.store.checkpoint(&renewal).await.expect("Redis"),
            Write::Ok,
            "the renewing owner lost its job: {:?}",
            record(&h.store, "j1").await.last_error
        );
        tokio::time::sleep(lease / 5).await;
    }

    // It stops renewing: a pass after the lease has lapsed orphans the job.
    let deadline = tokio::time::Instant::now() + WAIT;
    while h.reconciler.reconcile().await.expect("Redis") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never orphaned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let job = record(&h.store, "j1").await;
    assert_eq!(job.status, JobStatus::Orphaned);
    assert_eq!(job.offset, Some(messages.to_string()));
    assert!(
        job.last_error
            .as_deref()
            .is_some_and(|e| e.contains("lease expired")),
        "{:?}",
        job.last_error
    );
}

/// Log lines written while the guard lives (this thread only: the test runtime runs every
/// task on it).
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let buffer = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        (Self(buffer), tracing::subscriber::set_default(subscriber))
    }

    fn warnings(&self) -> Vec<String> {
        let bytes = self.0.lock().expect("log buffer").clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| l.contains(" WARN "))
            .map(str::to_owned)
            .collect()
    }
}

struct LogWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An owner the store does not hold shows in `reprise_recoverer_unknown_owners` and is logged
/// once, saying what to check; its jobs keep running.
#[tokio::test]
async fn an_unknown_owner_is_counted_and_logged_once() {
    let (logs, _guard) = Logs::capture();
    let h = start(vec![injected_pod("demo", "users-0")], "namespaces: []\n").await;
    let unseen = Owner::new("users-0.users.demo.svc", "i-1").in_namespace("demo");
    h.claim("j1", &unseen).await;
    h.claim("j2", &unseen).await;
    h.claim("j3", &h.owner("demo", "users-0", "i-2")).await;
    let gauge = |metrics: &Metrics| {
        metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix("reprise_recoverer_unknown_owners "))
            .map(str::to_owned)
    };

    assert_eq!(h.reconciler.reconcile().await.expect("Redis"), 0);
    assert_eq!(
        gauge(&h.metrics).as_deref(),
        Some("0"),
        "one pass is no proof"
    );
    for _ in 0..3 {
        assert_eq!(h.reconciler.reconcile().await.expect("Redis"), 0);
        assert_eq!(gauge(&h.metrics).as_deref(), Some("1"));
    }
    let warnings = logs.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    for needle in [
        "demo/users-0.users.demo.svc",
        "jobs=2",
        "label_selector",
        "namespaces",
        "POD_NAME",
        "reprise.dev/injected=true",
    ] {
        assert!(
            warnings[0].contains(needle),
            "{needle:?} in {}",
            warnings[0]
        );
    }
    for id in ["j1", "j2", "j3"] {
        assert_eq!(h.status(id).await, JobStatus::Running, "{id}");
    }
}

/// A `redis-server` of the test's own, on a free port, that starts from the snapshot in its
/// directory (taken by `SAVE`): what a Redis restarted from its RDB, or from an AOF that had
/// not fsynced the last second, holds.
struct PrivateRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut r = PrivateRedis {
            port,
            dir: tempfile::tempdir().expect("a directory for redis"),
            child: None,
        };
        r.restart();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) if it runs and starts it again from its snapshot.
    fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--dbfilename",
                "dump.rdb",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/services installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn cmd(&self, args: &[&str]) {
        let mut con = redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("private redis");
        let _: () = redis::cmd(args[0])
            .arg(&args[1..])
            .query(&mut con)
            .expect("redis command");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis runs").id().to_string();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} redis");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A pass, retried while the store's connection comes back after a restart.
async fn pass_once_redis_answers(reconciler: &Reconciler) -> usize {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match reconciler.reconcile().await {
            Ok(n) => return n,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A store and a reconciler (with `grace`, no pods, no broker) on a private Redis, two jobs
/// claimed with a `lease` by the owners `live` and `dead`, and whether the reconciler reports
/// leases on hold.
async fn two_owners_and_a_reconciler(
    redis: &PrivateRedis,
    prefix: &str,
    grace: Duration,
    lease: Duration,
) -> (RedisStore, Reconciler, Arc<Metrics>) {
    let store = RedisStore::connect(&redis.url(), prefix)
        .await
        .expect("private redis");
    let metrics = Arc::new(Metrics::default());
    let reconciler = Reconciler::new(
        RedisStore::connect(&redis.url(), prefix)
            .await
            .expect("private redis"),
        None,
        None,
        metrics.clone(),
    )
    .with_lease_grace(grace);
    let (live, dead) = (Owner::new("pod-live", "a"), Owner::new("pod-dead", "b"));
    for (id, owner) in [("live", &live), ("dead", &dead)] {
        let claim = store
            .claim(&new_job(id, owner, lease))
            .await
            .expect("claim");
        assert_eq!(claim.fence(), Some(1), "{id}: {claim:?}");
    }
    (store, reconciler, metrics)
}

fn leases_held(m: &Metrics) -> bool {
    m.encode()
        .lines()
        .any(|l| l == "reprise_recoverer_leases_on_hold 1")
}

/// The checkpoint that renews the `live` job's lease for `lease_ttl`.
fn renew_live(lease_ttl: Duration) -> Checkpoint {
    Checkpoint {
        job_id: "live".into(),
        fence: 1,
        offset: Some("7".into()),
        messages: 8,
        lease_ttl,
        replay: None,
    }
}

/// Finding 17 of docs/reliability.md: Redis restarted from disk holds leases as old as its last
/// write, lapsed however alive their owners are, and a Redis that did not answer kept owners
/// from renewing. Every pass right after either orphaned live streams by the dozen. Now leases
/// go unjudged for `lease_grace` of Redis answering: an owner that renews meanwhile keeps its
/// job, and one that does not loses it once the grace is over.
#[tokio::test]
async fn leases_go_unjudged_for_the_grace_after_redis_restarts_or_stops_answering() {
    const GRACE: Duration = Duration::from_secs(3);
    const SHORT: Duration = Duration::from_secs(1);
    let mut redis = PrivateRedis::start();
    let (store, reconciler, metrics) =
        two_owners_and_a_reconciler(&redis, "grace", GRACE, SHORT).await;
    let held = leases_held;
    assert_eq!(pass_once_redis_answers(&reconciler).await, 0, "leases live");

    // Restarted from a snapshot, after both leases lapsed.
    redis.cmd(&["SAVE"]);
    tokio::time::sleep(SHORT + Duration::from_millis(500)).await;
    redis.restart();
    assert_eq!(
        pass_once_redis_answers(&reconciler).await,
        0,
        "a pass right after the restart judged leases its owners had no chance to renew"
    );
    assert!(held(&metrics), "{}", metrics.encode());
    let renew = renew_live;
    // Its connection comes back, then it renews.
    let deadline = tokio::time::Instant::now() + WAIT;
    while store.ping().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "redis is back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        store.checkpoint(&renew(LONG_LEASE)).await.expect("renew"),
        Write::Ok
    );
    tokio::time::sleep(GRACE + Duration::from_millis(200)).await;
    assert_eq!(pass_once_redis_answers(&reconciler).await, 1);
    assert!(!held(&metrics), "{}", metrics.encode());
    assert_eq!(record(&store, "dead").await.status, JobStatus::Orphaned);
    assert_eq!(record(&store, "live").await.status, JobStatus::Running);

    // Stopped answering (SIGSTOP) while the live owner's lease runs out.
    assert_eq!(
        store.checkpoint(&renew(SHORT)).await.expect("renew"),
        Write::Ok
    );
    redis.signal("-STOP");
    assert!(reconciler.reconcile().await.is_err(), "redis is stopped");
    tokio::time::sleep(SHORT).await;
    redis.signal("-CONT");
    assert_eq!(
        pass_once_redis_answers(&reconciler).await,
        0,
        "a pass right after Redis answered again judged a lease its owner could not renew"
    );
    assert!(held(&metrics), "{}", metrics.encode());
    assert_eq!(record(&store, "live").await.status, JobStatus::Running);
}

/// The soak's finding 19 (seed 7, 2026-12-06): a recoverer SIGKILLed and restarted while Redis
/// was down made its first pass a moment after Redis answered, knew nothing of the outage, and
/// orphaned every job of a live owner whose lease had lapsed in it. A recoverer's first pass
/// now holds leases for the grace, as after an outage it saw.
#[tokio::test]
async fn a_recoverer_that_just_started_gives_owners_the_grace_first() {
    const GRACE: Duration = Duration::from_secs(2);
    const SHORT: Duration = Duration::from_secs(1);
    let redis = PrivateRedis::start();
    let (store, reconciler, metrics) =
        two_owners_and_a_reconciler(&redis, "first-pass", GRACE, SHORT).await;
    // Both leases lapse before the recoverer's first pass (the owners could not reach Redis).
    tokio::time::sleep(SHORT + Duration::from_millis(300)).await;
    assert_eq!(
        pass_once_redis_answers(&reconciler).await,
        0,
        "the first pass judged leases it had not seen lapse"
    );
    assert!(leases_held(&metrics), "{}", metrics.encode());
    // The live owner renews within the grace; the dead one does not.
    assert_eq!(
        store
            .checkpoint(&renew_live(LONG_LEASE))
            .await
            .expect("renew"),
        Write::Ok
    );
    tokio::time::sleep(GRACE + Duration::from_millis(200)).await;
    assert_eq!(pass_once_redis_answers(&reconciler).await, 1);
    assert_eq!(record(&store, "dead").await.status, JobStatus::Orphaned);
    assert_eq!(record(&store, "live").await.status, JobStatus::Running);
}
