//! What a run reads from Redis (the job's hash, as the recoverer and the sidecars write it) and
//! how it leaves Redis and RabbitMQ afterwards: no key, queue or exchange of its prefix.

use std::time::Duration;

use anyhow::{Context as _, bail};

use super::world::SERVICE;

pub fn connect(url: &str) -> anyhow::Result<redis::Connection> {
    let client = redis::Client::open(url)?;
    Ok(client.get_connection_with_timeout(Duration::from_secs(2))?)
}

/// The key of the run's one job.
pub fn job_key(con: &mut redis::Connection, prefix: &str) -> anyhow::Result<String> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:job:*"))
        .query(con)?;
    match keys.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one job under {prefix}:job:*, found {}",
            keys.len()
        ),
    }
}

/// The fields of a job's hash that say who holds it and from where it resumes.
#[derive(Debug, Clone, Default)]
pub struct JobFields {
    pub status: Option<String>,
    pub owner_pod: Option<String>,
    /// The last checkpoint: the user_id of the last user A's app was sent.
    pub offset: Option<String>,
    /// Epoch ms (Redis clock); empty once the job is orphaned.
    pub lease_expires_at: Option<u64>,
}

impl JobFields {
    pub fn read(con: &mut redis::Connection, job: &str) -> anyhow::Result<JobFields> {
        let [status, owner_pod, offset, lease]: [Option<String>; 4] = redis::cmd("HMGET")
            .arg(job)
            .arg(&["status", "owner_pod", "offset", "lease_expires_at"])
            .query::<Vec<Option<String>>>(con)?
            .try_into()
            .map_err(|v: Vec<_>| anyhow::anyhow!("HMGET of 4 fields answered {}", v.len()))?;
        Ok(JobFields {
            status,
            owner_pod,
            offset: offset.filter(|o| !o.is_empty()),
            lease_expires_at: lease.and_then(|l| l.parse().ok()),
        })
    }

    /// Still `running` under `pod`: not orphaned yet (nor taken over, nor finished).
    pub fn held_by(&self, pod: &str) -> bool {
        self.status.as_deref() == Some("running") && self.owner_pod.as_deref() == Some(pod)
    }
}

/// Deletes the run's Redis keys, its service's resume queue and its events exchange.
pub fn cleanup(redis_url: &str, amqp_url: &str, rt: &tokio::runtime::Runtime, prefix: &str) {
    if let Err(e) = crate::rig::redis_cleanup(redis_url, prefix) {
        eprintln!("  redis: could not remove {prefix}:* ({e:#})");
    }
    if let Err(e) = rt.block_on(delete_amqp(amqp_url, prefix)) {
        eprintln!("  rabbitmq: could not remove {prefix}.* ({e:#})");
    }
}

async fn delete_amqp(url: &str, prefix: &str) -> anyhow::Result<()> {
    use lapin::{Connection, ConnectionProperties, options::*};
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    // A channel each: a failed delete closes its channel.
    let ch = conn.create_channel().await?;
    ch.queue_delete(
        format!("{prefix}.{SERVICE}.resume").into(),
        QueueDeleteOptions::default(),
    )
    .await?;
    let ch = conn.create_channel().await?;
    ch.exchange_delete(
        format!("{prefix}.events").into(),
        ExchangeDeleteOptions::default(),
    )
    .await?;
    conn.close(200, "OK".into()).await?;
    Ok(())
}

/// RabbitMQ reachable at `url`?
pub fn amqp_reachable(rt: &tokio::runtime::Runtime, url: &str) -> anyhow::Result<()> {
    rt.block_on(async {
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            lapin::Connection::connect(url, lapin::ConnectionProperties::default()),
        )
        .await
        .context("no answer within 5s")??;
        conn.close(200, "OK".into()).await?;
        Ok(())
    })
}
