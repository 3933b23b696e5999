//! `fanout` and `broadcast`: deliveries per second and latency through one gateway, and the
//! same load on nats-server's own WebSocket listener (`--baseline nats-ws`).
//!
//! N WebSocket clients over K channels (`broadcast` is K = 1); a publisher sends durable
//! messages carrying their publish time at a stepped total rate; per step the report gives
//! deliveries per second actually received, latency percentiles (publish → client receive),
//! loss and duplicates (by `seq`), and the CPU seconds of the server, of NATS and of the
//! generator, so a run limited by the generator itself is visible. Stepping stops when p99 >
//! 50 ms or anything was lost (after `--patience` such steps in a row).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::chart::{self, Line, Panel};
use crate::{BaselineArgs, System, natsws, sysinfo};

/// Stepping stops past this p99.
const P99_LIMIT_MS: f64 = 50.0;

/// Settings of one run.
#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    /// Where the gateway and NATS are.
    #[command(flatten)]
    pub target: crate::Target,
    /// The same scenario against a baseline.
    #[command(flatten)]
    pub baseline: BaselineArgs,
    /// Client connections.
    #[arg(long, default_value_t = 5_000)]
    pub connections: usize,
    /// Channels the clients are spread over.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Total published messages per second, per step (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100,200,500,1000")]
    pub rates: Vec<u64>,
    /// How long each step publishes.
    #[arg(long, default_value = "5s", value_parser = tidings_shared::config::parse_duration)]
    pub step: Duration,
    /// Payload bytes (besides the envelope; ~160-byte frames by default).
    #[arg(long, default_value_t = 60)]
    pub payload: usize,
    /// PID of the gateway, to report its CPU time.
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// Quiet time between the last connection set up and the first step (the setup burst,
    /// and a previous run's connections closing, settle).
    #[arg(long, default_value = "2s", value_parser = tidings_shared::config::parse_duration)]
    pub warmup: Duration,
    /// Keep stepping past the limit (p99 > 50 ms or loss).
    #[arg(long)]
    pub all_steps: bool,
    /// Steps in a row over the limit tolerated before stepping stops (0: stop at the first).
    /// On a shared 2-core box one noisy step (a GC pause, another process) can cross it.
    #[arg(long, default_value_t = 0)]
    pub patience: usize,
    /// Where the result and the chart go.
    #[command(flatten)]
    pub output: crate::Output,
}

/// One step's figures.
#[derive(Debug, Serialize)]
pub struct Step {
    pub offered_messages_per_second: u64,
    /// What the publisher achieved (it shares the cores too).
    pub published_messages_per_second: f64,
    /// Deliveries/s the published messages asked for (x axis of the charts).
    pub offered_deliveries_per_second: f64,
    /// Clients still connected at the end of the step (a kicked slow client is not).
    pub clients_connected: usize,
    pub expected_deliveries: u64,
    pub received: u64,
    pub deliveries_per_second: f64,
    /// Expected deliveries that had not arrived when the step was measured (after up to
    /// 10 s of settling).
    pub lost: u64,
    /// Of those, how many arrived later, before the run ended (late, not lost).
    pub arrived_late: u64,
    pub duplicates: u64,
    pub latency_ms_p50: f64,
    pub latency_ms_p90: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub latency_ms_max: f64,
    /// The process the clients are connected to: the gateway, or nats-server for the baseline.
    pub server_cpu_seconds: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    /// The user-space part of it (the rest is the kernel: on loopback a sender's system time
    /// includes the receiving side's TCP processing).
    pub server_user_cpu_us_per_delivery: Option<f64>,
    /// nats-server's CPU (in Tidings runs the gateway's NATS; in baseline runs the same as
    /// the server's).
    pub nats_cpu_seconds: Option<f64>,
    pub generator_cpu_seconds: f64,
}

/// One system's run.
#[derive(Debug, Serialize)]
pub struct SystemRun {
    pub system: System,
    pub steps: Vec<Step>,
    /// The highest deliveries/s of a step with p99 < 50 ms and nothing lost.
    pub max_deliveries_per_second_p99_under_50ms: f64,
}

/// Tidings ÷ baseline at one offered rate (below 1: Tidings is better).
#[derive(Debug, Serialize)]
pub struct StepRatio {
    pub offered_messages_per_second: u64,
    pub latency_p99: f64,
    pub latency_p50: f64,
    pub server_cpu_per_delivery: Option<f64>,
}

