//! The job store in Redis, shared by every pod (layout in [`Keys`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, ErrorKind, ServerErrorKind};

use crate::model::duration_ms;
use crate::scripts::{Scripts, decode_claim, decode_take_over, flag};
use crate::{
    Checkpoint, Claim, Finish, JobRecord, JobStore, Keys, NewJob, Restore, StoreError, Write,
    record, redact_url,
};

/// How long to wait for a connection, and for any reply. A store that does not answer within
/// this is treated as down (see [`StoreError::is_unavailable`]) rather than stalling streams.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);

/// A [`JobStore`] in Redis. Cheap to clone; clones share one multiplexed connection, which
/// reconnects by itself after Redis comes back.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    keys: Keys,
    scripts: Arc<Scripts>,
    url: String,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

/// When the recoverer may declare a running job's owner dead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrphanIf {
    /// Its lease has expired (Redis clock).
    LeaseExpired,
    /// It is owned by the pod `namespace/pod` (with `uid`, when known), by any sidecar instance
    /// except `spare` (the one running now). Which jobs recorded under the pod name are that
    /// pod's: [`Owner::same_pod`](crate::Owner::same_pod), except that a job whose owner
    /// recorded no namespace (an older sidecar) is taken only with `include_unknown_namespace`.
    OwnedBy {
        pod: String,
        namespace: String,
        uid: Option<String>,
        spare: Option<String>,
        /// False when a pod of that name lives in another namespace: such a job may be its
        /// namesake's, and is left to its lease.
        include_unknown_namespace: bool,
    },
}

/// A `deliver` job [`RedisStore::due_handoffs`] found waiting too long for a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueHandoff {
    pub job_id: String,
    /// `Interrupted` (let go by its owner) or `Orphaned` (its owner died).
    pub status: crate::JobStatus,
    /// How many times it has been offered again, this time included.
    pub offers: u64,
}

/// The sidecar process running in a pod, as it registered itself at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarInstance {
    pub instance: String,
    pub started_at_ms: u64,
}

impl RedisStore {
    /// Declares the owner of a running job dead when `cond` holds: bumps the fence, marks the job
    /// `orphaned` with `reason` as `last_error`, and removes it from its pod's set and the
    /// leases. `Ok(Some(new fence))` when this call orphaned it; `Ok(None)` when it did not apply
    /// (not running, lease live, another owner, or already orphaned by someone else).
    pub async fn orphan(
        &self,
        job_id: &str,
        cond: &OrphanIf,
        reason: &str,
    ) -> Result<Option<u64>, StoreError> {
        let (mode, pod, spare, namespace, uid, unknown_namespace) = match cond {
            OrphanIf::LeaseExpired => ("lease", "", "", "", "", "0"),
            OrphanIf::OwnedBy {
                pod,
                namespace,
                uid,
                spare,
                include_unknown_namespace,
            } => (
                "owner",
                pod.as_str(),
                spare.as_deref().unwrap_or(""),
                namespace.as_str(),
                uid.as_deref().unwrap_or(""),
                if *include_unknown_namespace { "1" } else { "0" },
            ),
        };
        let reply: Vec<String> = self
            .scripts
            .orphan
            .key(self.keys.job(job_id))
            .key(self.keys.leases())
            .key(self.keys.handoffs())
            .arg(self.keys.prefix())
            .arg(job_id)
            .arg(mode)
            .arg(pod)
            .arg(spare)
            .arg(reason)
            .arg(namespace)
            .arg(uid)
            .arg(unknown_namespace)
            .invoke_async(&mut self.conn())
            .await
            .map_err(StoreError::redis("orphan"))?;
        match reply.as_slice() {
            [kind, fence] if kind == "orphaned" => {
                fence.parse().map(Some).map_err(|_| StoreError::Protocol {
                    script: "orphan",
                    detail: format!("fence {fence:?}"),
                })
            }
            [kind, _] if kind == "skipped" => Ok(None),
            other => Err(StoreError::Protocol {
                script: "orphan",
                detail: format!("{other:?}"),
            }),
        }
    }

