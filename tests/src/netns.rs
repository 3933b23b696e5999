//! A private network for fault tests: network namespaces joined by veth pairs to a bridge,
//! with nftables rules inside a namespace to cut (partition) or thin (random loss) its
//! traffic.
//!
//! Layout of a [`Lab`] with `n` hosts, on the subnet `10.213.<k>.0/24` (`k` picked per test
//! process, so two runs never share one):
//! - a hub namespace holding a bridge;
//! - host `i` (0-based): namespace `tdg-<pid>-<tag>-<i>`, address `10.213.<k>.<i + 2>`, one veth
//!   end in it and the other on the bridge;
//! - the test process itself (the root namespace) at `10.213.<k>.1`, on one more veth pair:
//!   every address the tests use exists only on these interfaces, so no traffic leaves them.
//!
//! Processes run in a host with `ip netns exec`, which execs them (their pid is the
//! process's). Dropping the lab deletes the namespaces and the root veth, panic or not;
//! namespaces left by a test process that was killed are removed by the next lab.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables; `scripts/install-tools` installs it): a
//! lab fails loudly without them, never skips.

use std::path::Path;
use std::process::Command;

use crate::Process;

/// Prefix of every namespace name (`tdg-<pid>-…`).
const NS_PREFIX: &str = "tdg-";
/// Prefix of the root veth ends (`tv<pid>r`), short: interface names have 15 bytes.
const VETH_PREFIX: &str = "tv";
/// The nftables table of a partition.
const PARTITION_TABLE: &str = "tidings_partition";
/// The nftables table of a lossy link.
const LOSS_TABLE: &str = "tidings_loss";

/// Runs `program args`, panicking with its output if it fails (test support).
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (run scripts/install-tools)"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `program args`, ignoring failure (cleanup of things that may be gone already).
fn run_quietly(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).output();
}

/// Fails the test unless it can build a lab: root, `ip`, `nft`, and namespaces working.
pub fn preflight() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("?")
        .to_owned();
    assert_eq!(
        uid, "0",
        "the chaos tests need root (network namespaces, veth pairs, nftables); running as uid {uid}"
    );
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        let found = Command::new(tool).arg("-V").output().is_ok_and(|o| o.status.success());
        assert!(
            found,
            "`{tool}` not found: run scripts/install-tools (installs {package})"
        );
    }
}

/// One namespace of a lab.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name.
    pub netns: String,
    /// Its address.
    pub ip: String,
}

impl Host {
    /// Starts `bin` inside this host (see [`Process::spawn`] for `env`).
    pub fn spawn(&self, bin: &Path, env: &[(&str, String)]) -> Process {
        let args = vec![
            "netns".to_owned(),
            "exec".to_owned(),
            self.netns.clone(),
            bin.display().to_string(),
        ];
        Process::spawn_args("ip", &args, env)
            .unwrap_or_else(|e| panic!("spawn {} in {}: {e}", bin.display(), self.netns))
    }

    fn nft(&self, script: &str) {
        run("ip", &["netns", "exec", &self.netns, "nft", script]);
    }

    /// Drops every packet between this host and `peers` (addresses), both ways, until
    /// [`Host::heal`]. Nothing else is touched: others still reach it.
    pub fn partition_from(&self, peers: &[&str]) {
        let set = peers.join(", ");
        self.nft(&format!(
            "add table inet {PARTITION_TABLE}\n\
             add chain inet {PARTITION_TABLE} input {{ type filter hook input priority -10; policy accept; }}\n\
             add chain inet {PARTITION_TABLE} output {{ type filter hook output priority -10; policy accept; }}\n\
             add rule inet {PARTITION_TABLE} input ip saddr {{ {set} }} drop\n\
             add rule inet {PARTITION_TABLE} output ip daddr {{ {set} }} drop\n"
        ));
    }

    /// Removes the partition rules.
    pub fn heal(&self) {
        self.nft(&format!("delete table inet {PARTITION_TABLE}"));
    }

    /// Drops `percent` % of the packets, chosen at random, of TCP port `port` of this host to
    /// and from `peer` (a client link), until the lab is dropped.
    pub fn lossy_port(&self, peer: &str, port: u16, percent: u8) {
        self.nft(&format!(
            "add table inet {LOSS_TABLE}\n\
             add chain inet {LOSS_TABLE} input {{ type filter hook input priority -5; policy accept; }}\n\
             add chain inet {LOSS_TABLE} output {{ type filter hook output priority -5; policy accept; }}\n\
             add rule inet {LOSS_TABLE} input ip saddr {peer} tcp dport {port} numgen random mod 100 < {percent} counter drop\n\
             add rule inet {LOSS_TABLE} output ip daddr {peer} tcp sport {port} numgen random mod 100 < {percent} counter drop\n"
        ));
    }