/// The whole run.
#[derive(Debug, Serialize)]
pub struct FanoutResult {
    pub scenario: &'static str,
    pub machine: sysinfo::Machine,
    pub connections: usize,
    pub channels: usize,
    pub runs: Vec<SystemRun>,
    /// Tidings ÷ baseline, max deliveries/s at p99 < 50 ms (with `--baseline`; none when the
    /// baseline has no such step).
    pub ratio_to_baseline: Option<f64>,
    /// Tidings ÷ baseline at each offered rate both ran (with `--baseline`).
    pub step_ratios: Vec<StepRatio>,
    /// Nothing lost and nothing duplicated in any step of any run.
    pub clean: bool,
}

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Body {
    data: Data,
}

/// What every load message carries: its publish time (µs) and its step.
#[derive(Deserialize)]
struct Data {
    t: u64,
    s: usize,
}

/// Microseconds since the epoch: the publish time stamped in every message.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What one client saw, per step (messages carry their step, so a late message counts for
/// the step it was published in, never for the next one).
struct ClientStats {
    /// Latencies of the step being measured.
    histogram: Mutex<Histogram<u64>>,
    received: Box<[AtomicU64]>,
    duplicates: Box<[AtomicU64]>,
    /// The step being measured (shared by all clients).
    current: Arc<std::sync::atomic::AtomicUsize>,
}

impl ClientStats {
    fn new(steps: usize, current: Arc<std::sync::atomic::AtomicUsize>) -> anyhow::Result<Arc<Self>> {
        let counters = || (0..steps).map(|_| AtomicU64::new(0)).collect();
        Ok(Arc::new(ClientStats {
            histogram: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
            received: counters(),
            duplicates: counters(),
            current,
        }))
    }

    /// Counts message `seq` of step `step` published at `t` (µs); `last` is the client's last
    /// seq.
    fn record(&self, last: &mut u64, seq: u64, t: u64, step: usize) {
        let (Some(received), Some(duplicates)) = (self.received.get(step), self.duplicates.get(step)) else {
            return;
        };
        if seq <= *last {
            duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = seq;
        received.fetch_add(1, Ordering::Relaxed);
        if step == self.current.load(Ordering::Relaxed)
            && let Ok(mut h) = self.histogram.lock()
        {
            let _ = h.record(now_us().saturating_sub(t).max(1));
        }
    }
}

/// A Tidings client: WebSocket, `subscribe`, then count messages until aborted.
async fn open_tidings(
    addr: SocketAddr,
    source: std::net::IpAddr,
    url: String,
    channel: String,
    stats: Arc<ClientStats>,
) -> anyhow::Result<JoinHandle<()>> {
    let mut ws = crate::tidings_subscribed(addr, source, url, &channel).await?;
    Ok(tokio::spawn(async move {
        let mut last = 0u64;
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(t) = msg else { continue };
            let Ok(f) = serde_json::from_str::<Frame>(t.as_str()) else {
                continue;
            };
            if let ("message", Some(seq), Some(d)) = (f.kind.as_str(), f.seq, f.data) {
                stats.record(&mut last, seq, d.t, d.s);
            }
        }
    }))
}

/// A baseline client: NATS over WebSocket, `SUB` to the channel's stored subject.
async fn open_nats_ws(
    addr: SocketAddr,
    source: std::net::IpAddr,
    channel: String,
    stats: Arc<ClientStats>,
) -> anyhow::Result<JoinHandle<()>> {
    let (ws, parser) = natsws::open_subscribed(addr, source, &natsws::stored_subject(&channel)?).await?;
    Ok(tokio::spawn(async move {
        let mut last = 0u64;
        natsws::read_loop(ws, parser, |headers, payload| {
            let seq = natsws::header(headers, "Nats-Sequence").and_then(|s| s.parse().ok());
            if let (Some(seq), Ok(b)) = (seq, serde_json::from_slice::<Body>(payload)) {
                stats.record(&mut last, seq, b.data.t, b.data.s);
            }
        })
        .await;
    }))
}

