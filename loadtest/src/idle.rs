//! `idle`: how much memory a server needs per idle connection, and how fast it accepts them.
//!
//! Opens N WebSocket connections (each subscribed to one of K channels), spreading source
//! addresses over 127.0.0.2–127.0.0.9 once one address's ports would run out, then reads the
//! server's RSS growth from `/proc`. Every connection keeps reading, so it answers the
//! server's heartbeats like a real browser would. With `--baseline nats-ws` the same is done
//! against nats-server's WebSocket listener (its RSS), right after.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::chart::{self, Line, Panel};
use crate::{BaselineArgs, System, natsws, sysinfo};

/// Settings of one `idle` run.
#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    /// Where the gateway is (and the secret to mint tokens with).
    #[command(flatten)]
    pub target: crate::Target,
    /// The same scenario against a baseline.
    #[command(flatten)]
    pub baseline: BaselineArgs,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Shared channels (`project:p<n>`) the connections are spread over (0: none).
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Each client is a user of its own and also subscribes to its own `user:<id>` channel,
    /// the shape of a notification system (with `--channels`: one shared channel each too).
    #[arg(long)]
    pub own_channel: bool,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// PID of the gateway (else read from /api/v1/stats with a service token).
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// How long to hold the connections after the last one is up, before measuring.
    #[arg(long, default_value = "3s", value_parser = tidings_shared::config::parse_duration)]
    pub settle: Duration,
    /// Where the result and the chart go.
    #[command(flatten)]
    pub output: crate::Output,
}

/// One system's figures.
#[derive(Debug, Serialize)]
pub struct IdleRun {
    pub system: System,
    pub connections: usize,
    pub failed: usize,
    pub setup_seconds: f64,
    pub setup_per_second: f64,
    pub server_rss_before_bytes: u64,
    pub server_rss_after_bytes: u64,
    pub rss_per_connection_bytes: f64,
    pub server_cpu_seconds: f64,
    pub generator_cpu_seconds: f64,
    /// (connections up, server RSS bytes) sampled while connecting.
    pub rss_curve: Vec<(usize, u64)>,
}

/// The result of one invocation.
#[derive(Debug, Serialize)]
pub struct IdleResult {
    pub scenario: &'static str,
    pub machine: sysinfo::Machine,
    pub channels: usize,
    /// Whether each client also had a `user:<id>` channel of its own.
    pub own_channel: bool,
    pub runs: Vec<IdleRun>,
    /// Tidings ÷ baseline RSS per connection (with `--baseline`).
    pub rss_ratio_to_baseline: Option<f64>,
    /// Tidings ÷ baseline connections set up per second (with `--baseline`).
    pub setup_rate_ratio_to_baseline: Option<f64>,
}

async fn gateway_pid(args: &IdleArgs) -> anyhow::Result<u32> {
    match args.gateway_pid {
        Some(pid) => Ok(pid),
        None => Ok(crate::gateway_stats(&args.target.url, &args.target.secret).await?.pid),
    }
}

/// Runs the scenario.
pub async fn run(args: IdleArgs) -> anyhow::Result<IdleResult> {
    let machine = sysinfo::machine();
    let mut runs = vec![run_system(&args, System::Tidings).await?];
    if args.baseline.baseline.is_some() {
        // Let the previous run's connections finish closing before the next setup is timed.
        tokio::time::sleep(args.settle).await;
        runs.push(run_system(&args, System::NatsWs).await?);
    }
    let ratio = |f: fn(&IdleRun) -> f64| match runs.as_slice() {
        [t, b] if f(b) > 0.0 => Some(f(t) / f(b)),
        _ => None,
    };
    let result = IdleResult {
        scenario: "idle",
        machine,
        channels: args.channels,
        own_channel: args.own_channel,
        rss_ratio_to_baseline: ratio(|r| r.rss_per_connection_bytes),
        setup_rate_ratio_to_baseline: ratio(|r| r.setup_per_second),
        runs,
    };
    if let Some(path) = &args.output.chart {
        chart::write(path, &render_chart(&result))?;
    }
    Ok(result)
}