    /// Every running job (the members of the lease set).
    pub async fn running_jobs(&self) -> Result<Vec<String>, StoreError> {
        redis::cmd("ZRANGE")
            .arg(self.keys.leases())
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn())
            .await
            .map_err(StoreError::redis("running_jobs"))
    }

    /// Records `owner` as the sidecar running in its pod now (called at sidecar start-up):
    /// under the pod name, and under `namespace/name` too when the namespace is known.
    pub async fn register_sidecar(&self, owner: &crate::Owner) -> Result<(), StoreError> {
        let script = redis::Script::new(
            "local t = redis.call('TIME')
             local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
             for _, key in ipairs(KEYS) do
               redis.call('HSET', key, 'instance', ARGV[1], 'started_at', string.format('%d', now),
                 'namespace', ARGV[2], 'uid', ARGV[3])
             end
             return 1",
        );
        let mut invocation = script.prepare_invoke();
        invocation.key(self.keys.pod_sidecar(&owner.pod));
        if let Some(namespace) = &owner.namespace {
            invocation.key(self.keys.namespaced_pod_sidecar(namespace, &owner.pod));
        }
        let _: i64 = invocation
            .arg(&owner.instance)
            .arg(owner.namespace.as_deref().unwrap_or(""))
            .arg(owner.uid.as_deref().unwrap_or(""))
            .invoke_async(&mut self.conn())
            .await
            .map_err(StoreError::redis("register_sidecar"))?;
        Ok(())
    }

    /// The sidecar that registered last in the pod `namespace/pod`, if any: its namespaced
    /// registration, else the one under the bare pod name unless that names another namespace.
    pub async fn sidecar_of(
        &self,
        namespace: &str,
        pod: &str,
    ) -> Result<Option<SidecarInstance>, StoreError> {
        for key in [
            self.keys.namespaced_pod_sidecar(namespace, pod),
            self.keys.pod_sidecar(pod),
        ] {
            let (instance, started, registered_in): (
                Option<String>,
                Option<String>,
                Option<String>,
            ) = redis::cmd("HMGET")
                .arg(key)
                .arg("instance")
                .arg("started_at")
                .arg("namespace")
                .query_async(&mut self.conn())
                .await
                .map_err(StoreError::redis("sidecar_of"))?;
            if registered_in.is_some_and(|ns| !ns.is_empty() && ns != namespace) {
                continue;
            }
            if let (Some(instance), Some(started_at_ms)) =
                (instance, started.and_then(|s| s.parse().ok()))
            {
                return Ok(Some(SidecarInstance {
                    instance,
                    started_at_ms,
                }));
            }
        }
        Ok(None)
    }

    /// Claims the right to report the death of `namespace/pod` (once per pod across
    /// recoverers, for `ttl`).
    pub async fn first_to_report_pod(
        &self,
        namespace: &str,
        pod: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let set: Option<String> = redis::cmd("SET")
            .arg(self.keys.pod_killed(namespace, pod))
            .arg("1")
            .arg("NX")
            .arg("PX")
            .arg(duration_ms(ttl))
            .query_async(&mut self.conn())
            .await
            .map_err(StoreError::redis("first_to_report_pod"))?;
        Ok(set.is_some())
    }

    async fn invoke_claim(
        &self,
        job: &NewJob,
        takeover_only: bool,
    ) -> Result<Vec<String>, StoreError> {
        self.scripts
            .claim
            .key(self.keys.job(&job.job_id))
            .key(self.keys.leases())
            .key(self.keys.pod_jobs(&job.owner.pod))
            .key(self.keys.handoffs())
            .arg(self.keys.prefix())
            .arg(&job.job_id)
            .arg(&job.service)
            .arg(&job.method)
            .arg(&job.request_b64)
            .arg(&job.request_json)
            .arg(&job.owner.pod)
            .arg(&job.owner.instance)
            .arg(duration_ms(job.lease_ttl))
            .arg(if takeover_only { "1" } else { "0" })
            .arg(job.owner.namespace.as_deref().unwrap_or(""))
            .arg(job.owner.uid.as_deref().unwrap_or(""))
            .arg(job.resume.as_str())
            .invoke_async(&mut self.conn())
            .await
            .map_err(StoreError::redis("claim"))
    }

    /// Checks `url` as [`RedisStore::connect`] will parse it, without any I/O. The error is the
    /// client's problem with it (which never quotes the URL: print it through [`redact_url`]).
    pub fn check_url(url: &str) -> Result<(), String> {
        redis::Client::open(url)
            .map(drop)
            .map_err(|source| source.to_string().replace(url, &redact_url(url)))
    }

    /// Connects to `url` and checks that Redis answers, so a wrong URL fails at start-up.
    /// Keys are named under `prefix` (see [`Keys`]).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let redacted = redact_url(url);
        let connect_error = |source| StoreError::Connect {
            url: redacted.clone(),
            source,
        };
        let client = redis::Client::open(url).map_err(connect_error)?;
        // One plain attempt first: the manager retries a refused connection with backoff for
        // seconds, while a wrong URL or password should fail start-up at once.
        let probe = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let mut probe_conn = client
            .get_multiplexed_async_connection_with_config(&probe)
            .await
            .map_err(connect_error)?;
        redis::cmd("PING")
            .query_async::<String>(&mut probe_conn)
            .await
            .map_err(connect_error)?;
        // A lost connection is retried with a doubling delay from 100 ms, every command waiting
        // for the attempts meanwhile: capped at RECONNECT_MAX_DELAY, a Redis that restarts is
        // reached within that of being up, not up to 3.2 s later.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_max_delay(RECONNECT_MAX_DELAY);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(connect_error)?;
        let store = Self {
            conn,
            keys: Keys::new(prefix),
            scripts: Arc::new(Scripts::new()),
            url: redacted,
        };
        tracing::debug!(redis.url = %store.url, redis.prefix = %store.keys.prefix(), "connected to Redis");
        Ok(store)
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The server's `run_id` (`INFO server`): new at every start of `redis-server`, and
    /// another server's after a failover. A change tells a client that Redis may have lost
    /// what it acknowledged last: an `appendfsync everysec` AOF loses up to about a second, a
    /// snapshot everything since it, a replica what it had not received. `None` when the
    /// server refuses `INFO` (an ACL user without `+info`, a managed Redis that renames it) or
    /// gives no `run_id`: Redis answered, but a restart cannot be told.
    pub async fn run_id(&self) -> Result<Option<String>, StoreError> {
        let info = redis::cmd("INFO")
            .arg("server")
            .query_async::<String>(&mut self.conn())
            .await;
        let info = match info {
            Ok(info) => info,
            Err(e)
                if matches!(
                    e.kind(),
                    redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(StoreError::redis("info")(e)),
        };
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty()))
    }

    /// The `deliver` jobs let go at least `first` ago that no pod has claimed since; each is
    /// rescheduled by a backoff that starts at `first` and doubles per offer up to `max` (see
    /// `lua/due_handoffs.lua`). At most `limit`, the most overdue first: who offers them again
    /// publishes their event.
    pub async fn due_handoffs(
        &self,
        limit: usize,
        first: Duration,
        max: Duration,
    ) -> Result<Vec<DueHandoff>, StoreError> {
        let flat: Vec<String> = self
            .scripts
            .due_handoffs
            .key(self.keys.handoffs())
            .arg(self.keys.prefix())
            .arg(limit)
            .arg(duration_ms(first).max(1))
            .arg(duration_ms(max.max(first)).max(1))
            .invoke_async(&mut self.conn())
            .await
            .map_err(StoreError::redis("due_handoffs"))?;
        let protocol = |detail: String| StoreError::Protocol {
            script: "due_handoffs",
            detail,
        };
        flat.chunks(3)
            .map(|c| match c {
                [id, status, offers] => Ok(DueHandoff {
                    job_id: id.clone(),
                    status: status
                        .parse()
                        .map_err(|_| protocol(format!("status {status:?}")))?,
                    offers: offers
                        .parse()
                        .map_err(|_| protocol(format!("offers {offers:?}")))?,
                }),
                other => Err(protocol(format!("{other:?}"))),
            })
            .collect()
    }

    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    async fn fenced_write(
        &self,
        op: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<Write, StoreError> {
        let written: i64 = invocation
            .invoke_async(&mut self.conn())
            .await
            .map_err(StoreError::redis(op))?;
        Ok(write_from(written))
    }

    fn checkpoint_invocation<'a>(&'a self, cp: &'a Checkpoint) -> redis::ScriptInvocation<'a> {
        let (has_offset, offset) = flag(cp.offset.as_deref());
        let mut invocation = self.scripts.checkpoint.prepare_invoke();
        invocation
            .key(self.keys.job(&cp.job_id))
            .key(self.keys.leases())
            .arg(&cp.job_id)
            .arg(cp.fence)
            .arg(has_offset)
            .arg(offset)
            .arg(cp.messages)
            .arg(duration_ms(cp.lease_ttl));
        match &cp.replay {
            Some(replay) => invocation.arg("1").arg(&replay.offset).arg(replay.messages),
            None => invocation.arg("0").arg("").arg(0),
        };
        invocation
    }
}

