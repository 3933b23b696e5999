//! `recovery`: how long a client that was away takes to get the messages it missed.
//!
//! Subscribes once to learn its position, disconnects, has N durable messages published to
//! its channel (pipelined through JetStream), reconnects with `since`, and times the
//! subscription until the N-th missed message has arrived, checking order and completeness.

use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Settings of one `recovery` run.
#[derive(Debug, clap::Args)]
pub struct RecoveryArgs {
    /// Where the gateway and NATS are.
    #[command(flatten)]
    pub target: crate::Target,
    /// Messages missed while away.
    #[arg(long, default_value_t = 10_000)]
    pub missed: usize,
    /// Payload bytes per message (besides the envelope).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Write the JSON result here too.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// The result of one run.
#[derive(Debug, Serialize)]
pub struct RecoveryResult {
    pub scenario: &'static str,
    pub missed: usize,
    pub recovered: bool,
    pub received: usize,
    pub in_order: bool,
    pub first_message_ms: f64,
    pub all_messages_ms: f64,
    pub messages_per_second: f64,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Ok(serde_json::from_str(t.as_str())?),
            Ok(Some(Ok(_))) => continue,
            other => anyhow::bail!("connection ended: {other:?}"),
        }
    }
}

async fn connect(url: &str, token: &str) -> anyhow::Result<Ws> {
    let ws_url = format!("{}/ws?token={token}", url.replacen("http://", "ws://", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await?;
    let welcome = next_json(&mut ws).await?;
    anyhow::ensure!(welcome["type"] == "welcome", "expected welcome, got {welcome}");
    Ok(ws)
}

/// Runs the scenario.
pub async fn run(args: RecoveryArgs) -> anyhow::Result<RecoveryResult> {
    crate::ensure_loopback(&args.target.url).await?;
    let channel = format!("project:recovery-{}", std::process::id());
    let token = crate::mint(&args.target.secret, "loadtest-recovery", &["*"], None)?;

    let mut ws = connect(&args.target.url, &token).await?;
    let sub = json!({"type":"subscribe","id":1,"channel":channel}).to_string();
    ws.send(Message::Text(sub.into())).await?;
    let reply = next_json(&mut ws).await?;
    let since = reply["seq"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no position in {reply}"))?;
    let epoch = reply["epoch"].clone();
    ws.close(None).await?;

    let nats = async_nats::connect(&args.target.nats_url).await?;
    let js = async_nats::jetstream::new(nats);
    let subject = format!("tidings.events.{}", channel.replacen(':', ".", 1));
    let pad = "x".repeat(args.payload);
    let mut acks = Vec::with_capacity(1000);
    let mut want = Vec::with_capacity(args.missed);
    for n in 0..args.missed {
        let body = json!({"event":"missed","data":{"n":n,"pad":pad}}).to_string();
        acks.push(js.publish(subject.clone(), body.into()).await?);
        if acks.len() == 1000 {
            for a in acks.drain(..) {
                want.push(a.await?.sequence);
            }
        }
    }
    for a in acks.drain(..) {
        want.push(a.await?.sequence);
    }

    let mut ws = connect(&args.target.url, &token).await?;
    let start = Instant::now();
    let sub = json!({"type":"subscribe","id":2,"channel":channel,"since":since,"epoch":epoch}).to_string();
    ws.send(Message::Text(sub.into())).await?;
    let reply = next_json(&mut ws).await?;
    let recovered = reply["recovered"].as_bool().unwrap_or(false);
    let mut got = Vec::with_capacity(args.missed);
    let mut first = None;
    while got.len() < want.len() {
        let m = next_json(&mut ws).await?;
        if m["type"] == "message" {
            first.get_or_insert_with(|| start.elapsed());
            got.push(m["seq"].as_u64().unwrap_or(0));
        }
    }
    let all = start.elapsed();
    Ok(RecoveryResult {
        scenario: "recovery",
        missed: args.missed,
        recovered,
        received: got.len(),
        in_order: got == want,
        first_message_ms: first.unwrap_or_default().as_secs_f64() * 1000.0,
        all_messages_ms: all.as_secs_f64() * 1000.0,
        messages_per_second: got.len() as f64 / all.as_secs_f64().max(1e-9),
    })
}
