//! Real kernel network faults between the sidecars and the upstream: every upstream replica
//! runs in a network namespace of its own, reached over a veth pair, so a link can be cut
//! (`ip link set down`), made lossy (an nftables `numgen random` drop rule), slow (a `tc tbf`
//! rate limit) or made to answer with TCP resets (an nftables `reject with tcp reset` rule
//! inside the namespace). Nothing here is a proxy:
//! the packets are the kernel's.

use std::process::Command;

use anyhow::{Context as _, bail};

/// One replica's namespace and link.
#[derive(Debug, Clone)]
pub struct Link {
    pub netns: String,
    /// The veth end in the host's namespace (where the sidecars are).
    pub host_if: String,
    /// The veth end inside the namespace.
    pub ns_if: String,
    /// The replica's address inside the namespace.
    pub addr: String,
}

/// Runs a command, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ns(netns: &str, program: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["netns", "exec", netns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Whether this process may create network namespaces (root, or CAP_NET_ADMIN and
/// CAP_SYS_ADMIN), found out by trying.
pub fn available(tag: &str) -> anyhow::Result<()> {
    let probe = format!("{tag}probe");
    run("ip", &["netns", "add", &probe])
        .context("creating a network namespace (the soak needs root or CAP_NET_ADMIN)")?;
    let _ = run("ip", &["netns", "del", &probe]);
    Ok(())
}

/// Whether `nft` is installed (for the TCP-reset fault).
pub fn nft_available() -> bool {
    Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Link {
    /// Namespace `{tag}u{k}` with a veth pair: 10.{subnet}.{k}.1 on the host, .2 inside.
    pub fn create(tag: &str, subnet: u8, k: u8) -> anyhow::Result<Link> {
        let link = Link {
            netns: format!("{tag}u{k}"),
            host_if: format!("{tag}u{k}h"),
            ns_if: format!("{tag}u{k}n"),
            addr: format!("10.{subnet}.{k}.2"),
        };
        anyhow::ensure!(
            link.host_if.len() <= 15,
            "interface name {} too long",
            link.host_if
        );
        let host_addr = format!("10.{subnet}.{k}.1/24");
        let ns_addr = format!("{}/24", link.addr);
        run("ip", &["netns", "add", &link.netns])?;
        run(
            "ip",
            &[
                "link",
                "add",
                &link.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &link.ns_if,
            ],
        )?;
        run("ip", &["link", "set", &link.ns_if, "netns", &link.netns])?;
        run("ip", &["addr", "add", &host_addr, "dev", &link.host_if])?;
        run("ip", &["link", "set", &link.host_if, "up"])?;
        ns(
            &link.netns,
            "ip",
            &["addr", "add", &ns_addr, "dev", &link.ns_if],
        )?;
        ns(&link.netns, "ip", &["link", "set", &link.ns_if, "up"])?;
        ns(&link.netns, "ip", &["link", "set", "lo", "up"])?;
        Ok(link)
    }

    /// The link goes down on the host side: packets stop both ways.
    pub fn cut(&self) -> anyhow::Result<()> {
        run("ip", &["link", "set", &self.host_if, "down"])
    }

    pub fn restore(&self) -> anyhow::Result<()> {
        run("ip", &["link", "set", &self.host_if, "up"])
    }

    /// A slow, congested link: a token-bucket rate limit (`tc tbf`) on both ends, so packets
    /// queue for up to `latency` and beyond that are dropped. (`tc netem`, the usual tool for
    /// delay, needs the sch_netem kernel module, which this machine's kernel does not have;
    /// `tbf` is built in.)
    pub fn throttle(&self, rate: &str, latency: &str) -> anyhow::Result<()> {
        let spec = [
            "root", "tbf", "rate", rate, "burst", "16kbit", "latency", latency,
        ];
        let mut host = vec!["qdisc", "replace", "dev", &self.host_if];
        host.extend_from_slice(&spec);
        run("tc", &host)?;
        let mut inner = vec!["qdisc", "replace", "dev", &self.ns_if];
        inner.extend_from_slice(&spec);
        ns(&self.netns, "tc", &inner)
    }

    pub fn clear_throttle(&self) -> anyhow::Result<()> {
        let host = run("tc", &["qdisc", "del", "dev", &self.host_if, "root"]);
        let inner = ns(
            &self.netns,
            "tc",
            &["qdisc", "del", "dev", &self.ns_if, "root"],
        );
        host.and(inner)
    }

    /// Loses `percent` of the packets each way, at random (an nftables `numgen random` rule
    /// inside the namespace).
    pub fn lose(&self, percent: u32) -> anyhow::Result<()> {
        self.rules(&format!(
            "chain input {{ type filter hook input priority 0; numgen random mod 100 < {percent} drop; }}; \
             chain output {{ type filter hook output priority 0; numgen random mod 100 < {percent} drop; }};"
        ))
    }

    /// Every TCP segment to `port` inside the namespace is answered with a reset: live
    /// connections die at their next packet and new ones are refused.
    pub fn reset_port(&self, port: u16) -> anyhow::Result<()> {
        self.rules(&format!(
            "chain input {{ type filter hook input priority 0; tcp dport {port} reject with tcp reset; }};"
        ))
    }

    /// Installs `chains` as the namespace's table `inet soak`.
    fn rules(&self, chains: &str) -> anyhow::Result<()> {
        ns(
            &self.netns,
            "nft",
            &[&format!("table inet soak {{ {chains} }}")],
        )
    }

    /// Removes what `lose` or `reset_port` installed.
    pub fn clear_rules(&self) -> anyhow::Result<()> {
        ns(&self.netns, "nft", &["delete", "table", "inet", "soak"])
    }

    /// The command line that runs `program` inside the namespace.
    pub fn wrap(&self) -> Vec<String> {
        vec!["netns".into(), "exec".into(), self.netns.clone()]
    }

    /// Deletes the namespace (and with it both veth ends and its rules).
    pub fn remove(&self) {
        let _ = run("ip", &["netns", "del", &self.netns]);
        let _ = run("ip", &["link", "del", &self.host_if]);
    }
}