/// Runs the scenario (`broadcast` when `channels` is 1) on Tidings, then on the baseline.
pub async fn run(args: FanoutArgs, scenario: &'static str) -> anyhow::Result<FanoutResult> {
    let machine = sysinfo::machine();
    let mut runs = vec![run_system(&args, System::Tidings).await?];
    if args.baseline.baseline.is_some() {
        runs.push(run_system(&args, System::NatsWs).await?);
    }
    let ratio = match runs.as_slice() {
        [t, b] if b.max_deliveries_per_second_p99_under_50ms > 0.0 => {
            Some(t.max_deliveries_per_second_p99_under_50ms / b.max_deliveries_per_second_p99_under_50ms)
        }
        _ => None,
    };
    let step_ratios = match runs.as_slice() {
        [t, b] => t
            .steps
            .iter()
            .zip(&b.steps)
            .map(|(t, b)| StepRatio {
                offered_messages_per_second: t.offered_messages_per_second,
                latency_p99: t.latency_ms_p99 / b.latency_ms_p99.max(1e-9),
                latency_p50: t.latency_ms_p50 / b.latency_ms_p50.max(1e-9),
                server_cpu_per_delivery: t
                    .server_cpu_us_per_delivery
                    .zip(b.server_cpu_us_per_delivery)
                    .map(|(t, b)| t / b.max(1e-9)),
            })
            .collect(),
        _ => Vec::new(),
    };
    let clean = runs
        .iter()
        .all(|r| r.steps.iter().all(|s| s.lost == 0 && s.duplicates == 0));
    let result = FanoutResult {
        scenario,
        machine,
        connections: args.connections,
        channels: args.channels.max(1),
        runs,
        ratio_to_baseline: ratio,
        step_ratios,
        clean,
    };
    if let Some(path) = &args.output.chart {
        chart::write(path, &render_chart(&result))?;
    }
    Ok(result)
}

/// Runs the stepped load on one system: connects the clients, then raises the rate step
/// by step until the limit is passed `--patience` times in a row.
async fn run_system(args: &FanoutArgs, system: System) -> anyhow::Result<SystemRun> {
    sysinfo::ensure_open_files(args.connections)?;
    let k = args.channels.max(1);
    // Fresh channels per run and system, so nothing else is subscribed to them.
    let tag = match system {
        System::Tidings => "t",
        System::NatsWs => "n",
    };
    let prefix = format!("lt{}{tag}", std::process::id());
    let fleet = Fleet::connect(args, system, &prefix, k).await?;
    tokio::time::sleep(args.warmup).await;
    let nats = async_nats::connect(&args.target.nats_url).await?;
    let load = Load {
        js: async_nats::jetstream::new(nats),
        prefix,
        k,
        pad: "x".repeat(args.payload),
    };
    let server_pid = match system {
        System::Tidings => args.gateway_pid,
        System::NatsWs => args.baseline.nats_pid,
    };
    let mut steps: Vec<Step> = Vec::new();
    for (i, &rate) in args.rates.iter().enumerate() {
        let step = run_step(args, &fleet, &load, server_pid, i, rate).await?;
        eprintln!(
            "{system:?}: {rate} msg/s → {:.0} deliveries/s, p99 {:.1} ms, lost {}, duplicates {}",
            step.deliveries_per_second, step.latency_ms_p99, step.lost, step.duplicates
        );
        let over = |s: &Step| s.latency_ms_p99 > P99_LIMIT_MS || s.lost > 0;
        steps.push(step);
        let over_in_a_row = steps.iter().rev().take_while(|s| over(s)).count();
        if !args.all_steps && over_in_a_row > args.patience {
            break;
        }
    }
    // Deliveries that came after a step's settling time are counted late, not lost.
    for (i, step) in steps.iter_mut().enumerate() {
        step.arrived_late = fleet.step_sum(|s| &s.received, i).saturating_sub(step.received);
        step.duplicates = fleet.step_sum(|s| &s.duplicates, i);
    }
    let max = steps
        .iter()
        .filter(|s| s.latency_ms_p99 < P99_LIMIT_MS && s.lost == 0)
        .map(|s| s.deliveries_per_second)
        .fold(0.0, f64::max);
    Ok(SystemRun {
        system,
        steps,
        max_deliveries_per_second_p99_under_50ms: max,
    })
}

/// The connected clients of one system's run, with their channel index and counters.
struct Fleet {
    clients: Vec<(usize, Arc<ClientStats>)>,
    /// The step the clients attribute what they receive to.
    current_step: Arc<std::sync::atomic::AtomicUsize>,
    readers: crate::AbortOnDrop,
    /// Subscribers per channel.
    subscribers: Vec<u64>,
}

