//! What the load test reads about processes from `/proc`: resident memory and CPU time, so
//! that every report says what the gateway used and whether the generator itself was the
//! bottleneck.

use std::time::Duration;

/// Resident set size of `pid`, in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))?;
    Ok(kb * 1024)
}

/// User + system CPU time of `pid`.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let (user, system) = cpu_times(pid)?;
    Ok(user + system)
}

/// User and system CPU time of `pid` (fields 14 and 15 of `/proc/<pid>/stat`): on loopback
/// the system part of a sender includes the receiver's TCP processing, so reports show both.
pub fn cpu_times(pid: u32) -> anyhow::Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces; fields resume after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // After ')': state is index 0, so utime (field 14) is index 11 and stime index 12.
    let d = |t: u64| Duration::from_millis(t * 1000 / clock_ticks());
    Ok((d(ticks(11)), d(ticks(12))))
}

fn clock_ticks() -> u64 {
    // USER_HZ is 100 on every Linux this runs on.
    100
}

/// Raises the open-file limit and checks that `connections` sockets (plus some slack) fit
/// under it; returns the limit.
pub fn ensure_open_files(connections: usize) -> anyhow::Result<u64> {
    let limit = raise_nofile();
    anyhow::ensure!(
        (connections as u64) + 100 < limit,
        "{connections} connections need more than the open-file limit of {limit} (20,000 here, hard): lower --connections"
    );
    Ok(limit)
}

/// Raises this process's open-file soft limit to its hard limit; returns the new limit.
pub fn raise_nofile() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024),
    }
}

/// The machine a report was measured on, recorded in every result.
#[derive(Debug, serde::Serialize)]
pub struct Machine {
    /// CPU model (`/proc/cpuinfo`).
    pub cpu: String,
    /// CPUs this process may use.
    pub cpus: usize,
    /// Total memory, GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// When the run started (UTC, RFC 3339).
    pub date: String,
    /// This process's open-file limit (the cap on one generator's connections).
    pub open_file_limit: u64,
}

/// Reads [`Machine`] from `/proc`.
pub fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let mem_kb = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    Machine {
        cpu,
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        memory_gib: (mem_kb / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        date: jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .map(|t| t.to_string())
            .unwrap_or_default(),
        open_file_limit: rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(s, _)| s).unwrap_or(0),
    }
}

/// Open file descriptors of `pid` (entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> anyhow::Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)
}

/// Threads of `pid` (`Threads` of `/proc/<pid>/status`).
pub fn threads(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Threads for pid {pid}"))
}

/// CPU seconds (user + system) of the server under test, of nats-server and of this
/// generator at one instant; [`Cpu::since`] turns two into what a step cost each of them.
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    pub server: Option<f64>,
    /// The server's user-space part.
    pub server_user: Option<f64>,
    pub nats: Option<f64>,
    pub generator: f64,
}

impl Cpu {
    /// Now, for the given processes (`None`: not measured).
    pub fn sample(server: Option<u32>, nats: Option<u32>) -> anyhow::Result<Cpu> {
        let secs = |pid: u32| cpu_time(pid).map(|d| d.as_secs_f64());
        let user = |pid: u32| cpu_times(pid).map(|(u, _)| u.as_secs_f64());
        Ok(Cpu {
            server: server.map(secs).transpose()?,
            server_user: server.map(user).transpose()?,
            nats: nats.map(secs).transpose()?,
            generator: secs(std::process::id())?,
        })
    }

    /// What was spent from `before` to this sample.
    pub fn since(&self, before: &Cpu) -> Cpu {
        let diff = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| (a - b).max(0.0));
        Cpu {
            server: diff(self.server, before.server),
            server_user: diff(self.server_user, before.server_user),
            nats: diff(self.nats, before.nats),
            generator: (self.generator - before.generator).max(0.0),
        }
    }
}
