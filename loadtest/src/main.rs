//! `tidings-loadtest`: load generator and benchmark tooling for Tidings.
//!
//! Scenarios run against loopback only, bounded in count and time, and stop by themselves.
//! `token` mints HS256 tokens for local use (the quick start prints one, and scenarios mint
//! their clients' tokens the same way).

mod fanout;
mod idle;
mod notify;
mod recovery;
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
    /// Notifications per second through the worker to in-app and a local webhook.
    Notify(notify::NotifyArgs),
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

/// A one-hour token for load clients.
fn mint(secret: &str, sub: &str, projects: &[&str], role: Option<&str>) -> anyhow::Result<String> {
    let claims = Claims {
        sub: sub.to_owned(),
        projects: projects.iter().map(|p| p.to_string()).collect(),
        publish: Vec::new(),
        role: role.map(str::to_owned),
        exp: now_unix() + 3600,
        nbf: None,
    };
    Ok(sign_hs256(&claims, secret.as_bytes())?)
}

/// Refuses any target outside the loopback range.
async fn ensure_loopback(url: &str) -> anyhow::Result<std::net::SocketAddr> {
    let host = url.trim_start_matches("http://").trim_end_matches('/');
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
            };
            println!("{}", sign_hs256(&claims, a.secret.as_bytes())?);
        }
        Command::Idle(a) => {
            let out = a.out.clone();
            let result = idle::run(a).await?;
            report(&result, out.as_deref())?;
        }
        Command::Fanout(a) => {
            let out = a.out.clone();
            let result = fanout::run(a, "fanout").await?;
            report(&result, out.as_deref())?;
        }
        Command::Broadcast(mut a) => {
            a.channels = 1;
            let out = a.out.clone();
            let result = fanout::run(a, "broadcast").await?;
            report(&result, out.as_deref())?;
        }
        Command::Notify(a) => {
            let out = a.out.clone();
            let result = notify::run(a).await?;
            report(&result, out.as_deref())?;
        }
        Command::Recovery(a) => {
            let out = a.out.clone();
            let result = recovery::run(a).await?;
            report(&result, out.as_deref())?;
        }
    }
    Ok(())
}
