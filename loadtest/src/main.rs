//! `tidings-loadtest`: load generator and benchmark tooling for Tidings.
//!
//! Scenarios run against loopback only, bounded in count and time, and stop by themselves.
//! `token` mints HS256 tokens for local use (the quick start prints one, and scenarios mint
//! their clients' tokens the same way).

mod chart;
mod demo;
mod fanout;
mod idle;
mod natsws;
mod notify;
mod recovery;
mod soak;
mod storm;
mod sysinfo;

use std::time::Duration;

use clap::{Parser, Subcommand};
use tidings_shared::auth::{Claims, now_unix, sign_hs256};
use tidings_shared::config::parse_duration;

#[derive(Parser)]
#[command(
    name = "tidings-loadtest",
    version,
    about = "Tidings load generator and benchmark reports"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print an HS256 token for a local gateway.
    Token(TokenArgs),
    /// Open N idle connections and report the gateway's memory per connection.
    Idle(idle::IdleArgs),
    /// N clients over K channels; stepped publish rate; deliveries/s, latency, loss, CPU.
    Fanout(fanout::FanoutArgs),
    /// Every client in one channel (fanout with --channels 1); stepped publish rate.
    Broadcast(fanout::FanoutArgs),
    /// Time how long a client takes to recover N messages it missed.
    Recovery(recovery::RecoveryArgs),
    /// N clients on gateway A; A is SIGKILLed; time until all resume on B, and loss.
    ReconnectStorm(storm::StormArgs),
    /// Notifications per second through the worker to in-app and a local webhook.
    Notify(notify::NotifyArgs),
    /// N churning clients at a steady delivery rate for a long time: loss, duplicates and the
    /// slopes of the gateway's RSS, fds and tasks (flat: no leak).
    Soak(soak::SoakArgs),
    /// Live demo traffic for the dashboard: agent runs, a PR through the GitHub route, checks,
    /// inbox notifications (not a load scenario).
    Demo(demo::DemoArgs),
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The gateway's TIDINGS_JWT_SECRET.
    #[arg(long, env = "TIDINGS_JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// User id (`sub`).
    #[arg(long)]
    sub: String,
    /// Comma-separated project ids the user may read (`*` = all).
    #[arg(long, value_delimiter = ',')]
    projects: Vec<String>,
    /// Comma-separated channels the user may publish to (`*` = any).
    #[arg(long, value_delimiter = ',')]
    publish: Vec<String>,
    /// `service` for a back-end token.
    #[arg(long)]
    role: Option<String>,
    /// Lifetime, e.g. 15m, 24h.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: Duration,
}

/// The gateway and NATS a scenario drives (loopback only), and the secret to mint tokens.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// Gateway base URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// NATS URL the scenario publishes to.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// The gateway's TIDINGS_JWT_SECRET.
    #[arg(long, env = "TIDINGS_JWT_SECRET", hide_env_values = true)]
    pub secret: String,
}

/// Where a scenario writes its JSON result (besides stdout) and its SVG chart.
#[derive(Debug, Clone, clap::Args)]
pub struct Output {
    /// Write the JSON result here too.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Write the scenario's SVG chart here.
    #[arg(long)]
    pub chart: Option<std::path::PathBuf>,
}

/// The no-gateway floor a scenario can also be run against, in the same invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Baseline {
    /// Clients speak the NATS protocol over WebSocket straight to nats-server's own
    /// WebSocket listener.
    NatsWs,
}

/// `--baseline` and where the baseline's server is.
#[derive(Debug, clap::Args)]
pub struct BaselineArgs {
    /// Also run the scenario against this baseline, right after Tidings, and report both.
    #[arg(long, value_enum)]
    pub baseline: Option<Baseline>,
    /// nats-server's WebSocket listener (`websocket { listen, no_tls: true }` in its config).
    #[arg(long, default_value = "ws://127.0.0.1:4280")]
    pub nats_ws_url: String,
    /// PID of nats-server: the baseline's server CPU and memory (and NATS's share in Tidings runs).
    #[arg(long)]
    pub nats_pid: Option<u32>,
}

/// Which system a run measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// Clients on a Tidings gateway.
    Tidings,
    /// Clients on nats-server's WebSocket listener.
    NatsWs,
}

/// Connections per source address before moving to the next one (ephemeral ports run out
/// near 28,000 per source address).
const PER_SOURCE: usize = 25_000;

/// Source address of connection `i`: 127.0.0.1 first, then .2 … .9 as each runs out of
/// ephemeral ports. Baseline runs start at an offset so they never meet the previous run's
/// sockets still in TIME_WAIT.
pub fn source_for(i: usize) -> std::net::IpAddr {
    let n = (i / PER_SOURCE) as u8;
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1 + n.min(8)))
}

/// Connects to `addr` from source address `source`.
///
/// From 127.0.0.1 the kernel picks the port at `connect` (it may reuse a port still in
/// TIME_WAIT towards another peer). From another source the socket is bound first, with
/// `IP_BIND_ADDRESS_NO_PORT` so the port is still chosen at `connect`: a plain `bind` to
/// port 0 must find a port free for every peer, skips all ports in TIME_WAIT and crawls
/// after a previous run (setup fell from ~3,500 to ~850 connections/s here).
pub async fn connect_from(
    source: std::net::IpAddr,
    addr: std::net::SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    if source != std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST) {
        use std::os::fd::AsRawFd as _;
        let one: libc::c_int = 1;
        // SAFETY: a valid socket descriptor owned by `sock`, and a pointer to a c_int that
        // outlives the call, with its size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        sock.bind(std::net::SocketAddr::new(source, 0))?;
    }
    sock.connect(addr).await
}

