//! Redis and RabbitMQ around a handoff or recovery run: whether RabbitMQ answers, the run's one
//! job in Redis, and deleting what the run left under its key prefix, so runs never see each
//! other's state.

use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::fleet::SERVICE;

pub fn connect(url: &str) -> anyhow::Result<redis::Connection> {
    let client = redis::Client::open(url)?;
    Ok(client.get_connection_with_timeout(Duration::from_secs(2))?)
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

pub fn hget(con: &mut redis::Connection, key: &str, field: &str) -> anyhow::Result<Option<String>> {
    Ok(redis::cmd("HGET").arg(key).arg(field).query(con)?)
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