/// Opens the connections on one system and measures the server's RSS and CPU growth.
async fn run_system(args: &IdleArgs, system: System) -> anyhow::Result<IdleRun> {
    sysinfo::ensure_open_files(args.connections)?;
    let (pid, addr, offset) = match system {
        System::Tidings => (
            gateway_pid(args).await?,
            crate::ensure_loopback(&args.target.url).await?,
            0,
        ),
        System::NatsWs => (
            args.baseline
                .nats_pid
                .ok_or_else(|| anyhow::anyhow!("--baseline nats-ws needs --nats-pid (its RSS is the figure)"))?,
            crate::ensure_loopback(&args.baseline.nats_ws_url).await?,
            crate::BASELINE_SOURCE_OFFSET,
        ),
    };
    let rss_before = sysinfo::rss_bytes(pid)?;
    let cpu_before = sysinfo::cpu_time(pid)?;
    let me_before = sysinfo::cpu_time(std::process::id())?;
    // One user per client when each has its own channel; else a thousand users shared.
    let users = if args.own_channel {
        args.connections
    } else {
        args.connections.min(1000)
    };
    let tokens: Vec<String> = (0..users)
        .map(|i| crate::mint(&args.target.secret, &format!("u{i}"), &["*"], None))
        .collect::<anyhow::Result<_>>()?;
    let failed = Arc::new(AtomicUsize::new(0));
    let up = Arc::new(AtomicUsize::new(0));
    let curve = Arc::new(std::sync::Mutex::new(vec![(0usize, rss_before)]));
    let sampler = sample_rss(pid, up.clone(), curve.clone());
    let start = Instant::now();
    let opener = Opener {
        system,
        addr,
        offset,
        tokens,
        up,
        failed: failed.clone(),
    };
    let readers = opener.open_all(args).await?;
    let setup = start.elapsed();
    tokio::time::sleep(args.settle).await;
    let rss_after = sysinfo::rss_bytes(pid)?;
    let cpu = sysinfo::cpu_time(pid)?.saturating_sub(cpu_before);
    let me = sysinfo::cpu_time(std::process::id())?.saturating_sub(me_before);
    sampler.abort();
    let readers = crate::AbortOnDrop(readers);
    let mut curve = curve.lock().map(|c| c.clone()).unwrap_or_default();
    // Connections still up when measured (one that died since does not count).
    let ok = readers.0.iter().filter(|r| !r.is_finished()).count();
    curve.push((ok, rss_after));
    drop(readers);
    eprintln!(
        "{system:?}: {ok} connections, {:.0} B RSS each, {:.0} set up per second",
        rss_after.saturating_sub(rss_before) as f64 / ok.max(1) as f64,
        ok as f64 / setup.as_secs_f64().max(1e-9)
    );
    Ok(IdleRun {
        system,
        connections: ok,
        failed: failed.load(Ordering::Relaxed),
        setup_seconds: setup.as_secs_f64(),
        setup_per_second: ok as f64 / setup.as_secs_f64().max(1e-9),
        server_rss_before_bytes: rss_before,
        server_rss_after_bytes: rss_after,
        rss_per_connection_bytes: rss_after.saturating_sub(rss_before) as f64 / ok.max(1) as f64,
        server_cpu_seconds: cpu.as_secs_f64(),
        generator_cpu_seconds: me.as_secs_f64(),
        rss_curve: curve,
    })
}

/// Samples the server's RSS every 100 ms against the connections up, for the chart.
fn sample_rss(pid: u32, up: Arc<AtomicUsize>, curve: Arc<std::sync::Mutex<Vec<(usize, u64)>>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            if let (Ok(rss), Ok(mut c)) = (sysinfo::rss_bytes(pid), curve.lock()) {
                c.push((up.load(Ordering::Relaxed), rss));
            }
        }
    })
}