/// A Tidings WebSocket connection of the load clients.
pub type TidingsWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens a Tidings WebSocket from `source` and subscribes to `channel` (no `since`); returns
/// once the gateway's `welcome` and the subscription's reply are in.
pub async fn tidings_subscribed(
    addr: std::net::SocketAddr,
    source: std::net::IpAddr,
    url: String,
    channel: &str,
) -> anyhow::Result<TidingsWs> {
    tidings_subscribed_all(addr, source, url, &[channel.to_owned()]).await
}

/// [`tidings_subscribed`] to several channels on one connection.
pub async fn tidings_subscribed_all(
    addr: std::net::SocketAddr,
    source: std::net::IpAddr,
    url: String,
    channels: &[String],
) -> anyhow::Result<TidingsWs> {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let stream = connect_from(source, addr).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    for (i, channel) in channels.iter().enumerate() {
        let sub = serde_json::json!({"type":"subscribe","id":i + 1,"channel":channel}).to_string();
        ws.send(Message::Text(sub.into())).await?;
    }
    // The welcome, then one reply per subscription.
    for _ in 0..=channels.len() {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains("\"ok\":false") => anyhow::bail!("refused: {t}"),
            Ok(Some(Ok(Message::Text(_)))) => {}
            other => anyhow::bail!("unexpected answer during setup: {other:?}"),
        }
    }
    Ok(ws)
}

/// What a gateway's `/api/v1/stats` says about itself (read with a service token).
#[derive(Debug, serde::Deserialize)]
pub struct GatewayStats {
    /// Node id (`welcome.node`).
    pub node: String,
    /// Process id, for `/proc` figures (and the storm's kill).
    pub pid: u32,
}

/// `GET <url>/api/v1/stats` with a service token minted from `secret`.
pub async fn gateway_stats(url: &str, secret: &str) -> anyhow::Result<GatewayStats> {
    let token = mint(secret, "loadtest-ops", &[], Some("service"))?;
    Ok(reqwest::Client::new()
        .get(format!("{url}/api/v1/stats"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// The value at quantile `q` (0–1) of ascending `sorted` (0 when empty).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize]
}

/// Index offset for the baseline's connections (see [`source_for`]).
pub const BASELINE_SOURCE_OFFSET: usize = 4 * PER_SOURCE;

/// Aborts the load clients' tasks (closing their sockets) when a run ends, however it ends.
pub struct AbortOnDrop(pub Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// A one-hour token for load clients.
fn mint(secret: &str, sub: &str, projects: &[&str], role: Option<&str>) -> anyhow::Result<String> {
    let claims = Claims {
        sub: sub.to_owned(),
        projects: projects.iter().map(|p| p.to_string()).collect(),
        publish: Vec::new(),
        role: role.map(str::to_owned),
        exp: now_unix() + 3600,
        nbf: None,
        iat: Some(tidings_shared::auth::now_unix()),
    };
    Ok(sign_hs256(&claims, secret.as_bytes())?)
}

/// Refuses any target outside the loopback range.
async fn ensure_loopback(url: &str) -> anyhow::Result<std::net::SocketAddr> {
    let host = url
        .trim_start_matches("http://")
        .trim_start_matches("ws://")
        .trim_end_matches('/');
    let addr = tokio::net::lookup_host(host)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("cannot resolve {host}"))?;
    anyhow::ensure!(addr.ip().is_loopback(), "load tests target loopback only, not {addr}");
    Ok(addr)
}

fn report<T: serde::Serialize>(result: &T, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(result)?;
    println!("{json}");
    if let Some(path) = out {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, json)?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Token(a) => {
            let claims = Claims {
                sub: a.sub,
                projects: a.projects,
                publish: a.publish,
                role: a.role,
                exp: now_unix() + a.ttl.as_secs(),
                nbf: None,
                iat: Some(tidings_shared::auth::now_unix()),
            };
            println!("{}", sign_hs256(&claims, a.secret.as_bytes())?);
        }
        Command::Idle(a) => {
            let out = a.output.out.clone();
            let result = idle::run(a).await?;
            report(&result, out.as_deref())?;
        }
        Command::Fanout(a) => {
            let out = a.output.out.clone();
            let result = fanout::run(a, "fanout").await?;
            report(&result, out.as_deref())?;
        }
        Command::Broadcast(mut a) => {
            a.channels = 1;
            let out = a.output.out.clone();
            let result = fanout::run(a, "broadcast").await?;
            report(&result, out.as_deref())?;
        }
        Command::Notify(a) => {
            let out = a.output.out.clone();
            let result = notify::run(a).await?;
            report(&result, out.as_deref())?;
        }
        Command::ReconnectStorm(a) => {
            let out = a.output.out.clone();
            let result = storm::run(a).await?;
            report(&result, out.as_deref())?;
        }
        Command::Demo(a) => demo::run(a).await?,
        Command::Soak(a) => {
            let out = a.output.out.clone();
            let result = soak::run(a).await?;
            report(&result, out.as_deref())?;
        }
        Command::Recovery(a) => {
            let out = a.output.out.clone();
            let result = recovery::run(a).await?;
            report(&result, out.as_deref())?;
        }
    }
    Ok(())
}
