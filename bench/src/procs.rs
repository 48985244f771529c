//! Child processes and what /proc says about them: CPU time and peak memory.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use rustix::process::Signal;

/// How long a process may take to listen (or a run's stage to begin) before the bench gives up.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A child process whose output goes to a log file; killed when dropped.
pub struct Proc {
    pub name: &'static str,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> anyhow::Result<Proc> {
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Proc { name, child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM. Directly, not through `kill(1)`: a fork and exec would blur the instant
    /// the handoff timings start from.
    pub fn terminate(&self) -> anyhow::Result<()> {
        self.signal(Signal::TERM, "SIGTERM")
    }

    /// Sends SIGKILL, as directly: the recovery timings start from it.
    pub fn sigkill(&self) -> anyhow::Result<()> {
        self.signal(Signal::KILL, "SIGKILL")
    }

    pub fn signal(&self, signal: Signal, name: &str) -> anyhow::Result<()> {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, signal)
            .with_context(|| format!("{name} to {} ({})", self.name, self.pid()))
    }

    /// The exit status, once the process has exited.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Fails (with the log's tail) if the process has already exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); log tail:\n{}",
                self.name,
                tail(&self.log_text(), 20)
            );
        }
        Ok(())
    }

    /// Waits for `port` to accept connections, failing early if the process dies.
    pub fn wait_port(&mut self, port: u16, within: Duration) -> anyhow::Result<()> {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + within;
        loop {
            self.check_alive()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not listen on {port} within {within:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// User + system CPU time of the whole process (every thread, live or exited).
    pub fn cpu(&self) -> anyhow::Result<Duration> {
        cpu_time(self.pid())
    }

    /// Peak resident set size (VmHWM) in KiB since the process started.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        status_kib(self.pid(), "VmHWM:")
    }

    /// Current resident set size (VmRSS) in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        status_kib(self.pid(), "VmRSS:")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A port that was free a moment ago (the child binds it shortly after).
/// Never the same port twice in this process: the kernel may hand a just-released port out
/// again, and two processes of one run must not both get it.
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
        let port = listener.local_addr()?.port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
}

/// A binary built next to this one (target/release).
pub fn sibling_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating reprise-bench")?;
    let path = exe.parent().map(|d| d.join(name)).unwrap_or_default();
    if !path.exists() {
        bail!(
            "{name} is missing next to reprise-bench: build every binary first (`cargo build --release --workspace --bins`, as scripts/bench does)"
        );
    }
    Ok(path)
}

/// A binary that ships (the sidecar, the recoverer): from `$REPRISE_BENCH_SHIPPED` when set
/// (scripts/bench points it at target/dist, where they are built as shipped, while the demo
/// server and this load client are built for speed), else next to this one.
pub fn shipped_bin(name: &str) -> anyhow::Result<PathBuf> {
    let Some(dir) = std::env::var_os("REPRISE_BENCH_SHIPPED") else {
        return sibling_bin(name);
    };
    let path = PathBuf::from(dir).join(name);
    if !path.exists() {
        bail!(
            "{} is missing (REPRISE_BENCH_SHIPPED): build it first with `--profile dist`, as scripts/bench does",
            path.display()
        );
    }
    Ok(path)
}

/// `reprise-sidecar` on `config`, written to `config_path`, its output to `log`; returns once it
/// listens on `port` and on `metrics_port`.
pub fn spawn_sidecar(
    config: &str,
    config_path: &Path,
    log: PathBuf,
    port: u16,
    metrics_port: u16,
    env: &[(String, String)],
) -> anyhow::Result<Proc> {
    std::fs::write(config_path, config)?;
    let mut cmd = Command::new(shipped_bin("reprise-sidecar")?);
    cmd.arg("--config")
        .arg(config_path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(env.iter().map(|(k, v)| (k, v)));
    let mut proc = Proc::spawn("reprise-sidecar", &mut cmd, log)?;
    proc.wait_port(port, START_TIMEOUT)?;
    proc.wait_port(metrics_port, START_TIMEOUT)?;
    Ok(proc)
}

/// Paths and URLs as JSON strings: valid YAML whatever characters they hold.
pub fn quote(v: &str) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The first of `names` found on PATH or in the sbin directories (where Debian puts nginx).
pub fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    let dirs: Vec<PathBuf> = dirs.collect();
    names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

/// Kernel clock ticks per second, the unit of utime/stime in /proc/PID/stat.
pub fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; fields after its ')' are plain.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i - 3)
            .context("short /proc stat")?
            .parse()
            .context("malformed /proc stat field")
    };
    let total = ticks(14)? + ticks(15)?;
    Ok(Duration::from_secs_f64(total as f64 / clock_ticks() as f64))
}

fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Lines of a log that report a problem (WARN or ERROR in the sidecar's and nginx's formats).
pub fn problem_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| {
            l.contains(" WARN ")
                || l.contains(" ERROR ")
                || l.contains("[error]")
                || l.contains("[crit]")
                || l.contains("[alert]")
                || l.contains("[emerg]")
                || l.contains("[warn]")
        })
        .map(str::to_owned)
        .collect()
}