    /// Packets the loss rules dropped so far (both directions).
    pub fn lost_packets(&self) -> u64 {
        let listing = run(
            "ip",
            &["netns", "exec", &self.netns, "nft", "list", "table", "inet", LOSS_TABLE],
        );
        listing
            .split("packets ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }
}

/// A private network of namespaces; dropping it removes everything it made.
pub struct Lab {
    hub: String,
    root_veth: String,
    /// The hosts, in order.
    pub hosts: Vec<Host>,
    /// The test process's own address on the lab's subnet.
    pub root_ip: String,
}

impl Lab {
    /// Builds a lab of `hosts` namespaces, named after `tag` (a few letters).
    pub fn new(tag: &str, hosts: usize) -> Lab {
        preflight();
        remove_leftovers();
        let pid = std::process::id();
        let octet = free_subnet(pid);
        let root_veth = format!("{VETH_PREFIX}{pid}r");
        let mut lab = Lab {
            hub: format!("{NS_PREFIX}{pid}-{tag}-hub"),
            root_veth: root_veth.clone(),
            hosts: Vec::new(),
            root_ip: format!("10.213.{octet}.1"),
        };
        run("ip", &["netns", "add", &lab.hub]);
        lab.in_hub(&["link", "add", "br0", "type", "bridge"]);
        lab.in_hub(&["link", "set", "br0", "up"]);
        let peer = format!("{VETH_PREFIX}{pid}rh");
        run(
            "ip",
            &[
                "link", "add", &root_veth, "type", "veth", "peer", "name", &peer, "netns", &lab.hub,
            ],
        );
        lab.in_hub(&["link", "set", &peer, "master", "br0", "up"]);
        run(
            "ip",
            &["addr", "add", &format!("{}/24", lab.root_ip), "dev", &root_veth],
        );
        run("ip", &["link", "set", &root_veth, "up"]);
        for i in 0..hosts {
            let host = Host {
                netns: format!("{NS_PREFIX}{pid}-{tag}-{i}"),
                ip: format!("10.213.{octet}.{}", i + 2),
            };
            lab.add_host(&host, i);
            lab.hosts.push(host);
        }
        lab
    }

    fn in_hub(&self, args: &[&str]) {
        let mut full = vec!["netns", "exec", &self.hub, "ip"];
        full.extend_from_slice(args);
        run("ip", &full);
    }

    fn add_host(&self, host: &Host, i: usize) {
        let pid = std::process::id();
        let inner = format!("{VETH_PREFIX}{pid}h{i}");
        let outer = format!("{VETH_PREFIX}{pid}b{i}");
        run("ip", &["netns", "add", &host.netns]);
        run(
            "ip",
            &[
                "link",
                "add",
                &inner,
                "netns",
                &host.netns,
                "type",
                "veth",
                "peer",
                "name",
                &outer,
                "netns",
                &self.hub,
            ],
        );
        self.in_hub(&["link", "set", &outer, "master", "br0", "up"]);
        let exec = |args: &[&str]| {
            let mut full = vec!["netns", "exec", &host.netns, "ip"];
            full.extend_from_slice(args);
            run("ip", &full);
        };
        exec(&["addr", "add", &format!("{}/24", host.ip), "dev", &inner]);
        exec(&["link", "set", &inner, "up"]);
        exec(&["link", "set", "lo", "up"]);
    }

    /// Host `i`.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        run_quietly("ip", &["link", "del", &self.root_veth]);
        for h in &self.hosts {
            run_quietly("ip", &["netns", "del", &h.netns]);
        }
        run_quietly("ip", &["netns", "del", &self.hub]);
    }
}

/// A third octet for `10.213.<k>.0/24` that no interface of the root namespace uses.
fn free_subnet(pid: u32) -> u32 {
    let addrs = run("ip", &["-o", "-4", "addr", "show"]);
    (0..250)
        .map(|i| (pid + i) % 250 + 1)
        .find(|k| !addrs.contains(&format!("10.213.{k}.")))
        .unwrap_or_else(|| panic!("no free 10.213.x.0/24 subnet"))
}

/// Removes namespaces and root veths of test processes that no longer run (killed before
/// their labs' `Drop`).
fn remove_leftovers() {
    let dead = |pid: &str| pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists();
    for line in run("ip", &["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if let Some(rest) = name.strip_prefix(NS_PREFIX)
            && dead(rest.split('-').next().unwrap_or_default())
        {
            run_quietly("ip", &["netns", "del", name]);
        }
    }
    for line in run("ip", &["-o", "link", "show"]).lines() {
        let name = line.split(':').nth(1).unwrap_or_default().trim();
        let name = name.split('@').next().unwrap_or_default();
        if let Some(rest) = name.strip_prefix(VETH_PREFIX)
            && let Some(pid) = rest.strip_suffix('r')
            && dead(pid)
        {
            run_quietly("ip", &["link", "del", name]);
        }
    }
}
