//! `idle`: how much memory a gateway needs per idle connection.
//!
//! Opens N WebSocket connections (each subscribed to one of K channels), spreading source
//! addresses over 127.0.0.2–127.0.0.9 once one address's ports would run out, then reads the
//! gateway's RSS growth from `/proc`. Every connection keeps reading, so it answers the
//! gateway's heartbeats like a real browser would.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::sysinfo;

/// Connections per source address before moving to the next one.
const PER_SOURCE: usize = 25_000;

/// Settings of one `idle` run.
#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    /// Gateway base URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The gateway's TIDINGS_JWT_SECRET (tokens are minted per connection).
    #[arg(long, env = "TIDINGS_JWT_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Channels the connections are spread over.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// PID of the gateway (else read from /api/v1/stats with a service token).
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// How long to hold the connections after the last one is up, before measuring.
    #[arg(long, default_value = "3s", value_parser = tidings_shared::config::parse_duration)]
    pub settle: Duration,
    /// Write the JSON result here too.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// The result of one run.
#[derive(Debug, Serialize)]
pub struct IdleResult {
    pub scenario: &'static str,
    pub connections: usize,
    pub channels: usize,
    pub failed: usize,
    pub setup_seconds: f64,
    pub setup_per_second: f64,
    pub gateway_rss_before_bytes: u64,
    pub gateway_rss_after_bytes: u64,
    pub rss_per_connection_bytes: f64,
    pub gateway_cpu_seconds: f64,
    pub open_file_limit: u64,
}

fn source_for(i: usize) -> IpAddr {
    // 127.0.0.1 first, then .2 … .9 as each runs out of ephemeral ports.
    let n = (i / PER_SOURCE) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + n.min(8)))
}

async fn gateway_pid(args: &IdleArgs) -> anyhow::Result<u32> {
    if let Some(pid) = args.gateway_pid {
        return Ok(pid);
    }
    let token = crate::mint(&args.secret, "loadtest-ops", &[], Some("service"))?;
    let stats: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/v1/stats", args.url))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    stats["pid"]
        .as_u64()
        .map(|p| p as u32)
        .ok_or_else(|| anyhow::anyhow!("no pid in /api/v1/stats: {stats}"))
}

/// Runs the scenario.
pub async fn run(args: IdleArgs) -> anyhow::Result<IdleResult> {
    let limit = sysinfo::raise_nofile();
    anyhow::ensure!(
        (args.connections as u64) + 100 < limit,
        "{} connections need more than the open-file limit of {limit} (20,000 here, hard): lower --connections",
        args.connections
    );
    let pid = gateway_pid(&args).await?;
    let host = args.url.trim_start_matches("http://").trim_end_matches('/');
    let addr: SocketAddr = crate::ensure_loopback(&args.url).await?;
    let rss_before = sysinfo::rss_bytes(pid)?;
    let cpu_before = sysinfo::cpu_time(pid)?;
    let tokens: Vec<String> = (0..args.connections.min(1000))
        .map(|i| crate::mint(&args.secret, &format!("u{i}"), &["*"], None))
        .collect::<anyhow::Result<_>>()?;
    let failed = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let start = Instant::now();
    let mut handles = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let permit = gate.clone().acquire_owned().await?;
        let channel = format!("project:p{}", i % args.channels.max(1));
        let url = format!("ws://{host}/ws?token={}", tokens[i % tokens.len()]);
        let failed = failed.clone();
        handles.push(tokio::spawn(async move {
            if let Err(e) = open_subscribed(addr, source_for(i), url, &channel).await {
                if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("connection {i} failed: {e}");
                }
            }
            drop(permit);
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    let setup = start.elapsed();
    tokio::time::sleep(args.settle).await;
    let rss_after = sysinfo::rss_bytes(pid)?;
    let cpu = sysinfo::cpu_time(pid)?.saturating_sub(cpu_before);
    let ok = args.connections - failed.load(Ordering::Relaxed);
    Ok(IdleResult {
        scenario: "idle",
        connections: ok,
        channels: args.channels,
        failed: failed.load(Ordering::Relaxed),
        setup_seconds: setup.as_secs_f64(),
        setup_per_second: ok as f64 / setup.as_secs_f64().max(1e-9),
        gateway_rss_before_bytes: rss_before,
        gateway_rss_after_bytes: rss_after,
        rss_per_connection_bytes: rss_after.saturating_sub(rss_before) as f64 / ok.max(1) as f64,
        gateway_cpu_seconds: cpu.as_secs_f64(),
        open_file_limit: limit,
    })
}

async fn open_subscribed(addr: SocketAddr, source: IpAddr, url: String, channel: &str) -> anyhow::Result<()> {
    use futures::SinkExt as _;
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(source, 0))?;
    let stream = sock.connect(addr).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    let sub = serde_json::json!({"type":"subscribe","id":1,"channel":channel}).to_string();
    ws.send(Message::Text(sub.into())).await?;
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains("\"ok\":false") => anyhow::bail!("refused: {t}"),
            Ok(Some(Ok(Message::Text(_)))) => {}
            other => anyhow::bail!("unexpected answer during setup: {other:?}"),
        }
    }
    tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
    Ok(())
}
