//! The soak's own Redis and RabbitMQ, on free ports with their data in the run's directory, so
//! that the soak can SIGKILL and restart them without touching anything else on the machine.
//! Redis keeps an append-only file with `appendfsync everysec` (a kill loses at most about the
//! last second of writes, as in production); RabbitMQ is a node of its own (its own name,
//! ports, Mnesia directory and Erlang cookie) started from the installed server.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::procs::{Proc, find_program, free_port};

use super::wait_tcp;

pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    pub proc: Option<Proc>,
}

impl Redis {
    pub fn start(dir: &Path) -> anyhow::Result<Redis> {
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir)?;
        let mut r = Redis {
            port: free_port()?,
            dir,
            proc: None,
        };
        r.up()?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts redis-server on the same port and directory (it reloads its append-only file).
    pub fn up(&mut self) -> anyhow::Result<()> {
        let bin = find_program(&["redis-server"]).context("redis-server is not installed")?;
        let mut cmd = Command::new(bin);
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--daemonize",
                "no",
            ]);
        let log = self.dir.join(format!("redis-{}.log", unique()));
        let mut proc = Proc::spawn("redis-server", &mut cmd, log)?;
        proc.wait_port(self.port, Duration::from_secs(30))?;
        self.proc = Some(proc);
        Ok(())
    }
}

pub struct Rabbit {
    pub port: u16,
    dist_port: u16,
    dir: PathBuf,
    node: String,
    pub proc: Option<Proc>,
    /// SIGTERMed and not yet exited, and when to SIGKILL it.
    stopping: Option<(Proc, Instant)>,
}

/// How long RabbitMQ may take to start listening, and to stop.
pub const RABBIT_START_WAIT: Duration = Duration::from_secs(90);
const RABBIT_STOP_WAIT: Duration = Duration::from_secs(60);

/// Debian's package puts the server's own script here; /usr/sbin/rabbitmq-server would run it
/// as the rabbitmq user with the machine's configuration.
const RABBIT_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

impl Rabbit {
    pub fn start(dir: &Path, tag: &str) -> anyhow::Result<Rabbit> {
        let dir = dir.join("rabbitmq");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        let port = free_port()?;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n"),
        )?;
        std::fs::write(dir.join("rabbitmq-env.conf"), "")?;
        let mut r = Rabbit {
            port,
            dist_port: free_port()?,
            dir,
            node: format!("{tag}@localhost"),
            proc: None,
            stopping: None,
        };
        r.up()?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn up(&mut self) -> anyhow::Result<()> {
        self.spawn()?;
        if let Some(p) = &mut self.proc {
            p.wait_port(self.port, RABBIT_START_WAIT)?;
        }
        Ok(())
    }

    /// Starts the node without waiting for it to listen.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = if Path::new(RABBIT_SERVER).exists() {
            PathBuf::from(RABBIT_SERVER)
        } else {
            find_program(&["rabbitmq-server"]).context("rabbitmq-server is not installed")?
        };
        let d = &self.dir;
        let mut cmd = Command::new(bin);
        // Its working directory too: the Erlang VM writes crash dumps there.
        cmd.current_dir(d)
            .env("HOME", d)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1");
        let log = d.join(format!("rabbitmq-{}.log", unique()));
        self.proc = Some(Proc::spawn("rabbitmq-server", &mut cmd, log)?);
        Ok(())
    }

    /// A graceful restart begins: SIGTERM (the node stops its apps, closing every
    /// connection). [`Rabbit::stopped`], [`Rabbit::spawn`] and [`Rabbit::listening`] go on
    /// from there without blocking the soak's fault loop.
    pub fn begin_stop(&mut self) -> anyhow::Result<()> {
        if let Some(p) = self.proc.take() {
            p.terminate()?;
            self.stopping = Some((p, Instant::now() + RABBIT_STOP_WAIT));
        }
        Ok(())
    }

    /// Whether the node SIGTERMed by [`Rabbit::begin_stop`] has exited and its port closed
    /// (SIGKILLed once its time is up).
    pub fn stopped(&mut self) -> anyhow::Result<bool> {
        if let Some((p, kill_at)) = &mut self.stopping {
            if p.exited()?.is_none() {
                if Instant::now() > *kill_at {
                    p.sigkill()?;
                }
                return Ok(false);
            }
            self.stopping = None;
        }
        Ok(wait_tcp(
            &format!("127.0.0.1:{}", self.port),
            Duration::from_millis(1),
        )
        .is_err())
    }

    /// Whether the node [`Rabbit::spawn`]ed listens; an error if it has exited or `deadline`
    /// has passed.
    pub fn listening(&mut self, deadline: Instant) -> anyhow::Result<bool> {
        let Some(p) = &mut self.proc else {
            bail!("rabbitmq was not started");
        };
        p.check_alive()?;
        if wait_tcp(
            &format!("127.0.0.1:{}", self.port),
            Duration::from_millis(50),
        )
        .is_ok()
        {
            return Ok(true);
        }
        if Instant::now() > deadline {
            bail!("rabbitmq did not listen on {} in time", self.port);
        }
        Ok(false)
    }

    /// SIGTERM, and the wait for the node to exit. A SIGKILL would stop only the server's
    /// script and leave its Erlang VM running, holding the port and the Mnesia directory.
    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some((p, _)) = self.stopping.take() {
            self.proc.get_or_insert(p);
        }
        if let Some(mut p) = self.proc.take() {
            p.terminate()?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while p.exited()?.is_none() {
                if Instant::now() > deadline {
                    p.sigkill()?;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // The Erlang VM's children (epmd is shared and stays) are gone with it.
        wait_closed(self.port, Duration::from_secs(30))
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("soak: stopping the soak's RabbitMQ: {e:#}");
        }
    }
}

/// Waits until nothing listens on `port` any more.
fn wait_closed(port: u16, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while wait_tcp(&format!("127.0.0.1:{port}"), Duration::from_millis(1)).is_ok() {
        if Instant::now() > deadline {
            bail!("port {port} still open after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}
