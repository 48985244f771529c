//! The processes one scenario measures: the demo server, and in front of it the sidecar and
//! nginx. They are started fresh per scenario, so each proxy's peak RSS (VmHWM) belongs to
//! that scenario alone.

use std::{
    fmt,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::procs::{Proc, START_TIMEOUT, free_port, quote, sibling_bin, spawn_sidecar};

pub const EVENTS_METHOD: &str = "demo.v1.EventService/StreamEvents";

/// How the load generator reaches the demo server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    Direct,
    Sidecar,
    Nginx,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Route::Direct => "direct",
            Route::Sidecar => "sidecar",
            Route::Nginx => "nginx",
        })
    }
}

/// What every scenario's rig shares: a scratch directory, the descriptors, Redis, nginx.
pub struct Setup {
    pub dir: PathBuf,
    pub descriptors: PathBuf,
    pub redis_url: Option<String>,
    pub key_prefix: String,
    pub checkpoint_interval: String,
    pub nginx: Option<PathBuf>,
    /// Extra lines of the sidecar's config (`--sidecar-config`).
    pub sidecar_config: Vec<String>,
    /// Extra environment of the sidecar (`--sidecar-env`).
    pub sidecar_env: Vec<(String, String)>,
}

impl Setup {
    /// Writes the demo's descriptor set with `demo-server --write-descriptors`.
    pub fn write_descriptors(dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("demo.binpb");
        let out = Command::new(sibling_bin("demo-server")?)
            .arg("--write-descriptors")
            .arg(&path)
            .output()
            .context("running demo-server --write-descriptors")?;
        if !out.status.success() {
            bail!(
                "demo-server --write-descriptors failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(path)
    }
}

pub struct Rig {
    pub server: Proc,
    server_port: u16,
    pub sidecar: Option<Proc>,
    sidecar_port: u16,
    metrics_port: u16,
    pub nginx: Option<Proc>,
    nginx_port: u16,
}

impl Rig {
    pub fn start(setup: &Setup, scenario: &str, routes: &[Route]) -> anyhow::Result<Rig> {
        let server_port = free_port()?;
        let mut cmd = Command::new(sibling_bin("demo-server")?);
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{server_port}"))
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1");
        let log = setup.dir.join(format!("demo-server-{scenario}.log"));
        let mut server = Proc::spawn("demo-server", &mut cmd, log)?;
        server.wait_port(server_port, START_TIMEOUT)?;

        let mut rig = Rig {
            server,
            server_port,
            sidecar: None,
            sidecar_port: 0,
            metrics_port: 0,
            nginx: None,
            nginx_port: 0,
        };
        if routes.contains(&Route::Sidecar) {
            rig.start_sidecar(setup, scenario)?;
        }
        if routes.contains(&Route::Nginx) {
            rig.start_nginx(setup, scenario)?;
        }
        Ok(rig)
    }

    fn start_sidecar(&mut self, setup: &Setup, scenario: &str) -> anyhow::Result<()> {
        self.sidecar_port = free_port()?;
        self.metrics_port = free_port()?;
        let redis_line = setup
            .redis_url
            .as_deref()
            .map(|url| format!("redis_url: {}\n", quote(url)))
            .unwrap_or_default();
        let config = format!(
            "listen: 127.0.0.1:{sp}\n\
             upstream: http://127.0.0.1:{up}\n\
             descriptors: {desc}\n\
             {redis_line}\
             key_prefix: {prefix}\n\
             service: bench\n\
             pod_name: bench\n\
             metrics_listen: 127.0.0.1:{mp}\n\
             checkpoint_interval: {interval}\n\
             {extra}\
             streams:\n  \
               - method: {EVENTS_METHOD}\n    \
                 offset_field: cursor.seq\n    \
                 resume_field: start.after_seq\n",
            sp = self.sidecar_port,
            up = self.server_port,
            desc = quote(&setup.descriptors.to_string_lossy()),
            prefix = quote(&setup.key_prefix),
            mp = self.metrics_port,
            interval = setup.checkpoint_interval,
            extra = setup
                .sidecar_config
                .iter()
                .map(|line| format!("{line}\n"))
                .collect::<String>(),
        );
        self.sidecar = Some(spawn_sidecar(
            &config,
            &setup.dir.join(format!("sidecar-{scenario}.yaml")),
            setup.dir.join(format!("sidecar-{scenario}.log")),
            self.sidecar_port,
            self.metrics_port,
            &setup.sidecar_env,
        )?);
        Ok(())
    }

    /// nginx as a plain gRPC proxy: one process (no master), no access log, defaults otherwise.
    fn start_nginx(&mut self, setup: &Setup, scenario: &str) -> anyhow::Result<()> {
        let bin = setup.nginx.as_ref().context("nginx is not installed")?;
        self.nginx_port = free_port()?;
        let prefix = setup.dir.join(format!("nginx-{scenario}"));
        std::fs::create_dir_all(&prefix)?;
        let p = prefix.to_string_lossy();
        let config = format!(
            "worker_processes 1;\n\
             daemon off;\n\
             master_process off;\n\
             pid {p}/nginx.pid;\n\
             error_log {p}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  \
               access_log off;\n  \
               client_body_temp_path {p}/client_body;\n  \
               proxy_temp_path {p}/proxy;\n  \
               fastcgi_temp_path {p}/fastcgi;\n  \
               uwsgi_temp_path {p}/uwsgi;\n  \
               scgi_temp_path {p}/scgi;\n  \
               server {{\n    \
                 listen 127.0.0.1:{port} http2;\n    \
                 location / {{ grpc_pass grpc://127.0.0.1:{up}; }}\n  \
               }}\n\
             }}\n",
            port = self.nginx_port,
            up = self.server_port,
        );
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, config)?;
        let mut cmd = Command::new(bin);
        cmd.arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(prefix.join("error.log"));
        let mut proc = Proc::spawn("nginx", &mut cmd, prefix.join("stdout.log"))?;
        proc.wait_port(self.nginx_port, START_TIMEOUT)?;
        // The error log, not the (empty) stdout, is where nginx reports trouble.
        proc.log = prefix.join("error.log");
        self.nginx = Some(proc);
        Ok(())
    }

    pub fn target(&self, route: Route) -> String {
        let port = match route {
            Route::Direct => self.server_port,
            Route::Sidecar => self.sidecar_port,
            Route::Nginx => self.nginx_port,
        };
        format!("http://127.0.0.1:{port}")
    }

    /// The process between the client and the server on `route` (none when direct).
    pub fn proxy(&self, route: Route) -> Option<&Proc> {
        match route {
            Route::Direct => None,
            Route::Sidecar => self.sidecar.as_ref(),
            Route::Nginx => self.nginx.as_ref(),
        }
    }

    /// Fails if any process of the rig has died.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.server.check_alive()?;
        for p in [self.sidecar.as_mut(), self.nginx.as_mut()]
            .into_iter()
            .flatten()
        {
            p.check_alive()?;
        }
        Ok(())
    }

    /// The sidecar's `reprise_checkpoint_writes_total` counter.
    pub fn checkpoint_writes(&self) -> anyhow::Result<f64> {
        let body = http_get(self.metrics_port, "/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix("reprise_checkpoint_writes_total "))
            .and_then(|v| v.trim().parse().ok())
            .context("no reprise_checkpoint_writes_total in the sidecar's /metrics")
    }
}

/// A plain HTTP/1.1 GET on loopback, returning the body.
fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

/// Redis reachable at `url`? (The sidecar runs without Redis otherwise.)
pub fn redis_reachable(url: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    redis::cmd("PING")
        .query::<String>(&mut con)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Deletes every key under `prefix:`; returns how many.
pub fn redis_cleanup(url: &str, prefix: &str) -> anyhow::Result<usize> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_connection_with_timeout(Duration::from_secs(2))?;
    let pattern = format!("{prefix}:*");
    let mut cursor = 0u64;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query(&mut con)?;
        if !keys.is_empty() {
            deleted += redis::cmd("DEL").arg(&keys).query::<usize>(&mut con)?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}