/// How one system's connections are opened, and what counts them.
struct Opener {
    system: System,
    addr: SocketAddr,
    /// Added to the connection index to pick its source address.
    offset: usize,
    tokens: Vec<String>,
    up: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
}

impl Opener {
    /// Opens `args.connections`, `args.concurrency` at a time; returns the readers of
    /// those that opened (failures are counted, the first five printed).
    async fn open_all(&self, args: &IdleArgs) -> anyhow::Result<Vec<JoinHandle<()>>> {
        let host = args.target.url.trim_start_matches("http://").trim_end_matches('/');
        let gate = Arc::new(Semaphore::new(args.concurrency));
        let mut handles = Vec::with_capacity(args.connections);
        for i in 0..args.connections {
            let permit = gate.clone().acquire_owned().await?;
            let mut channels = Vec::with_capacity(2);
            if args.own_channel {
                channels.push(format!("user:u{i}"));
            }
            if args.channels > 0 {
                channels.push(format!("project:p{}", i % args.channels));
            }
            let url = format!("ws://{host}/ws?token={}", self.tokens[i % self.tokens.len()]);
            let (failed, up) = (self.failed.clone(), self.up.clone());
            let source = crate::source_for(i + self.offset);
            let (system, addr) = (self.system, self.addr);
            handles.push(tokio::spawn(async move {
                let opened = match system {
                    System::Tidings => open_tidings(addr, source, url, &channels).await,
                    System::NatsWs => open_nats_ws(addr, source, &channels).await,
                };
                drop(permit);
                match opened {
                    Ok(reader) => {
                        up.fetch_add(1, Ordering::Relaxed);
                        Some(reader)
                    }
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("connection {i} failed: {e}");
                        }
                        None
                    }
                }
            }));
        }
        let mut readers = Vec::with_capacity(args.connections);
        for h in handles {
            if let Ok(Some(r)) = h.await {
                readers.push(r);
            }
        }
        Ok(readers)
    }
}

async fn open_tidings(
    addr: SocketAddr,
    source: std::net::IpAddr,
    url: String,
    channels: &[String],
) -> anyhow::Result<JoinHandle<()>> {
    let mut ws = crate::tidings_subscribed_all(addr, source, url, channels).await?;
    Ok(tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} }))
}

async fn open_nats_ws(
    addr: SocketAddr,
    source: std::net::IpAddr,
    channels: &[String],
) -> anyhow::Result<JoinHandle<()>> {
    let subjects = channels
        .iter()
        .map(|c| natsws::stored_subject(c))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (ws, parser) = natsws::open_subscribed_all(addr, source, &subjects).await?;
    Ok(tokio::spawn(natsws::read_loop(ws, parser, |_, _| {})))
}

fn render_chart(r: &IdleResult) -> String {
    let mut lines = Vec::new();
    for run in &r.runs {
        let (color, dashed, name) = match run.system {
            System::Tidings => (chart::TIDINGS[0], false, "Tidings gateway"),
            System::NatsWs => (chart::BASELINE[0], true, "nats-server (ws)"),
        };
        let base = run.server_rss_before_bytes as f64;
        lines.push(Line {
            label: format!(
                "{name}: {:.1} KiB/conn, {:.0} conn/s",
                run.rss_per_connection_bytes / 1024.0,
                run.setup_per_second
            ),
            color,
            dashed,
            points: run
                .rss_curve
                .iter()
                .map(|&(n, rss)| (n as f64, (rss as f64 - base).max(0.0) / 1_048_576.0))
                .collect(),
        });
    }
    chart::render(
        &format!("idle connections, {} channels, {}", r.channels, r.machine.date),
        &[Panel {
            title: "server memory growth".into(),
            x_label: "connections up".into(),
            y_label: "RSS growth (MiB)".into(),
            lines,
        }],
    )
}