impl Fleet {
    /// Connects `args.connections` clients over `k` channels, at most 200 at once, so
    /// that a slow handshake does not hold up the rest.
    async fn connect(args: &FanoutArgs, system: System, prefix: &str, k: usize) -> anyhow::Result<Self> {
        let (addr, offset) = match system {
            System::Tidings => (crate::ensure_loopback(&args.target.url).await?, 0),
            System::NatsWs => (
                crate::ensure_loopback(&args.baseline.nats_ws_url).await?,
                crate::BASELINE_SOURCE_OFFSET,
            ),
        };
        let host = args
            .target
            .url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let mut clients = Vec::with_capacity(args.connections);
        let gate = Arc::new(tokio::sync::Semaphore::new(200));
        let mut setups = Vec::new();
        let current_step = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for i in 0..args.connections {
            let stats = ClientStats::new(args.rates.len(), current_step.clone())?;
            clients.push((i % k, stats.clone()));
            let permit = gate.clone().acquire_owned().await?;
            let channel = format!("project:{prefix}-{}", i % k);
            let source = crate::source_for(i + offset);
            // One user per client, as users connect (a node caps connections per user).
            let token = crate::mint(
                &args.target.secret,
                &format!("loadtest-fanout-{}", i + offset),
                &["*"],
                None,
            )?;
            let url = format!("ws://{host}/ws?token={token}");
            setups.push(tokio::spawn(async move {
                let r = match system {
                    System::Tidings => open_tidings(addr, source, url, channel, stats).await,
                    System::NatsWs => open_nats_ws(addr, source, channel, stats).await,
                };
                drop(permit);
                r
            }));
        }
        let mut readers = Vec::with_capacity(args.connections);
        for s in setups {
            readers.push(s.await??);
        }
        let subscribers = (0..k)
            .map(|c| clients.iter().filter(|(cc, _)| *cc == c).count() as u64)
            .collect();
        Ok(Fleet {
            clients,
            current_step,
            readers: crate::AbortOnDrop(readers),
            subscribers,
        })
    }

    /// One counter of step `i`, summed over the clients.
    fn step_sum(&self, f: fn(&ClientStats) -> &[AtomicU64], i: usize) -> u64 {
        self.clients
            .iter()
            .map(|(_, s)| f(s).get(i).map_or(0, |c| c.load(Ordering::Relaxed)))
            .sum()
    }

    /// Starts step `i`: what arrives from now on counts for it, latencies afresh.
    fn start_step(&self, i: usize) {
        self.current_step.store(i, Ordering::Relaxed);
        for (_, s) in &self.clients {
            if let Ok(mut h) = s.histogram.lock() {
                h.reset();
            }
        }
    }

    /// The clients' latency histograms merged.
    fn latencies(&self) -> anyhow::Result<Histogram<u64>> {
        let mut merged = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for (_, s) in &self.clients {
            if let Ok(h) = s.histogram.lock() {
                merged.add(&*h)?;
            }
        }
        Ok(merged)
    }
}

/// Where and what the publisher sends.
struct Load {
    js: async_nats::jetstream::Context,
    prefix: String,
    k: usize,
    pad: String,
}