/// A fenced script's reply (`may_write` in `lua/common.lua`).
fn write_from(written: i64) -> Write {
    match written {
        1 => Write::Ok,
        2 => Write::Forgotten,
        _ => Write::Fenced,
    }
}

#[async_trait]
impl JobStore for RedisStore {
    async fn claim(&self, job: &NewJob) -> Result<Claim, StoreError> {
        let reply = self.invoke_claim(job, false).await?;
        decode_claim(&job.job_id, &reply)
    }

    async fn take_over(&self, job: &NewJob) -> Result<Option<Claim>, StoreError> {
        let reply = self.invoke_claim(job, true).await?;
        decode_take_over(&job.job_id, &reply)
    }

    async fn checkpoint(&self, cp: &Checkpoint) -> Result<Write, StoreError> {
        self.fenced_write("checkpoint", &self.checkpoint_invocation(cp))
            .await
    }

    async fn checkpoint_many(&self, cps: &[Checkpoint]) -> Result<Vec<Write>, StoreError> {
        if cps.is_empty() {
            return Ok(Vec::new());
        }
        let invocations: Vec<_> = cps
            .iter()
            .map(|cp| self.checkpoint_invocation(cp))
            .collect();
        let mut pipe = redis::pipe();
        for invocation in &invocations {
            pipe.invoke_script(invocation);
        }
        let mut conn = self.conn();
        // A pipeline sends EVALSHA without the automatic reload single invocations do, so a
        // Redis that lost its script cache (restart, SCRIPT FLUSH) gets the script once more.
        // Re-running is safe: a checkpoint written twice with the same values is the same.
        let written: Vec<i64> = match pipe.query_async(&mut conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.scripts
                    .checkpoint
                    .prepare_invoke()
                    .load_async(&mut conn)
                    .await
                    .map_err(StoreError::redis("checkpoint_many"))?;
                pipe.query_async(&mut conn)
                    .await
                    .map_err(StoreError::redis("checkpoint_many"))?
            }
            other => other.map_err(StoreError::redis("checkpoint_many"))?,
        };
        if written.len() != cps.len() {
            return Err(StoreError::Protocol {
                script: "checkpoint",
                detail: format!("{} replies for {} checkpoints", written.len(), cps.len()),
            });
        }
        Ok(written.into_iter().map(write_from).collect())
    }

    async fn note_resume(
        &self,
        job_id: &str,
        fence: u64,
        error: &str,
    ) -> Result<Write, StoreError> {
        let mut invocation = self.scripts.note_resume.prepare_invoke();
        invocation.key(self.keys.job(job_id)).arg(fence).arg(error);
        self.fenced_write("note_resume", &invocation).await
    }

    async fn finish(&self, f: &Finish) -> Result<Write, StoreError> {
        if f.status == crate::JobStatus::Running {
            return Err(StoreError::InvalidFinish {
                job_id: f.job_id.clone(),
                status: f.status,
            });
        }
        let (has_offset, offset) = flag(f.offset.as_deref());
        let (has_error, error) = flag(f.error.as_deref());
        let mut invocation = self.scripts.finish.prepare_invoke();
        invocation
            .key(self.keys.job(&f.job_id))
            .key(self.keys.leases())
            .key(self.keys.handoffs())
            .arg(self.keys.prefix())
            .arg(&f.job_id)
            .arg(f.fence)
            .arg(f.status.as_str())
            .arg(has_offset)
            .arg(offset)
            .arg(f.messages)
            .arg(has_error)
            .arg(error);
        self.fenced_write("finish", &invocation).await
    }

    async fn restore(&self, r: &Restore) -> Result<Write, StoreError> {
        let (has_offset, offset) = flag(r.offset.as_deref());
        let job = &r.job;
        let mut invocation = self.scripts.restore.prepare_invoke();
        invocation
            .key(self.keys.job(&job.job_id))
            .key(self.keys.leases())
            .key(self.keys.pod_jobs(&job.owner.pod))
            .arg(&job.job_id)
            .arg(&job.service)
            .arg(&job.method)
            .arg(&job.request_b64)
            .arg(&job.request_json)
            .arg(&job.owner.pod)
            .arg(&job.owner.instance)
            .arg(r.fence)
            .arg(has_offset)
            .arg(offset)
            .arg(r.messages)
            .arg(duration_ms(job.lease_ttl))
            .arg(&r.note)
            .arg(job.owner.namespace.as_deref().unwrap_or(""))
            .arg(job.owner.uid.as_deref().unwrap_or(""))
            .arg(job.resume.as_str());
        self.fenced_write("restore", &invocation).await
    }

    async fn get(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        let hash: HashMap<String, String> = self
            .conn()
            .hgetall(self.keys.job(job_id))
            .await
            .map_err(StoreError::redis("get"))?;
        if hash.is_empty() {
            return Ok(None);
        }
        record::parse(job_id, hash).map(Some)
    }

    async fn pod_jobs(&self, pod: &str) -> Result<Vec<String>, StoreError> {
        let mut ids: Vec<String> = self
            .conn()
            .smembers(self.keys.pod_jobs(pod))
            .await
            .map_err(StoreError::redis("pod_jobs"))?;
        ids.sort();
        Ok(ids)
    }

    async fn expired_leases(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        self.scripts
            .expired_leases
            .key(self.keys.leases())
            .arg(limit)
            .invoke_async(&mut self.conn())
            .await
            .map_err(StoreError::redis("expired_leases"))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn())
            .await
            .map(drop)
            .map_err(StoreError::redis("ping"))
    }
}
