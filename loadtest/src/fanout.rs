//! `fanout` and `broadcast`: deliveries per second and latency through one gateway.
//!
//! N WebSocket clients over K channels (`broadcast` is K = 1); a publisher sends durable
//! messages carrying their publish time at a stepped total rate; per step the report gives
//! deliveries per second actually received, latency percentiles (publish → client receive),
//! loss and duplicates (by `seq`), and both processes' CPU seconds, so a run limited by the
//! generator itself is visible. Stepping stops when p99 > 50 ms or anything was lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;

use crate::sysinfo;

/// Settings of one run.
#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    /// Where the gateway and NATS are.
    #[command(flatten)]
    pub target: crate::Target,
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
    /// Keep stepping even past p99 > 50 ms (for a full curve).
    #[arg(long)]
    pub all_steps: bool,
    /// Write the JSON result here too.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// One step's figures.
#[derive(Debug, Serialize)]
pub struct Step {
    pub offered_messages_per_second: u64,
    pub expected_deliveries: u64,
    pub received: u64,
    pub deliveries_per_second: f64,
    pub lost: u64,
    pub duplicates: u64,
    pub latency_ms_p50: f64,
    pub latency_ms_p90: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub latency_ms_max: f64,
    pub gateway_cpu_seconds: Option<f64>,
    pub generator_cpu_seconds: f64,
    pub gateway_cpu_us_per_delivery: Option<f64>,
}

/// The whole run.
#[derive(Debug, Serialize)]
pub struct FanoutResult {
    pub scenario: &'static str,
    pub connections: usize,
    pub channels: usize,
    pub steps: Vec<Step>,
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
struct Data {
    t: u64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What one client saw.
struct ClientStats {
    histogram: Mutex<Histogram<u64>>,
    received: AtomicU64,
    duplicates: AtomicU64,
}

async fn open_client(
    addr: std::net::SocketAddr,
    url: String,
    channel: String,
    stats: Arc<ClientStats>,
) -> anyhow::Result<()> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    let sub = serde_json::json!({"type":"subscribe","id":1,"channel":channel}).to_string();
    ws.send(Message::Text(sub.into())).await?;
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => {}
            other => anyhow::bail!("unexpected answer during setup: {other:?}"),
        }
    }
    tokio::spawn(async move {
        let mut last = 0u64;
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(t) = msg else { continue };
            let Ok(f) = serde_json::from_str::<Frame>(t.as_str()) else {
                continue;
            };
            if f.kind != "message" {
                continue;
            }
            let (Some(seq), Some(d)) = (f.seq, f.data) else {
                continue;
            };
            if seq <= last {
                stats.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            last = seq;
            stats.received.fetch_add(1, Ordering::Relaxed);
            let latency = now_us().saturating_sub(d.t).max(1);
            if let Ok(mut h) = stats.histogram.lock() {
                let _ = h.record(latency);
            }
        }
    });
    Ok(())
}