impl Load {
    /// Publishes `total` messages of step `i` at `rate` per second, round robin over the
    /// channels, acks awaited in batches of 256 so publishing keeps pace. Returns the
    /// messages per channel.
    async fn publish(&self, i: usize, rate: u64, total: u64, start: Instant) -> anyhow::Result<Vec<u64>> {
        let mut per_channel = vec![0u64; self.k];
        let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        let mut acks = Vec::with_capacity(256);
        for n in 0..total {
            let due = start + interval.mul_f64(n as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
            let c = (n as usize) % self.k;
            per_channel[c] += 1;
            let body = format!(
                r#"{{"event":"lt","data":{{"t":{},"s":{i},"pad":"{}"}}}}"#,
                now_us(),
                self.pad
            );
            acks.push(
                self.js
                    .publish(format!("tidings.events.project.{}-{c}", self.prefix), body.into())
                    .await?,
            );
            if acks.len() >= 256 {
                for a in acks.drain(..) {
                    a.await?;
                }
            }
        }
        for a in acks.drain(..) {
            a.await?;
        }
        Ok(per_channel)
    }
}

/// One step at `rate`: publish, let the deliveries arrive (bounded), measure.
async fn run_step(
    args: &FanoutArgs,
    fleet: &Fleet,
    load: &Load,
    server_pid: Option<u32>,
    i: usize,
    rate: u64,
) -> anyhow::Result<Step> {
    fleet.start_step(i);
    let cpu0 = sysinfo::Cpu::sample(server_pid, args.baseline.nats_pid)?;
    let total = (rate as f64 * args.step.as_secs_f64()) as u64;
    let start = Instant::now();
    let per_channel = load.publish(i, rate, total, start).await?;
    let published_in = start.elapsed().as_secs_f64();
    let expected: u64 = (0..load.k).map(|c| per_channel[c] * fleet.subscribers[c]).sum();
    // Let the last deliveries arrive (bounded).
    let settle = Instant::now() + Duration::from_secs(10);
    loop {
        if fleet.step_sum(|s| &s.received, i) >= expected || Instant::now() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = sysinfo::Cpu::sample(server_pid, args.baseline.nats_pid)?.since(&cpu0);
    let received = fleet.step_sum(|s| &s.received, i);
    let duplicates = fleet.step_sum(|s| &s.duplicates, i);
    let merged = fleet.latencies()?;
    let ms = |q: f64| merged.value_at_quantile(q) as f64 / 1000.0;
    Ok(Step {
        offered_messages_per_second: rate,
        published_messages_per_second: total as f64 / published_in.max(1e-9),
        offered_deliveries_per_second: expected as f64 / published_in.max(1e-9),
        clients_connected: fleet.readers.0.iter().filter(|h| !h.is_finished()).count(),
        expected_deliveries: expected,
        received,
        deliveries_per_second: received as f64 / elapsed.max(1e-9),
        lost: expected.saturating_sub(received),
        arrived_late: 0,
        duplicates,
        latency_ms_p50: ms(0.5),
        latency_ms_p90: ms(0.9),
        latency_ms_p99: ms(0.99),
        latency_ms_p999: ms(0.999),
        latency_ms_max: merged.max() as f64 / 1000.0,
        server_cpu_seconds: cpu.server,
        server_cpu_us_per_delivery: cpu.server.map(|c| c * 1e6 / received.max(1) as f64),
        server_user_cpu_us_per_delivery: cpu.server_user.map(|c| c * 1e6 / received.max(1) as f64),
        nats_cpu_seconds: cpu.nats,
        generator_cpu_seconds: cpu.generator,
    })
}

/// Latency, throughput and cost against offered deliveries/s, every system on one chart.
fn render_chart(r: &FanoutResult) -> String {
    let mut latency = Vec::new();
    let mut throughput = Vec::new();
    let mut cost = Vec::new();
    for run in &r.runs {
        let (colors, dashed, name) = match run.system {
            System::Tidings => (chart::TIDINGS, false, "Tidings"),
            System::NatsWs => (chart::BASELINE, true, "nats-server ws"),
        };
        let x = |s: &Step| s.offered_deliveries_per_second;
        let line = |label: String, color, f: &dyn Fn(&Step) -> Option<f64>| Line {
            label,
            color,
            dashed,
            points: run.steps.iter().filter_map(|s| f(s).map(|y| (x(s), y))).collect(),
        };
        latency.push(line(format!("{name} p50"), colors[0], &|s| Some(s.latency_ms_p50)));
        latency.push(line(format!("{name} p99"), colors[1], &|s| Some(s.latency_ms_p99)));
        throughput.push(line(format!("{name} received"), colors[0], &|s| {
            Some(s.deliveries_per_second)
        }));
        cost.push(line(format!("{name} server"), colors[0], &|s| {
            s.server_cpu_us_per_delivery
        }));
        cost.push(line(format!("{name} server, user space"), colors[1], &|s| {
            s.server_user_cpu_us_per_delivery
        }));
        cost.push(line(format!("{name} generator"), colors[2], &|s| {
            Some(s.generator_cpu_seconds * 1e6 / s.received.max(1) as f64)
        }));
    }
    let x_label = "offered deliveries/s".to_owned();
    let title = format!(
        "{}: {} clients over {} channel(s), {} ({} cores)",
        r.scenario, r.connections, r.channels, r.machine.date, r.machine.cpus
    );
    chart::render(
        &title,
        &[
            Panel {
                title: "latency publish → client".into(),
                x_label: x_label.clone(),
                y_label: "ms".into(),
                lines: latency,
            },
            Panel {
                title: "deliveries received".into(),
                x_label: x_label.clone(),
                y_label: "deliveries/s".into(),
                lines: throughput,
            },
            Panel {
                title: "CPU per delivery".into(),
                x_label,
                y_label: "µs".into(),
                lines: cost,
            },
        ],
    )
}