/// Runs the scenario (`broadcast` when `channels` is 1).
pub async fn run(args: FanoutArgs, scenario: &'static str) -> anyhow::Result<FanoutResult> {
    let addr = crate::ensure_loopback(&args.target.url).await?;
    let limit = sysinfo::raise_nofile();
    anyhow::ensure!(
        (args.connections as u64) + 100 < limit,
        "{} connections exceed the open-file limit {limit}",
        args.connections
    );
    let k = args.channels.max(1);
    let run_id = std::process::id();
    let host = args
        .target
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let token = crate::mint(&args.target.secret, "loadtest-fanout", &["*"], None)?;
    let mut clients = Vec::with_capacity(args.connections);
    let gate = Arc::new(tokio::sync::Semaphore::new(200));
    let mut setups = Vec::new();
    for i in 0..args.connections {
        let stats = Arc::new(ClientStats {
            histogram: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        });
        clients.push((i % k, stats.clone()));
        let permit = gate.clone().acquire_owned().await?;
        let url = format!("ws://{host}/ws?token={token}");
        let channel = format!("project:lt{run_id}-{}", i % k);
        setups.push(tokio::spawn(async move {
            let r = open_client(addr, url, channel, stats).await;
            drop(permit);
            r
        }));
    }
    for s in setups {
        s.await??;
    }
    let nats = async_nats::connect(&args.target.nats_url).await?;
    let js = async_nats::jetstream::new(nats);
    let pad = "x".repeat(args.payload);
    let mut steps = Vec::new();
    for &rate in &args.rates {
        let gw_cpu0 = args.gateway_pid.map(sysinfo::cpu_time).transpose()?;
        let me_cpu0 = sysinfo::cpu_time(std::process::id())?;
        let received0: u64 = clients.iter().map(|(_, s)| s.received.load(Ordering::Relaxed)).sum();
        let dups0: u64 = clients.iter().map(|(_, s)| s.duplicates.load(Ordering::Relaxed)).sum();
        let total = (rate as f64 * args.step.as_secs_f64()) as u64;
        let mut per_channel = vec![0u64; k];
        let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        let start = Instant::now();
        let mut acks = Vec::with_capacity(256);
        for n in 0..total {
            let due = start + interval.mul_f64(n as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
            let c = (n as usize) % k;
            per_channel[c] += 1;
            let body = format!(r#"{{"event":"lt","data":{{"t":{},"pad":"{pad}"}}}}"#, now_us());
            acks.push(
                js.publish(format!("tidings.events.project.lt{run_id}-{c}"), body.into())
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
        let subscribers: Vec<u64> = (0..k)
            .map(|c| clients.iter().filter(|(cc, _)| *cc == c).count() as u64)
            .collect();
        let expected: u64 = (0..k).map(|c| per_channel[c] * subscribers[c]).sum();
        // Let the last deliveries arrive (bounded).
        let settle = Instant::now() + Duration::from_secs(10);
        loop {
            let got: u64 = clients
                .iter()
                .map(|(_, s)| s.received.load(Ordering::Relaxed))
                .sum::<u64>()
                - received0;
            if got >= expected || Instant::now() > settle {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let received = clients
            .iter()
            .map(|(_, s)| s.received.load(Ordering::Relaxed))
            .sum::<u64>()
            - received0;
        let duplicates = clients
            .iter()
            .map(|(_, s)| s.duplicates.load(Ordering::Relaxed))
            .sum::<u64>()
            - dups0;
        let mut merged = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for (_, s) in &clients {
            if let Ok(mut h) = s.histogram.lock() {
                merged.add(&*h)?;
                h.reset();
            }
        }
        let ms = |q: f64| merged.value_at_quantile(q) as f64 / 1000.0;
        let gw_cpu = match (args.gateway_pid, gw_cpu0) {
            (Some(pid), Some(c0)) => Some(sysinfo::cpu_time(pid)?.saturating_sub(c0).as_secs_f64()),
            _ => None,
        };
        let step = Step {
            offered_messages_per_second: rate,
            expected_deliveries: expected,
            received,
            deliveries_per_second: received as f64 / elapsed.max(1e-9),
            lost: expected.saturating_sub(received),
            duplicates,
            latency_ms_p50: ms(0.5),
            latency_ms_p90: ms(0.9),
            latency_ms_p99: ms(0.99),
            latency_ms_p999: ms(0.999),
            latency_ms_max: merged.max() as f64 / 1000.0,
            gateway_cpu_seconds: gw_cpu,
            generator_cpu_seconds: sysinfo::cpu_time(std::process::id())?
                .saturating_sub(me_cpu0)
                .as_secs_f64(),
            gateway_cpu_us_per_delivery: gw_cpu.map(|c| c * 1e6 / received.max(1) as f64),
        };
        eprintln!(
            "{scenario}: {rate} msg/s → {:.0} deliveries/s, p99 {:.1} ms, lost {}, duplicates {}",
            step.deliveries_per_second, step.latency_ms_p99, step.lost, step.duplicates
        );
        let stop = !args.all_steps && (step.latency_ms_p99 > 50.0 || step.lost > 0);
        steps.push(step);
        if stop {
            break;
        }
    }
    Ok(FanoutResult {
        scenario,
        connections: args.connections,
        channels: k,
        steps,
    })
}
